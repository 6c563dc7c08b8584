//! Shared by the serve_* end-to-end tests: start the real `kvault serve` on a loopback port
//! chosen by the OS, talk HTTP to it, read its metrics, and kill it when the test ends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn shared() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared"));
    assert!(dir.join("models").is_dir(), "shared test assets missing: expected {}", dir.display());
    dir
}

/// The chat-capable test model (ChatML template), ~30 ms per decode step here.
pub fn smollm2() -> String {
    shared().join("models/smollm2-135m-instruct").to_string_lossy().into_owned()
}

pub struct Server {
    child: Child,
    pub base: String,
    stderr: Arc<Mutex<String>>,
    client: reqwest::blocking::Client,
}

impl Server {
    /// Starts `kvault serve --port 0 ARGS` and waits until /health is 200.
    pub fn start(args: &[&str]) -> Server {
        let s = Server::start_listening(args);
        s.wait_healthy(Duration::from_secs(120));
        s
    }

    /// Returns as soon as the listener is bound (the model may still be loading).
    pub fn start_listening(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvault"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the kvault binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("kvault: listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("kvault serve never printed its address; stderr:\n{}", stderr.lock().unwrap());
            }
        };
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
        Server { child, base, stderr, client }
    }

    pub fn wait_healthy(&self, limit: Duration) {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(r) = self.client.get(self.url("/health")).send() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not healthy after {limit:?}; stderr:\n{}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn host_port(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// POSTs JSON; returns the status and the parsed body (Null if it is not JSON).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(body).send().expect("request sent");
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().expect("request sent");
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().expect("request sent");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// POSTs with `stream: true` and returns every `data:` payload (including `[DONE]`).
    pub fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self.client.post(self.url(path)).json(body).send().expect("request sent");
        assert_eq!(r.status(), 200, "streaming request refused");
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        let text = r.text().unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "stream must end with [DONE]: {text}");
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| f.strip_prefix("data: ").unwrap_or_else(|| panic!("frame without `data: `: {f:?}")).to_string())
            .collect()
    }

    /// One sample from /metrics (a line `name value`, or `name{labels} value` when `name`
    /// includes the labels).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits until nothing runs or waits and every KV block is free.
    pub fn wait_idle(&self, limit: Duration) {
        let t = Instant::now();
        loop {
            let running = self.metric("kvault:num_requests_running");
            let waiting = self.metric("kvault:num_requests_waiting");
            let kv = self.metric("kvault:kv_cache_usage_perc");
            if running == Some(0.0) && waiting == Some(0.0) && kv == Some(0.0) {
                return;
            }
            if t.elapsed() > limit {
                panic!("server not idle after {limit:?}: running {running:?} waiting {waiting:?} kv {kv:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(ok.success());
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if t.elapsed() > limit {
                panic!("kvault serve still running {limit:?} after SIGTERM; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 streaming request on its own connection, for tests that must cut the
/// connection mid-response. Returns the socket after the response headers and first body
/// bytes have arrived (the request is running by then).
pub fn open_stream(host_port: &str, path: &str, body: &Value) -> (TcpStream, String) {
    let mut sock = TcpStream::connect(host_port).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.to_string();
    write!(sock, "POST {path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("data: ") {
        let n = sock.read(&mut buf).expect("response bytes");
        assert!(n > 0, "connection closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (sock, seen)
}

/// Reads a raw response to its end.
pub fn read_to_end(mut sock: TcpStream, mut seen: String) -> String {
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    seen.push_str(&String::from_utf8_lossy(&rest));
    seen
}

/// `{"error": {"message", "type", "param", "code"}}` with a non-empty message.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_param: Option<&str>, context: &str) {
    assert_eq!(status, want_status, "{context}: {body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{context}: message: {body}");
    assert!(e["type"].is_string(), "{context}: type: {body}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{context}: param and code keys: {body}");
    if let Some(p) = want_param {
        assert_eq!(e["param"], p, "{context}: {body}");
    }
}

pub fn text_of_chunks(frames: &[String], field: impl Fn(&Value) -> Option<String>) -> String {
    frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .flat_map(|v| v["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| field(&c))
        .collect()
}

/// The python of the venv with selenium and schemathesis (scripts/install-web-test-deps.sh,
/// exported by scripts/test.sh as KVAULT_WEB_TEST_PYTHON). Missing is a failure, not a skip.
pub fn web_python() -> PathBuf {
    let path = match std::env::var_os("KVAULT_WEB_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/kvault/web-venv/bin/python"),
    };
    assert!(
        path.is_file(),
        "no Python with selenium and schemathesis at {} (set KVAULT_WEB_TEST_PYTHON); create it with scripts/install-web-test-deps.sh",
        path.display()
    );
    path
}

/// A fresh directory for a test's artifacts (screenshots, reports) under the target dir.
pub fn artifacts(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}
