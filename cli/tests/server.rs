//! `ember serve` on the real model, on 127.0.0.1 with an ephemeral port:
//! - the official `openai` Python client (installed by scripts/test.sh) drives chat and
//!   completions, streamed and not, `n = 2`, stop strings, a JSON schema, 16 concurrent
//!   streaming clients (greedy outputs equal to `ember generate`'s), a disconnect mid-stream
//!   (blocks freed, seen in `/metrics`), malformed and oversize requests, the API key
//!   (tests/server/openai_client.py);
//! - raw sockets check what a client library would not send: broken HTTP, unknown paths and
//!   methods, a full queue (503 with `Retry-After`).

#[path = "support/cli.rs"]
mod cli;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cli::{ember, repo, tmp};
use serde_json::{json, Value};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A running `ember serve`, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["serve", "-m", MODEL, "--port", "0", "--ctx", "1024"])
        .args(extra)
        .current_dir(repo())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // "ember serve: NAME on http://127.0.0.1:PORT (...)"
    let port = loop {
        let line = lines
            .next()
            .expect("ember serve exited before listening")
            .unwrap();
        if let Some(at) = line.find("http://127.0.0.1:") {
            let rest = &line[at + "http://127.0.0.1:".len()..];
            break rest[..rest.find(' ').unwrap()].parse().unwrap();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, port }
}

/// Send raw bytes, return the whole response (the server closes after errors).
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn post(path: &str, body: &Value, close: bool) -> Vec<u8> {
    let b = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{b}",
        b.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

#[test]
fn openai_client_against_ember_serve() {
    assert!(
        repo().join(MODEL).exists(),
        "{MODEL} missing: run scripts/fetch-model.sh"
    );
    let n = 12;
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village,",
        "The three primary colors are",
    ];
    let mut completions = serde_json::Map::new();
    for p in prompts {
        let o = ember(&[
            "generate",
            "-m",
            MODEL,
            "-p",
            p,
            "-n",
            &n.to_string(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", cli::stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        completions.insert(p.into(), v["text"].clone());
    }
    let q = "What is the capital of France?";
    let o = ember(&["chat", "-m", MODEL, "-p", q, "-n", &n.to_string()]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    let chat = String::from_utf8(o.stdout).unwrap();
    let chat = chat.strip_suffix('\n').unwrap();
    let expected = tmp("server-expected.json");
    std::fs::write(
        &expected,
        json!({"completions": completions, "chat": {"prompt": q, "text": chat}, "max_tokens": n})
            .to_string(),
    )
    .unwrap();

    let server = serve(&[
        "--api-key",
        "test-key",
        "--max-body",
        "65536",
        "--max-seqs",
        "16",
    ]);
    let out = Command::new("python3")
        .arg(repo().join("tests/server/openai_client.py"))
        .arg(format!("http://127.0.0.1:{}", server.port))
        .arg("test-key")
        .arg(&expected)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "openai client checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn raw_http_errors_and_a_full_queue() {
    assert!(
        repo().join(MODEL).exists(),
        "{MODEL} missing: run scripts/fetch-model.sh"
    );
    let server = serve(&["--max-seqs", "1", "--max-queue", "1"]);
    let port = server.port;
    // Broken HTTP, unknown paths and methods, oversized heads, chunked bodies.
    let r = raw(port, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(port, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 404") && r.contains("\"error\""),
        "{r}"
    );
    let r = raw(
        port,
        b"GET /v1/completions HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let big = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = raw(port, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let r = raw(
        port,
        b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 411"), "{r}");
    let r = raw(
        port,
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Keep-alive: two requests on one connection.
    let two = [
        &b"GET /health HTTP/1.1\r\n\r\n"[..],
        b"GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    let r = raw(port, &two);
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");

    // A full queue: one sequence runs, one waits, the next is refused with Retry-After.
    let long = json!({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "stream": true});
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    a.write_all(&post("/v1/completions", &long, true)).unwrap();
    let mut first = [0u8; 256];
    let got = a.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..got]).starts_with("HTTP/1.1 200"));
    let mut b = TcpStream::connect(("127.0.0.1", port)).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let short = json!({"prompt": "Hello", "max_tokens": 2});
    b.write_all(&post("/v1/completions", &short, true)).unwrap();
    // B is queued behind A: wait until the server counts it as waiting.
    let metrics = |port| raw(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
    for _ in 0..200 {
        if metrics(port).contains("ember_requests_waiting 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = raw(port, &post("/v1/completions", &short, true));
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("Retry-After: 1"),
        "{r}"
    );
    // A goes away: its blocks are freed, B runs.
    drop(a);
    let mut rb = String::new();
    b.read_to_string(&mut rb).unwrap();
    assert!(
        rb.starts_with("HTTP/1.1 200") && rb.contains("\"text_completion\""),
        "{rb}"
    );
    let m = metrics(port);
    assert!(
        m.contains("ember_kv_blocks_used 0") && m.contains("ember_requests_cancelled_total 1"),
        "{m}"
    );
    assert!(m.contains("ember_requests_rejected_total 1"), "{m}");
}

/// `--draft-model`: every request drafts with it, and the text is plain decoding's.
#[test]
fn serve_with_a_draft_model_keeps_the_output() {
    assert!(
        repo().join(MODEL).exists(),
        "{MODEL} missing: run scripts/fetch-model.sh"
    );
    let prompt = "The capital of France is";
    let o = ember(&["generate", "-m", MODEL, "-p", prompt, "-n", "16", "--json"]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    let want: Value = serde_json::from_slice(&o.stdout).unwrap();
    let draft = tmp("serve-draft-2-layers.gguf");
    let o = ember(&["convert", "--layers", "2", "-o", draft.to_str().unwrap()]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    let server = serve(&["--draft-model", draft.to_str().unwrap(), "--draft-k", "4"]);
    let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0});
    let r = raw(server.port, &post("/v1/completions", &body, true));
    let json_at = r.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&r[json_at..]).unwrap();
    assert_eq!(v["choices"][0]["text"], want["text"], "{r}");
}

/// `--context-shift` (llama-server's): a completion longer than the context runs to its
/// `max_tokens` with the text `ember generate --context-policy shift` gives; without it the
/// same request is a 400 `context_length_exceeded`.
#[test]
fn serve_with_context_shift_goes_past_the_context() {
    let prompt = "Write a long story about a lighthouse keeper.";
    let o = ember(&[
        "generate",
        "-m",
        MODEL,
        "-p",
        prompt,
        "-n",
        "200",
        "--ctx",
        "128",
        "--ignore-eos",
        "--context-policy",
        "shift",
        "--json",
    ]);
    assert!(o.status.success(), "{}", cli::stderr(&o));
    let want: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(want["shifted_tokens"].as_u64().unwrap() > 0);
    let body = json!({"prompt": prompt, "max_tokens": 200, "temperature": 0, "ignore_eos": true});
    let server = serve(&["--ctx", "128", "--context-shift"]);
    let r = raw(server.port, &post("/v1/completions", &body, true));
    let json_at = r.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&r[json_at..]).unwrap();
    assert_eq!(v["choices"][0]["text"], want["text"], "{r}");
    assert_eq!(v["usage"]["completion_tokens"], 200, "{r}");
    drop(server);
    let server = serve(&["--ctx", "128"]);
    let r = raw(server.port, &post("/v1/completions", &body, true));
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("context_length_exceeded"),
        "{r}"
    );
}
