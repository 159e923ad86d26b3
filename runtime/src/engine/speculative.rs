//! Speculative decoding with prompt lookup: a sequence guesses its next tokens from its own
//! history, and one forward pass checks the guesses.
//!
//! After a sequence samples a token, [`Engine::propose`] looks for the most recent earlier
//! occurrence of its last `n` tokens (`n` from 3 down to 2) in the prompt and what it has
//! generated, and appends the up to `k` tokens that followed it as *draft* tokens. The next
//! step computes the real token and the drafts together (the engine already runs many tokens
//! of one sequence in a step), with a logits row at each. [`Engine::verify`] then samples from
//! the rows in order, exactly as plain decoding would: each sample is emitted; while it equals
//! the draft at that position the next row is valid too (it was computed after that very
//! token), and at the first difference the remaining drafts are dropped. Their K/V stays in
//! the sequence's blocks until later tokens overwrite it (attention never reads past a
//! position), and no block holding an unverified token is entered in the prefix cache.
//!
//! Drafts cost compute (a step of `1 + d` tokens is slower than a step of one), so the draft
//! length adapts: doubled (up to `k`) when a whole draft is accepted, one more than what was
//! accepted when part of it was, halved when its first token is refused, and then drafting
//! also pauses for 1, 2, 4, ... 16 steps (sampling at a high temperature rarely copies its
//! input).
//!
//! The drafter is deterministic, so "sample, then compare with the draft" is the standard
//! speculative-sampling rule for a draft distribution that puts all its mass on one token:
//! the output is the one plain decoding gives, token for token, greedy or sampled (one draw of
//! the sampler's generator per emitted token either way). Drafts are dropped whenever they
//! do not fit a step (token budget, logits rows, blocks) and when the sequence is preempted.

use super::sequence::Seq;
use super::{Engine, StepStats};

/// Most draft tokens per step (`Speculative::k`).
pub const MAX_DRAFT: usize = 16;

/// Longest n-gram the lookup matches.
const MAX_NGRAM: usize = 3;
/// Shortest: one token seen before is weak evidence of what follows (at temperature 0.8 on a
/// summary, unigram drafts were mostly refused and made decoding 0.6x as fast).
const MIN_NGRAM: usize = 2;

/// Speculative decoding settings of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speculative {
    /// Most draft tokens per step (1..=[`MAX_DRAFT`]). A step verifies a sequence's drafts only
    /// when it has a logits row for each: open the engine with
    /// [`Engine::with_draft_rows`](super::Engine::with_draft_rows) (a session needs
    /// `max_logits` of `1 + k`).
    pub k: usize,
    /// Where the guesses come from.
    pub drafter: Drafter,
}

impl Speculative {
    /// Prompt lookup with up to `k` guesses per step.
    pub fn lookup(k: usize) -> Speculative {
        Speculative {
            k,
            drafter: Drafter::Lookup,
        }
    }
}

/// The source of draft tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Drafter {
    /// N-gram matches in the sequence's own tokens (no second model).
    #[default]
    Lookup,
    /// The engine's draft model ([`Engine::set_draft_model`](super::Engine::set_draft_model)),
    /// greedy (`draft_model.rs`).
    Model,
}

/// The tokens that followed the most recent earlier occurrence of the last `n` tokens of
/// `tokens` (`n` = [`MAX_NGRAM`] down to [`MIN_NGRAM`]), at most `k` of them, appended to `out`.
pub(crate) fn lookup(tokens: &[u32], k: usize, out: &mut Vec<u32>) {
    let len = tokens.len();
    for n in (MIN_NGRAM..=MAX_NGRAM.min(len.saturating_sub(1))).rev() {
        let tail = &tokens[len - n..];
        // Most recent match first; the match must end before the tail starts.
        for start in (0..len - n).rev() {
            if &tokens[start..start + n] == tail {
                let from = start + n;
                let to = (from + k).min(len);
                out.extend_from_slice(&tokens[from..to]);
                return;
            }
        }
    }
}

impl Engine {
    /// Appends draft tokens to sequence `slot` (which just sampled a token and goes on).
    pub(super) fn propose(&mut self, slot: u32) {
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        let Some(spec) = seq.speculative else { return };
        if seq.draft_pause.0 > 0 {
            seq.draft_pause.0 -= 1;
            return;
        }
        // Room: every draft could be accepted and one more token sampled after them.
        let room = seq.max_tokens.saturating_sub(seq.n_generated() + 1);
        let k = seq.draft_len.clamp(1, spec.k).min(room);
        if k == 0 {
            return;
        }
        // Into the sequence's own buffer (sized at submit): no allocation.
        let mut found = std::mem::take(&mut seq.draft_buf);
        found.clear();
        match spec.drafter {
            Drafter::Lookup => lookup(&seq.tokens, k, &mut found),
            Drafter::Model => {
                // The tokens move out while the draft engine reads them (no copy).
                let tokens = std::mem::take(&mut seq.tokens);
                self.draft_with_model(slot, &tokens, k, &mut found);
                let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
                seq.tokens = tokens;
            }
        }
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        seq.tokens.extend_from_slice(&found);
        seq.draft = found.len();
        seq.draft_buf = found;
    }

    /// Removes sequence `slot`'s draft tokens (they did not fit this step, or it is
    /// preempted or finished).
    pub(super) fn drop_draft(&mut self, slot: u32) {
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        drop_draft(seq);
    }

    /// Samples from the `1 + draft` logits rows of sequence `slot` (laid out one after the
    /// other in `rows`), keeping drafts while the samples agree with them. The sequence's
    /// `num_computed` counts its tokens up to the last accepted draft.
    pub(super) fn verify(&mut self, slot: u32, rows: &mut [f32], stats: &mut StepStats) {
        let n_vocab = self.model.config.n_vocab;
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        let d = seq.draft;
        // Move the drafts out: `emit` appends each sample to `tokens` as plain decoding does.
        let mut drafts = std::mem::take(&mut seq.draft_buf);
        drafts.clear();
        let base = seq.tokens.len() - d;
        drafts.extend_from_slice(&seq.tokens[base..]);
        seq.tokens.truncate(base);
        seq.draft = 0;
        seq.num_computed = base;
        seq.out.draft_tokens += d;
        let accepted_before = seq.out.accepted_tokens;
        for i in 0..=d {
            let row = &mut rows[i * n_vocab..(i + 1) * n_vocab];
            self.sample_seq(slot, row, None, stats);
            let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
            if seq.out.finish.is_some() {
                break;
            }
            let accepted = i < d && seq.tokens.last() == Some(&drafts[i]);
            if !accepted {
                break;
            }
            // The K/V of this token was computed with the draft, which is the same token.
            seq.num_computed += 1;
            seq.out.accepted_tokens += 1;
        }
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        let accepted = seq.out.accepted_tokens - accepted_before;
        let k = seq.speculative.map_or(1, |s| s.k);
        if accepted == d {
            seq.draft_len = (seq.draft_len * 2).min(k);
            seq.draft_pause = (0, 0);
        } else if accepted > 0 {
            seq.draft_len = accepted + 1;
            seq.draft_pause = (0, 0);
        } else {
            seq.draft_len = (seq.draft_len / 2).max(1);
            let next = (seq.draft_pause.1 * 2).clamp(1, MAX_DRAFT);
            seq.draft_pause = (next, next);
        }
        seq.draft_buf = drafts;
    }
}

/// Removes `seq`'s draft tokens.
pub(super) fn drop_draft(seq: &mut Seq) {
    let len = seq.tokens.len() - seq.draft;
    seq.tokens.truncate(len);
    seq.num_computed = seq.num_computed.min(len);
    seq.draft = 0;
}

#[cfg(test)]
mod tests {
    use super::super::tests::{equivalence_cases, run_requests, spec_engine};
    use super::super::RequestParams;
    use super::{lookup, Speculative};

    /// Every request of `params` over four prompts; ids per sequence, drafts and accepted.
    fn run(blocks: usize, params: &RequestParams) -> (Vec<Vec<u32>>, usize, usize, u64) {
        let mut e = spec_engine(blocks);
        // Repetitive prompts, so that the lookup finds n-grams to continue.
        let prompts: Vec<Vec<u32>> = (0..4u32)
            .map(|i| (0..12).map(|j| 20 + i + (j % 3) * 7).collect())
            .collect();
        let (outs, drafted, accepted) = run_requests(&mut e, &prompts, params);
        (outs, drafted, accepted, e.metrics().preemptions)
    }

    /// Token for token what plain decoding gives: greedy, sampled, `n = 2`, under a grammar,
    /// and in an arena small enough to preempt.
    #[test]
    fn speculative_output_equals_plain_decoding() {
        let cases = equivalence_cases(24, 3);
        let mut total_accepted = 0;
        for params in cases {
            let (plain, d0, _, _) = run(80, &params);
            assert_eq!(d0, 0);
            for k in [1, 4, 16] {
                let spec = RequestParams {
                    speculative: Some(Speculative::lookup(k)),
                    ..params.clone()
                };
                let (outs, drafted, accepted, _) = run(80, &spec);
                assert_eq!(outs, plain, "k {k}: {params:?}");
                assert!(accepted <= drafted);
                total_accepted += accepted;
                let (tight, _, _, preempted) = run(20, &spec);
                assert_eq!(tight, plain, "k {k}, small arena: {params:?}");
                assert!(preempted > 0, "the small arena should preempt");
            }
        }
        assert!(total_accepted > 0, "some drafts should be accepted");
    }

    #[test]
    fn lookup_continues_the_most_recent_longest_match() {
        let mut out = Vec::new();
        lookup(&[1, 2, 3, 4, 9, 9, 1, 2, 3], 2, &mut out);
        assert_eq!(out, [4, 9]);
        out.clear();
        // The trigram 7 8 9 occurs once before; its continuation is cut at the end.
        lookup(&[7, 8, 9, 5, 7, 8, 9], 4, &mut out);
        assert_eq!(out, [5, 7, 8, 9]);
        out.clear();
        // A bigram matches; the most recent occurrence wins. A lone token is not enough.
        lookup(&[4, 1, 4, 2, 9, 4, 2, 7, 4, 2], 1, &mut out);
        assert_eq!(out, [7]);
        out.clear();
        lookup(&[4, 1, 4, 2, 4], 1, &mut out);
        assert!(out.is_empty());
        out.clear();
        lookup(&[1, 2, 3], 3, &mut out);
        assert!(out.is_empty());
        lookup(&[5], 3, &mut out);
        assert!(out.is_empty());
    }
}
