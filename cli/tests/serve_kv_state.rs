//! `GET /v1/kv/state` (the dashboard's feed), the page at `/` and its switches, against the real
//! binary: a running request shows its blocks, policy and budget and the pool is whole again
//! after; `--api-key` guards the state like `/v1/*` while the page stays public; `--no-web-ui`
//! removes the page; `/openapi.json` and `/tokenizer_info` answer.

mod serve_support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::{open_stream, read_to_end, Server};

fn kv_state(s: &Server) -> Value {
    let (status, text) = s.get("/v1/kv/state");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn wait_for(s: &Server, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let v = kv_state(s);
        if ok(&v) {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out waiting for {what}; last state: {v}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_kv_state_shows_a_running_requests_blocks_policy_and_budget_then_a_free_pool() {
    let s = Server::start(&[]);
    let idle = kv_state(&s);
    let total = idle["pool"]["total_blocks"].as_u64().unwrap();
    assert!(total > 0 && idle["block_size"].as_u64().unwrap() > 0, "{idle}");
    assert_eq!(idle["pool"]["free_blocks"].as_u64(), Some(total), "a fresh server's pool is whole: {idle}");
    assert_eq!(idle["requests"], json!([]));
    assert_eq!(idle["offload"], json!({"configured": false, "tiers": []}));

    let body = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "ignore_eos": true, "stream": true,
                      "kv_policy": "streaming", "kv_budget": 48});
    let (sock, seen) = open_stream(&s.host_port(), "/v1/completions", &body);
    let busy = wait_for(&s, "a running request holding blocks", Duration::from_secs(30), |v| {
        v["requests"].as_array().unwrap().iter().any(|r| r["phase"] == "running" && r["blocks_held"].as_u64() > Some(0))
    });
    let r = &busy["requests"][0];
    assert_eq!((r["policy"]["policy"].as_str(), r["budget"].as_u64()), (Some("streaming"), Some(48)), "{r}");
    assert_eq!(r["length"].as_u64(), Some(r["prompt_tokens"].as_u64().unwrap() + r["output_tokens"].as_u64().unwrap()));
    let pool = &busy["pool"];
    assert_eq!(pool["used_blocks"].as_u64().unwrap() + pool["free_blocks"].as_u64().unwrap(), total);
    assert!(pool["used_blocks"].as_u64() >= r["blocks_held"].as_u64(), "{busy}");
    // Later, the budget holds: at most the budget (+ a block of slack) while the length grows past it.
    let evicting = wait_for(&s, "the budget to evict", Duration::from_secs(60), |v| {
        v["requests"].as_array().unwrap().first().is_some_and(|r| r["tokens_evicted"].as_u64() > Some(0))
    });
    let r = &evicting["requests"][0];
    assert!(r["tokens_held"].as_u64().unwrap() < r["length"].as_u64().unwrap(), "{r}");
    assert!(evicting["time"].as_f64() > busy["time"].as_f64());

    let text = read_to_end(sock, seen);
    assert!(text.contains("data: [DONE]"));
    let after = wait_for(&s, "a free pool", Duration::from_secs(30), |v| v["requests"] == json!([]) && v["pool"]["used_blocks"] == 0);
    assert_eq!(after["pool"]["free_blocks"].as_u64(), Some(total));
    assert!(after["counters"]["finished_requests"].as_u64() >= Some(1));
    let streaming = after["counters"]["policies"].as_array().unwrap().iter().find(|p| p["policy"] == "streaming").unwrap();
    assert!(streaming["requests"].as_u64() >= Some(1) && streaming["evicted_tokens"].as_u64() > Some(0), "{after}");
}

#[test]
fn the_api_key_guards_the_state_not_the_page_and_no_web_ui_removes_the_page() {
    let s = Server::start(&["--api-key", "sekrit"]);
    let get = |path: &str, key: Option<&str>| {
        let mut req = s.client().get(s.url(path));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let r = req.send().unwrap();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (r.status().as_u16(), ct, r.text().unwrap())
    };
    assert_eq!(get("/v1/kv/state", None).0, 401);
    assert_eq!(get("/v1/kv/state", Some("wrong")).0, 401);
    let (status, ct, text) = get("/v1/kv/state", Some("sekrit"));
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{text}");
    let (status, ct, page) = get("/", None);
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/html") && page.contains("/ui/dashboard.js"), "{ct}");
    let (status, ct, js) = get("/ui/dashboard.js", None);
    assert!(status == 200 && ct.starts_with("text/javascript") && js.contains("/v1/kv/state"));
    assert_eq!(get("/ui/style.css", None).0, 200);
    assert_eq!(get("/ui/secrets.txt", None).0, 404);
    let (status, _, doc) = get("/openapi.json", None);
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/v1/kv/state"].is_object() && doc["components"]["schemas"]["KvFields"].is_object());
    let (status, _, info) = get("/tokenizer_info", None);
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&info).unwrap()["eos_token"], "</s>");

    let off = Server::start(&["--no-web-ui"]);
    let (status, body) = off.get("/");
    assert_eq!(status, 404, "{body}");
    assert_eq!(off.get("/ui/common.js").0, 404);
    assert_eq!(off.get("/v1/kv/state").0, 200, "the state endpoint stays with --no-web-ui");
}
