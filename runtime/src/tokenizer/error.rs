//! The tokenizer's error type. Every message names what was wrong (which GGUF key, which token
//! id, which merge) and what to do about it.

use std::fmt;

/// Everything that can go wrong while building a [`super::Tokenizer`] or encoding text.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TokenizerError {
    /// `tokenizer.ggml.tokens` is empty.
    EmptyVocab,
    /// `tokenizer.ggml.model` names a tokenizer Ember does not implement.
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer Ember does not implement.
    UnsupportedPre(String),
    /// A per-token array has a different length than `tokenizer.ggml.tokens`.
    LengthMismatch {
        /// The GGUF key of the array.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The number of tokens.
        expected: usize,
    },
    /// `tokenizer.ggml.merges` is absent or empty for a `gpt2` tokenizer.
    MissingMerges,
    /// A merge string is not of the form `"left right"`.
    BadMerge {
        /// Index of the merge in `tokenizer.ggml.merges`.
        index: usize,
        /// The merge string.
        merge: String,
    },
    /// The vocabulary has more tokens than a `u32` id can address.
    VocabTooLarge(usize),
    /// The underlying BPE implementation refused the vocabulary or the text.
    Bpe(String),
    /// The model asks for a BOS (or EOS) token but the GGUF names none.
    MissingSpecial(&'static str),
    /// SentencePiece byte fallback needs a `<0xXX>` token that the vocabulary lacks, and there is
    /// no unknown token to use instead.
    MissingByteToken(u8),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyVocab => write!(
                f,
                "tokenizer.ggml.tokens is empty: the GGUF file has no vocabulary; \
                 use a model file converted with its tokenizer"
            ),
            Self::UnsupportedModel(m) => write!(
                f,
                "tokenizer.ggml.model = {m:?} is not supported \
                 (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece BPE)"
            ),
            Self::UnsupportedPre(p) => write!(
                f,
                "tokenizer.ggml.pre = {p:?} is not supported (supported: {}); \
                 add its pre-tokenizer regexes to runtime/src/tokenizer/bpe.rs",
                super::bpe::SUPPORTED_PRE.join(", ")
            ),
            Self::LengthMismatch { key, len, expected } => write!(
                f,
                "{key} has {len} entries but tokenizer.ggml.tokens has {expected}: \
                 the GGUF file is inconsistent; re-convert the model"
            ),
            Self::MissingMerges => write!(
                f,
                "tokenizer.ggml.merges is missing or empty, but a \"gpt2\" tokenizer needs it; \
                 re-convert the model"
            ),
            Self::BadMerge { index, merge } => write!(
                f,
                "tokenizer.ggml.merges[{index}] = {merge:?} is not two tokens separated by a space"
            ),
            Self::VocabTooLarge(n) => {
                write!(
                    f,
                    "tokenizer.ggml.tokens has {n} entries: more than a u32 id can address, or \
                     more than 4 GiB of text"
                )
            }
            Self::Bpe(what) => write!(f, "byte-level BPE: {what}"),
            Self::MissingSpecial(which) => write!(
                f,
                "the model asks for a {which} token to be added, but tokenizer.ggml.{}_token_id \
                 is missing; encode with add_special = false or fix the GGUF metadata",
                which.to_ascii_lowercase()
            ),
            Self::MissingByteToken(b) => write!(
                f,
                "SentencePiece byte fallback needs token <0x{b:02X}>, which the vocabulary lacks, \
                 and tokenizer.ggml.unknown_token_id is not set"
            ),
        }
    }
}

impl std::error::Error for TokenizerError {}
