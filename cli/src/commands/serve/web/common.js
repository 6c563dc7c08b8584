// kvault's web page, shared by the playground and the dashboard scripts: element lookup, the
// page's state, and the headers every /v1 call sends (the API key, kept in localStorage, as a
// bearer token). Plain browser JavaScript, no dependencies; loaded before the other two.
"use strict";
const $ = (id) => document.getElementById(id);
const POLL_MS = 250;
const HISTORY_S = 120; // kept; the charts span what was seen, from 20 s up to this
const COLORS = ["#2f6fdf", "#e07b39", "#7b5bd6", "#2a9d8f", "#d64f7a", "#8a6d1d", "#3b82a0", "#9c4fd6"];
const state = { messages: [], controller: null, history: [], last: null, polls: [], model: null };

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
