//! The exported `extern "C"` functions. Each one checks its pointers, runs its body inside the
//! panic boundary ([`guard`]), and writes its out-parameters only on success.

use std::ffi::c_char;
use std::path::PathBuf;
use std::time::Duration;

use ember::chat::ChatMessage;

use crate::error::{ember_result, guard, guard_value, last_error_ptr, Failure};
use crate::runtime::Runtime;
use crate::types::{
    c_slice, c_str, ember_chat_message, ember_config, ember_event, ember_finish_reason,
    ember_model_info, ember_params, ember_stats,
};

/// An Ember runtime: a loaded model, its KV arena and the batching engine. Opaque; create it
/// with `ember_runtime_new`, free it with `ember_runtime_free`.
#[allow(non_camel_case_types)]
pub struct ember_runtime {
    inner: Runtime,
}

/// Handle of a submitted request. Generation-checked: once released, the value is never valid
/// again (it is not reused by later requests), and every call given it returns
/// `EMBER_ERR_UNKNOWN_REQUEST` (ids carry a 32-bit generation: an id could only come back after
/// 2^32 further submissions).
#[allow(non_camel_case_types)]
pub type ember_request_id = u64;

/// `timeout_ms` value of `ember_next` / `ember_next_text` that waits without limit.
pub const EMBER_WAIT_FOREVER: u32 = u32::MAX;

fn timeout(ms: u32) -> Option<Duration> {
    (ms != EMBER_WAIT_FOREVER).then(|| Duration::from_millis(u64::from(ms)))
}

/// # Safety
/// `rt` is NULL or a live handle from `ember_runtime_new`.
pub(crate) unsafe fn runtime<'a>(rt: *const ember_runtime) -> Result<&'a Runtime, Failure> {
    // SAFETY: per the caller's contract, non-NULL means a live handle.
    unsafe { rt.as_ref() }
        .map(|r| &r.inner)
        .ok_or_else(|| Failure::null("rt"))
}

/// Write `v` to the out-parameter `p` (checked non-NULL before the call's work).
///
/// # Safety
/// `p` is non-NULL and valid for writes.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) {
    // SAFETY: the caller checked `p` and guarantees it is writable.
    unsafe { p.write(v) }
}

/// A NUL-terminated path from C: bytes handed to the operating system unchanged on POSIX
/// systems, UTF-8 elsewhere.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn c_path(p: *const c_char, name: &str) -> Result<PathBuf, Failure> {
    need(p, name)?;
    // SAFETY: non-NULL, NUL-terminated per the contract.
    let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    #[cfg(unix)]
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes));
    #[cfg(not(unix))]
    let path = PathBuf::from(std::str::from_utf8(bytes).map_err(|_| {
        Failure::new(
            ember_result::EMBER_ERR_INVALID_UTF8,
            format!("{name} is not valid UTF-8"),
        )
    })?);
    Ok(path)
}

fn need<T>(p: *const T, name: &str) -> Result<(), Failure> {
    if p.is_null() {
        Err(Failure::null(name))
    } else {
        Ok(())
    }
}

/// The library version, "MAJOR.MINOR.PATCH". A static string: never free it.
#[no_mangle]
pub extern "C" fn ember_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of an `ember_result` code ("EMBER_ERR_NULL_POINTER", ...), or
/// "unknown ember_result code".
/// A static string: never free it.
#[no_mangle]
pub extern "C" fn ember_result_str(code: u32) -> *const c_char {
    // A plain integer, not the enum: a C caller may pass any value.
    ember_result::name(code).as_ptr().cast()
}

/// The message of the last failed `ember_*` call on the calling thread: what was wrong and what
/// to do; "" if no call has failed on this thread. A successful call does not clear it. Owned by
/// the library: valid until the next failing call on the same thread; never free it.
#[no_mangle]
pub extern "C" fn ember_last_error() -> *const c_char {
    guard_value(c"".as_ptr(), last_error_ptr)
}

/// The default configuration: automatic backend, 4096-token context, 256 MiB KV arena,
/// 16-token blocks, 32 running sequences, 512 tokens per step, 256 held requests, one thread per
/// physical core, prefix caching on.
#[no_mangle]
pub extern "C" fn ember_config_default() -> ember_config {
    ember_config::default()
}

/// The default request parameters: greedy decoding, at most 128 tokens, no stop strings or ids.
#[no_mangle]
pub extern "C" fn ember_params_default() -> ember_params {
    ember_params::default()
}

/// Load a GGUF model and create a runtime: maps the weights, builds the tokenizer, allocates the
/// KV arena and scratch memory, and starts `config->threads - 1` compute worker threads.
/// The runtime starts in caller-driven mode (`ember_step`); `ember_start` switches to
/// background mode.
///
/// `config` may be NULL (defaults). On success `*out` receives the handle; free it with
/// `ember_runtime_free`.
///
/// `model_path` is the one string argument that need not be UTF-8: its bytes are handed to the
/// operating system unchanged, as `fopen` would (POSIX paths are byte strings). Only where paths
/// are not bytes (Windows) must it be UTF-8, else `EMBER_ERR_INVALID_UTF8`.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER` (`model_path` or `out` NULL);
/// `EMBER_ERR_INVALID_ARGUMENT` (a config field out of range, the message says which and its
/// bound; also a size whose memory cannot be allocated); `EMBER_ERR_UNSUPPORTED` (backend not
/// built in: CUDA); `EMBER_ERR_IO` (cannot read the file); `EMBER_ERR_MODEL` (malformed or
/// unsupported model); `EMBER_ERR_TOKENIZER`; `EMBER_ERR_INVALID_UTF8` (non-POSIX systems
/// only, see above); `EMBER_ERR_INTERNAL`.
/// On failure `*out` is untouched and nothing is left allocated.
///
/// # Safety
/// `model_path` is a NUL-terminated path (bytes, see above); `config` is NULL or points to an
/// `ember_config`; `out` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn ember_runtime_new(
    model_path: *const c_char,
    config: *const ember_config,
    out: *mut *mut ember_runtime,
) -> ember_result {
    guard(|| {
        need(out, "out")?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let path = unsafe { c_path(model_path, "model_path") }?;
        // SAFETY: NULL or a valid config per the contract.
        let cfg = unsafe { config.as_ref() }.copied().unwrap_or_default();
        let inner = Runtime::new(&path, &cfg)?;
        let handle = Box::into_raw(Box::new(ember_runtime { inner }));
        // SAFETY: `out` checked non-NULL above.
        unsafe { put(out, handle) };
        Ok(())
    })
}

/// Free a runtime: stops and joins the background thread if it runs, cancels and releases
/// every request, joins the worker threads and frees all memory. NULL is ignored.
/// Event texts of its requests become invalid.
///
/// # Safety
/// `rt` is NULL or a handle from `ember_runtime_new` not yet freed, and no other call on it is
/// in flight or follows (freeing twice is undefined behaviour, as with `free`).
#[no_mangle]
pub unsafe extern "C" fn ember_runtime_free(rt: *mut ember_runtime) {
    if rt.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: a live handle from `Box::into_raw`, freed once, per the contract.
        drop(unsafe { Box::from_raw(rt) });
        Ok(())
    });
}

/// Submit a text prompt (UTF-8; special tokens such as `<|im_start|>` are parsed; BOS is added
/// as the model asks), exactly as `ember generate -p TEXT` tokenizes it. `params` may be NULL
/// (defaults). On success `*out_id` receives the request id; pull its events with `ember_next`
/// (with `params.n > 1`, sequence `i` with `ember_next_seq`) and release it with
/// `ember_release`.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_INVALID_UTF8` (prompt or a stop
/// string); `EMBER_ERR_INVALID_ARGUMENT` (empty prompt, a parameter out of range, `n` above
/// the config's `max_seqs`);
/// `EMBER_ERR_TOO_LARGE` (the prompt leaves no room in the context, prompt + `max_tokens`
/// exceed it while `max_tokens` is below the context, or the request needs more blocks than
/// the whole KV arena holds);
/// `EMBER_ERR_FULL` (`max_requests` held: release some); `EMBER_ERR_STOPPED`;
/// `EMBER_ERR_TOKENIZER`; `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
/// On failure nothing is queued and `*out_id` is untouched.
///
/// # Safety
/// `rt` is a live handle; `prompt` is NUL-terminated; `params` is NULL or valid (its arrays
/// as documented); `out_id` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_submit(
    rt: *const ember_runtime,
    prompt: *const c_char,
    params: *const ember_params,
    out_id: *mut ember_request_id,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out_id, "out_id")?;
        // SAFETY: NUL-terminated per the contract.
        let prompt = unsafe { c_str(prompt, "prompt")? };
        // SAFETY: `params` per the contract.
        let p = unsafe { request_params(params)? };
        let ids = rt.tokenize(prompt, true, true)?;
        let id = rt.submit(&ids, &p)?;
        // SAFETY: checked non-NULL.
        unsafe { put(out_id, id) };
        Ok(())
    })
}

/// # Safety
/// `params` is NULL or points to a valid `ember_params`.
unsafe fn request_params(
    params: *const ember_params,
) -> Result<ember::engine::RequestParams, Failure> {
    // SAFETY: NULL or valid per the contract.
    let p = unsafe { params.as_ref() }.copied().unwrap_or_default();
    // SAFETY: the arrays of `p` are valid per the contract.
    unsafe { p.to_request() }
}

/// Submit a prompt of `n_ids` token ids (no BOS is added). Otherwise as `ember_submit`;
/// `EMBER_ERR_INVALID_ARGUMENT` also for `n_ids == 0` or an id outside the vocabulary.
///
/// # Safety
/// `rt` is a live handle; `ids` points to `n_ids` ids; `params` is NULL or valid; `out_id` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ember_submit_tokens(
    rt: *const ember_runtime,
    ids: *const u32,
    n_ids: usize,
    params: *const ember_params,
    out_id: *mut ember_request_id,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out_id, "out_id")?;
        need(ids, "ids")?;
        // SAFETY: `n_ids` ids per the contract.
        let ids = unsafe { c_slice(ids, n_ids, "ids")? };
        // SAFETY: `params` per the contract.
        let p = unsafe { request_params(params)? };
        let id = rt.submit(ids, &p)?;
        // SAFETY: checked non-NULL.
        unsafe { put(out_id, id) };
        Ok(())
    })
}

/// Submit a chat: `n_messages` role/content messages rendered with the model's chat template
/// (`tokenizer.chat_template`, generation prompt added), then tokenized as `ember_submit` does.
/// A chat that outgrows the context is refused (`EMBER_ERR_TOO_LARGE`) or has its oldest turns
/// left out, as `params.context_policy` says. With the runtime's prefix cache on, resubmitting
/// a conversation with one more turn computes only what the earlier turns' cached KV blocks do
/// not cover.
/// Otherwise as `ember_submit`; also `EMBER_ERR_NO_CHAT_TEMPLATE` (the model has none),
/// `EMBER_ERR_CHAT_TEMPLATE` (the template failed on these messages),
/// `EMBER_ERR_INVALID_ARGUMENT` (`n_messages == 0`).
///
/// # Safety
/// `rt` is a live handle; `messages` points to `n_messages` messages whose strings are
/// NUL-terminated; `params` is NULL or valid; `out_id` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_submit_chat(
    rt: *const ember_runtime,
    messages: *const ember_chat_message,
    n_messages: usize,
    params: *const ember_params,
    out_id: *mut ember_request_id,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out_id, "out_id")?;
        need(messages, "messages")?;
        // SAFETY: `n_messages` messages per the contract.
        let msgs = unsafe { c_slice(messages, n_messages, "messages")? };
        let mut chat = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            // SAFETY: NUL-terminated strings per the contract.
            let role = unsafe { c_str(m.role, &format!("messages[{i}].role"))? };
            // SAFETY: as above.
            let content = unsafe { c_str(m.content, &format!("messages[{i}].content"))? };
            chat.push(ChatMessage::new(role, content));
        }
        // SAFETY: NULL or valid per the contract.
        let raw = unsafe { params.as_ref() }.copied().unwrap_or_default();
        // SAFETY: the arrays of `raw` are valid per the contract.
        let mut p = unsafe { raw.to_request()? };
        let fitted = rt.fit_chat(&chat, p.max_tokens, raw.policy()?)?;
        p.max_tokens = fitted.max_tokens;
        let id = rt.submit(&fitted.ids, &p)?;
        // SAFETY: checked non-NULL.
        unsafe { put(out_id, id) };
        Ok(())
    })
}

/// Caller-driven mode: run one engine step (one batched forward pass over the scheduled tokens
/// of every request, then sampling) on the calling thread. Creates no thread; the compute
/// workers started by `ember_runtime_new` (`threads - 1` of them, none with `threads = 1`)
/// help with the forward pass. Does nothing when no request is waiting or running.
/// `out_has_work` may be NULL; on success it receives whether requests are still waiting or
/// running. The step runs on the calling thread's stack: give that thread at least 256 KiB
/// (the CPU kernels keep buffers of up to 32 KiB there; a whole step of the CLI on SmolLM2 and
/// Gemma 3 was measured to fit in a 64 KiB stack, not in 40 KiB).
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER` (`rt`); `EMBER_ERR_WRONG_MODE` (the background
/// engine runs); `EMBER_ERR_STOPPED`; `EMBER_ERR_ENGINE` (the step failed: the requests it
/// computed finished with `EMBER_FINISH_ERROR`, the others are intact);
/// `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
///
/// # Safety
/// `rt` is a live handle; `out_has_work` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ember_step(
    rt: *const ember_runtime,
    out_has_work: *mut bool,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        let more = rt.step()?;
        if !out_has_work.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { put(out_has_work, more) };
        }
        Ok(())
    })
}

/// Background mode: start one internal thread that steps the engine whenever a request is
/// waiting or running and sleeps otherwise. `ember_step` is refused while it runs.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_WRONG_MODE` (already running);
/// `EMBER_ERR_STOPPED`; `EMBER_ERR_ENGINE` (the thread could not be created; nothing changed);
/// `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
///
/// # Safety
/// `rt` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn ember_start(rt: *const ember_runtime) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        unsafe { runtime(rt)? }.start()
    })
}

/// Stop the runtime for good: joins the background thread if it runs (after its current step),
/// and cancels every unfinished request (they finish with `EMBER_FINISH_CANCELLED`, waking
/// their `ember_next` callers). Afterwards `ember_submit*`, `ember_step`, `ember_start` and
/// `ember_stop` return `EMBER_ERR_STOPPED`; pulling events, `ember_release`, `ember_cancel`,
/// stats and the tokenizer helpers still work. Works in caller-driven mode too.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_STOPPED` (already stopped);
/// `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
///
/// # Safety
/// `rt` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn ember_stop(rt: *const ember_runtime) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        unsafe { runtime(rt)? }.stop()
    })
}

/// Pull the next event of a request: its next generated token (id + text piece), or, once every
/// token was pulled, `EMBER_EVENT_FINISHED` with the reason (returned again on every later
/// call). Waits up to `timeout_ms` milliseconds for one (0: do not wait; `EMBER_WAIT_FOREVER`:
/// no limit), sleeping on a condition variable; it never waits for an engine step to end. In
/// caller-driven mode something must call `ember_step` meanwhile.
///
/// Returns `EMBER_OK` (`*out` written); `EMBER_ERR_TIMEOUT` (nothing yet: call again);
/// `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_UNKNOWN_REQUEST` (unknown, stale or released id,
/// including one released while waiting); `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
/// On failure `*out` is untouched and nothing is consumed.
///
/// `out->text` may contain U+0000 (a model can generate a NUL byte): its length is
/// `out->text_len`, not the position of the first NUL. Write it with
/// `fwrite(ev.text, 1, ev.text_len, f)`, not `fputs`.
///
/// `out->text` is owned by the runtime and valid until the next `ember_next` /
/// `ember_next_text` on the same request or its release: pull one request from one thread at a
/// time (different requests may be pulled from different threads concurrently).
///
/// # Safety
/// `rt` is a live handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_next(
    rt: *const ember_runtime,
    id: ember_request_id,
    timeout_ms: u32,
    out: *mut ember_event,
) -> ember_result {
    // SAFETY: the same contract.
    unsafe { ember_next_seq(rt, id, 0, timeout_ms, out) }
}

/// `ember_next` for sequence `seq` of a request submitted with `params.n > 1` (sequence 0 is
/// what `ember_next` pulls). Each sequence has its own events, ending with its own
/// `EMBER_EVENT_FINISHED`; pull each from one thread at a time.
///
/// Returns as `ember_next`, and `EMBER_ERR_INVALID_ARGUMENT` when `seq` is not below the
/// request's `n`. On failure `*out` is untouched and nothing is consumed.
///
/// # Safety
/// `rt` is a live handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_next_seq(
    rt: *const ember_runtime,
    id: ember_request_id,
    seq: u32,
    timeout_ms: u32,
    out: *mut ember_event,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out, "out")?;
        let ev = rt.next(id, seq as usize, timeout(timeout_ms))?;
        // SAFETY: checked non-NULL.
        unsafe { put(out, ev) };
        Ok(())
    })
}

/// Text-only pull: waits like `ember_next` until the request has unpulled tokens or has
/// finished, then copies the text of all its unpulled tokens into `buf` (NUL-terminated) and
/// marks them pulled. `*out_len` receives the text length (without the NUL) and
/// `*out_finish` the finish reason if the request has finished and everything is pulled, else
/// `EMBER_FINISH_NONE`. The text may be "" (tokens that complete no character yet), and it may
/// contain U+0000: its length is `*out_len`, not the position of the first NUL.
///
/// Buffer checks, as in `ember_tokenize` and `ember_detokenize`: a NULL `buf` with
/// `buf_len > 0` is `EMBER_ERR_NULL_POINTER`, reported before anything else is done; `buf` NULL
/// with `buf_len == 0` asks for the size (`EMBER_ERR_BUFFER_TOO_SMALL` once there is text or a
/// finish to report, since even "" needs its NUL).
///
/// Returns `EMBER_OK`; `EMBER_ERR_BUFFER_TOO_SMALL`: the text needs `*out_len + 1` bytes;
/// only `*out_len` is written and nothing is consumed (call again with a larger buffer);
/// `EMBER_ERR_TIMEOUT`; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_UNKNOWN_REQUEST`;
/// `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
///
/// # Safety
/// `rt` is a live handle; `buf` points to `buf_len` writable bytes (or is NULL with
/// `buf_len == 0`); `out_len` and `out_finish` are writable.
#[no_mangle]
pub unsafe extern "C" fn ember_next_text(
    rt: *const ember_runtime,
    id: ember_request_id,
    timeout_ms: u32,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
    out_finish: *mut ember_finish_reason,
) -> ember_result {
    // SAFETY: the same contract.
    unsafe { ember_next_text_seq(rt, id, 0, timeout_ms, buf, buf_len, out_len, out_finish) }
}

/// `ember_next_text` for sequence `seq` of a request submitted with `params.n > 1`.
///
/// Returns as `ember_next_text`, and `EMBER_ERR_INVALID_ARGUMENT` when `seq` is not below the
/// request's `n`. On failure nothing is consumed and only `*out_len` may be written (on
/// `EMBER_ERR_BUFFER_TOO_SMALL`).
///
/// # Safety
/// As `ember_next_text`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ember_next_text_seq(
    rt: *const ember_runtime,
    id: ember_request_id,
    seq: u32,
    timeout_ms: u32,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
    out_finish: *mut ember_finish_reason,
) -> ember_result {
    let mut too_small = None;
    let r = guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out_len, "out_len")?;
        need(out_finish, "out_finish")?;
        let buf: &mut [u8] = if buf_len == 0 {
            &mut []
        } else {
            need(buf, "buf")?;
            // SAFETY: `buf_len` writable bytes per the contract.
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), buf_len) }
        };
        match rt.next_text(id, seq as usize, timeout(timeout_ms), buf) {
            Ok((len, finish)) => {
                // SAFETY: both checked non-NULL.
                unsafe {
                    put(out_len, len);
                    put(out_finish, finish);
                }
                Ok(())
            }
            Err((needed, f)) => {
                too_small = needed;
                Err(f)
            }
        }
    });
    if let (ember_result::EMBER_ERR_BUFFER_TOO_SMALL, Some(n)) = (r, too_small) {
        // SAFETY: `out_len` was checked non-NULL before the text was measured.
        unsafe { put(out_len, n) };
    }
    r
}

/// Cancel a request: its KV blocks are returned at once and, if unfinished, it finishes with
/// `EMBER_FINISH_CANCELLED` after the tokens already generated (still pulled with
/// `ember_next`). Cancelling a finished request changes nothing. The id stays valid until
/// `ember_release`.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_UNKNOWN_REQUEST`;
/// `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
///
/// # Safety
/// `rt` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn ember_cancel(
    rt: *const ember_runtime,
    id: ember_request_id,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        unsafe { runtime(rt)? }.cancel(id)
    })
}

/// Release a request (cancelling it first if unfinished): its memory and its slot in the
/// request table are freed and the id becomes invalid; event texts of it become invalid.
/// Every request must be released (or the runtime freed) to free its slot.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_UNKNOWN_REQUEST` (unknown, stale
/// or already released: releasing twice is reported, never undefined); `EMBER_ERR_POISONED`;
/// `EMBER_ERR_INTERNAL`.
///
/// # Safety
/// `rt` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn ember_release(
    rt: *const ember_runtime,
    id: ember_request_id,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        unsafe { runtime(rt)? }.release(id)
    })
}

/// Counters and gauges: KV arena blocks (total, used, free, cached), utilization, requests
/// held, tokens generated and computed, prefix-cache hits, preemptions, steps, tok/s.
/// May wait for the current engine step to end.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
///
/// # Safety
/// `rt` is a live handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_get_stats(
    rt: *const ember_runtime,
    out: *mut ember_stats,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out, "out")?;
        let s = rt.stats()?;
        // SAFETY: checked non-NULL.
        unsafe { put(out, s) };
        Ok(())
    })
}

/// What the runtime was built with: architecture and name, the effective context, vocabulary
/// size, end-of-generation ids and the KV arena's capacity (see `struct ember_model_info`).
/// The strings and the id array stay valid until `ember_runtime_free`. Never waits for an
/// engine step; callable from any thread, also on a poisoned runtime (the facts are fixed at
/// start-up).
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER` (`*out` untouched).
///
/// # Safety
/// `rt` is a live handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_get_model_info(
    rt: *const ember_runtime,
    out: *mut ember_model_info,
) -> ember_result {
    guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out, "out")?;
        // SAFETY: checked non-NULL.
        unsafe { put(out, rt.model_info()) };
        Ok(())
    })
}

/// Tokenize UTF-8 `text` with the model's tokenizer. `add_special`: add BOS/EOS as the model
/// asks; `parse_special`: turn special-token texts (`<|im_start|>`) into their ids (both true
/// is what `ember_submit` does). Writes up to `cap` ids to `ids` and the count to `*out_n`.
///
/// Buffer checks, as in `ember_detokenize` and `ember_next_text`: a NULL `ids` with `cap > 0`
/// is `EMBER_ERR_NULL_POINTER`, reported before anything else is done; `ids` NULL with
/// `cap == 0` asks for the size.
///
/// Returns `EMBER_OK`; `EMBER_ERR_BUFFER_TOO_SMALL`: `*out_n` receives the number of ids
/// needed and `ids` is untouched; `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_INVALID_UTF8`;
/// `EMBER_ERR_TOKENIZER`; `EMBER_ERR_INTERNAL`. Never waits for an engine step.
///
/// # Safety
/// `rt` is a live handle; `text` is NUL-terminated; `ids` points to `cap` writable ids (or is
/// NULL with `cap == 0`); `out_n` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_tokenize(
    rt: *const ember_runtime,
    text: *const c_char,
    add_special: bool,
    parse_special: bool,
    ids: *mut u32,
    cap: usize,
    out_n: *mut usize,
) -> ember_result {
    let mut needed = None;
    let r = guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out_n, "out_n")?;
        if cap > 0 {
            need(ids, "ids")?;
        }
        // SAFETY: NUL-terminated per the contract.
        let text = unsafe { c_str(text, "text")? };
        let toks = rt.tokenize(text, add_special, parse_special)?;
        if toks.len() > cap {
            needed = Some(toks.len());
            return Err(Failure::new(
                ember_result::EMBER_ERR_BUFFER_TOO_SMALL,
                format!("the text has {} tokens, the buffer holds {cap}", toks.len()),
            ));
        }
        if !toks.is_empty() {
            // SAFETY: `ids` is non-NULL (`cap >= toks.len() > 0`, checked above) with `cap`
            // writable ids per the contract.
            unsafe { std::ptr::copy_nonoverlapping(toks.as_ptr(), ids, toks.len()) };
        }
        // SAFETY: checked non-NULL.
        unsafe { put(out_n, toks.len()) };
        Ok(())
    });
    if let (ember_result::EMBER_ERR_BUFFER_TOO_SMALL, Some(n)) = (r, needed) {
        // SAFETY: checked non-NULL before the text was tokenized.
        unsafe { put(out_n, n) };
    }
    r
}

/// The text of `n_ids` token ids (control tokens render as nothing; bytes that form no valid
/// UTF-8 become U+FFFD), NUL-terminated into `buf`; `*out_len` receives its length without
/// the NUL. The text may contain U+0000 (token `<0x00>`): its length is `*out_len`.
///
/// Buffer checks, as in `ember_tokenize` and `ember_next_text`: a NULL `buf` with
/// `buf_len > 0` is `EMBER_ERR_NULL_POINTER`, reported before anything else is done; `buf`
/// NULL with `buf_len == 0` asks for the size.
///
/// Returns `EMBER_OK`; `EMBER_ERR_BUFFER_TOO_SMALL`: the text needs `*out_len + 1` bytes, only
/// `*out_len` is written; `EMBER_ERR_INVALID_ARGUMENT` (an id outside the vocabulary);
/// `EMBER_ERR_NULL_POINTER`; `EMBER_ERR_INTERNAL`. Never waits for an engine step.
///
/// # Safety
/// `rt` is a live handle; `ids` points to `n_ids` ids (or is NULL with `n_ids == 0`); `buf`
/// points to `buf_len` writable bytes (or is NULL with `buf_len == 0`); `out_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn ember_detokenize(
    rt: *const ember_runtime,
    ids: *const u32,
    n_ids: usize,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> ember_result {
    let mut needed = None;
    let r = guard(|| {
        // SAFETY: the contract of this function.
        let rt = unsafe { runtime(rt)? };
        need(out_len, "out_len")?;
        if buf_len > 0 {
            need(buf, "buf")?;
        }
        // SAFETY: `n_ids` ids per the contract.
        let ids = unsafe { c_slice(ids, n_ids, "ids")? };
        let text = rt.detokenize(ids)?;
        if text.len() + 1 > buf_len {
            needed = Some(text.len());
            return Err(Failure::new(
                ember_result::EMBER_ERR_BUFFER_TOO_SMALL,
                format!(
                    "the text needs {} bytes with its NUL, the buffer has {buf_len}",
                    text.len() + 1
                ),
            ));
        }
        // SAFETY: `buf` is non-NULL (`buf_len >= text.len() + 1 > 0`, checked above) with
        // `buf_len >= text.len() + 1` writable bytes per the contract.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            buf.add(text.len()).write(0);
            put(out_len, text.len());
        }
        Ok(())
    });
    if let (ember_result::EMBER_ERR_BUFFER_TOO_SMALL, Some(n)) = (r, needed) {
        // SAFETY: checked non-NULL before the text was built.
        unsafe { put(out_len, n) };
    }
    r
}

#[cfg(test)]
impl ember_runtime {
    /// The runtime behind the handle (tests only).
    pub(crate) fn inner_for_tests(&self) -> &Runtime {
        &self.inner
    }
}
