//! Result codes, the thread-local error message, and the panic boundary.
//!
//! Every exported function returns an [`ember_result`] (or a value that cannot fail) and runs
//! its body through [`guard`]: a Rust panic never unwinds into C. A caught panic becomes
//! `EMBER_ERR_INTERNAL`; if it happened while a runtime's lock was held, that lock is poisoned
//! and every later call on the runtime reports `EMBER_ERR_POISONED`.
//!
//! The numeric values of [`ember_result`] are part of the ABI: never renumber, only append.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Result of every fallible `ember_*` function. Values are stable and never renumbered.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ember_result {
    /// Success.
    EMBER_OK = 0,
    /// A required pointer argument was NULL.
    EMBER_ERR_NULL_POINTER = 1,
    /// An argument is out of range or inconsistent (the message names it).
    EMBER_ERR_INVALID_ARGUMENT = 2,
    /// A string argument is not valid UTF-8.
    EMBER_ERR_INVALID_UTF8 = 3,
    /// The model file could not be opened or read.
    EMBER_ERR_IO = 4,
    /// The model file is malformed or uses an unsupported architecture or tensor type.
    EMBER_ERR_MODEL = 5,
    /// The requested feature is not built into this library (for example the CUDA backend).
    EMBER_ERR_UNSUPPORTED = 6,
    /// The request id is unknown, stale, or already released.
    EMBER_ERR_UNKNOWN_REQUEST = 7,
    /// `ember_next` / `ember_next_text`: no event arrived within the timeout. Not a failure of
    /// the request; call again.
    EMBER_ERR_TIMEOUT = 8,
    /// The caller's buffer is too small; the needed size was reported, nothing was consumed.
    EMBER_ERR_BUFFER_TOO_SMALL = 9,
    /// The request table is full (`max_requests` requests held): release finished requests.
    EMBER_ERR_FULL = 10,
    /// The request can never fit: its prompt leaves no room in the context, prompt +
    /// `max_tokens` exceed the context, or it needs more blocks than the whole KV arena holds
    /// (the message gives both counts).
    EMBER_ERR_TOO_LARGE = 11,
    /// The call does not fit the driving mode: `ember_step` while the background engine runs,
    /// or `ember_start` when it already runs.
    EMBER_ERR_WRONG_MODE = 12,
    /// The runtime was stopped with `ember_stop`: it accepts no more requests or steps.
    EMBER_ERR_STOPPED = 13,
    /// The model has no chat template (`tokenizer.chat_template`).
    EMBER_ERR_NO_CHAT_TEMPLATE = 14,
    /// The model's chat template failed to render these messages.
    EMBER_ERR_CHAT_TEMPLATE = 15,
    /// The tokenizer failed (for example a required BOS/EOS token is missing).
    EMBER_ERR_TOKENIZER = 16,
    /// An engine step failed; the requests it was computing finished with
    /// `EMBER_FINISH_ERROR`.
    EMBER_ERR_ENGINE = 17,
    /// An earlier internal error left this runtime unusable: only `ember_runtime_free` remains.
    EMBER_ERR_POISONED = 18,
    /// An internal error (a bug) was caught at the boundary. The runtime stays usable unless
    /// later calls report `EMBER_ERR_POISONED`.
    EMBER_ERR_INTERNAL = 19,
    /// The prompt cache file cannot be used: written for another model, KV type or block
    /// size, or damaged or truncated (the message says which). Nothing was loaded from it.
    EMBER_ERR_PROMPT_CACHE = 20,
}

use ember_result::*;

/// Every code, in numeric order.
pub(crate) const ALL_RESULTS: [ember_result; 21] = [
    EMBER_OK,
    EMBER_ERR_NULL_POINTER,
    EMBER_ERR_INVALID_ARGUMENT,
    EMBER_ERR_INVALID_UTF8,
    EMBER_ERR_IO,
    EMBER_ERR_MODEL,
    EMBER_ERR_UNSUPPORTED,
    EMBER_ERR_UNKNOWN_REQUEST,
    EMBER_ERR_TIMEOUT,
    EMBER_ERR_BUFFER_TOO_SMALL,
    EMBER_ERR_FULL,
    EMBER_ERR_TOO_LARGE,
    EMBER_ERR_WRONG_MODE,
    EMBER_ERR_STOPPED,
    EMBER_ERR_NO_CHAT_TEMPLATE,
    EMBER_ERR_CHAT_TEMPLATE,
    EMBER_ERR_TOKENIZER,
    EMBER_ERR_ENGINE,
    EMBER_ERR_POISONED,
    EMBER_ERR_INTERNAL,
    EMBER_ERR_PROMPT_CACHE,
];

impl ember_result {
    /// The code's name as a NUL-terminated static string.
    pub fn name(code: u32) -> &'static [u8] {
        match ALL_RESULTS.get(code as usize) {
            Some(c) => match c {
                EMBER_OK => b"EMBER_OK\0",
                EMBER_ERR_NULL_POINTER => b"EMBER_ERR_NULL_POINTER\0",
                EMBER_ERR_INVALID_ARGUMENT => b"EMBER_ERR_INVALID_ARGUMENT\0",
                EMBER_ERR_INVALID_UTF8 => b"EMBER_ERR_INVALID_UTF8\0",
                EMBER_ERR_IO => b"EMBER_ERR_IO\0",
                EMBER_ERR_MODEL => b"EMBER_ERR_MODEL\0",
                EMBER_ERR_UNSUPPORTED => b"EMBER_ERR_UNSUPPORTED\0",
                EMBER_ERR_UNKNOWN_REQUEST => b"EMBER_ERR_UNKNOWN_REQUEST\0",
                EMBER_ERR_TIMEOUT => b"EMBER_ERR_TIMEOUT\0",
                EMBER_ERR_BUFFER_TOO_SMALL => b"EMBER_ERR_BUFFER_TOO_SMALL\0",
                EMBER_ERR_FULL => b"EMBER_ERR_FULL\0",
                EMBER_ERR_TOO_LARGE => b"EMBER_ERR_TOO_LARGE\0",
                EMBER_ERR_WRONG_MODE => b"EMBER_ERR_WRONG_MODE\0",
                EMBER_ERR_STOPPED => b"EMBER_ERR_STOPPED\0",
                EMBER_ERR_NO_CHAT_TEMPLATE => b"EMBER_ERR_NO_CHAT_TEMPLATE\0",
                EMBER_ERR_CHAT_TEMPLATE => b"EMBER_ERR_CHAT_TEMPLATE\0",
                EMBER_ERR_TOKENIZER => b"EMBER_ERR_TOKENIZER\0",
                EMBER_ERR_ENGINE => b"EMBER_ERR_ENGINE\0",
                EMBER_ERR_POISONED => b"EMBER_ERR_POISONED\0",
                EMBER_ERR_INTERNAL => b"EMBER_ERR_INTERNAL\0",
                EMBER_ERR_PROMPT_CACHE => b"EMBER_ERR_PROMPT_CACHE\0",
            },
            None => b"unknown ember_result code\0",
        }
    }
}

/// A failed call: its code and a message saying what was wrong and what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: ember_result,
    pub msg: String,
}

impl Failure {
    pub fn new(code: ember_result, msg: impl Into<String>) -> Failure {
        Failure {
            code,
            msg: msg.into(),
        }
    }

    pub fn null(arg: &str) -> Failure {
        Failure::new(EMBER_ERR_NULL_POINTER, format!("{arg} is NULL"))
    }

    pub fn invalid(msg: impl Into<String>) -> Failure {
        Failure::new(EMBER_ERR_INVALID_ARGUMENT, msg)
    }

    pub fn poisoned() -> Failure {
        Failure::new(
            EMBER_ERR_POISONED,
            "the runtime is poisoned by an earlier internal error: free it and create a new one",
        )
    }

    pub fn unknown_request(id: u64) -> Failure {
        Failure::new(
            EMBER_ERR_UNKNOWN_REQUEST,
            format!("request {id:#x} is unknown, stale or already released"),
        )
    }

    pub fn stopped() -> Failure {
        Failure::new(
            EMBER_ERR_STOPPED,
            "the runtime was stopped with ember_stop: it accepts no more requests or steps",
        )
    }
}

impl From<ember::Error> for Failure {
    /// Maps a runtime error to a code. Errors of the request table (`name == "request"`) are
    /// capacity errors: unknown ids are caught before the engine is asked.
    fn from(e: ember::Error) -> Failure {
        use ember::Error as E;
        let code = match &e {
            E::Io { .. } => EMBER_ERR_IO,
            E::Gguf { .. }
            | E::MissingKey(_)
            | E::BadKey { .. }
            | E::MissingTensor(_)
            | E::BadTensor { .. }
            | E::UnsupportedType { .. }
            | E::UnsupportedArch(_) => EMBER_ERR_MODEL,
            E::Tokenizer(_) => EMBER_ERR_TOKENIZER,
            E::PromptCache { .. } => EMBER_ERR_PROMPT_CACHE,
            E::ChatTemplate(_) => EMBER_ERR_CHAT_TEMPLATE,
            E::InvalidParam {
                name: "request", ..
            } => EMBER_ERR_FULL,
            E::InvalidParam { .. } => EMBER_ERR_INVALID_ARGUMENT,
            E::KvCacheFull { .. } | E::ContextFull { .. } | E::PromptTooLong { .. } => {
                EMBER_ERR_TOO_LARGE
            }
            _ => EMBER_ERR_ENGINE,
        };
        Failure::new(code, e.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread, NUL-terminated. Its buffer is reused
    /// so a polling loop that keeps timing out does not allocate.
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn set_last_error(msg: &str) {
    LAST_ERROR.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        // An interior NUL would cut the message short in C; replace it.
        b.extend(msg.bytes().map(|c| if c == 0 { b'?' } else { c }));
        b.push(0);
    });
}

/// Pointer to this thread's last error message ("" when none). Valid until the next failing
/// call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|b| {
        let mut b = b.borrow_mut();
        if b.is_empty() {
            b.push(0);
        }
        b.as_ptr().cast()
    })
}

/// Runs an exported function's body: returns its code, records the message of a failure, and
/// turns a panic into `EMBER_ERR_INTERNAL`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> ember_result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => EMBER_OK,
        Ok(Err(f)) => {
            set_last_error(&f.msg);
            f.code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (a bug in ember, please report it): {what}"
            ));
            EMBER_ERR_INTERNAL
        }
    }
}

/// Runs a body that cannot fail except by panicking (getters returning a value); a panic yields
/// `fallback`.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}
