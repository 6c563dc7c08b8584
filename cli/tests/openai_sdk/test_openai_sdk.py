"""The official `openai` Python SDK against `kvault serve`, unchanged, as users run it.

Started by cli/tests/serve_openai_sdk.rs with KVAULT_BASE_URL (e.g. http://127.0.0.1:PORT/v1)
and KVAULT_MODEL set, against SmolLM2-135M-Instruct (it has a chat template). Runs every
`test_*` function and prints a closing `N passed, N failed` line; exits non-zero on failure.
Per-request KV policies travel as top-level `kv_*` fields through `extra_body`, as vLLM's extra
sampling fields do.
"""

import asyncio
import os
import sys
import traceback

import openai

BASE_URL = os.environ["KVAULT_BASE_URL"]
MODEL = os.environ["KVAULT_MODEL"]
client = openai.OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=120)
MESSAGES = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a color."}]


def test_completion_non_streaming():
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion", r
    assert len(r.choices) == 1 and r.choices[0].text, r
    assert r.choices[0].finish_reason in ("stop", "length"), r
    assert r.usage.completion_tokens == 6 or r.choices[0].finish_reason == "stop", r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_streaming_equals_non_streaming_at_temperature_0():
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    parts = [c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices]
    assert "".join(parts) == whole, (parts, whole)


def test_chat_non_streaming():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def test_chat_streaming_equals_non_streaming_and_starts_with_role():
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole, (text, whole)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_n_3_gives_three_indexed_choices():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, n=3, temperature=1, seed=5)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert 3 <= r.usage.completion_tokens <= 12, r.usage
    r = client.completions.create(model=MODEL, prompt="Once", max_tokens=3, n=3, stream=True, temperature=1)
    seen = {c.choices[0].index for c in r if c.choices}
    assert seen == {0, 1, 2}, seen


def test_completion_logprobs():
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 3
    assert all(len(t) <= 2 and len(t) >= 1 for t in lp.top_logprobs)
    assert all(x <= 0 for x in lp.token_logprobs)


def test_chat_logprobs_and_top_logprobs():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 3
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        # Greedy: the chosen token is the most likely alternative.
        assert abs(max(t.logprob for t in entry.top_logprobs) - entry.logprob) < 1e-4


def test_stop_string_ends_generation_and_is_not_returned():
    base = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0).choices[0].text
    stop = base.strip()[:2] if len(base.strip()) >= 2 else base.strip()
    assert stop, base
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop", r
    assert stop not in r.choices[0].text
    assert base.startswith(r.choices[0].text)


def test_max_tokens_1():
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0)
    assert r.usage.completion_tokens == 1
    assert r.choices[0].finish_reason in ("length", "stop")


def test_seed_reproducible_at_temperature_1():
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=1234)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b, (a, b)
    others = {client.completions.create(**{**kw, "seed": s}).choices[0].text for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds should not all agree"


def test_stream_options_include_usage():
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])


def test_errors_raise_the_sdk_exceptions():
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("expected NotFoundError")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    try:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, top_p=3)
        raise AssertionError("expected BadRequestError")
    except openai.BadRequestError as e:
        assert e.body["param"] == "top_p", e.body


def test_kv_policy_fields_through_extra_body():
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0,
                                  extra_body={"kv_policy": "h2o", "kv_budget": 64})
    assert r.choices[0].text and r.usage.completion_tokens >= 1, r
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, stream=True,
                                                 extra_body={"kv_policy": "h2o", "kv_budget": 64}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    snapkv = {"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_window": 16, "kv_snapkv_kernel": 3, "kv_snapkv_pooling": "max"}
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, extra_body=snapkv)
    assert r.choices[0].message.content, r
    parts = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True,
        extra_body={"kv_policy": "streaming", "kv_budget": 64, "kv_sink_tokens": 2}) if c.choices]
    assert "".join(parts), parts


def test_kv_policy_bad_values_raise_bad_request_naming_the_param():
    cases = [
        ({"kv_policy": "lru"}, "kv_policy"),
        ({"kv_policy": "h2o"}, "kv_budget"),
        ({"kv_policy": "h2o", "kv_budget": 0}, "kv_budget"),
        ({"kv_policy": "h2o", "kv_budget": -4}, "kv_budget"),
        ({"kv_policy": "h2o", "kv_budget": "64"}, "kv_budget"),
        ({"kv_policy": "streaming", "kv_budget": 4, "kv_sink_tokens": 4}, "kv_budget"),
        ({"kv_policy": "h2o", "kv_budget": 64, "kv_sink_tokens": 4}, "kv_sink_tokens"),
        ({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_kernel": 4}, "kv_snapkv_kernel"),
        ({"kv_policy": "snapkv", "kv_budget": 64, "kv_snapkv_pooling": "median"}, "kv_snapkv_pooling"),
    ]
    calls = [
        lambda extra: client.completions.create(model=MODEL, prompt="x", max_tokens=1, extra_body=extra),
        lambda extra: client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, extra_body=extra),
    ]
    for extra, param in cases:
        for call in calls:
            try:
                call(extra)
                raise AssertionError(f"expected BadRequestError for {extra}")
            except openai.BadRequestError as e:
                assert e.status_code == 400, (extra, e)
                assert e.body["param"] == param, (extra, e.body)
                assert param in e.body["message"], (extra, e.body)


def test_explicit_full_kv_policy_gives_the_same_greedy_text_as_no_field():
    kw = dict(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    full = client.completions.create(**kw, extra_body={"kv_policy": "full"}).choices[0].text
    assert plain and full == plain, (plain, full)
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    full = client.chat.completions.create(**kw, extra_body={"kv_policy": "full"}).choices[0].message.content
    assert plain and full == plain, (plain, full)


def test_async_client_with_32_concurrent_streams():
    async def one(aclient, i):
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6, temperature=0, stream=True)
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def main():
        aclient = openai.AsyncOpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*(one(aclient, i) for i in range(32)))
        finally:
            await aclient.close()

    results = asyncio.run(main())
    assert len(results) == 32
    assert all(finish in ("stop", "length") for _, finish in results), results
    assert all(text for text, _ in results), results


def main():
    tests = [(name, f) for name, f in globals().items() if name.startswith("test_") and callable(f)]
    failed = 0
    for name, f in tests:
        try:
            f()
            print(f"ok     {name}", flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAILED {name}\n{traceback.format_exc()}", flush=True)
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
