//! The exports that load or save files besides the model: a request's prompt KV saved to a
//! file, a file loaded back into the prefix cache (`ember::engine::Engine::save_prompt_cache` /
//! `load_prompt_cache`), and a draft model for speculative decoding.

use std::ffi::c_char;

use crate::api::{c_path, ember_request_id, ember_runtime, put, runtime};
use crate::error::{ember_result, guard, Failure};
use crate::runtime::Runtime;

/// A prompt cache call: `call` on the runtime and the path, its token count written to
/// `out_tokens` (when not NULL) on success only.
///
/// # Safety
/// `rt` is NULL or a live handle; `path` is NULL or NUL-terminated; `out_tokens` is NULL or
/// writable.
unsafe fn cache_file_call(
    rt: *const ember_runtime,
    path: *const c_char,
    out_tokens: *mut usize,
    call: impl FnOnce(&Runtime, &std::path::Path) -> Result<usize, Failure>,
) -> Result<(), Failure> {
    // SAFETY: NULL or a live handle per the contract.
    let rt = unsafe { runtime(rt)? };
    // SAFETY: NULL or NUL-terminated per the contract.
    let path = unsafe { c_path(path, "path") }?;
    let n = call(rt, &path)?;
    if !out_tokens.is_null() {
        // SAFETY: non-NULL, writable per the contract.
        unsafe { put(out_tokens, n) };
    }
    Ok(())
}

/// Load a prompt cache file — written by `ember_prompt_cache_save` or by `ember generate/chat
/// --prompt-cache` with the same model file and block size — into the runtime's prefix cache:
/// a later request whose prompt starts with the tokens it holds (typically a long system
/// prompt) reuses their KV blocks and computes only the rest. Nothing else changes: the file's
/// blocks wait in the prefix cache like those of a finished request, and are evicted like them
/// when the arena needs room. Call it after `ember_runtime_new`, before submitting; needs
/// `config.prefix_caching` (the default). Thread-safe; it holds the engine for the time of
/// reading the file.
///
/// `*out_tokens` (if `out_tokens` is not NULL) receives the tokens now in the prefix cache:
/// all the file holds, or fewer when the context or the free blocks of the arena have no room
/// for all of it.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER` (`rt` or `path`); `EMBER_ERR_IO` (the file
/// cannot be opened or read, e.g. it does not exist yet); `EMBER_ERR_PROMPT_CACHE` (written for
/// another model, KV type or block size, or damaged or truncated; the message says which);
/// `EMBER_ERR_INVALID_ARGUMENT` (prefix caching is off); `EMBER_ERR_STOPPED`;
/// `EMBER_ERR_ENGINE` (the device copy failed); `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`.
/// On failure the prefix cache is as it was and `*out_tokens` is untouched.
///
/// # Safety
/// `rt` is a live handle; `path` is a NUL-terminated path (bytes, as for `ember_runtime_new`);
/// `out_tokens` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ember_prompt_cache_load(
    rt: *const ember_runtime,
    path: *const c_char,
    out_tokens: *mut usize,
) -> ember_result {
    // SAFETY: the contract of this function.
    guard(|| unsafe { cache_file_call(rt, path, out_tokens, |rt, p| rt.prompt_cache_load(p)) })
}

/// Save the KV blocks of request `id`'s prompt — its leading full blocks of `block_size`
/// tokens, as the prefix cache holds them once the prompt is computed — to a prompt cache
/// file at `path` for `ember_prompt_cache_load` after a restart. Call it once the request has
/// produced its first token (or finished), before `ember_release`. The file is written beside
/// `path` and renamed over it, so a reader never sees half a file. Thread-safe; it holds the
/// engine for the time of writing the file.
///
/// `*out_tokens` (if `out_tokens` is not NULL) receives the tokens saved; 0 when the prompt
/// has no full block in the cache (shorter than a block, or not computed yet): then no file
/// is written.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER` (`rt` or `path`); `EMBER_ERR_UNKNOWN_REQUEST`;
/// `EMBER_ERR_IO` (the file cannot be written; nothing is left behind);
/// `EMBER_ERR_INVALID_ARGUMENT` (prefix caching is off); `EMBER_ERR_ENGINE` (the device copy
/// failed); `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`. On failure `*out_tokens` is
/// untouched.
///
/// # Safety
/// `rt` is a live handle; `path` is a NUL-terminated path; `out_tokens` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ember_prompt_cache_save(
    rt: *const ember_runtime,
    id: ember_request_id,
    path: *const c_char,
    out_tokens: *mut usize,
) -> ember_result {
    // SAFETY: the contract of this function.
    guard(|| unsafe { cache_file_call(rt, path, out_tokens, |rt, p| rt.prompt_cache_save(id, p)) })
}

/// Give the runtime a draft model for speculative decoding: the GGUF at `path`, a smaller
/// model with the same vocabulary (e.g. SmolLM2-135M for a SmolLM2-1.7B runtime). From then
/// on, requests with `ember_params.draft_k > 0` draft their guesses with it (greedily, up to
/// `draft_k` per step) instead of by prompt lookup; the output is unchanged, token for token.
/// It runs on the runtime's backend with a KV arena of its own (`max_seqs` sequences at the full
/// context). Call it after `ember_runtime_new`, before submitting. Thread-safe; the file is
/// loaded before the engine is held.
///
/// Returns `EMBER_OK`; `EMBER_ERR_NULL_POINTER` (`rt` or `path`); `EMBER_ERR_IO` (the file
/// cannot be opened); `EMBER_ERR_MODEL` (not a usable GGUF model); `EMBER_ERR_TOKENIZER`;
/// `EMBER_ERR_INVALID_ARGUMENT` (another vocabulary size, requests are held, or its arena
/// cannot be allocated; the message says which); `EMBER_ERR_STOPPED`; `EMBER_ERR_POISONED`; `EMBER_ERR_INTERNAL`. On failure the
/// runtime is as it was (an earlier draft model stays).
///
/// # Safety
/// `rt` is a live handle; `path` is a NUL-terminated path (bytes, as for `ember_runtime_new`).
#[no_mangle]
pub unsafe extern "C" fn ember_runtime_set_draft_model(
    rt: *const ember_runtime,
    path: *const c_char,
) -> ember_result {
    guard(|| {
        // SAFETY: NULL or a live handle per the contract.
        let rt = unsafe { runtime(rt)? };
        // SAFETY: NULL or NUL-terminated per the contract.
        let path = unsafe { c_path(path, "path") }?;
        rt.set_draft_model(&path)
    })
}
