//! The vocabulary every entry point shares: what a request asks for ([`RequestParams`]), how it
//! is named ([`RequestId`]), why a sequence ended ([`FinishReason`]), how much KV cache to
//! allocate ([`KvBudget`]), and a logits row handed to a scoring caller ([`LogitsRow`]).
//!
//! The CLI (through [`Session`](crate::session::Session)), `ember batch`, the C ABI and the
//! fuzzers all speak it; nothing else describes a request.

use std::sync::Arc;

use crate::grammar::Grammar;
use crate::sampler::SamplingParams;

/// How much KV cache to allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBudget {
    /// Exactly this many blocks.
    Blocks(usize),
    /// As many blocks as fit in this many bytes.
    Bytes(usize),
    /// Enough blocks for every running sequence to hold the full context.
    FullContext,
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` were generated.
    Length,
    /// A stop string or stop token was produced.
    Stop,
    /// The caller cancelled the request.
    Cancelled,
    /// The request failed; the cause is in [`SeqOutput::error`](super::SeqOutput::error) (for
    /// a NaN logits row, [`Error::NonFinite`](crate::Error::NonFinite)).
    Error,
}

impl FinishReason {
    /// Lower-case name, as printed in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// What one generation request asks for: the one parameters type of every entry point.
#[derive(Clone, Debug)]
pub struct RequestParams {
    /// Sampler settings (sequence `i` of the request uses seed `seed + i`).
    pub sampling: SamplingParams,
    /// Most tokens to generate per sequence.
    pub max_tokens: usize,
    /// Stop strings (excluded from the output text).
    pub stop: Vec<String>,
    /// Token ids that stop generation, besides the model's end-of-generation tokens.
    pub stop_ids: Vec<u32>,
    /// Number of sequences to sample from the prompt (parallel sampling).
    pub n: usize,
    /// Keep generating past end-of-generation tokens (for reference comparisons). A grammar
    /// overrides it: once the grammar is complete, end of generation ends the sequence.
    pub ignore_eos: bool,
    /// Constrain the output to this grammar ([`Grammar::parse`], [`Grammar::from_json_schema`]):
    /// only tokens that keep the text a prefix of the grammar's language are sampled, and
    /// end of generation only once the grammar is complete. Each sequence (`n > 1`) has its
    /// own grammar state; preemption keeps it.
    pub grammar: Option<Arc<Grammar>>,
    /// Speculative decoding by prompt lookup ([`Speculative`](super::Speculative)): the
    /// output is the same, token for token; fewer forward passes when the text repeats what
    /// came before (summaries, code edits, quotes).
    pub speculative: Option<super::Speculative>,
    /// Go on past the end of the context by dropping old tokens
    /// ([`ContextShift`](super::ContextShift), llama.cpp's context shift): `max_tokens` is then
    /// not bounded by the context. `None`: prompt + `max_tokens` must fit the context.
    pub context_shift: Option<super::ContextShift>,
}

impl Default for RequestParams {
    fn default() -> Self {
        RequestParams {
            sampling: SamplingParams::default(),
            max_tokens: 128,
            stop: Vec::new(),
            stop_ids: Vec::new(),
            n: 1,
            ignore_eos: false,
            grammar: None,
            speculative: None,
            context_shift: None,
        }
    }
}

/// Handle of a submitted request. Generation-checked: a handle of a released request never
/// refers to a later one that reuses its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

impl RequestId {
    /// A stable 64-bit encoding (for the C ABI).
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    /// Inverse of [`RequestId::to_u64`].
    pub fn from_u64(v: u64) -> RequestId {
        RequestId {
            slot: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// The logits at one position of a scoring request
/// ([`Engine::submit_scoring`](super::Engine::submit_scoring)), handed to the observer of
/// [`Engine::step_with`](super::Engine::step_with) in position order. Rows holding a NaN are
/// never handed out: they end the request with [`FinishReason::Error`].
#[derive(Debug)]
pub struct LogitsRow<'a> {
    /// The request.
    pub request: RequestId,
    /// Position of the token whose next-token logits these are.
    pub pos: usize,
    /// `n_vocab` logits (the caller may modify them: a sampler does).
    pub logits: &'a mut [f32],
    /// The sequence's tokens (all of them, including those after `pos` when a chunk holds them).
    pub tokens: &'a [u32],
}
