//! `kvault serve` over its lifetime: 503 while loading, clients that vanish mid-request
//! (their requests are aborted and their KV blocks freed), many concurrent streams, and
//! SIGTERM (stop accepting, end in-flight requests, exit 0).

mod serve_support;

use std::io::Read;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use serve_support::{open_stream, read_to_end, smollm2, Server};

/// Generated-token counter now.
fn generated(s: &Server) -> f64 {
    s.metric("kvault:generation_tokens_total").expect("generation counter")
}

#[test]
fn health_is_503_while_the_model_loads_then_200() {
    // Dequantizing the GGUF to f32 takes long enough to observe the loading state.
    let s = Server::start_listening(&["--model", &smollm2(), "--dtype", "f32"]);
    let r = s.client().get(s.url("/health")).send().unwrap();
    assert_eq!(r.status(), 503, "listener is up before the model: /health must say loading");
    let (status, body) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 1}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "model_loading");
    s.wait_healthy(Duration::from_secs(120));
    let (status, _) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 1}));
    assert_eq!(status, 200);
}

#[test]
fn a_client_that_disconnects_mid_stream_aborts_its_request_and_frees_its_blocks() {
    let s = Server::start(&["--model", &smollm2()]);
    let max_tokens = 300;
    let req = json!({"prompt": "Write a long story about a dragon.", "max_tokens": max_tokens, "ignore_eos": true, "stream": true});
    let (sock, _) = open_stream(&s.host_port(), "/v1/completions", &req);
    assert!(s.metric("kvault:kv_cache_usage_perc").unwrap() > 0.0, "the running request holds blocks");
    drop(sock);
    s.wait_idle(Duration::from_secs(30));
    let made = generated(&s);
    assert!(made < max_tokens as f64, "the request was aborted, not run to the end ({made} tokens)");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(generated(&s), made, "nothing is generated after the abort");
}

#[test]
fn a_client_that_disconnects_while_waiting_for_a_non_streaming_response_aborts_it() {
    let s = Server::start(&["--model", &smollm2()]);
    let max_tokens = 300;
    let body = json!({"prompt": "Write a long story about a dragon.", "max_tokens": max_tokens, "ignore_eos": true}).to_string();
    let mut sock = TcpStream::connect(s.host_port()).unwrap();
    use std::io::Write;
    write!(sock, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let t = Instant::now();
    while s.metric("kvault:num_requests_running") != Some(1.0) {
        assert!(t.elapsed() < Duration::from_secs(30), "the request never started");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    drop(sock);
    s.wait_idle(Duration::from_secs(30));
    assert!(generated(&s) < max_tokens as f64, "aborted before the end ({} tokens)", generated(&s));
}

#[test]
fn sixty_four_streams_with_a_third_disconnecting_leave_the_server_healthy_and_idle() {
    let s = Server::start(&[]);
    let host = s.host_port();
    let quitters = pseudo_random_subset(64, 21, 0x5eed);
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let host = host.clone();
            let quits = quitters.contains(&i);
            thread::spawn(move || {
                let req = json!({"prompt": format!("Once upon a time {i}"), "max_tokens": 200, "ignore_eos": true, "stream": true, "seed": i});
                let (sock, seen) = open_stream(&host, "/v1/completions", &req);
                if quits {
                    drop(sock);
                    None
                } else {
                    Some(read_to_end(sock, seen))
                }
            })
        })
        .collect();
    let mut finished = 0;
    for c in clients {
        if let Some(text) = c.join().expect("client thread") {
            assert!(text.contains("\"finish_reason\":\"length\"") && text.contains("data: [DONE]"), "complete stream: {text}");
            finished += 1;
        }
    }
    assert_eq!(finished, 64 - 21);
    s.wait_idle(Duration::from_secs(60));
    assert_eq!(s.get("/health").0, 200);
    let (status, _) = s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 4}));
    assert_eq!(status, 200, "still serving");
}

#[test]
fn sigterm_with_no_requests_exits_zero() {
    let mut s = Server::start(&[]);
    // A served request leaves an idle keep-alive connection, which must not hold the exit.
    assert_eq!(s.post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2})).0, 200);
    let t = Instant::now();
    let status = s.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}; stderr:\n{}", s.stderr());
    assert!(t.elapsed() < Duration::from_secs(5), "idle shutdown took {:?}", t.elapsed());
    // The stderr reader thread may lag the exit by a moment.
    thread::sleep(Duration::from_millis(200));
    let err = s.stderr();
    assert!(err.contains("kvault: stopped") && !err.contains("panicked"), "{err}");
}

#[test]
fn sigterm_ends_in_flight_streams_and_exits_zero() {
    let mut s = Server::start(&["--model", &smollm2(), "--shutdown-timeout", "1"]);
    let req = json!({"prompt": "Write a long story.", "max_tokens": 1000, "ignore_eos": true, "stream": true});
    let (mut sock, mut seen) = open_stream(&s.host_port(), "/v1/completions", &req);
    let t = Instant::now();
    let status = s.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}; stderr:\n{}", s.stderr());
    assert!(t.elapsed() < Duration::from_secs(15), "shutdown took {:?}", t.elapsed());
    let mut rest = String::new();
    let _ = sock.read_to_string(&mut rest);
    seen.push_str(&rest);
    assert!(seen.contains("\"finish_reason\":\"abort\""), "the stream was ended by the server, not cut: {seen}");
    assert!(seen.contains("data: [DONE]"));
    assert!(s.stderr().contains("kvault: stopped"), "{}", s.stderr());
    // The port no longer accepts connections.
    assert!(TcpStream::connect(s.host_port()).is_err());
}

/// `k` distinct indices below `n`, chosen by a fixed-seed xorshift (failures reproduce).
fn pseudo_random_subset(n: usize, k: usize, mut seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        all.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    all.truncate(k);
    all
}
