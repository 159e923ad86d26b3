//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): the `tokenizers` crate's pre-tokenizers,
//! then merges by rank over the vocabulary the tokenizer holds.
//!
//! The pipeline matches llama.cpp's `llm_tokenizer_bpe`: split the text with the regexes that
//! `tokenizer.ggml.pre` selects, map every byte of each piece to its GPT-2 "byte-level" character
//! (both by `tokenizers`' pre-tokenizers), then merge by rank. Special tokens are split out first
//! by [`super::Tokenizer`]; [`ByteLevelBpe`] sees only plain text.
//!
//! The merging is done here rather than by `tokenizers`' `BPE` model, for start-up time: that
//! model copies every token text twice and every merge three times into hash maps of `String`s
//! (40–60 ms for SmolLM2's 49 152 tokens and 48 900 merges on the development machine, the
//! largest part of a cold start). Here the merge table is a map of id pairs built over the
//! tokenizer's own texts ([`super::vocab::VocabIndex`]). The algorithm is the one both use: the
//! lowest-ranked adjacent pair merges first, ties to the leftmost, through a heap, so a long
//! word costs O(n log n).
//!
//! Pitfalls this module guards against (see `shared/notes/dependency-probe.md` §2):
//! - `ByteLevel::default()` sets `add_prefix_space = true`, which changes most ids. We always
//!   build `ByteLevel::new(false, true, _)`.
//! - Some vocabularies (SmolLM2) lack a few byte-level atoms. Characters with no token are
//!   dropped, as llama.cpp does (and `tokenizers` without an `unk_token`).
//! - A merge whose parts or result are not in the vocabulary can only produce a string that
//!   later falls back to single bytes: it is skipped. A pair listed twice keeps its first rank
//!   (llama.cpp's `bpe_ranks.emplace`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

use super::vocab::{SeededHash, VocabIndex};
use super::TokenizerError;

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
    pre: Sequence,
    /// `(left, right)` → `(rank, merged)`: the merges whose parts and result are tokens.
    merges: HashMap<(u32, u32), (u32, u32), SeededHash>,
    /// A word that is itself a token is emitted without merging (llama.cpp `ignore_merges`).
    ignore_merges: bool,
}

const NONE: u32 = u32::MAX;

/// One symbol of a word being merged: a token id, linked to its neighbours (`NONE` at the
/// ends); a symbol merged into its left neighbour is dead.
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

/// The buffers one `encode` call reuses for every word.
#[derive(Default)]
struct Work {
    symbols: Vec<Symbol>,
    /// Candidate merges, lowest `(rank, position)` first, with the id they make.
    heap: BinaryHeap<Reverse<(u32, u32, u32)>>,
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

pub(super) fn pre_tokenizer(kind: PreKind) -> Result<Sequence, TokenizerError> {
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
    /// Builds the merge table from `"left right"` merges (index = rank) over `vocab`.
    pub(crate) fn new(
        vocab: &VocabIndex,
        merges: &[impl AsRef<str>],
        pre: PreConfig,
    ) -> Result<ByteLevelBpe, TokenizerError> {
        if merges.is_empty() {
            return Err(TokenizerError::MissingMerges);
        }
        let mut table = HashMap::with_capacity_and_hasher(merges.len(), SeededHash::new());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            let m = m.as_ref();
            // As llama.cpp: the separator is the first space after the first byte, so a merge
            // whose left part starts with a space still parses.
            let pos = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            let Some(pos) = pos else {
                return Err(TokenizerError::BadMerge {
                    index: rank,
                    merge: m.to_string(),
                });
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if let (Some(a), Some(b), Some(ab)) = (vocab.id(a), vocab.id(b), vocab.id(&joined)) {
                // `rank` fits: merges are read from a GGUF array bounded far below `u32::MAX`.
                table.entry((a, b)).or_insert((rank as u32, ab));
            }
        }
        Ok(ByteLevelBpe {
            pre: pre_tokenizer(pre.kind)?,
            merges: table,
            ignore_merges: pre.ignore_merges,
        })
    }

    /// Appends the ids of plain `text` to `out`.
    pub(crate) fn encode(
        &self,
        vocab: &VocabIndex,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let mut pre = PreTokenizedString::from(text);
        self.pre.pre_tokenize(&mut pre).map_err(bpe_err)?;
        let mut work = Work::default();
        for (word, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            self.encode_word(vocab, word, &mut work, out);
        }
        Ok(())
    }

    /// Merges one pre-tokenized word (byte-level characters) and appends its ids.
    fn encode_word(&self, vocab: &VocabIndex, word: &str, w: &mut Work, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            if let Some(id) = vocab.id(word) {
                out.push(id);
                return;
            }
        }
        // One symbol per character that is a token; the others are dropped (module docs).
        w.symbols.clear();
        for (start, c) in word.char_indices() {
            if let Some(id) = vocab.id(&word[start..start + c.len_utf8()]) {
                let at = w.symbols.len() as u32;
                if let Some(last) = w.symbols.last_mut() {
                    last.next = at;
                }
                w.symbols.push(Symbol {
                    id,
                    prev: if at == 0 { NONE } else { at - 1 },
                    next: NONE,
                    alive: true,
                });
            }
        }
        if w.symbols.is_empty() {
            return;
        }
        w.heap.clear();
        for (i, pair) in w.symbols.windows(2).enumerate() {
            if let Some(&(rank, id)) = self.merges.get(&(pair[0].id, pair[1].id)) {
                w.heap.push(Reverse((rank, i as u32, id)));
            }
        }
        let syms = &mut w.symbols;
        while let Some(Reverse((_, pos, id))) = w.heap.pop() {
            let left = syms[pos as usize];
            if !left.alive || left.next == NONE {
                continue;
            }
            let right = syms[left.next as usize];
            // Stale: one side has merged since this candidate was queued.
            if self.merges.get(&(left.id, right.id)).map(|m| m.1) != Some(id) {
                continue;
            }
            syms[pos as usize].id = id;
            syms[pos as usize].next = right.next;
            syms[left.next as usize].alive = false;
            if right.next != NONE {
                syms[right.next as usize].prev = pos;
            }
            if left.prev != NONE {
                let prev = syms[left.prev as usize].id;
                if let Some(&(rank, m)) = self.merges.get(&(prev, id)) {
                    w.heap.push(Reverse((rank, left.prev, m)));
                }
            }
            if right.next != NONE {
                let next = syms[right.next as usize].id;
                if let Some(&(rank, m)) = self.merges.get(&(id, next)) {
                    w.heap.push(Reverse((rank, pos, m)));
                }
            }
        }
        // The first symbol is never merged away (merges keep the left one).
        let mut i = 0;
        while i != NONE {
            out.push(syms[i as usize].id);
            i = syms[i as usize].next;
        }
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
