//! The C ABI of Ember: `libember.so` / `libember.a`, header `include/ember.h` (generated from
//! this crate by cbindgen; `scripts/ci/test-ffi.sh` fails when the checked-in header is stale).
//!
//! Shape, after rustls-ffi and llama.h: an opaque runtime handle; `#[repr(C)]` config and
//! request-parameter structs with `*_default()` getters; a numbered result enum that is never
//! renumbered, with a per-thread message getter; out-parameters written only on success;
//! generation-checked request ids (never pointers), so stale, released and double-released ids
//! are errors, not undefined behaviour; a panic boundary on every export.
//!
//! Two driving modes: caller-driven (`ember_step` runs one engine step on the caller's thread
//! and creates no thread) and background (`ember_start` runs one internal thread until
//! `ember_stop`). Every function may be called from any thread concurrently (see
//! [`runtime`](crate::runtime) for the locks); `ember_next` blocks on a condition variable.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod api;
mod error;
mod prompt_cache;
mod runtime;
mod types;

pub use api::*;
pub use error::ember_result;
pub use prompt_cache::*;
pub use types::{
    ember_backend, ember_chat_message, ember_config, ember_cuda_weights, ember_event,
    ember_event_kind, ember_finish_reason, ember_kv_type, ember_model_info, ember_params,
    ember_stats, EMBER_CONTEXT_ERROR, EMBER_CONTEXT_SHIFT, EMBER_CONTEXT_TRUNCATE,
};

/// Version of the runtime, as "MAJOR.MINOR.PATCH".
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(test)]
mod tests;
