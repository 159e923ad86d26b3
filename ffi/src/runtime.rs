//! The thread-safe runtime behind the C handle: an [`Engine`] shared by every caller thread and,
//! in background mode, one internal thread that steps it.
//!
//! Locks, always taken in this order: `worker` (start/stop only), `core` (the engine and the
//! driving mode), `streams` (what each request has produced and what the caller has pulled).
//! Pulling events (`next`) takes only `streams`, so it never waits for an engine step: after
//! every step the stepping thread copies the new tokens of each request from the engine into its
//! stream and wakes the pullers (`progress`). Waiting is on condition variables, never spinning.
//!
//! Fairness: the background thread steps with `core` held and would otherwise re-take it right
//! after releasing it, starving submitters; callers register in `queued` before locking and the
//! thread lets them in between steps (`let_queued_in`).
//!
//! Poisoning: a panic while `core` or `streams` is held poisons that mutex; every later call
//! sees it and reports `EMBER_ERR_POISONED`, as does a panic of the background thread.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember::chat::ChatMessage;
use ember::engine::{Engine, FinishReason, RequestId, RequestParams};
use ember::model::Model;
use ember::session::{fit_chat, ChatFormat, ChatPrompt, ContextPolicy};
use ember::tokenizer::Tokenizer;

use crate::error::{ember_result, Failure};
use crate::types::{
    ember_config, ember_event, ember_event_kind, ember_finish_reason, ember_model_info,
    ember_stats, select_backend,
};

/// How the engine is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `ember_step` on the caller's thread.
    Caller,
    /// The internal thread steps the engine.
    Background,
    /// `ember_stop` was called: no more requests or steps.
    Stopped,
}

/// The engine and how it is driven (under the `core` lock).
struct Core {
    engine: Engine,
    mode: Mode,
}

/// What one request produced, copied out of the engine after each step, and how much of it the
/// caller has pulled.
struct Stream {
    ids: Vec<u32>,
    text: String,
    /// `text.len()` after each token (the engine's `piece_ends`).
    piece_ends: Vec<u32>,
    finish: Option<FinishReason>,
    /// Tokens delivered to the caller.
    cursor: usize,
    /// The text of the last delivered event, NUL-terminated (what `ember_event::text` points
    /// to).
    piece: Vec<u8>,
}

impl Stream {
    /// A stream with room for `max_tokens` tokens: the caller's count, already accepted by the
    /// engine, capped at the context here (the engine never generates more), and reserved
    /// fallibly.
    fn new(max_tokens: usize, n_ctx: usize) -> Result<Stream, Failure> {
        let n = max_tokens.min(n_ctx);
        let no_memory = || Failure::invalid(format!("cannot allocate the stream of {n} tokens"));
        let mut ids = Vec::new();
        ids.try_reserve_exact(n).map_err(|_| no_memory())?;
        let mut piece_ends = Vec::new();
        piece_ends.try_reserve_exact(n).map_err(|_| no_memory())?;
        Ok(Stream {
            ids,
            text: String::new(),
            piece_ends,
            finish: None,
            cursor: 0,
            piece: Vec::with_capacity(64),
        })
    }

    /// Copy what sequence `seq` of the request produced since the last sync.
    fn sync(&mut self, engine: &Engine, id: RequestId, seq: usize) {
        let Ok(mut outs) = engine.output(id) else {
            return;
        };
        let Some(o) = outs.nth(seq) else { return };
        self.ids.extend_from_slice(&o.ids[self.ids.len()..]);
        self.piece_ends
            .extend_from_slice(&o.piece_ends[self.piece_ends.len()..]);
        self.text.push_str(&o.text[self.text.len()..]);
        self.finish = o.finish;
    }

    fn piece_start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.piece_ends[i - 1] as usize
        }
    }

    fn set_piece(&mut self, start: usize, end: usize) {
        self.piece.clear();
        self.piece
            .extend_from_slice(&self.text.as_bytes()[start..end]);
        self.piece.push(0);
    }
}

/// State shared with the background thread.
struct Shared {
    core: Mutex<Core>,
    /// Wakes the background thread: work arrived, or it must stop.
    work: Condvar,
    /// Set (under `core`) to make the background thread exit.
    stop_requested: AtomicBool,
    /// Callers waiting for `core`; the background thread lets them in between steps.
    queued: AtomicUsize,
    handoff: Mutex<()>,
    handoff_cv: Condvar,
    /// One stream per sequence of each request (`n` of them).
    streams: Mutex<HashMap<u64, Vec<Stream>>>,
    /// Signalled (under `streams`) whenever a stream changes or the runtime is poisoned.
    progress: Condvar,
    /// The background thread panicked.
    poisoned: AtomicBool,
}

impl Shared {
    /// Lock the engine as an API caller (registered so the background thread lets us in).
    fn lock_core(&self) -> Result<MutexGuard<'_, Core>, Failure> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Failure::poisoned());
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        let r = self.core.lock();
        if self.queued.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _g = self.handoff.lock();
            self.handoff_cv.notify_all();
        }
        r.map_err(|_| Failure::poisoned())
    }

    fn lock_streams(&self) -> Result<MutexGuard<'_, HashMap<u64, Vec<Stream>>>, Failure> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Failure::poisoned());
        }
        self.streams.lock().map_err(|_| Failure::poisoned())
    }

    /// Background thread, after releasing `core`: wait until every caller that queued for it
    /// has had its turn (bounded, in case one is slow to be scheduled).
    fn let_queued_in(&self) {
        let Ok(mut g) = self.handoff.lock() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        while self.queued.load(Ordering::SeqCst) > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.handoff_cv.wait_timeout(g, deadline - now) {
                Ok((ng, _)) => g = ng,
                Err(_) => return,
            }
        }
    }

    /// Copy every unfinished request's new output out of the engine and wake the pullers.
    fn sync_all(&self, core: &Core) -> Result<(), Failure> {
        let mut streams = self.lock_streams()?;
        for (&id, seqs) in streams.iter_mut() {
            for (i, s) in seqs.iter_mut().enumerate() {
                if s.finish.is_none() {
                    s.sync(&core.engine, RequestId::from_u64(id), i);
                }
            }
        }
        drop(streams);
        self.progress.notify_all();
        Ok(())
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
        // Take the lock (poisoned or not) so no puller misses the wake-up.
        let _g = self.streams.lock();
        self.progress.notify_all();
    }
}

/// The background thread: step while there is work, sleep on `work` otherwise.
fn background(shared: Arc<Shared>) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
        let Ok(mut core) = shared.core.lock() else {
            shared.poison();
            return;
        };
        loop {
            if shared.stop_requested.load(Ordering::Acquire) {
                return;
            }
            if core.engine.has_work() {
                break;
            }
            core = match shared.work.wait(core) {
                Ok(g) => g,
                Err(_) => {
                    shared.poison();
                    return;
                }
            };
        }
        // A failed step finishes the requests it computed with `Error`; they are reported
        // through their streams, so the thread carries on.
        let _ = core.engine.step();
        if shared.sync_all(&core).is_err() {
            return;
        }
        drop(core);
        shared.let_queued_in();
    }));
    if r.is_err() {
        shared.poison();
    }
}

/// The chat template of the model and the BOS/EOS texts it may use.
struct Chat {
    template: String,
    bos: String,
    eos: String,
}

/// A runtime: the object behind `ember_runtime *`.
pub(crate) struct Runtime {
    shared: Arc<Shared>,
    /// The background thread, while it runs.
    worker: Mutex<Option<JoinHandle<()>>>,
    /// A tokenizer of our own, so tokenizing and chat rendering never wait for an engine step.
    tokenizer: Tokenizer,
    chat: Option<Chat>,
    n_vocab: usize,
    info: Info,
}

/// What `ember_get_model_info` reports: fixed at start-up, so asking never waits for a step.
/// (The report itself holds pointers into this; kept here as owned values, the runtime stays
/// `Send + Sync`.)
struct Info {
    architecture: CString,
    name: CString,
    eog: Vec<u32>,
    /// `n_ctx`, `n_ctx_train`, `n_vocab`, `n_layer`, `block_size`.
    dims: [u32; 5],
    kv_blocks: u64,
    kv_capacity_tokens: u64,
    kv_bytes: u64,
    kv_type: u32,
}

impl Info {
    fn new(engine: &Engine, tokenizer: &Tokenizer) -> Result<Info, Failure> {
        let model = engine.model();
        let c = &model.config;
        let name = model.file.get_str("general.name")?.unwrap_or("");
        let dim = |what: &str, n: usize| {
            u32::try_from(n).map_err(|_| Failure::invalid(format!("{what} = {n} exceeds 32 bits")))
        };
        Ok(Info {
            architecture: c_string(c.arch.name()),
            name: c_string(name),
            eog: tokenizer.eog_ids().to_vec(),
            dims: [
                dim("n_ctx", engine.n_ctx())?,
                dim("the training context", c.n_ctx_train)?,
                dim("n_vocab", c.n_vocab)?,
                dim("n_layer", c.n_layer)?,
                dim("block_size", engine.block_size())?,
            ],
            kv_blocks: engine.kv_blocks() as u64,
            kv_capacity_tokens: engine.kv_capacity_tokens() as u64,
            kv_bytes: engine.arena_bytes() as u64,
            kv_type: engine.kv_type().code(),
        })
    }

    /// The report, pointing into `self`.
    fn report(&self) -> ember_model_info {
        let [n_ctx, n_ctx_train, n_vocab, n_layer, block_size] = self.dims;
        ember_model_info {
            architecture: self.architecture.as_ptr(),
            name: self.name.as_ptr(),
            n_ctx,
            n_ctx_train,
            n_vocab,
            n_layer,
            block_size,
            kv_blocks: self.kv_blocks,
            kv_capacity_tokens: self.kv_capacity_tokens,
            kv_bytes: self.kv_bytes,
            eog_ids: if self.eog.is_empty() {
                std::ptr::null()
            } else {
                self.eog.as_ptr()
            },
            n_eog: self.eog.len(),
            kv_type: self.kv_type,
        }
    }
}

/// `s` as a C string, a NUL inside it written as U+FFFD.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

impl Runtime {
    /// Load the model and allocate everything (see `ember_runtime_new`).
    pub fn new(path: &Path, cfg: &ember_config) -> Result<Runtime, Failure> {
        let backend = select_backend(cfg.backend)?;
        let engine_cfg = cfg.to_engine()?;
        let model = Model::load(path)?;
        let tokenizer = ember::gguf::tokenizer_from_gguf(&model.file)?;
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or("")
                .to_string()
        };
        let chat = model
            .file
            .get_str("tokenizer.chat_template")?
            .map(|t| Chat {
                template: t.to_string(),
                bos: text(tokenizer.bos()),
                eos: text(tokenizer.eos()),
            });
        let n_vocab = model.config.n_vocab;
        let max_requests = engine_cfg.max_requests;
        // The engine checks `max_requests` against its bound (ember::engine::MAX_REQUESTS)
        // before it allocates anything; the map is reserved fallibly all the same.
        let engine = Engine::with_draft_rows(model, engine_cfg, backend)?;
        let info = Info::new(&engine, &tokenizer)?;
        let mut streams = HashMap::new();
        streams.try_reserve(max_requests).map_err(|_| {
            Failure::invalid(format!(
                "config.max_requests = {max_requests}: cannot allocate the request table"
            ))
        })?;
        Ok(Runtime {
            shared: Arc::new(Shared {
                core: Mutex::new(Core {
                    engine,
                    mode: Mode::Caller,
                }),
                work: Condvar::new(),
                stop_requested: AtomicBool::new(false),
                queued: AtomicUsize::new(0),
                handoff: Mutex::new(()),
                handoff_cv: Condvar::new(),
                streams: Mutex::new(streams),
                progress: Condvar::new(),
                poisoned: AtomicBool::new(false),
            }),
            worker: Mutex::new(None),
            tokenizer,
            chat,
            n_vocab,
            info,
        })
    }

    /// What the runtime was built with (pointers into `self`).
    pub fn model_info(&self) -> ember_model_info {
        self.info.report()
    }

    /// Tokenize `text` as `ember generate` does (special tokens parsed, BOS per the model).
    pub fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, Failure> {
        self.tokenizer
            .encode(text, add_special, parse_special)
            .map_err(|e| Failure::new(ember_result::EMBER_ERR_TOKENIZER, e.to_string()))
    }

    /// The text of `ids` (invalid UTF-8 becomes U+FFFD).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, Failure> {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= self.n_vocab) {
            return Err(Failure::invalid(format!(
                "token id {t} is outside the vocabulary (0..{})",
                self.n_vocab
            )));
        }
        Ok(self.tokenizer.decode(ids))
    }

    /// Render `messages` with the model's chat template (generation prompt added) and
    /// tokenize them for a reply of up to `max_tokens` in this runtime's context, under
    /// `policy` (`ember::session::fit_chat`: which turns are left out, and the room left).
    pub fn fit_chat(
        &self,
        messages: &[ChatMessage],
        max_tokens: usize,
        policy: ContextPolicy,
    ) -> Result<ChatPrompt, Failure> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            Failure::new(
                ember_result::EMBER_ERR_NO_CHAT_TEMPLATE,
                "the model has no tokenizer.chat_template: submit a pre-formatted prompt with \
                 ember_submit",
            )
        })?;
        let format = ChatFormat {
            template: &chat.template,
            bos_token: &chat.bos,
            eos_token: &chat.eos,
        };
        let n_ctx = self.info.dims[0] as usize;
        Ok(fit_chat(
            &format,
            messages,
            &self.tokenizer,
            n_ctx,
            max_tokens,
            policy,
        )?)
    }

    /// Load the GGUF at `path` as the engine's draft model (loaded before the engine is held).
    pub fn set_draft_model(&self, path: &Path) -> Result<(), Failure> {
        let model = Model::load(path)?;
        let mut core = self.shared.lock_core()?;
        if core.mode == Mode::Stopped {
            return Err(Failure::stopped());
        }
        Ok(core.engine.set_draft_model(model)?)
    }

    /// Queue a request for `prompt` (token ids). With a draft model set, `draft_k` drafts
    /// with it instead of by prompt lookup.
    pub fn submit(&self, prompt: &[u32], params: &RequestParams) -> Result<u64, Failure> {
        let mut core = self.shared.lock_core()?;
        if core.mode == Mode::Stopped {
            return Err(Failure::stopped());
        }
        let with_model;
        let params = match params.speculative {
            Some(s) if core.engine.has_draft_model() => {
                with_model = RequestParams {
                    speculative: Some(ember::engine::Speculative {
                        drafter: ember::engine::Drafter::Model,
                        ..s
                    }),
                    ..params.clone()
                };
                &with_model
            }
            _ => params,
        };
        // Bounded: the engine refuses `n` above `max_seqs` (checked again by `submit`).
        let n = params.n.min(ember::engine::MAX_SEQS);
        let stream = (0..n)
            .map(|_| Stream::new(params.max_tokens, core.engine.n_ctx()))
            .collect::<Result<Vec<_>, _>>()?;
        let id = core.engine.submit(prompt, params)?;
        let mut streams = self.shared.lock_streams()?;
        streams.insert(id.to_u64(), stream);
        drop(streams);
        if core.mode == Mode::Background {
            self.shared.work.notify_one();
        }
        Ok(id.to_u64())
    }

    /// Load a prompt cache file into the engine's prefix cache; returns the tokens loaded.
    pub fn prompt_cache_load(&self, path: &Path) -> Result<usize, Failure> {
        let mut core = self.shared.lock_core()?;
        if core.mode == Mode::Stopped {
            return Err(Failure::stopped());
        }
        Ok(core.engine.load_prompt_cache(path)?.loaded_tokens)
    }

    /// Save the cached full blocks of request `id`'s prompt to a prompt cache file; returns
    /// the tokens saved (0: none computed yet, no file written).
    pub fn prompt_cache_save(&self, id: u64, path: &Path) -> Result<usize, Failure> {
        let core = self.shared.lock_core()?;
        if !self.shared.lock_streams()?.contains_key(&id) {
            return Err(Failure::unknown_request(id));
        }
        let engine = &core.engine;
        let prompt = engine.prompt(RequestId::from_u64(id))?;
        Ok(engine.save_prompt_cache(path, prompt)?)
    }

    /// One engine step on the caller's thread; returns whether work remains.
    pub fn step(&self) -> Result<bool, Failure> {
        let mut core = self.shared.lock_core()?;
        match core.mode {
            Mode::Background => {
                return Err(Failure::new(
                    ember_result::EMBER_ERR_WRONG_MODE,
                    "ember_step: the background engine is running (ember_start); it steps itself",
                ))
            }
            Mode::Stopped => return Err(Failure::stopped()),
            Mode::Caller => {}
        }
        if !core.engine.has_work() {
            return Ok(false);
        }
        let r = core.engine.step();
        self.shared.sync_all(&core)?;
        if let Err(e) = r {
            return Err(Failure::new(
                ember_result::EMBER_ERR_ENGINE,
                format!("engine step failed: {e}"),
            ));
        }
        Ok(core.engine.has_work())
    }

    /// Start the background thread.
    pub fn start(&self) -> Result<(), Failure> {
        let mut worker = self.worker.lock().map_err(|_| Failure::poisoned())?;
        let mut core = self.shared.lock_core()?;
        match core.mode {
            Mode::Background => {
                return Err(Failure::new(
                    ember_result::EMBER_ERR_WRONG_MODE,
                    "ember_start: the background engine already runs",
                ))
            }
            Mode::Stopped => return Err(Failure::stopped()),
            Mode::Caller => {}
        }
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name("ember-engine".into())
            .spawn(move || background(shared))
            .map_err(|e| {
                Failure::new(
                    ember_result::EMBER_ERR_ENGINE,
                    format!("cannot start the engine thread: {e}"),
                )
            })?;
        core.mode = Mode::Background;
        *worker = Some(handle);
        Ok(())
    }

    /// Stop for good: join the background thread (if any), cancel every unfinished request.
    pub fn stop(&self) -> Result<(), Failure> {
        let mut worker = self.worker.lock().map_err(|_| Failure::poisoned())?;
        {
            let mut core = self.shared.lock_core()?;
            if core.mode == Mode::Stopped {
                return Err(Failure::stopped());
            }
            core.mode = Mode::Stopped;
            self.shared.stop_requested.store(true, Ordering::Release);
            self.shared.work.notify_all();
        }
        if let Some(h) = worker.take() {
            // A panic of the thread was already recorded as poisoning.
            let _ = h.join();
        }
        let mut core = self.shared.lock_core()?;
        let ids: Vec<u64> = self.shared.lock_streams()?.keys().copied().collect();
        for id in ids {
            // Unknown ids cannot occur: streams and engine requests live and die together.
            let _ = core.engine.cancel(RequestId::from_u64(id));
        }
        self.shared.sync_all(&core)?;
        drop(core);
        Ok(())
    }

    /// Cancel a request (a finished one is left as it is).
    pub fn cancel(&self, id: u64) -> Result<(), Failure> {
        let mut core = self.shared.lock_core()?;
        if !self.shared.lock_streams()?.contains_key(&id) {
            return Err(Failure::unknown_request(id));
        }
        core.engine.cancel(RequestId::from_u64(id))?;
        self.shared.sync_all(&core)
    }

    /// Forget a request; its id becomes invalid.
    pub fn release(&self, id: u64) -> Result<(), Failure> {
        let mut core = self.shared.lock_core()?;
        let mut streams = self.shared.lock_streams()?;
        if streams.remove(&id).is_none() {
            return Err(Failure::unknown_request(id));
        }
        core.engine.release(RequestId::from_u64(id))?;
        drop(streams);
        drop(core);
        self.shared.progress.notify_all();
        Ok(())
    }

    /// Wait until sequence `seq` of request `id` has an undelivered token or has finished, then
    /// let `take` read (and consume) from its stream. `None`: wait forever.
    fn wait_stream<T>(
        &self,
        id: u64,
        seq: usize,
        timeout: Option<Duration>,
        take: impl FnOnce(&mut Stream) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut streams = self.shared.lock_streams()?;
        loop {
            let seqs = streams
                .get_mut(&id)
                .ok_or_else(|| Failure::unknown_request(id))?;
            let n = seqs.len();
            let s = seqs.get_mut(seq).ok_or_else(|| {
                Failure::invalid(format!(
                    "request {id:#x} has {n} sequence(s): index {seq} is out of range"
                ))
            })?;
            if s.cursor < s.ids.len() || s.finish.is_some() {
                return take(s);
            }
            streams = match deadline {
                None => self
                    .shared
                    .progress
                    .wait(streams)
                    .map_err(|_| Failure::poisoned())?,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Failure::new(
                            ember_result::EMBER_ERR_TIMEOUT,
                            format!("request {id:#x}: no event within the timeout"),
                        ));
                    }
                    self.shared
                        .progress
                        .wait_timeout(streams, d - now)
                        .map_err(|_| Failure::poisoned())?
                        .0
                }
            };
            if self.shared.poisoned.load(Ordering::Acquire) {
                return Err(Failure::poisoned());
            }
        }
    }

    /// The next event of sequence `seq` of request `id`.
    pub fn next(
        &self,
        id: u64,
        seq: usize,
        timeout: Option<Duration>,
    ) -> Result<ember_event, Failure> {
        self.wait_stream(id, seq, timeout, |s| {
            if s.cursor < s.ids.len() {
                let i = s.cursor;
                let (start, end) = (s.piece_start(i), s.piece_ends[i] as usize);
                s.set_piece(start, end);
                s.cursor += 1;
                Ok(ember_event {
                    kind: ember_event_kind::EMBER_EVENT_TOKEN,
                    token: s.ids[i],
                    index: i as u32,
                    text: s.piece.as_ptr().cast::<c_char>(),
                    text_len: end - start,
                    finish_reason: ember_finish_reason::EMBER_FINISH_NONE,
                })
            } else {
                let reason = s.finish.expect("wait_stream returns finished streams only");
                Ok(ember_event {
                    kind: ember_event_kind::EMBER_EVENT_FINISHED,
                    token: 0,
                    index: s.ids.len() as u32,
                    text: c"".as_ptr(),
                    text_len: 0,
                    finish_reason: reason.into(),
                })
            }
        })
    }

    /// All undelivered text of sequence `seq` of request `id` into `buf` (with a NUL),
    /// consuming its tokens. Returns the text length and the finish reason once everything is
    /// delivered; on a too small buffer returns `Err((needed length, failure))` without
    /// consuming.
    pub fn next_text(
        &self,
        id: u64,
        seq: usize,
        timeout: Option<Duration>,
        buf: &mut [u8],
    ) -> Result<(usize, ember_finish_reason), (Option<usize>, Failure)> {
        let mut needed = None;
        let r = self.wait_stream(id, seq, timeout, |s| {
            let start = s.piece_start(s.cursor);
            let text = &s.text.as_bytes()[start..];
            if text.len() + 1 > buf.len() {
                needed = Some(text.len());
                return Err(Failure::new(
                    ember_result::EMBER_ERR_BUFFER_TOO_SMALL,
                    format!(
                        "the text needs {} bytes with its NUL, the buffer has {}",
                        text.len() + 1,
                        buf.len()
                    ),
                ));
            }
            buf[..text.len()].copy_from_slice(text);
            buf[text.len()] = 0;
            s.cursor = s.ids.len();
            let reason = s
                .finish
                .map_or(ember_finish_reason::EMBER_FINISH_NONE, Into::into);
            Ok((text.len(), reason))
        });
        r.map_err(|f| (needed, f))
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Result<ember_stats, Failure> {
        let core = self.shared.lock_core()?;
        let m = core.engine.metrics();
        let requests = self.shared.lock_streams()?.len();
        Ok(ember_stats {
            blocks_total: m.blocks_total as u64,
            blocks_used: m.blocks_used as u64,
            blocks_free: m.blocks_free as u64,
            blocks_cached: m.blocks_cached as u64,
            utilization: m.utilization,
            requests: requests as u64,
            tokens_generated: m.tokens_generated,
            tokens_computed: m.tokens_computed,
            prefix_hit_tokens: m.prefix_hit_tokens,
            preemptions: m.preemptions,
            steps: m.steps,
            busy_s: m.busy_s,
            generated_tok_s: if m.busy_s > 0.0 {
                m.generated_tok_s()
            } else {
                0.0
            },
        })
    }

    /// Test hook: panic while holding the engine lock (poisons the runtime).
    #[cfg(test)]
    pub fn panic_holding_core(&self) {
        let _core = self.shared.core.lock();
        panic!("test panic while holding the engine lock");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.stop_requested.store(true, Ordering::Release);
        {
            // Take the lock so the thread is either before its check or waiting.
            let _core = self.shared.core.lock();
            self.shared.work.notify_all();
        }
        if let Some(h) = self.worker.get_mut().ok().and_then(Option::take) {
            let _ = h.join();
        }
    }
}
