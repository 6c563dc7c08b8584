// kvault's web page: the chat playground. Streams a reply from /v1/chat/completions (or
// /v1/completions) with the sampling fields and the message's KV policy, and shows its TTFT,
// decode tokens/s and cached prompt tokens. Needs common.js.
"use strict";

function num(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function requestBody(prompt) {
  const body = {
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: num("max_tokens"),
    temperature: num("temperature"),
    top_p: num("top_p"),
    top_k: num("top_k"),
    min_p: num("min_p"),
    presence_penalty: num("presence_penalty"),
    frequency_penalty: num("frequency_penalty"),
    seed: num("seed"),
    ignore_eos: $("ignore_eos").checked || undefined,
    kv_policy: $("kv_policy").value || undefined,
    kv_budget: num("kv_budget"),
  };
  if (state.model) body.model = state.model;
  if ($("mode").value === "chat") body.messages = state.messages.slice();
  else body.prompt = prompt;
  return body;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  div.appendChild(content);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function policyLabel(body) {
  if (!body.kv_policy && body.kv_budget === undefined) return "KV: server default";
  return "KV: " + (body.kv_policy || "default policy") + (body.kv_budget !== undefined ? ` (budget ${body.kv_budget})` : "");
}

// Reads an SSE body and calls onEvent for each parsed `data:` payload (not [DONE]).
async function readSse(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of frame.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  const chat = $("mode").value === "chat";
  if (chat) state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const body = requestBody(text);
  const reply = addMessage("assistant", "");
  reply.dataset.state = "waiting";
  const content = reply.querySelector(".content");
  const stats = document.createElement("span");
  stats.className = "stats";
  reply.appendChild(stats);
  const t0 = performance.now();
  let tFirst = null, tLast = null, usage = null, finish = null, out = "";
  state.controller = new AbortController();
  setBusy(true);
  try {
    const url = chat ? "/v1/chat/completions" : "/v1/completions";
    const resp = await fetch(url, { method: "POST", headers: headers(true), body: JSON.stringify(body), signal: state.controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    reply.dataset.state = "streaming";
    await readSse(resp, (ev) => {
      if (ev.error) throw new Error(ev.error.message);
      if (ev.usage) usage = ev.usage;
      for (const c of ev.choices || []) {
        const piece = chat ? (c.delta && c.delta.content) || "" : c.text || "";
        if (piece) {
          if (tFirst === null) tFirst = performance.now();
          tLast = performance.now();
          out += piece;
          content.textContent = out;
          $("messages").scrollTop = $("messages").scrollHeight;
        }
        if (c.finish_reason) finish = c.finish_reason;
      }
    });
    reply.dataset.state = "done";
  } catch (e) {
    reply.dataset.state = e.name === "AbortError" ? "stopped" : "error";
    if (e.name !== "AbortError") {
      reply.classList.add("error");
      content.textContent = out + (out ? "\n" : "") + e.message;
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
  if (chat && out) state.messages.push({ role: "assistant", content: out });
  const parts = [];
  if (tFirst !== null) parts.push(`TTFT ${Math.round(tFirst - t0)} ms`);
  if (usage) {
    const n = usage.completion_tokens;
    const secs = tLast !== null && tFirst !== null ? (tLast - tFirst) / 1000 : 0;
    if (n > 1 && secs > 0) parts.push(`${((n - 1) / secs).toFixed(1)} tok/s`);
    parts.push(`${n} tokens`);
    const cached = (usage.prompt_tokens_details || {}).cached_tokens || 0;
    parts.push(`${cached} of ${usage.prompt_tokens} prompt tokens cached`);
  }
  if (finish) parts.push(`finish: ${finish}`);
  parts.push(policyLabel(body));
  stats.textContent = parts.join(" · ");
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || state.controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => {
  state.messages = [];
  $("messages").textContent = "";
});
$("api-key").value = localStorage.getItem("kvault-api-key") || "";
$("api-key").addEventListener("change", () => localStorage.setItem("kvault-api-key", $("api-key").value.trim()));
