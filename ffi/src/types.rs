//! The `#[repr(C)]` structs and enums of the ABI, their defaults, and their conversion into the
//! engine's Rust types (checking every pointer and range on the way in).
//!
//! Enums the caller passes in are plain `uint32_t` fields (`backend`), never Rust enums: a C
//! caller can store any value there, and an out-of-range Rust enum would be undefined
//! behaviour. Enums Ember writes out (`ember_finish_reason`, `ember_event_kind`) are enums.

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use ember::backend::{BackendKind, CudaWeights};
use ember::engine::{ContextShift, FinishReason, KvBudget, Speculative};
use ember::engine::{EngineConfig, RequestParams};
use ember::grammar::Grammar;
use ember::kv::KvType;
use ember::sampler::SamplingParams;
use ember::session::ContextPolicy;

use crate::error::Failure;

/// Compute backend of a runtime (the `backend` field of `ember_config`).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ember_backend {
    /// The GPU when this library is built with CUDA and a CUDA device can be started, else the
    /// CPU (why the GPU was not used is not an error).
    EMBER_BACKEND_AUTO = 0,
    /// CPU SIMD kernels (AVX2/FMA or NEON, chosen at start-up; `EMBER_CPU` forces a path).
    EMBER_BACKEND_CPU = 1,
    /// NVIDIA GPU (device 0). `ember_runtime_new` returns `EMBER_ERR_UNSUPPORTED` when this
    /// library was built without CUDA (cargo feature `cuda` of `ember-ffi`), and
    /// `EMBER_ERR_ENGINE` when the GPU cannot be started (no driver, no device, out of memory).
    EMBER_BACKEND_CUDA = 2,
}

/// Where the CUDA backend keeps the weights (the `cuda_weights` field of `ember_config`;
/// ignored by the CPU backend).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ember_cuda_weights {
    /// Copied into device memory once, at start-up.
    EMBER_CUDA_WEIGHTS_UPLOAD = 0,
    /// Read in place from the memory-mapped model file, registered with the driver as
    /// host-mapped memory: no copy and no device memory for weights. For unified-memory devices
    /// (Jetson), where CPU and GPU share the DRAM; on a discrete card, correct but slow.
    EMBER_CUDA_WEIGHTS_MAPPED = 1,
}

/// How the KV cache stores keys and values (the `kv_type` field of `ember_config`).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ember_kv_type {
    /// IEEE half precision (2 bytes per element).
    EMBER_KV_F16 = 0,
    /// ggml's Q8_0 rows (34 bytes per 32 elements): 1.9x the tokens of f16 in the same bytes.
    /// CPU backend only; the model's head size must be a multiple of 32.
    EMBER_KV_Q8_0 = 1,
    /// ggml's Q4_0 rows (18 bytes per 32 elements): 3.6x the tokens of f16 in the same bytes.
    /// CPU backend only; the model's head size must be a multiple of 32.
    EMBER_KV_Q4_0 = 2,
}

/// Resolves the `backend` field. The one place that learns about new backends.
pub(crate) fn select_backend(raw: u32) -> Result<BackendKind, Failure> {
    const AUTO: u32 = ember_backend::EMBER_BACKEND_AUTO as u32;
    const CPU: u32 = ember_backend::EMBER_BACKEND_CPU as u32;
    const CUDA: u32 = ember_backend::EMBER_BACKEND_CUDA as u32;
    match raw {
        AUTO => Ok(BackendKind::Auto),
        CPU => Ok(BackendKind::Cpu),
        CUDA if cfg!(feature = "cuda") => Ok(BackendKind::Cuda),
        CUDA => Err(Failure::new(
            crate::error::ember_result::EMBER_ERR_UNSUPPORTED,
            "backend EMBER_BACKEND_CUDA: this libember was built without CUDA (build ember-ffi \
             with --features cuda; EMBER_BACKEND_AUTO falls back to the CPU)",
        )),
        other => Err(Failure::invalid(format!(
            "config.backend = {other} is not an ember_backend value (0 auto, 1 cpu, 2 cuda)"
        ))),
    }
}

fn select_cuda_weights(raw: u32) -> Result<CudaWeights, Failure> {
    const UPLOAD: u32 = ember_cuda_weights::EMBER_CUDA_WEIGHTS_UPLOAD as u32;
    const MAPPED: u32 = ember_cuda_weights::EMBER_CUDA_WEIGHTS_MAPPED as u32;
    match raw {
        UPLOAD => Ok(CudaWeights::Upload),
        MAPPED => Ok(CudaWeights::Mapped),
        other => Err(Failure::invalid(format!(
            "config.cuda_weights = {other} is not an ember_cuda_weights value (0 upload, 1 mapped)"
        ))),
    }
}

/// Start-up configuration of a runtime. Get one from `ember_config_default()` and change the
/// fields you need.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ember_config {
    /// An `ember_backend` value. Default `EMBER_BACKEND_AUTO`.
    pub backend: u32,
    /// Longest sequence (prompt + generated) in tokens; 0: the model's training context.
    /// Default 4096 (capped at the model's training context).
    pub n_ctx: u32,
    /// KV arena size in blocks; 0: use `kv_bytes`. Default 0. A size whose memory cannot be
    /// allocated is `EMBER_ERR_INVALID_ARGUMENT` (as for `kv_bytes`), never an abort.
    pub kv_blocks: u32,
    /// KV arena size in bytes, used when `kv_blocks` is 0. Default 256 MiB.
    pub kv_bytes: u64,
    /// Tokens per KV block (1..=4096). Default 16.
    pub block_size: u32,
    /// Most sequences running at once (1..=65536). Default 32.
    pub max_seqs: u32,
    /// Most tokens computed per engine step (`max_seqs..=1048576`; the forward pass's scratch
    /// memory is sized for it). A value above `n_ctx × max_seqs` is lowered to that (a step
    /// never has more tokens to compute). Default 512.
    pub max_batch_tokens: u32,
    /// Most requests held at once (waiting, running, or finished but not yet released;
    /// 1..=1048576). Default 256.
    pub max_requests: u32,
    /// Compute threads, the thread that steps the engine included: `threads - 1` worker threads
    /// are started by `ember_runtime_new`; 1 starts none; 0: one per physical core. Default 0.
    pub threads: u32,
    /// Reuse the KV blocks of identical prompt prefixes. Default true.
    pub prefix_caching: bool,
    /// An `ember_cuda_weights` value (CUDA backend only). Default
    /// `EMBER_CUDA_WEIGHTS_UPLOAD`.
    pub cuda_weights: u32,
    /// An `ember_kv_type` value. Default `EMBER_KV_F16`. A value that is not one is
    /// `EMBER_ERR_INVALID_ARGUMENT`; a quantized type with a model whose head size is not a
    /// multiple of 32 is `EMBER_ERR_INVALID_ARGUMENT` too. Both backends store every type.
    pub kv_type: u32,
    /// Keep every KV block of sliding-window layers (llama.cpp's `--swa-full`). Default false:
    /// a model with sliding-window layers (Gemma 3) and a context longer than the window keeps
    /// those layers in blocks of their own and gives the blocks that fall out of the window
    /// back to the arena (`ember_model_info.kv_capacity_tokens` counts the tokens that buys).
    pub swa_full: bool,
}

impl Default for ember_config {
    fn default() -> Self {
        let d = EngineConfig::default();
        let kv_bytes = match d.kv_budget {
            KvBudget::Bytes(b) => b as u64,
            _ => 256 << 20,
        };
        ember_config {
            backend: ember_backend::EMBER_BACKEND_AUTO as u32,
            n_ctx: d.n_ctx as u32,
            kv_blocks: 0,
            kv_bytes,
            block_size: d.block_size as u32,
            max_seqs: d.max_seqs as u32,
            max_batch_tokens: d.max_batch_tokens as u32,
            max_requests: d.max_requests as u32,
            threads: d.threads as u32,
            prefix_caching: d.prefix_caching,
            cuda_weights: ember_cuda_weights::EMBER_CUDA_WEIGHTS_UPLOAD as u32,
            kv_type: ember_kv_type::EMBER_KV_F16 as u32,
            swa_full: d.swa_full,
        }
    }
}

impl ember_config {
    /// The engine configuration (ranges are checked by the engine itself).
    pub(crate) fn to_engine(self) -> Result<EngineConfig, Failure> {
        let kv_budget = if self.kv_blocks > 0 {
            KvBudget::Blocks(self.kv_blocks as usize)
        } else {
            let b = usize::try_from(self.kv_bytes)
                .map_err(|_| Failure::invalid("config.kv_bytes does not fit this machine"))?;
            KvBudget::Bytes(b)
        };
        Ok(EngineConfig {
            cuda_weights: select_cuda_weights(self.cuda_weights)?,
            n_ctx: self.n_ctx as usize,
            kv_budget,
            block_size: self.block_size as usize,
            max_seqs: self.max_seqs as usize,
            max_batch_tokens: self.max_batch_tokens as usize,
            max_requests: self.max_requests as usize,
            threads: self.threads as usize,
            prefix_caching: self.prefix_caching,
            kv_type: KvType::from_code(self.kv_type).ok_or_else(|| {
                Failure::invalid(format!(
                    "config.kv_type = {} is not an ember_kv_type value (0 f16, 1 q8_0, 2 q4_0)",
                    self.kv_type
                ))
            })?,
            swa_full: self.swa_full,
        })
    }
}

/// What one request asks for. Get one from `ember_params_default()` (greedy decoding, 128
/// tokens) and change the fields you need. The pointers are read during the submit call only.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ember_params {
    /// Most tokens to generate (at least 1). Default 128. Taken literally, whatever its size:
    /// prompt + `max_tokens` beyond the context is `EMBER_ERR_TOO_LARGE` (so is `UINT32_MAX`;
    /// nothing wraps). To generate until the context is full, ask for the room the prompt
    /// leaves: `n_ctx` minus the prompt's token count (`ember_tokenize`).
    pub max_tokens: u32,
    /// Softmax temperature, >= 0; 0 is greedy (argmax). Default 0.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 turns it off. Default 40.
    pub top_k: u32,
    /// Nucleus threshold in [0, 1]; 1 turns it off. Default 0.95.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the top one, in [0, 1]. Default 0.05.
    pub min_p: f32,
    /// Repetition penalty (> 0; 1 turns it off). Default 1.
    pub repeat_penalty: f32,
    /// Tokens of history the penalty looks at. Default 64.
    pub repeat_last_n: u32,
    /// Seed of the sampler's random generator. Default 0.
    pub seed: u64,
    /// `n_stop` NUL-terminated UTF-8 stop strings (excluded from the output text); may be NULL
    /// when `n_stop` is 0.
    pub stop: *const *const c_char,
    /// Number of stop strings.
    pub n_stop: usize,
    /// `n_stop_ids` token ids that end generation (finish reason `EMBER_FINISH_STOP`); may be
    /// NULL when `n_stop_ids` is 0.
    pub stop_ids: *const u32,
    /// Number of stop ids.
    pub n_stop_ids: usize,
    /// Keep generating past end-of-generation tokens. Default false.
    pub ignore_eos: bool,
    /// Sequences to sample from the prompt (parallel sampling): sequence `i` uses seed
    /// `seed + i` and they share the prompt's KV blocks. Pull sequence `i` with
    /// `ember_next_seq` / `ember_next_text_seq` (`ember_next` pulls sequence 0). 1..=`max_seqs`
    /// of the runtime's config, else `EMBER_ERR_INVALID_ARGUMENT`; 0 is taken as 1 (a struct
    /// zeroed by a caller that does not know this field). Default 1.
    pub n: u32,
    /// What `ember_submit_chat` does when the messages and `max_tokens` do not fit the
    /// context: `EMBER_CONTEXT_ERROR` (0, the default) refuses with `EMBER_ERR_TOO_LARGE`;
    /// `EMBER_CONTEXT_TRUNCATE` leaves out the oldest whole turns (the leading system
    /// messages stay, the prompt begins again at a user message, the last message is always
    /// kept; the caller's array is not touched), enough for the prompt to take at most half
    /// the context, so that the next turns reuse the kept turns' cached KV; if the system
    /// messages and the last turn
    /// alone leave less than `max_tokens`, lowers `max_tokens` to the room left
    /// (`EMBER_ERR_TOO_LARGE` only when they leave none). `ember_submit` and
    /// `ember_submit_tokens` have no turns and ignore these two. `EMBER_CONTEXT_SHIFT`, for
    /// every submit: the generation runs past the end of the context (prompt + `max_tokens`
    /// need not fit; the prompt must) — when it reaches the end, the first `context_keep`
    /// tokens stay, half of the rest is dropped and the kept keys are rotated to their new
    /// positions (llama.cpp's context shift; not with `draft_k`); `ember_submit_chat` fits
    /// the messages as `EMBER_CONTEXT_TRUNCATE` does, with room for the start of the reply.
    /// Other values: `EMBER_ERR_INVALID_ARGUMENT`.
    pub context_policy: u32,
    /// NUL-terminated GBNF grammar (llama.cpp's syntax, matching starts at rule `root`) the
    /// output must follow: only tokens that keep the text a prefix of the grammar's language
    /// are sampled, and end of generation only once it is complete. NULL (the default) for
    /// none. A grammar that does not compile is `EMBER_ERR_INVALID_ARGUMENT`, with the line,
    /// column and cause in `ember_last_error`. At most one of `grammar` and `json_schema`.
    pub grammar: *const c_char,
    /// NUL-terminated JSON Schema (JSON text) the output must be a document of: compiled into
    /// a grammar as `grammar` is (the supported keywords are listed in the README). NULL (the
    /// default) for none; an unsupported keyword or malformed schema is
    /// `EMBER_ERR_INVALID_ARGUMENT` naming it in `ember_last_error`.
    pub json_schema: *const c_char,
    /// Speculative decoding: up to `draft_k` tokens (1..=16) are guessed — from the prompt
    /// and the text so far (prompt lookup), or by the runtime's draft model when
    /// `ember_runtime_set_draft_model` gave it one — and checked in one step; the output is the
    /// same token for token, with fewer forward passes when the guesses are right. 0 (the
    /// default) turns it off; above 16 is `EMBER_ERR_INVALID_ARGUMENT`.
    pub draft_k: u32,
    /// Under `EMBER_CONTEXT_SHIFT`: tokens at the start that a shift never drops (e.g. the
    /// system prompt's count, from `ember_tokenize`), rounded up to whole KV blocks; the first
    /// block always stays. Leaving nothing to drop in the context is
    /// `EMBER_ERR_INVALID_ARGUMENT`. Default 0.
    pub context_keep: u32,
}

/// `ember_params.context_policy`: refuse a chat that does not fit the context.
pub const EMBER_CONTEXT_ERROR: u32 = 0;
/// `ember_params.context_policy`: leave out a chat's oldest turns until it fits.
pub const EMBER_CONTEXT_TRUNCATE: u32 = 1;
/// `ember_params.context_policy`: let the generation run past the end of the context,
/// dropping old tokens (llama.cpp's context shift; see `ember_params.context_policy`).
pub const EMBER_CONTEXT_SHIFT: u32 = 2;

impl Default for ember_params {
    fn default() -> Self {
        let d = RequestParams::default();
        let s = SamplingParams::default();
        ember_params {
            max_tokens: d.max_tokens as u32,
            temperature: s.temperature,
            top_k: s.top_k as u32,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            repeat_last_n: s.repeat_last_n as u32,
            seed: s.seed,
            stop: std::ptr::null(),
            n_stop: 0,
            stop_ids: std::ptr::null(),
            n_stop_ids: 0,
            ignore_eos: d.ignore_eos,
            n: d.n as u32,
            context_policy: EMBER_CONTEXT_ERROR,
            grammar: std::ptr::null(),
            json_schema: std::ptr::null(),
            draft_k: 0,
            context_keep: 0,
        }
    }
}

/// Most stop strings or stop ids one request may carry.
const MAX_STOPS: usize = 1024;

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|e| {
        Failure::new(
            crate::error::ember_result::EMBER_ERR_INVALID_UTF8,
            format!("{name} is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

/// A `(pointer, count)` array argument; NULL is allowed when `n` is 0.
///
/// # Safety
/// `p` is NULL or points to `n` valid, initialized `T`s that stay valid for `'a`.
pub(crate) unsafe fn c_slice<'a, T>(p: *const T, n: usize, name: &str) -> Result<&'a [T], Failure> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL, `n` elements per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

impl ember_params {
    /// `context_policy` as the runtime's type.
    pub(crate) fn policy(&self) -> Result<ContextPolicy, Failure> {
        match self.context_policy {
            EMBER_CONTEXT_ERROR => Ok(ContextPolicy::Error),
            EMBER_CONTEXT_TRUNCATE => Ok(ContextPolicy::Truncate),
            EMBER_CONTEXT_SHIFT => Ok(ContextPolicy::Shift),
            v => Err(Failure::invalid(format!(
                "params.context_policy = {v} (EMBER_CONTEXT_ERROR, EMBER_CONTEXT_TRUNCATE or \
                 EMBER_CONTEXT_SHIFT)"
            ))),
        }
    }

    /// The engine's request parameters.
    ///
    /// # Safety
    /// `stop` and `stop_ids` follow the field docs.
    pub(crate) unsafe fn to_request(self) -> Result<RequestParams, Failure> {
        let policy = self.policy()?;
        if self.n_stop > MAX_STOPS || self.n_stop_ids > MAX_STOPS {
            return Err(Failure::invalid(format!(
                "params: at most {MAX_STOPS} stop strings and {MAX_STOPS} stop ids"
            )));
        }
        // SAFETY: the caller's contract on `stop` / `n_stop`.
        let ptrs = unsafe { c_slice(self.stop, self.n_stop, "params.stop")? };
        let mut stop = Vec::with_capacity(ptrs.len());
        for (i, &p) in ptrs.iter().enumerate() {
            // SAFETY: each entry is a NUL-terminated string per the field docs.
            let s = unsafe { c_str(p, &format!("params.stop[{i}]"))? };
            stop.push(s.to_string());
        }
        // SAFETY: the caller's contract on `stop_ids` / `n_stop_ids`.
        let stop_ids = unsafe { c_slice(self.stop_ids, self.n_stop_ids, "params.stop_ids")? };
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n as usize,
            seed: self.seed,
        };
        // SAFETY: the caller's contract on `grammar` and `json_schema`.
        let grammar = unsafe { self.grammar()? };
        Ok(RequestParams {
            sampling,
            max_tokens: self.max_tokens as usize,
            stop,
            stop_ids: stop_ids.to_vec(),
            n: (self.n as usize).max(1),
            ignore_eos: self.ignore_eos,
            grammar,
            speculative: (self.draft_k > 0).then_some(Speculative::lookup(self.draft_k as usize)),
            context_shift: (policy == ContextPolicy::Shift).then_some(ContextShift {
                keep: self.context_keep as usize,
            }),
        })
    }

    /// `grammar` or `json_schema`, compiled.
    ///
    /// # Safety
    /// Each is NULL or a NUL-terminated string.
    unsafe fn grammar(&self) -> Result<Option<Arc<Grammar>>, Failure> {
        let compiled = match (self.grammar.is_null(), self.json_schema.is_null()) {
            (true, true) => return Ok(None),
            (false, false) => {
                return Err(Failure::invalid(
                    "params: set one of grammar and json_schema, not both",
                ))
            }
            (false, true) => {
                // SAFETY: non-NULL, NUL-terminated per the caller's contract.
                let text = unsafe { c_str(self.grammar, "params.grammar")? };
                Grammar::parse(text)
                    .map_err(|e| Failure::invalid(format!("params.grammar: {e}")))?
            }
            (true, false) => {
                // SAFETY: as above.
                let text = unsafe { c_str(self.json_schema, "params.json_schema")? };
                Grammar::from_json_schema(text)
                    .map_err(|e| Failure::invalid(format!("params.json_schema: {e}")))?
            }
        };
        Ok(Some(Arc::new(compiled)))
    }
}

/// One message of a chat, for `ember_submit_chat`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ember_chat_message {
    /// NUL-terminated UTF-8 role: "system", "user", "assistant", ...
    pub role: *const c_char,
    /// NUL-terminated UTF-8 text of the message.
    pub content: *const c_char,
}

/// Why a request finished.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ember_finish_reason {
    /// Not finished.
    EMBER_FINISH_NONE = 0,
    /// The model produced an end-of-generation token.
    EMBER_FINISH_EOS = 1,
    /// `max_tokens` tokens were generated.
    EMBER_FINISH_LENGTH = 2,
    /// A stop string or stop id was produced.
    EMBER_FINISH_STOP = 3,
    /// The request was cancelled (`ember_cancel`, or `ember_stop` while it was unfinished).
    EMBER_FINISH_CANCELLED = 4,
    /// An engine step failed while computing it, or its logits held a NaN (non-finite weights:
    /// `ember info --check-tensors` finds them); the tokens before it are still pulled.
    EMBER_FINISH_ERROR = 5,
}

impl From<FinishReason> for ember_finish_reason {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Eos => ember_finish_reason::EMBER_FINISH_EOS,
            FinishReason::Length => ember_finish_reason::EMBER_FINISH_LENGTH,
            FinishReason::Stop => ember_finish_reason::EMBER_FINISH_STOP,
            FinishReason::Cancelled => ember_finish_reason::EMBER_FINISH_CANCELLED,
            FinishReason::Error => ember_finish_reason::EMBER_FINISH_ERROR,
        }
    }
}

/// Kind of an `ember_event`.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ember_event_kind {
    /// A generated token: `token`, `index` and its text piece are set.
    EMBER_EVENT_TOKEN = 1,
    /// The request finished: `finish_reason` is set, `text` is "".
    EMBER_EVENT_FINISHED = 2,
}

/// One event of a request, from `ember_next`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ember_event {
    /// What happened.
    pub kind: ember_event_kind,
    /// The token id (`EMBER_EVENT_TOKEN`), including an end-of-generation or stop token that
    /// ended the request.
    pub token: u32,
    /// Position of the token among the request's generated tokens (0-based); for
    /// `EMBER_EVENT_FINISHED`, the number of tokens generated.
    pub index: u32,
    /// The text this token completes: UTF-8 that never splits a code point, followed by a NUL;
    /// possibly "" (a character still incomplete, a control token, text held back while a stop
    /// string may be forming). It may itself contain U+0000 (a model can generate a NUL byte):
    /// use `text_len` for its length, e.g. `fwrite(text, 1, text_len, f)`, never `strlen` or
    /// `fputs`. Owned by the runtime: valid until the next `ember_next` or `ember_next_text` on
    /// the same request, or its `ember_release`.
    pub text: *const c_char,
    /// Length of `text` in bytes, without the terminating NUL (the authoritative length).
    pub text_len: usize,
    /// Why the request finished (`EMBER_EVENT_FINISHED`); `EMBER_FINISH_NONE` otherwise.
    pub finish_reason: ember_finish_reason,
}

/// What a runtime was built with, from `ember_get_model_info`. The strings and the id array
/// belong to the runtime: they stay valid, unchanged, until `ember_runtime_free`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ember_model_info {
    /// The architecture (GGUF `general.architecture`): "llama", "qwen2" or "gemma3".
    /// NUL-terminated.
    pub architecture: *const c_char,
    /// The model's name (GGUF `general.name`), "" when the file has none. NUL-terminated UTF-8;
    /// a NUL byte inside the name is written as U+FFFD.
    pub name: *const c_char,
    /// The effective context: the most tokens one sequence holds, prompt and generated ones
    /// together (`config.n_ctx`, or the model's training context when that was 0).
    pub n_ctx: u32,
    /// The context the model was trained with (GGUF `*.context_length`).
    pub n_ctx_train: u32,
    /// Vocabulary size: every token id is below it.
    pub n_vocab: u32,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Usable blocks of the KV arena.
    pub kv_blocks: u64,
    /// Tokens of one sequence the KV arena holds when that sequence has it all: what the
    /// arena's byte budget bought with the configured `kv_type`. `kv_blocks × block_size` for
    /// most models; more for a model with sliding-window layers (Gemma 3), whose blocks out of
    /// the window go back to the arena while a sequence runs.
    pub kv_capacity_tokens: u64,
    /// Bytes of the KV arena.
    pub kv_bytes: u64,
    /// End-of-generation token ids, ascending (EOS, end-of-turn and the like): generation stops
    /// at any of them unless `ignore_eos`. `n_eog` of them; NULL when `n_eog` is 0.
    pub eog_ids: *const u32,
    /// Number of ids in `eog_ids`.
    pub n_eog: usize,
    /// The `ember_kv_type` the KV arena stores.
    pub kv_type: u32,
}

/// Counters and gauges of a runtime, from `ember_get_stats`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ember_stats {
    /// Usable blocks in the KV arena.
    pub blocks_total: u64,
    /// Blocks held by running requests.
    pub blocks_used: u64,
    /// Blocks that can be handed out (cached ones included).
    pub blocks_free: u64,
    /// Free blocks that still hold a cached prompt prefix.
    pub blocks_cached: u64,
    /// Tokens stored / token slots of the used blocks (1.0 when none is used).
    pub utilization: f64,
    /// Requests held (submitted and not yet released).
    pub requests: u64,
    /// Tokens sampled since start-up.
    pub tokens_generated: u64,
    /// Tokens computed by forward passes (prompts, recomputation, fed-back samples).
    pub tokens_computed: u64,
    /// Prompt tokens served from the prefix cache instead of computed.
    pub prefix_hit_tokens: u64,
    /// Sequences preempted because the arena was full.
    pub preemptions: u64,
    /// Engine steps that ran a forward pass.
    pub steps: u64,
    /// Seconds spent in engine steps.
    pub busy_s: f64,
    /// Sampled tokens per second of step time (`tokens_generated / busy_s`).
    pub generated_tok_s: f64,
}
