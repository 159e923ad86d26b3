//! The C ABI driven by random call sequences, in caller-driven mode, on the tiny synthetic
//! model: submit (text, tokens, chat) with arbitrary parameters, step, next, next_text, cancel,
//! release, stats, tokenize, detokenize and stop, on live, released and made-up ids; prompt
//! cache files saved from requests and loaded back whole or damaged (a flipped byte or a cut is
//! always `EMBER_ERR_PROMPT_CACHE`); model info once.
//!
//! Properties: every call returns one of the codes its documentation lists for the situation
//! (never `EMBER_ERR_INTERNAL` or `EMBER_ERR_POISONED`: a caught panic is a bug, and
//! libFuzzer's panic hook aborts on it anyway); events are well formed (token ids inside the
//! vocabulary, UTF-8 text, a finish reason exactly on `EMBER_EVENT_FINISHED`); after the
//! sequence, stepping finishes every request in a bounded number of steps, each ends with a
//! valid finish reason, and once all are released `ember_get_stats` shows no request and an
//! empty arena (every block free).
#![no_main]

use std::collections::HashMap;
use std::ffi::c_char;
use std::ptr;

use arbitrary::Arbitrary;
use ember_ffi::*;
use libfuzzer_sys::fuzz_target;

use ember_result::*;

#[derive(Arbitrary, Debug)]
struct Config {
    n_ctx: u8,
    kv_blocks: u8,
    block_size: u8,
    max_seqs: u8,
    max_batch_tokens: u8,
    max_requests: u8,
    prefix_caching: bool,
    /// Bit `i` replaces size field `i` with a value near its type's maximum (see `extreme`).
    extreme: u8,
    /// How far below the maximum.
    below_max: u8,
}

#[derive(Arbitrary, Debug)]
struct Params {
    max_tokens: u8,
    temperature: f32,
    top_k: u8,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    repeat_last_n: u8,
    seed: u64,
    stop: Vec<Vec<u8>>,
    stop_ids: Vec<u16>,
    ignore_eos: bool,
    /// Parallel samples (`% 6`: 0 means 1; above the config's `max_seqs` is refused).
    n: u8,
    /// Keep the sampling parameters in range (the raw ones are mostly rejected).
    sane: bool,
    /// `max_tokens` near `u32::MAX` (refused as too large, never wrapped) instead of 0..=16.
    huge_max_tokens: bool,
}

/// Which request an operation names: one submitted in this run (live or released), or a
/// made-up id.
#[derive(Arbitrary, Debug)]
enum Req {
    Submitted(u8),
    MadeUp(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Submit(Vec<u8>, Params),
    SubmitTokens(Vec<u16>, Params),
    SubmitChat(Vec<(Vec<u8>, Vec<u8>)>, Params),
    Step,
    /// `ember_next_seq` of sequence `u8 % 4`.
    Next(Req, u8),
    NextText(Req, u8),
    Cancel(Req),
    Release(Req),
    Stats,
    Tokenize(Vec<u8>, bool, bool, u8),
    Detokenize(Vec<u16>, u8),
    Stop,
    /// `ember_prompt_cache_save` of a request to this process's cache file.
    SaveCache(Req),
    /// `ember_prompt_cache_load` of that file (missing until a save wrote it), damaged first:
    /// `flip.1` xor-ed into byte `flip.0 % len`, then cut to `cut % (len + 1)` bytes.
    LoadCache {
        flip: Option<(u32, u8)>,
        cut: Option<u32>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

/// NUL-terminated copy of `b`, cut at its first NUL (what C would see).
fn cstr(b: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = b.iter().copied().take_while(|&c| c != 0).collect();
    v.push(0);
    v
}

fn check(code: ember_result, allowed: &[ember_result], what: &str) {
    assert!(
        allowed.contains(&code),
        "{what} returned {code:?}: {}",
        // SAFETY: a static or thread-local NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(ember_last_error()) }.to_string_lossy()
    );
}

const N_VOCAB: u32 = 272;

struct Driver {
    rt: *mut ember_runtime,
    /// Every id submitted successfully, with whether it is released.
    ids: Vec<(ember_request_id, bool)>,
    /// Sequences (`params.n`, 0 taken as 1) of each id submitted successfully.
    n: HashMap<ember_request_id, u32>,
    stopped: bool,
    prefix_caching: bool,
}

/// This process's prompt cache file (`.damaged`: the copy a load reads).
fn cache_path(suffix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "ember-fuzz-capi-{}.kvc{suffix}",
        std::process::id()
    ))
}

impl Driver {
    fn id(&self, r: &Req) -> ember_request_id {
        match *r {
            Req::Submitted(i) if !self.ids.is_empty() => self.ids[i as usize % self.ids.len()].0,
            Req::Submitted(i) => i as u64,
            Req::MadeUp(v) => v,
        }
    }

    fn known_live(&self, id: ember_request_id) -> bool {
        self.ids.iter().any(|&(i, released)| i == id && !released)
    }

    /// `ember_params` over `p`; the stop strings live in `store` for the call.
    fn params(
        p: &Params,
        store: &mut (Vec<Vec<u8>>, Vec<*const c_char>, Vec<u32>),
    ) -> ember_params {
        let mut e = ember_params_default();
        e.max_tokens = if p.huge_max_tokens {
            u32::MAX - u32::from(p.max_tokens) // EMBER_ERR_TOO_LARGE: checked arithmetic
        } else {
            (p.max_tokens % 17) as u32 // 0 is invalid: checked
        };
        e.temperature = p.temperature;
        e.top_k = p.top_k as u32;
        e.top_p = p.top_p;
        e.min_p = p.min_p;
        e.repeat_penalty = p.repeat_penalty;
        if p.sane {
            let unit = |x: f32| if x.is_finite() { x.abs().fract() } else { 0.5 };
            e.temperature = unit(p.temperature) * 2.0;
            e.top_p = unit(p.top_p);
            e.min_p = unit(p.min_p);
            e.repeat_penalty = 0.5 + unit(p.repeat_penalty);
        }
        e.repeat_last_n = p.repeat_last_n as u32;
        e.seed = p.seed;
        e.ignore_eos = p.ignore_eos;
        e.n = u32::from(p.n % 6);
        // 0 to 3: error, truncate, shift (with a kept prefix that may leave nothing to shift:
        // EMBER_ERR_INVALID_ARGUMENT), and a value that is EMBER_ERR_INVALID_ARGUMENT.
        e.context_policy = u32::from(p.n / 6 % 4);
        e.context_keep = (p.seed >> 8) as u32 % 300;
        store.0 = p.stop.iter().take(4).map(|s| cstr(s)).collect();
        store.1 = store.0.iter().map(|s| s.as_ptr().cast()).collect();
        store.2 = p.stop_ids.iter().take(4).map(|&i| i as u32).collect();
        e.stop = store.1.as_ptr();
        e.n_stop = store.1.len();
        e.stop_ids = store.2.as_ptr();
        e.n_stop_ids = store.2.len();
        // Speculative decoding: 0 (off), 1..=16, and 17 or 18 (EMBER_ERR_INVALID_ARGUMENT).
        e.draft_k = (p.seed % 19) as u32;
        // A grammar now and then: a valid one, or the first stop string's bytes (mostly not
        // GBNF: EMBER_ERR_INVALID_ARGUMENT), or the same text as a JSON schema. Pushed after
        // the stop pointers were taken (moving the inner vectors keeps their buffers).
        let text: Option<Vec<u8>> = match p.n / 18 % 6 {
            1 => Some(cstr(b"root ::= [a-z ]+ \"!\"")),
            2 => p.stop.first().map(|s| cstr(s)),
            _ => None,
        };
        if let Some(t) = text {
            store.0.push(t);
            let ptr = store.0.last().expect("just pushed").as_ptr().cast();
            if p.n % 2 == 0 {
                e.grammar = ptr;
            } else {
                e.json_schema = ptr;
            }
        }
        e
    }

    fn submitted(&mut self, code: ember_result, id: ember_request_id, p: &ember_params) {
        if code == EMBER_OK {
            assert!(!self.ids.iter().any(|&(i, _)| i == id), "id {id} reused");
            self.ids.push((id, false));
            self.n.insert(id, p.n.max(1));
        }
    }

    /// After `ember_stop` a submit fails with `EMBER_ERR_STOPPED` or, since the arguments are
    /// checked first, with the error of a bad argument; never `EMBER_OK`.
    fn submit_codes(&self) -> &'static [ember_result] {
        if self.stopped {
            &[
                EMBER_ERR_STOPPED,
                EMBER_ERR_INVALID_UTF8,
                EMBER_ERR_INVALID_ARGUMENT,
                EMBER_ERR_TOO_LARGE,
                EMBER_ERR_FULL,
                EMBER_ERR_TOKENIZER,
                EMBER_ERR_CHAT_TEMPLATE,
            ]
        } else {
            &[
                EMBER_OK,
                EMBER_ERR_INVALID_UTF8,
                EMBER_ERR_INVALID_ARGUMENT,
                EMBER_ERR_TOO_LARGE,
                EMBER_ERR_FULL,
                EMBER_ERR_TOKENIZER,
                EMBER_ERR_CHAT_TEMPLATE,
            ]
        }
    }

    /// One `ember_next_seq` of sequence `seq`; returns whether that sequence has finished
    /// (`None` for an unknown id or a sequence the request does not have).
    fn next(&self, id: ember_request_id, seq: u32) -> Option<bool> {
        let mut ev = ember_event {
            kind: ember_event_kind::EMBER_EVENT_TOKEN,
            token: 0,
            index: 0,
            text: ptr::null(),
            text_len: 0,
            finish_reason: ember_finish_reason::EMBER_FINISH_NONE,
        };
        // SAFETY: live runtime, writable event.
        let code = unsafe { ember_next_seq(self.rt, id, seq, 0, &mut ev) };
        let live = self.known_live(id);
        if !live {
            check(
                code,
                &[EMBER_ERR_UNKNOWN_REQUEST],
                "ember_next (unknown id)",
            );
            return None;
        }
        let n = self.n.get(&id).copied().unwrap_or(1);
        if seq >= n {
            check(
                code,
                &[EMBER_ERR_INVALID_ARGUMENT],
                "ember_next_seq (no such sequence)",
            );
            return None;
        }
        check(code, &[EMBER_OK, EMBER_ERR_TIMEOUT], "ember_next");
        if code != EMBER_OK {
            return Some(false);
        }
        assert!(!ev.text.is_null());
        // SAFETY: the runtime's NUL-terminated text of `text_len` bytes.
        let text = unsafe { std::slice::from_raw_parts(ev.text.cast::<u8>(), ev.text_len + 1) };
        assert_eq!(text[ev.text_len], 0, "text not NUL-terminated");
        assert!(
            std::str::from_utf8(&text[..ev.text_len]).is_ok(),
            "text not UTF-8"
        );
        match ev.kind {
            ember_event_kind::EMBER_EVENT_TOKEN => {
                assert_eq!(ev.finish_reason, ember_finish_reason::EMBER_FINISH_NONE);
                assert!(ev.token < N_VOCAB, "token {} out of range", ev.token);
                Some(false)
            }
            ember_event_kind::EMBER_EVENT_FINISHED => {
                assert_ne!(ev.finish_reason, ember_finish_reason::EMBER_FINISH_NONE);
                assert_eq!(ev.text_len, 0);
                Some(true)
            }
        }
    }

    fn release(&mut self, id: ember_request_id) {
        // SAFETY: live runtime.
        let code = unsafe { ember_release(self.rt, id) };
        if self.known_live(id) {
            check(code, &[EMBER_OK], "ember_release");
            for e in self.ids.iter_mut().filter(|e| e.0 == id) {
                e.1 = true;
            }
        } else {
            check(
                code,
                &[EMBER_ERR_UNKNOWN_REQUEST],
                "ember_release (unknown id)",
            );
        }
    }

    fn stats(&self) -> ember_stats {
        let mut s = ember_stats::default();
        // SAFETY: live runtime, writable stats.
        check(
            unsafe { ember_get_stats(self.rt, &mut s) },
            &[EMBER_OK],
            "ember_get_stats",
        );
        assert_eq!(s.blocks_used + s.blocks_free, s.blocks_total, "{s:?}");
        assert!(s.blocks_cached <= s.blocks_free, "{s:?}");
        let live = self.ids.iter().filter(|e| !e.1).count() as u64;
        assert_eq!(s.requests, live, "{s:?}");
        s
    }

    /// `ember_get_model_info` agrees with the stats: the arena's blocks and capacity, and
    /// end-of-generation ids ascending inside the vocabulary.
    fn info(&self) {
        let mut i = std::mem::MaybeUninit::<ember_model_info>::uninit();
        // SAFETY: live runtime, writable out.
        let code = unsafe { ember_get_model_info(self.rt, i.as_mut_ptr()) };
        check(code, &[EMBER_OK], "ember_get_model_info");
        // SAFETY: written on EMBER_OK.
        let i = unsafe { i.assume_init() };
        let s = self.stats();
        assert_eq!(i.kv_blocks, s.blocks_total);
        assert_eq!(i.kv_capacity_tokens, i.kv_blocks * u64::from(i.block_size));
        let eog = if i.n_eog == 0 {
            &[][..]
        } else {
            // SAFETY: the runtime's array of `n_eog` ids, alive while the runtime is.
            unsafe { std::slice::from_raw_parts(i.eog_ids, i.n_eog) }
        };
        assert!(eog.iter().all(|&e| e < i.n_vocab), "{eog:?}");
        assert!(eog.windows(2).all(|w| w[0] < w[1]), "{eog:?}");
    }

    fn run(&mut self, op: &Op) {
        let rt = self.rt;
        let mut store = Default::default();
        let mut id: ember_request_id = u64::MAX;
        match op {
            Op::Submit(text, p) => {
                let t = cstr(text);
                let e = Self::params(p, &mut store);
                // SAFETY: NUL-terminated prompt, valid params and out-param.
                let code = unsafe { ember_submit(rt, t.as_ptr().cast(), &e, &mut id) };
                check(code, self.submit_codes(), "ember_submit");
                self.submitted(code, id, &e);
            }
            Op::SubmitTokens(ids, p) => {
                let ids: Vec<u32> = ids.iter().take(64).map(|&i| i as u32 % 300).collect();
                let e = Self::params(p, &mut store);
                // SAFETY: `ids` has `len` ids; valid params and out-param.
                let code = unsafe { ember_submit_tokens(rt, ids.as_ptr(), ids.len(), &e, &mut id) };
                check(code, self.submit_codes(), "ember_submit_tokens");
                self.submitted(code, id, &e);
            }
            Op::SubmitChat(msgs, p) => {
                let strs: Vec<(Vec<u8>, Vec<u8>)> = msgs
                    .iter()
                    .take(8)
                    .map(|(r, c)| (cstr(r), cstr(c)))
                    .collect();
                let m: Vec<ember_chat_message> = strs
                    .iter()
                    .map(|(r, c)| ember_chat_message {
                        role: r.as_ptr().cast(),
                        content: c.as_ptr().cast(),
                    })
                    .collect();
                let e = Self::params(p, &mut store);
                // SAFETY: `m` has `len` messages of NUL-terminated strings; valid params.
                let code = unsafe { ember_submit_chat(rt, m.as_ptr(), m.len(), &e, &mut id) };
                check(code, self.submit_codes(), "ember_submit_chat");
                self.submitted(code, id, &e);
            }
            Op::Step => {
                let mut more = false;
                // SAFETY: live runtime, writable flag.
                let code = unsafe { ember_step(rt, &mut more) };
                let ok: &[_] = if self.stopped {
                    &[EMBER_ERR_STOPPED]
                } else {
                    &[EMBER_OK]
                };
                check(code, ok, "ember_step");
            }
            Op::Next(r, seq) => {
                self.next(self.id(r), u32::from(seq % 4));
            }
            Op::NextText(r, len) => {
                let id = self.id(r);
                let mut buf = vec![0u8; *len as usize];
                let (mut n, mut fin) = (usize::MAX, ember_finish_reason::EMBER_FINISH_NONE);
                let bp = if buf.is_empty() {
                    ptr::null_mut()
                } else {
                    buf.as_mut_ptr()
                };
                // SAFETY: `buf` has `len` bytes (NULL when 0); writable outs.
                let code =
                    unsafe { ember_next_text(rt, id, 0, bp.cast(), buf.len(), &mut n, &mut fin) };
                if !self.known_live(id) {
                    check(
                        code,
                        &[EMBER_ERR_UNKNOWN_REQUEST],
                        "ember_next_text (unknown id)",
                    );
                    return;
                }
                check(
                    code,
                    &[EMBER_OK, EMBER_ERR_BUFFER_TOO_SMALL, EMBER_ERR_TIMEOUT],
                    "ember_next_text",
                );
                if code == EMBER_OK {
                    assert!(n < buf.len(), "{n} bytes in a {} buffer", buf.len());
                    assert_eq!(buf[n], 0);
                    assert!(std::str::from_utf8(&buf[..n]).is_ok(), "text not UTF-8");
                } else if code == EMBER_ERR_BUFFER_TOO_SMALL {
                    assert!(n >= buf.len(), "too small, yet {n} + 1 <= {}", buf.len());
                }
            }
            Op::Cancel(r) => {
                let id = self.id(r);
                // SAFETY: live runtime.
                let code = unsafe { ember_cancel(rt, id) };
                let ok = if self.known_live(id) {
                    EMBER_OK
                } else {
                    EMBER_ERR_UNKNOWN_REQUEST
                };
                check(code, &[ok], "ember_cancel");
            }
            Op::Release(r) => self.release(self.id(r)),
            Op::SaveCache(r) => {
                let id = self.id(r);
                let p = cstr(cache_path("").as_os_str().as_encoded_bytes());
                let mut n = usize::MAX;
                // SAFETY: live runtime, NUL-terminated path, writable out.
                let code = unsafe { ember_prompt_cache_save(rt, id, p.as_ptr().cast(), &mut n) };
                let want = if !self.known_live(id) {
                    EMBER_ERR_UNKNOWN_REQUEST
                } else if !self.prefix_caching {
                    EMBER_ERR_INVALID_ARGUMENT
                } else {
                    EMBER_OK
                };
                check(code, &[want], "ember_prompt_cache_save");
                if code != EMBER_OK {
                    assert_eq!(n, usize::MAX, "out-param written on failure");
                }
            }
            Op::LoadCache { flip, cut } => {
                let mut damaged = false;
                let target = match std::fs::read(cache_path("")) {
                    Err(_) => cache_path(""),
                    Ok(mut bytes) => {
                        let len = bytes.len();
                        if let Some((at, x)) = *flip {
                            bytes[at as usize % len] ^= x;
                            damaged |= x != 0;
                        }
                        if let Some(c) = *cut {
                            let c = c as usize % (len + 1);
                            bytes.truncate(c);
                            damaged |= c < len;
                        }
                        std::fs::write(cache_path(".damaged"), &bytes).unwrap();
                        cache_path(".damaged")
                    }
                };
                let missing = !target.exists();
                let p = cstr(target.as_os_str().as_encoded_bytes());
                let mut n = usize::MAX;
                // SAFETY: live runtime, NUL-terminated path, writable out.
                let code = unsafe { ember_prompt_cache_load(rt, p.as_ptr().cast(), &mut n) };
                let want = if self.stopped {
                    EMBER_ERR_STOPPED
                } else if missing {
                    EMBER_ERR_IO
                } else if !self.prefix_caching {
                    EMBER_ERR_INVALID_ARGUMENT
                } else if damaged {
                    EMBER_ERR_PROMPT_CACHE
                } else {
                    EMBER_OK
                };
                check(code, &[want], "ember_prompt_cache_load");
                if code != EMBER_OK {
                    assert_eq!(n, usize::MAX, "out-param written on failure");
                }
            }
            Op::Stats => {
                self.stats();
            }
            Op::Tokenize(text, add, parse, cap) => {
                let t = cstr(text);
                let mut ids = vec![0u32; *cap as usize];
                let mut n = usize::MAX;
                let ip = if ids.is_empty() {
                    ptr::null_mut()
                } else {
                    ids.as_mut_ptr()
                };
                // SAFETY: NUL-terminated text; `ids` has `cap` slots (NULL when 0).
                let code = unsafe {
                    ember_tokenize(rt, t.as_ptr().cast(), *add, *parse, ip, ids.len(), &mut n)
                };
                check(
                    code,
                    &[
                        EMBER_OK,
                        EMBER_ERR_BUFFER_TOO_SMALL,
                        EMBER_ERR_INVALID_UTF8,
                        EMBER_ERR_TOKENIZER,
                    ],
                    "ember_tokenize",
                );
                if code == EMBER_OK {
                    assert!(n <= ids.len());
                    assert!(ids[..n].iter().all(|&i| i < N_VOCAB));
                } else if code == EMBER_ERR_BUFFER_TOO_SMALL {
                    assert!(n > ids.len());
                }
            }
            Op::Detokenize(ids, len) => {
                let ids: Vec<u32> = ids.iter().take(64).map(|&i| i as u32 % 300).collect();
                let mut buf = vec![0u8; *len as usize];
                let mut n = usize::MAX;
                let ip = if ids.is_empty() {
                    ptr::null()
                } else {
                    ids.as_ptr()
                };
                let bp = if buf.is_empty() {
                    ptr::null_mut()
                } else {
                    buf.as_mut_ptr()
                };
                // SAFETY: `ids` and `buf` as long as passed (NULL when empty).
                let code =
                    unsafe { ember_detokenize(rt, ip, ids.len(), bp.cast(), buf.len(), &mut n) };
                let in_vocab = ids.iter().all(|&i| i < N_VOCAB);
                let ok: &[_] = if in_vocab {
                    &[EMBER_OK, EMBER_ERR_BUFFER_TOO_SMALL]
                } else {
                    &[EMBER_ERR_INVALID_ARGUMENT]
                };
                check(code, ok, "ember_detokenize");
                if code == EMBER_OK {
                    assert!(n < buf.len() && buf[n] == 0);
                    assert!(std::str::from_utf8(&buf[..n]).is_ok());
                }
            }
            Op::Stop => {
                // SAFETY: live runtime.
                let code = unsafe { ember_stop(rt) };
                let ok = if self.stopped {
                    EMBER_ERR_STOPPED
                } else {
                    EMBER_OK
                };
                check(code, &[ok], "ember_stop");
                self.stopped = true;
            }
        }
    }

    /// Steps until no work is left, pulls every live request to its finish, releases it, and
    /// checks that the runtime holds nothing.
    fn drain(&mut self) {
        let mut steps = 0;
        loop {
            let mut more = false;
            // SAFETY: live runtime, writable flag.
            let code = unsafe { ember_step(self.rt, &mut more) };
            if self.stopped {
                check(code, &[EMBER_ERR_STOPPED], "ember_step (stopped)");
                break;
            }
            check(code, &[EMBER_OK], "ember_step (drain)");
            if !more {
                break;
            }
            steps += 1;
            assert!(steps < 10_000, "requests never finish");
        }
        let live: Vec<_> = self.ids.iter().filter(|e| !e.1).map(|e| e.0).collect();
        for id in live {
            for seq in 0..self.n.get(&id).copied().unwrap_or(1) {
                let mut pulls = 0;
                while self.next(id, seq) != Some(true) {
                    pulls += 1;
                    assert!(pulls < 1_000, "request {id} has work left after draining");
                }
            }
            self.release(id);
        }
        let s = self.stats();
        assert_eq!(s.requests, 0, "{s:?}");
        assert_eq!(s.blocks_used, 0, "{s:?}");
        assert_eq!(s.blocks_free, s.blocks_total, "{s:?}");
    }
}

/// Sizes near their type's maximum, which used to abort the process in an allocation: each one
/// must be refused (`EMBER_ERR_INVALID_ARGUMENT`) before anything is allocated from it. Only
/// values the engine refuses up front are chosen: an arena the bounds allow but the machine
/// cannot hold (`kv_blocks` just below `u32::MAX`) is refused too, but only after the allocator
/// was asked, which libFuzzer's `-malloc_limit_mb` reports as a crash.
fn extreme(cfg: &mut ember_config, c: &Config) {
    let near_u32 = u32::MAX - u32::from(c.below_max);
    if c.extreme & 1 != 0 {
        cfg.max_batch_tokens = near_u32;
    }
    if c.extreme & 2 != 0 {
        cfg.max_requests = near_u32;
    }
    if c.extreme & 4 != 0 {
        cfg.max_seqs = near_u32;
    }
    if c.extreme & 8 != 0 {
        cfg.kv_blocks = u32::MAX; // one more than block ids hold, with the null block
    }
    if c.extreme & 16 != 0 {
        cfg.kv_blocks = 0;
        cfg.kv_bytes = u64::MAX >> (c.below_max % 8); // at least 2^56 bytes
    }
    if c.extreme & 32 != 0 {
        // Just past the engine's bounds (ember::engine::MAX_SEQS, MAX_BATCH_TOKENS,
        // MAX_REQUESTS).
        cfg.max_seqs = (1 << 16) + 1;
        cfg.max_batch_tokens = (1 << 20) + 1;
        cfg.max_requests = (1 << 20) + 1;
    }
}

fuzz_target!(|inp: Input| {
    let c = &inp.config;
    let mut cfg = ember_config_default();
    cfg.backend = ember_backend::EMBER_BACKEND_CPU as u32;
    cfg.threads = 1;
    cfg.n_ctx = (c.n_ctx % 80) as u32; // 0: the model's 64; above 64: capped
    cfg.kv_blocks = (c.kv_blocks % 24) as u32 + 1;
    cfg.block_size = (c.block_size % 9) as u32; // 0 is invalid: checked
    cfg.max_seqs = (c.max_seqs % 5) as u32; // 0 is invalid: checked
    cfg.max_batch_tokens = c.max_batch_tokens as u32 % 70;
    cfg.max_requests = (c.max_requests % 9) as u32;
    cfg.prefix_caching = c.prefix_caching;
    extreme(&mut cfg, c);
    let path = cstr(ember_fuzz::tiny_model_path().as_os_str().as_encoded_bytes());
    let mut rt: *mut ember_runtime = ptr::null_mut();
    // SAFETY: NUL-terminated path, valid config, writable out.
    let code = unsafe { ember_runtime_new(path.as_ptr().cast(), &cfg, &mut rt) };
    check(
        code,
        &[EMBER_OK, EMBER_ERR_INVALID_ARGUMENT],
        "ember_runtime_new",
    );
    if code != EMBER_OK {
        assert!(rt.is_null(), "out-param written on failure");
        return;
    }
    let mut d = Driver {
        rt,
        ids: Vec::new(),
        n: HashMap::new(),
        stopped: false,
        prefix_caching: cfg.prefix_caching,
    };
    // A file left by an earlier input was written under another configuration.
    let _ = std::fs::remove_file(cache_path(""));
    d.info();
    for op in inp.ops.iter().take(64) {
        d.run(op);
    }
    d.drain();
    // SAFETY: the handle from ember_runtime_new, freed once, nothing in flight.
    unsafe { ember_runtime_free(rt) };
});
