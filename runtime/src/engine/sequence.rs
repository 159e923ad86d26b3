//! One sequence of a request: its tokens, how many are in the KV cache, its blocks, its sampler
//! and its output. Everything a sequence will ever need is allocated when it is created (at
//! submit), so stepping it allocates nothing.

use crate::kv::{BlockHash, BlockTable};
use crate::sampler::Sampler;
use crate::session::FinishReason;
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
    /// Produced output.
    pub out: SeqOutput,
}

impl Seq {
    /// Tokens still to be computed before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Number of generated tokens.
    pub fn n_generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }
}
