//! One sequence of a request: its tokens, how many are in the KV cache, its blocks, its sampler
//! and its output. Everything a sequence will ever need is allocated when it is created (at
//! submit), so stepping it allocates nothing.
//!
//! A sequence either samples (a generation request: logits of its last token only) or scores
//! (a scoring request: the logits of a range of positions go to the caller, nothing is sampled,
//! and once computed it holds its KV cache, idle, until more tokens are appended or it is
//! released).

use std::ops::Range;
use std::time::Instant;

use super::FinishReason;
use crate::error::Error;
use crate::grammar::GrammarMatcher;
use crate::kv::{BlockHash, BlockTable};
use crate::sampler::Sampler;
use crate::stop::StopMatcher;
use crate::tokenizer::StreamDecoder;

/// Where a sequence is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqState {
    /// Queued for admission (new, or preempted and waiting to be recomputed).
    Waiting,
    /// Waiting for its parent's prompt to be computed, then forked from it (`n > 1`).
    ForkPending,
    /// Holds KV blocks and is scheduled every step.
    Running,
    /// Done; its blocks are returned.
    Finished,
}

/// What a sequence has produced so far. Read it with [`Engine::output`](super::Engine::output).
#[derive(Debug)]
pub struct SeqOutput {
    /// Generated token ids (the end-of-generation or stop token included when one ended it).
    pub ids: Vec<u32>,
    /// Generated text, complete UTF-8 only (stop strings and end-of-generation tokens excluded).
    pub text: String,
    /// `text.len()` after each generated token: token `i` produced `text[piece_ends[i-1]..
    /// piece_ends[i]]` (possibly empty while a character is incomplete or a stop string may be
    /// forming).
    pub piece_ends: Vec<u32>,
    /// Why it ended, once it has.
    pub finish: Option<FinishReason>,
    /// What went wrong when `finish` is [`FinishReason::Error`] (for a NaN logits row,
    /// [`Error::NonFinite`]).
    pub error: Option<Error>,
    /// When the request was submitted.
    pub submitted: Instant,
    /// When its first token was sampled.
    pub first_token: Option<Instant>,
    /// When its last token was sampled.
    pub last_token: Option<Instant>,
    /// Prompt length in tokens.
    pub n_prompt: usize,
    /// Prompt tokens taken from the prefix cache (a prompt cache file loaded into it, or an
    /// earlier request) instead of computed, at the admission that computed the prompt.
    pub n_cached: usize,
    /// Tokens dropped from the context by context shifts ([`ContextShift`](super::ContextShift)).
    pub shifted_tokens: usize,
    /// Draft tokens proposed by speculative decoding and checked by the model.
    pub draft_tokens: usize,
    /// Of those, the ones the model's samples agreed with (each saved a forward pass).
    pub accepted_tokens: usize,
}

impl SeqOutput {
    /// Prompt tokens per second: the prompt over the time from submission to the first token
    /// (queueing included when other requests ran first).
    pub fn prefill_tok_s(&self) -> f64 {
        let t = self.first_token.unwrap_or_else(Instant::now) - self.submitted;
        self.n_prompt as f64 / t.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second after the first (0 with fewer than two tokens).
    pub fn decode_tok_s(&self) -> f64 {
        match (self.first_token, self.last_token) {
            (Some(a), Some(b)) if self.ids.len() > 1 => {
                (self.ids.len() - 1) as f64 / (b - a).as_secs_f64().max(1e-9)
            }
            _ => 0.0,
        }
    }
}

/// A sequence and its private state.
#[derive(Debug)]
pub(crate) struct Seq {
    /// Request slot this sequence belongs to.
    pub req: u32,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    /// Length of the prompt.
    pub n_prompt: usize,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed: usize,
    /// Physical blocks, in order.
    pub table: BlockTable,
    /// Chained hashes of the leading full blocks that are registered in the prefix cache.
    pub block_hashes: Vec<BlockHash>,
    /// Admission counter value when last admitted (preemption picks the highest).
    pub admitted_at: u64,
    /// State.
    pub state: SeqState,
    /// Sampler with its own RNG and scratch.
    pub sampler: Sampler,
    /// Streaming detokenizer.
    pub decoder: StreamDecoder,
    /// Stop-string matcher.
    pub stops: StopMatcher,
    /// Where the sequence is in its request's grammar, if it has one.
    pub grammar: Option<GrammarMatcher>,
    /// Speculative decoding settings (prompt lookup), if the request asked for it.
    pub speculative: Option<super::Speculative>,
    /// What to do at the end of the context (`shift.rs`), if the request asked to shift.
    pub shift: Option<super::ContextShift>,
    /// Whether a shift has happened (its KV then stays out of the prefix cache).
    pub shifted: bool,
    /// Generated tokens a shift dropped from `tokens` (still counted against `max_tokens`).
    pub dropped_generated: usize,
    /// How many of the last `tokens` are unverified drafts (`speculative.rs`).
    pub draft: usize,
    /// Scratch for drafts, `k` long (allocated at submit).
    pub draft_buf: Vec<u32>,
    /// Drafts to propose next (`speculative.rs` says how it adapts).
    pub draft_len: usize,
    /// Steps to go without drafting, and the length of the last such pause (doubled each
    /// time a draft is refused at its first token, up to 16 steps; reset by an accepted one).
    pub draft_pause: (usize, usize),
    /// Produced output.
    pub out: SeqOutput,
    /// A scoring sequence (samples nothing; holds its KV cache when computed).
    pub scoring: bool,
    /// Positions whose logits rows go to the caller (scoring only; its start moves past each
    /// row handed out, so a recomputation after preemption never hands a row out twice).
    pub rows: Range<usize>,
}

impl Seq {
    /// Tokens still to be computed before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Whether position `pos` gets a logits row when computed (`last`: the last token).
    pub fn wants_row(&self, pos: usize, last: usize) -> bool {
        if self.scoring {
            self.rows.contains(&pos)
        } else {
            // The last real token and every draft after it.
            pos + self.draft >= last
        }
    }

    /// Logits rows computing the next `k` tokens produces.
    pub fn rows_for(&self, k: usize) -> usize {
        let (a, b) = (self.num_computed, self.num_computed + k);
        if self.scoring {
            b.min(self.rows.end).saturating_sub(a.max(self.rows.start))
        } else if k > 0 && b == self.tokens.len() {
            b - a.max(self.tokens.len() - 1 - self.draft)
        } else {
            0
        }
    }

    /// The most of `k` tokens to compute with at most `rows` logits rows.
    pub fn fit_rows(&self, k: usize, rows: usize) -> usize {
        if self.rows_for(k) <= rows {
            return k;
        }
        if self.scoring {
            // Stop just before the first row that does not fit.
            self.rows.start.max(self.num_computed) + rows - self.num_computed
        } else {
            k.min(self.pending() - 1)
        }
    }

    /// First position that must be computed (not taken from the prefix cache): the first row
    /// wanted, and always the last token.
    pub fn first_needed(&self) -> usize {
        let last = self.tokens.len() - 1;
        if self.scoring {
            self.rows.start.min(last)
        } else {
            last
        }
    }

    /// Number of generated tokens.
    pub fn n_generated(&self) -> usize {
        self.tokens.len() - self.n_prompt + self.dropped_generated
    }
}
