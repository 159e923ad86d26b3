//! The runtime's error type: one enum, every variant carrying enough context (file offset, key,
//! tensor name, parameter) to say what was wrong and what to do about it.

use std::fmt;
use std::path::PathBuf;

/// Result alias of the runtime crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime. Library code returns these; it never panics or
/// exits on bad input.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The GGUF file is malformed at `offset`.
    Gguf {
        /// Byte offset in the file where the problem was found.
        offset: u64,
        /// What was wrong.
        what: String,
    },
    /// A required metadata key is missing.
    MissingKey(String),
    /// A metadata key has a value of the wrong type or an impossible value.
    BadKey {
        /// The key.
        key: String,
        /// What was wrong.
        what: String,
    },
    /// A required tensor is missing from the model file.
    MissingTensor(String),
    /// A tensor has the wrong shape or an unusable layout.
    BadTensor {
        /// The tensor.
        name: String,
        /// What was wrong.
        what: String,
    },
    /// A tensor uses a ggml type Ember cannot compute with.
    UnsupportedType {
        /// The tensor.
        tensor: String,
        /// Its ggml type name (or numeric id).
        ty: String,
    },
    /// The model architecture is not one Ember implements.
    UnsupportedArch(String),
    /// Tokenizer construction or encoding failed.
    Tokenizer(String),
    /// Chat template rendering failed.
    ChatTemplate(String),
    /// An invalid parameter was passed by the caller.
    InvalidParam {
        /// The parameter.
        name: &'static str,
        /// What was wrong and what is allowed.
        what: String,
    },
    /// The KV-cache arena has no free block for a sequence that needs one.
    KvCacheFull {
        /// Blocks in the arena.
        total_blocks: usize,
        /// Blocks the request needs in all.
        needed_blocks: usize,
    },
    /// A prompt leaves no room in the context for a single generated token.
    PromptTooLong {
        /// Tokens in the prompt.
        n_prompt: usize,
        /// The context length in tokens.
        n_ctx: usize,
    },
    /// A sequence would exceed the model's or the engine's context length.
    ContextFull {
        /// The context length in tokens.
        n_ctx: usize,
        /// Tokens requested.
        requested: usize,
    },
    /// The compute backend could not start or failed (no CUDA driver, device out of memory,
    /// a kernel that failed to compile or launch, a build without CUDA).
    Backend(String),
    /// The model produced or holds non-finite values (NaN weights, or an overflow inside the
    /// forward pass): nothing can be sampled from them.
    NonFinite(String),
    /// A grammar-constrained request reached a point where no token of the vocabulary can
    /// continue the grammar (and it is not complete), or the model's logits allowed none.
    Grammar(String),
    /// A prompt cache file cannot be used: written for another model, KV type or block size,
    /// or damaged or truncated. Nothing was loaded from it.
    PromptCache {
        /// The file.
        path: PathBuf,
        /// What does not match, or where it is damaged.
        what: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Gguf { offset, what } => write!(f, "malformed GGUF at offset {offset}: {what}"),
            Error::MissingKey(k) => write!(f, "GGUF metadata key {k} is missing"),
            Error::BadKey { key, what } => write!(f, "GGUF metadata key {key}: {what}"),
            Error::MissingTensor(t) => write!(f, "tensor {t} is missing from the model file"),
            Error::BadTensor { name, what } => write!(f, "tensor {name}: {what}"),
            Error::UnsupportedType { tensor, ty } => write!(
                f,
                "tensor {tensor}: type {ty} is not supported (supported: {})",
                ember_kernels::supported_names()
            ),
            Error::UnsupportedArch(a) => write!(
                f,
                "model architecture {a:?} is not supported (supported: llama, qwen2, gemma3)"
            ),
            Error::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            Error::ChatTemplate(m) => write!(f, "chat template: {m}"),
            Error::InvalidParam { name, what } => write!(f, "invalid parameter {name}: {what}"),
            Error::KvCacheFull {
                total_blocks,
                needed_blocks,
            } if needed_blocks > total_blocks => write!(
                f,
                "KV cache full: the request needs {needed_blocks} blocks and the whole arena \
                 holds {total_blocks}, so it can never fit this arena (give the arena a larger \
                 budget, or ask for fewer tokens or samples)"
            ),
            Error::KvCacheFull {
                total_blocks,
                needed_blocks,
            } => write!(
                f,
                "KV cache full: the sequence needs {needed_blocks} blocks in all, the arena has \
                 {total_blocks} and none is free (give the arena a larger budget)"
            ),
            Error::PromptTooLong { n_prompt, n_ctx } => write!(
                f,
                "prompt of {n_prompt} tokens does not fit the context of {n_ctx} (it must leave \
                 room for at least one generated token): shorten the prompt or raise n_ctx"
            ),
            Error::ContextFull { n_ctx, requested } => write!(
                f,
                "context full: {requested} tokens requested, the context holds {n_ctx}"
            ),
            Error::Backend(m) => write!(f, "backend: {m}"),
            Error::NonFinite(m) => write!(f, "non-finite values: {m}"),
            Error::Grammar(m) => write!(f, "grammar: {m}"),
            Error::PromptCache { path, what } => write!(
                f,
                "prompt cache {}: {what}; nothing was loaded from it (delete the file to \
                 write a new one)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<crate::sampler::SamplerError> for Error {
    fn from(e: crate::sampler::SamplerError) -> Self {
        Error::InvalidParam {
            name: e.param,
            what: e.message,
        }
    }
}
