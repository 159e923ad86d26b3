//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), built in code on the `tokenizers` crate.
//!
//! The pipeline matches llama.cpp's `llm_tokenizer_bpe`: split the text with the regexes that
//! `tokenizer.ggml.pre` selects, map every byte of each piece to its GPT-2 "byte-level" character,
//! then merge by rank. Special tokens are *not* registered with `tokenizers` (it would always match
//! them); [`super::Tokenizer`] splits them out first and hands only plain text to [`ByteLevelBpe`].
//!
//! Pitfalls this module guards against (see `shared/notes/dependency-probe.md` §2):
//! - `ByteLevel::default()` sets `add_prefix_space = true`, which changes most ids. We always
//!   build `ByteLevel::new(false, true, _)`.
//! - Some vocabularies (SmolLM2) lack a few byte-level atoms. Bytes with no token are dropped,
//!   as llama.cpp does: `tokenizers` skips characters it cannot map when no `unk_token` is set.
//! - `tokenizers` refuses a merge whose parts or result are not in the vocabulary; llama.cpp keeps
//!   them. Such merges can only produce a string that later falls back to single bytes, so we
//!   drop them before building (they never change the result for a well-formed vocabulary).

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::TokenizerError;

/// Words whose merges the BPE model remembers: none. The `tokenizers` cache is thread-local,
/// per tokenizer instance, and outlives the instance: every thread that encodes keeps up to
/// 10 000 words per tokenizer until the thread exits, even after the tokenizer is dropped. An
/// embedded host submitting from many threads, or creating and freeing runtimes on long-lived
/// threads, would see its memory grow (the soak test measured +10 MB over 55 000 requests from 8
/// threads before it levelled off). Merging a word again costs microseconds per prompt.
const BPE_CACHE_WORDS: usize = 0;

/// Values of `tokenizer.ggml.pre` this module implements (absent means `default`).
pub(crate) const SUPPORTED_PRE: &[&str] = &[
    "default",
    "gpt-2",
    "gpt2",
    "phi-2",
    "mpt",
    "olmo",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "pixtral",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "megrez",
    "stablelm2",
];

/// llama.cpp's Llama 3 split regex (the case-insensitive contractions spelled out, as llama.cpp
/// does, so every regex engine reads it the same way).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's Qwen2 split regex: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT` regexes, applied one after the other.
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// Which regex pipeline splits the text before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreKind {
    /// llama.cpp's four-regex default (also used when `tokenizer.ggml.pre` is absent).
    Default,
    /// The GPT-2 regex.
    Gpt2,
    /// Each number character alone, then the GPT-2 regex (StarCoder, SmolLM).
    StarCoder,
    /// The Llama 3 regex; whole words found in the vocabulary skip merging.
    Llama3,
    /// The Qwen2 regex.
    Qwen2,
}

/// What a `tokenizer.ggml.pre` value implies, as llama.cpp's vocabulary loader sets it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreConfig {
    pub kind: PreKind,
    /// A word that is itself a token is emitted without merging (llama.cpp `ignore_merges`).
    pub ignore_merges: bool,
    /// Default of `tokenizer.ggml.add_bos_token` when the key is absent.
    pub add_bos_default: bool,
}

impl PreConfig {
    /// Maps `tokenizer.ggml.pre` to its pipeline; `None` is llama.cpp's `default`.
    pub(crate) fn from_name(pre: Option<&str>) -> Result<PreConfig, TokenizerError> {
        let plain = |kind| PreConfig {
            kind,
            ignore_merges: false,
            add_bos_default: false,
        };
        Ok(match pre.unwrap_or("default") {
            "default" => plain(PreKind::Default),
            "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" => plain(PreKind::Gpt2),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => plain(PreKind::StarCoder),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => PreConfig {
                kind: PreKind::Llama3,
                ignore_merges: true,
                add_bos_default: true,
            },
            "dbrx" | "smaug-bpe" => plain(PreKind::Llama3),
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => plain(PreKind::Qwen2),
            other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
        })
    }
}

/// A byte-level BPE over plain text (no special tokens).
pub(crate) struct ByteLevelBpe {
    inner: tokenizers::Tokenizer,
}

fn bpe_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Bpe(e.to_string())
}

fn split(regex: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let s = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(bpe_err)?;
    Ok(PreTokenizerWrapper::Split(s))
}

fn pre_tokenizer(kind: PreKind) -> Result<Sequence, TokenizerError> {
    // `use_regex = true` means ByteLevel applies the GPT-2 regex itself; otherwise it only maps
    // bytes. `add_prefix_space` must stay false for every llama.cpp pipeline.
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let steps = match kind {
        PreKind::Gpt2 => vec![byte_level(true)],
        PreKind::StarCoder => {
            vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ]
        }
        PreKind::Llama3 => vec![split(LLAMA3_REGEX)?, byte_level(false)],
        PreKind::Qwen2 => vec![split(QWEN2_REGEX)?, byte_level(false)],
        PreKind::Default => {
            let mut v = DEFAULT_REGEXES
                .iter()
                .map(|r| split(r))
                .collect::<Result<Vec<_>, _>>()?;
            v.push(byte_level(false));
            v
        }
    };
    Ok(Sequence::new(steps))
}

impl ByteLevelBpe {
    /// Builds the BPE from the vocabulary texts (index = id) and `"left right"` merges.
    pub(crate) fn new(
        texts: &[String],
        merges: &[String],
        pre: PreConfig,
    ) -> Result<ByteLevelBpe, TokenizerError> {
        if merges.is_empty() {
            return Err(TokenizerError::MissingMerges);
        }
        let vocab: Vocab = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut pairs: Merges = Vec::with_capacity(merges.len());
        let mut joined = String::new();
        for (index, m) in merges.iter().enumerate() {
            // As llama.cpp: the separator is the first space after the first byte, so a merge
            // whose left part starts with a space still parses.
            let pos = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            let Some(pos) = pos else {
                return Err(TokenizerError::BadMerge {
                    index,
                    merge: m.clone(),
                });
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&joined) {
                pairs.push((a.to_string(), b.to_string()));
            }
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .cache_capacity(BPE_CACHE_WORDS)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(bpe_err)?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre.kind)?));
        Ok(ByteLevelBpe { inner })
    }

    /// Appends the ids of plain `text` to `out`.
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(bpe_err)?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order. Index = byte.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            u32::from(b)
        } else {
            let c = next;
            next += 1;
            c
        };
        map[b as usize] = char::from_u32(cp).unwrap_or('\0');
    }
    map
}

/// Appends the raw bytes a byte-level token text stands for, as llama.cpp's `llama_decode_text`:
/// a character outside the byte-level alphabet becomes `[UNK_BYTE_0x<hex><token text>]`.
pub(crate) fn decode_byte_level(
    text: &str,
    char_to_byte: &impl Fn(char) -> Option<u8>,
    out: &mut Vec<u8>,
) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{byte:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}
