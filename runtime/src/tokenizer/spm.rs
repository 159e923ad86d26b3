//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`), as llama.cpp's `llm_tokenizer_spm`.
//!
//! The text (spaces already escaped to `▁`) starts as one symbol per UTF-8 character. Every pair
//! of neighbours whose concatenation is a vocabulary token is a candidate; the candidate whose
//! token has the highest score merges first, ties going to the leftmost pair. Merging repeats
//! until no candidate is left. A final symbol that is not a token is emitted byte by byte as
//! `<0xXX>` tokens (byte fallback).
//!
//! Invariant: a symbol's text is always either one character or a vocabulary token, because
//! only pairs that form a token are ever merged. That is why llama.cpp's `rev_merge`
//! re-segmentation never fires and is not reproduced here.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::VocabIndex;
use super::TokenizerError;

const NONE: usize = usize::MAX;

/// One run of text in the working string: `text[start..start + len]`, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

/// A merge candidate: symbols `left` and `right` would form a token with `score`.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Byte length of the merged text; a mismatch later means the candidate is stale.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the smaller left index (llama.cpp's comparator).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// The SentencePiece merge tables.
/// Token texts are looked up in the tokenizer's [`VocabIndex`] (the last id wins for duplicate texts,
/// as in llama.cpp).
pub(crate) struct Spm {
    /// Score per id.
    scores: Vec<f32>,
    /// The token for each byte in byte fallback, or `None` if the vocabulary lacks it.
    byte_tokens: [Option<u32>; 256],
    /// Used for a byte with no `<0xXX>` token.
    unk: Option<u32>,
}

impl Spm {
    /// Builds the tables. `scores` is indexed by id (`scores` may be empty: all 0).
    pub(crate) fn new(vocab: &VocabIndex, n_vocab: usize, scores: &[f32], unk: Option<u32>) -> Spm {
        let scores = if scores.is_empty() {
            vec![0.0; n_vocab]
        } else {
            scores.to_vec()
        };
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = vocab.id(&hex);
            if slot.is_none() && b < 0x80 {
                // llama.cpp falls back to the byte itself as a one-character token.
                let single = char::from(b as u8).to_string();
                *slot = vocab.id(&single);
            }
        }
        Spm {
            scores,
            byte_tokens,
            unk,
        }
    }

    fn try_add(
        &self,
        vocab: &VocabIndex,
        text: &str,
        syms: &[Symbol],
        left: usize,
        right: usize,
        heap: &mut BinaryHeap<Bigram>,
    ) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (syms[left], syms[right]);
        let piece = &text[l.start..r.start + r.len];
        if let Some(id) = vocab.id(piece) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram {
                left,
                right,
                score,
                size: piece.len(),
            });
        }
    }

    /// Appends the ids of `text` (spaces already escaped to `▁`) to `out`.
    pub(crate) fn encode(
        &self,
        vocab: &VocabIndex,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let end = start + c.len_utf8();
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: if i == 0 { NONE } else { i - 1 },
                next: if end == text.len() { NONE } else { i + 1 },
            });
        }
        if syms.is_empty() {
            return Ok(());
        }
        let mut heap = BinaryHeap::new();
        for i in 1..syms.len() {
            self.try_add(vocab, text, &syms, i - 1, i, &mut heap);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue; // stale: one side has merged since this candidate was queued
            }
            syms[b.left].len += r.len;
            syms[b.left].next = r.next;
            syms[b.right].len = 0;
            if r.next != NONE {
                syms[r.next].prev = b.left;
            }
            let (prev, next) = (syms[b.left].prev, syms[b.left].next);
            self.try_add(vocab, text, &syms, prev, b.left, &mut heap);
            self.try_add(vocab, text, &syms, b.left, next, &mut heap);
        }
        let mut i = 0;
        while i != NONE {
            let s = syms[i];
            let piece = &text[s.start..s.start + s.len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        let id = self.byte_tokens[byte as usize]
                            .or(self.unk)
                            .ok_or(TokenizerError::MissingByteToken(byte))?;
                        out.push(id);
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }
}

/// The byte a `<0xXX>` token stands for, if `text` has that form.
pub(crate) fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
