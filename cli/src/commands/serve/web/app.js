// kvault's web page: a chat playground streaming from /v1/chat/completions (or
// /v1/completions) and a KV dashboard polling /v1/kv/state four times a second.
// Plain browser JavaScript, no dependencies. The API key (if the server wants one) is kept
// in localStorage and sent as a bearer token on every /v1 call.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 250;
const HISTORY_S = 120; // kept; the charts span what was seen, from 20 s up to this
const COLORS = ["#2f6fdf", "#e07b39", "#7b5bd6", "#2a9d8f", "#d64f7a", "#8a6d1d", "#3b82a0", "#9c4fd6"];

const state = { messages: [], controller: null, history: [], last: null, polls: [], model: null };

// ---------- HTTP ----------

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status}: ${body.error.message}` + (body.error.param ? ` (${body.error.param})` : "");
  } catch (_) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

// ---------- Playground ----------

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

// ---------- Dashboard ----------

function colorOf(id) {
  return COLORS[id % COLORS.length];
}

function setStatus(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = "pill " + (ok ? "ok" : "bad");
}

function renderPool(kv) {
  const p = kv.pool;
  $("pool-used").textContent = p.used_blocks;
  $("pool-cached").textContent = p.free_cached_blocks;
  $("pool-free").textContent = p.free_empty_blocks;
  $("pool-total").textContent = p.total_blocks;
  $("block-size").textContent = kv.block_size;
  const bar = $("pool-bar");
  bar.textContent = "";
  const pct = (n) => (p.total_blocks ? (100 * n) / p.total_blocks : 0) + "%";
  let accounted = 0;
  for (const r of kv.requests) {
    if (!r.blocks_held) continue;
    const d = document.createElement("div");
    d.style.width = pct(r.blocks_held);
    d.style.background = colorOf(r.id);
    d.title = `request ${r.id}: ${r.blocks_held} blocks`;
    bar.appendChild(d);
    accounted += r.blocks_held;
  }
  if (p.used_blocks > accounted) {
    // Blocks held by requests that finished since the picture was taken, or shared prefixes.
    const d = document.createElement("div");
    d.style.width = pct(p.used_blocks - accounted);
    d.style.background = "var(--used)";
    bar.appendChild(d);
  }
  const c = document.createElement("div");
  c.style.width = pct(p.free_cached_blocks);
  c.style.background = "var(--cached)";
  c.title = `${p.free_cached_blocks} free blocks still hold prefix-cache entries`;
  bar.appendChild(c);
  drawBlockMap(kv);
}

// One cell per block: each request's blocks in its colour, then cached-reusable, then free.
// (A picture of counts, not of physical block ids.)
function drawBlockMap(kv) {
  const canvas = $("block-map");
  const ctx = fitCanvas(canvas);
  const w = canvas.clientWidth, h = canvas.clientHeight;
  const total = kv.pool.total_blocks;
  if (!total) return;
  const cols = Math.max(1, Math.ceil(Math.sqrt((total * w) / h)));
  const rows = Math.ceil(total / cols);
  const cw = w / cols, ch = h / rows;
  const cells = [];
  for (const r of kv.requests) for (let i = 0; i < r.blocks_held; i++) cells.push(colorOf(r.id));
  while (cells.length < kv.pool.used_blocks) cells.push("#2f6fdf");
  for (let i = 0; i < kv.pool.free_cached_blocks; i++) cells.push("#9bc1a8");
  ctx.clearRect(0, 0, w, h);
  for (let i = 0; i < total; i++) {
    ctx.fillStyle = cells[i] || "#e8eaee";
    const x = (i % cols) * cw, y = Math.floor(i / cols) * ch;
    ctx.fillRect(x + 0.5, y + 0.5, Math.max(1, cw - 1), Math.max(1, ch - 1));
  }
}

function renderRequests(kv) {
  const body = $("requests").querySelector("tbody");
  body.textContent = "";
  if (!kv.requests.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    tr.innerHTML = '<td colspan="8">no request in the engine</td>';
    body.appendChild(tr);
    return;
  }
  for (const r of kv.requests) {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id;
    tr.dataset.blocks = r.blocks_held;
    tr.dataset.phase = r.phase;
    const cells = [
      `<span class="chip" style="background:${colorOf(r.id)}"></span>${r.id}`,
      r.phase,
      r.policy.policy,
      r.budget === null ? "–" : r.budget,
      `${r.tokens_held} / ${r.length}`,
      r.blocks_held,
      r.cached_tokens,
      r.tokens_evicted,
    ];
    for (const c of cells) {
      const td = document.createElement("td");
      td.innerHTML = String(c);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function renderCounters(kv) {
  const c = kv.counters;
  const hit = c.prefix_cache_queries ? ((100 * c.prefix_cache_hits) / c.prefix_cache_queries).toFixed(1) + "%" : "–";
  const items = [
    ["running", kv.queue.running],
    ["waiting", kv.queue.waiting],
    ["preemptions", c.preemptions],
    ["prefix-cache hits", `${c.prefix_cache_hits} tokens (${hit})`],
    ["finished", c.finished_requests],
    ["tokens generated", c.generation_tokens],
  ];
  for (const p of c.policies) if (p.requests) items.push([`${p.policy}`, `${p.requests} req, ${p.evicted_tokens} evicted`]);
  $("counters").innerHTML = items.map(([k, v]) => `<span>${k} <b>${v}</b></span>`).join("");
  const tiers = kv.offload.tiers;
  $("offload-tiers").textContent = kv.offload.configured && tiers.length
    ? tiers.map((t) => `${t.name}: ${t.used_blocks}/${t.total_blocks} blocks`).join(", ")
    : "none configured";
}

function record(kv) {
  const prev = state.last;
  let tput = 0;
  if (prev && kv.time > prev.time) {
    const tokens = kv.counters.generation_tokens + kv.counters.prompt_tokens - prev.counters.generation_tokens - prev.counters.prompt_tokens;
    tput = Math.max(0, tokens) / (kv.time - prev.time);
  }
  state.last = kv;
  state.history.push({ t: kv.time, tput, kv: 100 * kv.pool.usage, running: kv.queue.running, waiting: kv.queue.waiting });
  while (state.history.length && state.history[0].t < kv.time - HISTORY_S) state.history.shift();
}

function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return ctx;
}

// A line chart of the last HISTORY_S seconds; `series` are [key, colour] pairs.
function lineChart(canvas, series, fixedMax) {
  const ctx = fitCanvas(canvas);
  const w = canvas.clientWidth, h = canvas.clientHeight;
  ctx.clearRect(0, 0, w, h);
  const hist = state.history;
  const now = hist.length ? hist[hist.length - 1].t : 0;
  const span = hist.length ? Math.min(HISTORY_S, Math.max(20, now - hist[0].t)) : HISTORY_S;
  let max = fixedMax || 0;
  if (!fixedMax) for (const p of hist) for (const [k] of series) max = Math.max(max, p[k]);
  max = max > 0 ? max * (fixedMax ? 1 : 1.15) : 1;
  const left = 34, bottom = h - 14;
  ctx.strokeStyle = "#e3e6eb";
  ctx.fillStyle = "#6b7280";
  ctx.font = "10px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = bottom - f * (bottom - 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    const v = f * max;
    ctx.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 2, y + 3);
  }
  ctx.fillText(`-${Math.round(span)}s`, left, h - 2);
  ctx.fillText("now", w - 22, h - 2);
  for (const [k, colour] of series) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    hist.forEach((p, i) => {
      const x = left + ((p.t - (now - span)) / span) * (w - left);
      const y = bottom - (p[k] / max) * (bottom - 4);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function renderCharts() {
  lineChart($("chart-tput"), [["tput", "#2f6fdf"]]);
  lineChart($("chart-kv"), [["kv", "#2a9d8f"]], 100);
  lineChart($("chart-queue"), [["running", "#2f6fdf"], ["waiting", "#c2410c"]]);
}

async function poll() {
  try {
    const resp = await fetch("/v1/kv/state", { headers: headers(false), cache: "no-store" });
    if (resp.status === 401) { setStatus("API key needed", false); return; }
    if (resp.status === 503) { setStatus("loading model", false); return; }
    if (!resp.ok) { setStatus(await errorText(resp), false); return; }
    const kv = await resp.json();
    state.model = kv.model;
    $("model").textContent = `${kv.model} · max_model_len ${kv.max_model_len}`;
    setStatus("live", true);
    record(kv);
    renderPool(kv);
    renderRequests(kv);
    renderCounters(kv);
    renderCharts();
    const now = performance.now();
    state.polls.push(now);
    while (state.polls.length && state.polls[0] < now - 2000) state.polls.shift();
    $("rate").textContent = `· ${(state.polls.length / 2).toFixed(1)} updates/s`;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    setStatus("server unreachable", false);
  }
}

// Each poll starts after the previous one ends, so a slow server never piles requests up.
async function pollLoop() {
  const started = performance.now();
  await poll();
  setTimeout(pollLoop, Math.max(0, POLL_MS - (performance.now() - started)));
}
pollLoop();
