//! `ember serve`: an OpenAI-compatible HTTP server on the engine.
//!
//! Threads: one accepts connections; one per connection reads its requests (HTTP/1.1,
//! keep-alive), parses them, renders chat templates and tokenizes (with the engine's shared
//! tokenizer, in parallel with the engine), then hands the request to the engine thread
//! (`worker.rs`), which owns the engine and batches every client's requests continuously.
//! The connection thread streams the text back as it comes (Server-Sent Events) or answers
//! once at the end; if its client goes away, the request is cancelled and its KV blocks are
//! freed at once.
//!
//! Why threads and not an async runtime: a device serves a handful of clients; a thread per
//! connection (bounded by `--max-connections`) costs a stack each, and the server adds one
//! small dependency (`httparse`) instead of tokio and hyper's several dozen crates, which
//! would double the binary's build time on a 2-core machine. The measured load-test figures
//! are in BENCHMARKS.md.

mod api;
mod http;
mod worker;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember::engine::Engine;
use serde_json::json;

use crate::commands::{backend_kind, load_model, report_backend, usage, CliError, CliResult};
use crate::flags::ServeArgs;
use api::{Kind, ModelInfo};
use worker::{Cmd, Event, Snapshot};

/// A connection idle this long between requests is closed; a request must arrive whole
/// within `request` of its first byte (else 408).
const DEADLINES: http::Deadlines = http::Deadlines {
    idle: Duration::from_secs(60),
    request: Duration::from_secs(30),
};
/// The socket's read timeout: how often a blocked read wakes up to check the deadlines.
const READ_TICK: Duration = Duration::from_secs(1);
/// A client that takes longer than this to accept a response's bytes is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a connection waiting for its request's tokens checks that its client is there.
const POLL: Duration = Duration::from_millis(100);

struct Ctx {
    info: ModelInfo,
    api_key: Option<String>,
    max_body: usize,
    commands: Sender<Cmd>,
    next_key: AtomicU64,
    started: u64,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn serve(a: &ServeArgs) -> CliResult {
    let host = a.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    let port = a.port.unwrap_or(8080);
    let max_queue = a.max_queue.unwrap_or(64);
    let max_body = a.max_body.unwrap_or(1 << 20);
    let max_conns = a.max_connections.unwrap_or(64);
    if max_conns == 0 || max_body == 0 {
        return Err(usage(
            "--max-connections and --max-body must be at least 1".into(),
        ));
    }
    let api_key = a.api_key.clone();
    if api_key.as_deref() == Some("") {
        return Err(usage("--api-key must not be empty".into()));
    }
    let mut cfg = crate::batch::engine_config(&a.common, &a.engine, 16)?;
    // Room in the request table for every running sequence and the whole queue.
    cfg.max_requests = (cfg.max_seqs + max_queue).clamp(1, ember::engine::MAX_REQUESTS);
    let max_seqs = cfg.max_seqs;
    let model = load_model(&a.common)?;
    let name = match &a.alias {
        Some(n) => n.clone(),
        None => model
            .file
            .get_str("general.name")
            .ok()
            .flatten()
            .map(str::to_string)
            .unwrap_or_else(|| "ember".into()),
    };
    let template = match &a.chat_template {
        Some(p) => Some(crate::input::read_text(
            p,
            crate::input::MAX_TEMPLATE_BYTES,
            "--chat-template",
        )?),
        None => model
            .file
            .get_str("tokenizer.chat_template")?
            .map(str::to_string),
    };
    // With a draft model every request drafts with it (as llama-server's --model-draft).
    let draft_k = a.draft_k.unwrap_or(8);
    if !(1..=ember::engine::MAX_DRAFT).contains(&draft_k) {
        return Err(usage(format!("--draft-k {draft_k}: must be 1..=16")));
    }
    let mut engine = Engine::with_draft_rows(model, cfg, backend_kind(&a.common)?)?;
    report_backend(&a.common, engine.backend());
    crate::batch::draft_model(a.draft_model.as_deref(), &mut engine)?;
    let speculative = engine
        .has_draft_model()
        .then_some(ember::engine::Speculative {
            k: draft_k,
            drafter: ember::engine::Drafter::Model,
        });
    // As llama-server's --context-shift: every request may run past the end of the context.
    let context_shift = if a.context_shift {
        if speculative.is_some() {
            return Err(usage(
                "--context-shift and --draft-model do not go together (a shift would have to \
                 move the drafts too)"
                    .into(),
            ));
        }
        let shift = ember::engine::ContextShift {
            keep: a.keep.unwrap_or(0),
        };
        engine
            .check_shift(&shift)
            .map_err(|e| usage(format!("--keep: {e}")))?;
        Some(shift)
    } else if a.keep.is_some() {
        return Err(usage("--keep goes with --context-shift".into()));
    } else {
        None
    };
    let tokenizer = engine.shared_tokenizer();
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or("")
            .to_string()
    };
    let info = ModelInfo {
        name,
        bos_text: text(tokenizer.bos()),
        eos_text: text(tokenizer.eos()),
        tokenizer: Arc::clone(&tokenizer),
        template,
        n_ctx: engine.n_ctx(),
        speculative,
        context_shift,
    };
    let listener = TcpListener::bind((host.as_str(), port))
        .map_err(|e| CliError::Run(format!("cannot listen on {host}:{port}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Run(format!("cannot listen on {host}:{port}: {e}")))?;
    eprintln!(
        "ember serve: {} on http://{addr} ({} sequences at once, context {}, {} KV blocks)",
        info.name,
        max_seqs,
        info.n_ctx,
        engine.kv_blocks()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("ember-engine".into())
        .spawn(move || worker::run(engine, rx, max_queue))
        .map_err(|e| CliError::Run(format!("cannot start the engine thread: {e}")))?;
    let ctx = Arc::new(Ctx {
        info,
        api_key,
        max_body,
        commands: tx,
        next_key: AtomicU64::new(1),
        started: now_s(),
    });
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else {
            // Out of descriptors or a connection reset before it was accepted: go on.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if active.load(Ordering::Acquire) >= max_conns {
            busy(&mut stream, "too many connections");
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (ctx, active2) = (Arc::clone(&ctx), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("ember-http".into())
            .spawn(move || {
                connection(stream, &ctx);
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
    Ok(())
}

fn busy(stream: &mut TcpStream, why: &str) {
    let body = api::error_body(why, "server_error", None, Some("overloaded"));
    let _ = http::respond(
        stream,
        503,
        "application/json",
        &body,
        false,
        "Retry-After: 1\r\n",
    );
}

/// Serve one connection's requests until it closes, errs or idles.
fn connection(mut stream: TcpStream, ctx: &Ctx) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(READ_TICK));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut buf = Vec::new();
    loop {
        let req = match http::read_request(&mut stream, &mut buf, ctx.max_body, DEADLINES) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(bad) => {
                let body = api::error_body(&bad.message, "invalid_request_error", None, None);
                let _ = http::respond(
                    &mut stream,
                    bad.status,
                    "application/json",
                    &body,
                    false,
                    "",
                );
                linger(stream);
                return;
            }
        };
        let keep = req.keep_alive;
        if route(&mut stream, &req, ctx).is_err() || !keep {
            return;
        }
    }
}

/// After an error answer: close our side, then read (and drop) what the client still sends
/// for a moment, so that it reads the answer instead of a connection reset.
fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 8192];
    let mut total = 0usize;
    while let Ok(n @ 1..) = std::io::Read::read(&mut stream, &mut sink) {
        total += n;
        if total > 16 << 20 {
            break;
        }
    }
}

type Io = std::io::Result<()>;

fn json_response(stream: &mut TcpStream, status: u16, v: &serde_json::Value, keep: bool) -> Io {
    http::respond(
        stream,
        status,
        "application/json",
        v.to_string().as_bytes(),
        keep,
        "",
    )
}

fn error(stream: &mut TcpStream, status: u16, msg: &str, param: Option<&str>, keep: bool) -> Io {
    let kind = match status {
        401 => "authentication_error",
        404 => "not_found_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    let body = api::error_body(msg, kind, param, None);
    http::respond(stream, status, "application/json", &body, keep, "")
}

/// Constant-time comparison of the bearer token (no early exit on the first differing byte).
fn authorized(req: &http::Request, key: &Option<String>) -> bool {
    let Some(key) = key else { return true };
    let Some(given) = req
        .authorization
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route(stream: &mut TcpStream, req: &http::Request, ctx: &Ctx) -> Io {
    let keep = req.keep_alive;
    let endpoint = match req.path.as_str() {
        "/health" => ("GET", None),
        "/v1/models" => ("GET", None),
        "/metrics" => ("GET", None),
        "/v1/chat/completions" => ("POST", Some(Kind::Chat)),
        "/v1/completions" => ("POST", Some(Kind::Completion)),
        p => return error(stream, 404, &format!("no endpoint {p}"), None, keep),
    };
    if req.method != endpoint.0 {
        let msg = format!("{} takes {}, not {}", req.path, endpoint.0, req.method);
        return error(stream, 405, &msg, None, keep);
    }
    if req.path != "/health" && !authorized(req, &ctx.api_key) {
        return error(
            stream,
            401,
            "a valid API key is required (Authorization: Bearer KEY)",
            None,
            keep,
        );
    }
    match (req.path.as_str(), endpoint.1) {
        ("/health", _) => json_response(stream, 200, &json!({"status": "ok"}), keep),
        ("/v1/models", _) => {
            let m = json!({"object": "list", "data": [{"id": ctx.info.name, "object": "model",
                           "created": ctx.started, "owned_by": "ember"}]});
            json_response(stream, 200, &m, keep)
        }
        ("/metrics", _) => {
            let (tx, rx) = mpsc::channel();
            let snap = ctx
                .commands
                .send(Cmd::Metrics(tx))
                .ok()
                .and_then(|()| rx.recv().ok());
            match snap {
                Some(s) => http::respond(
                    stream,
                    200,
                    "text/plain; version=0.0.4",
                    metrics_text(&s).as_bytes(),
                    keep,
                    "",
                ),
                None => error(stream, 500, "the engine has stopped", None, false),
            }
        }
        (_, Some(kind)) => completion(stream, req, kind, ctx),
        _ => error(stream, 404, "no such endpoint", None, keep),
    }
}

/// Cancels its request when dropped before the request finished (the client went away, or
/// writing to it failed).
struct CancelGuard<'a> {
    key: u64,
    commands: &'a Sender<Cmd>,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.send(Cmd::Cancel(self.key));
        }
    }
}

/// The next event of the request, or `None` when the client has gone away (or the engine
/// thread has stopped).
fn next_event(stream: &TcpStream, events: &mpsc::Receiver<Event>) -> Option<Event> {
    loop {
        match events.recv_timeout(POLL) {
            Ok(e) => return Some(e),
            Err(RecvTimeoutError::Timeout) => {
                if http::peer_closed(stream) {
                    return None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn random_seed(key: u64) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of the time and the request number.
    let mut z = t ^ key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn completion(stream: &mut TcpStream, req: &http::Request, kind: Kind, ctx: &Ctx) -> Io {
    let keep = req.keep_alive;
    let key = ctx.next_key.fetch_add(1, Ordering::Relaxed);
    let parsed = match api::parse(&req.body, kind, &ctx.info, random_seed(key)) {
        Ok(p) => p,
        Err(inv) => {
            let body = api::error_body(&inv.message, "invalid_request_error", inv.param, inv.code);
            return http::respond(stream, 400, "application/json", &body, keep, "");
        }
    };
    let n_prompt = parsed.prompt.len();
    let n = parsed.params.n;
    let (etx, events) = mpsc::channel();
    let submitted = ctx.commands.send(Cmd::Submit {
        key,
        prompt: parsed.prompt,
        params: Box::new(parsed.params),
        events: etx,
    });
    if submitted.is_err() {
        return error(stream, 500, "the engine has stopped", None, false);
    }
    let mut guard = CancelGuard {
        key,
        commands: &ctx.commands,
        armed: true,
    };
    match next_event(stream, &events) {
        Some(Event::Accepted) => {}
        Some(Event::Invalid(e)) => {
            guard.armed = false;
            let code = matches!(
                e,
                ember::Error::ContextFull { .. }
                    | ember::Error::PromptTooLong { .. }
                    | ember::Error::KvCacheFull { .. }
            )
            .then_some("context_length_exceeded");
            let body = api::error_body(&e.to_string(), "invalid_request_error", None, code);
            return http::respond(stream, 400, "application/json", &body, keep, "");
        }
        Some(Event::Busy) => {
            guard.armed = false;
            let body = api::error_body(
                "the server is busy: too many requests are waiting; retry later",
                "server_error",
                None,
                Some("overloaded"),
            );
            return http::respond(
                stream,
                503,
                "application/json",
                &body,
                keep,
                "Retry-After: 1\r\n",
            );
        }
        _ => return Err(std::io::ErrorKind::ConnectionAborted.into()),
    }
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{key}"),
        Kind::Completion => format!("cmpl-{key}"),
    };
    let head = api::Head {
        id: &id,
        created: now_s(),
        model: &ctx.info.name,
        kind,
    };
    if !parsed.stream {
        return match next_event_done(stream, &events) {
            Some(done) => {
                guard.armed = false;
                if let Some(err) = done.iter().find_map(|f| f.error.as_deref()) {
                    return error(stream, 500, err, None, keep);
                }
                let completion: usize = done.iter().map(|f| f.tokens).sum();
                let choices: Vec<(String, &str)> = done
                    .into_iter()
                    .map(|f| (f.text, api::finish_reason(f.finish)))
                    .collect();
                let v = head.response(&choices, api::usage(n_prompt, completion));
                json_response(stream, 200, &v, keep)
            }
            None => Err(std::io::ErrorKind::ConnectionAborted.into()),
        };
    }
    let mut sse = http::EventStream::start(stream, keep)?;
    if kind == Kind::Chat {
        for i in 0..n {
            sse.event(&head.chunk(i, Some(""), true, None).to_string())?;
        }
    }
    loop {
        let Some(ev) = next_event(sse.stream(), &events) else {
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        };
        match ev {
            Event::Delta { index, text } => {
                sse.event(&head.chunk(index, Some(&text), false, None).to_string())?
            }
            Event::Done(done) => {
                guard.armed = false;
                let completion: usize = done.iter().map(|f| f.tokens).sum();
                for (i, f) in done.iter().enumerate() {
                    if let Some(err) = &f.error {
                        let e = json!({"error": {"message": err, "type": "server_error",
                                                 "param": null, "code": null}});
                        sse.event(&e.to_string())?;
                    } else {
                        let reason = api::finish_reason(f.finish);
                        sse.event(&head.chunk(i, None, false, Some(reason)).to_string())?;
                    }
                }
                if parsed.include_usage {
                    let u = head.usage_chunk(api::usage(n_prompt, completion));
                    sse.event(&u.to_string())?;
                }
                sse.event("[DONE]")?;
                return sse.finish();
            }
            _ => return Err(std::io::ErrorKind::ConnectionAborted.into()),
        }
    }
}

/// Wait for the end of a request (deltas dropped: a whole response is built from the final
/// texts).
fn next_event_done(
    stream: &TcpStream,
    events: &mpsc::Receiver<Event>,
) -> Option<Vec<worker::Finished>> {
    loop {
        match next_event(stream, events)? {
            Event::Done(d) => return Some(d),
            Event::Delta { .. } => {}
            _ => return None,
        }
    }
}

/// The Prometheus text exposition of `/metrics`.
fn metrics_text(s: &Snapshot) -> String {
    let m = &s.engine;
    let rows: [(&str, &str, &str, f64); 14] = [
        (
            "ember_kv_blocks_total",
            "gauge",
            "Usable blocks in the KV arena.",
            m.blocks_total as f64,
        ),
        (
            "ember_kv_blocks_used",
            "gauge",
            "KV blocks held by sequences.",
            m.blocks_used as f64,
        ),
        (
            "ember_kv_blocks_free",
            "gauge",
            "KV blocks free (cached ones included).",
            m.blocks_free as f64,
        ),
        (
            "ember_kv_blocks_cached",
            "gauge",
            "Free KV blocks that still hold a cached prefix.",
            m.blocks_cached as f64,
        ),
        (
            "ember_requests_running",
            "gauge",
            "Requests generating.",
            s.running as f64,
        ),
        (
            "ember_requests_waiting",
            "gauge",
            "Requests queued, not yet generating.",
            s.waiting as f64,
        ),
        (
            "ember_requests_total",
            "counter",
            "Completion requests received by the engine.",
            s.requests_total as f64,
        ),
        (
            "ember_requests_rejected_total",
            "counter",
            "Requests refused (busy or invalid).",
            s.rejected_total as f64,
        ),
        (
            "ember_requests_cancelled_total",
            "counter",
            "Requests cancelled because their client went away.",
            s.cancelled_total as f64,
        ),
        (
            "ember_tokens_generated_total",
            "counter",
            "Tokens sampled.",
            m.tokens_generated as f64,
        ),
        (
            "ember_tokens_computed_total",
            "counter",
            "Tokens computed by forward passes.",
            m.tokens_computed as f64,
        ),
        (
            "ember_prefix_hit_tokens_total",
            "counter",
            "Prompt tokens served from the prefix cache.",
            m.prefix_hit_tokens as f64,
        ),
        (
            "ember_preemptions_total",
            "counter",
            "Sequences preempted for room in the arena.",
            m.preemptions as f64,
        ),
        (
            "ember_generation_tokens_per_second",
            "gauge",
            "Tokens sampled per second of engine step time.",
            m.generated_tok_s(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}
