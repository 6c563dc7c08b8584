// kvault's web page: the KV dashboard. Polls /v1/kv/state four times a second and draws the
// block pool, each request's blocks and policy, the engine counters, the offload tiers and
// time series of throughput, KV usage and the queue. Needs common.js.
"use strict";

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
