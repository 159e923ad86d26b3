//! Scoring requests: "compute these tokens and hand me the logits at these positions", with no
//! sampling. Perplexity, benchmarks, teacher-forced reference comparisons and
//! [`Session::eval`](crate::session::Session::eval) are scoring requests.
//!
//! A scoring request is one sequence with room for the whole context. Its rows go to the
//! observer of [`Engine::step_with`] as they are computed; once every token is computed it
//! stays running but idle, holding its KV cache, so [`Engine::append`] can extend it (a decode
//! loop driven by the caller) without recomputing anything. It ends only by
//! [`Engine::cancel`] / [`Engine::release`], or with [`FinishReason::Error`] on a NaN row.

use std::ops::Range;

use super::{invalid, Engine, FinishReason, Request, RequestId, RequestParams, SeqState};
use crate::error::{Error, Result};
use crate::kv::BlockId;

impl Engine {
    /// Queue a scoring request for `tokens`: the logits at the positions in `rows` are handed to
    /// [`Engine::step_with`]'s observer; nothing is sampled. `rows` must lie within the tokens.
    /// Refused (nothing queued) for an empty or out-of-vocabulary prompt, a prompt longer than
    /// the context ([`Error::ContextFull`]), or more blocks than the arena holds
    /// ([`Error::KvCacheFull`]).
    pub fn submit_scoring(&mut self, tokens: &[u32], rows: Range<usize>) -> Result<RequestId> {
        if tokens.is_empty() {
            return Err(invalid("prompt", "the prompt has no tokens"));
        }
        self.check_tokens(tokens)?;
        if tokens.len() > self.n_ctx {
            return Err(Error::ContextFull {
                n_ctx: self.n_ctx,
                requested: tokens.len(),
            });
        }
        check_rows(&rows, 0, tokens.len())?;
        let need = self.blocks_for(tokens.len());
        let slot = self.take_request_slot(need, 1)?;
        let params = RequestParams {
            max_tokens: 0,
            ..RequestParams::default()
        };
        let mut seq = match self.new_seq(slot, tokens, &params, 0, self.n_ctx) {
            Ok(s) => s,
            Err(e) => {
                self.free_requests.push(slot);
                return Err(e);
            }
        };
        seq.scoring = true;
        seq.rows = rows;
        let s = self.free_seqs.pop().expect("checked above");
        self.seqs[s as usize] = Some(seq);
        self.waiting.push_back(s);
        self.request_generation = self.request_generation.wrapping_add(1);
        self.requests[slot as usize] = Some(Request {
            generation: self.request_generation,
            seqs: vec![s],
            stop_ids: Vec::new(),
            ignore_eos: false,
            fork_logits: Vec::new(),
            fork_work: Vec::new(),
        });
        Ok(RequestId {
            slot,
            generation: self.request_generation,
        })
    }

    /// Append `tokens` to a scoring request and hand the logits at the positions in `rows`
    /// (counted from the start of the sequence, within the appended tokens) to the observer
    /// as they are computed. Allocates nothing. On error nothing changes.
    pub fn append(&mut self, id: RequestId, tokens: &[u32], rows: Range<usize>) -> Result<()> {
        self.check_tokens(tokens)?;
        let s = self.request(id)?.seqs[0];
        let n_ctx = self.n_ctx;
        let seq = self.seqs[s as usize].as_mut().expect("live sequence");
        if !seq.scoring {
            return Err(invalid(
                "request",
                "tokens can only be appended to a scoring request",
            ));
        }
        if seq.out.finish.is_some() {
            return Err(invalid("request", "the request has finished"));
        }
        let old = seq.tokens.len();
        let new = old.saturating_add(tokens.len());
        if new > n_ctx {
            return Err(Error::ContextFull {
                n_ctx,
                requested: new,
            });
        }
        check_rows(&rows, old, new)?;
        seq.tokens.extend_from_slice(tokens);
        seq.rows = rows;
        Ok(())
    }

    /// Shorten a scoring request to its first `len` tokens (1..=its length): the tokens after
    /// them are forgotten with their KV blocks; what was computed before `len` stays computed
    /// (except the first tokens of a block the prefix cache holds, which keeps its contents:
    /// they are computed again). No rows stay pending. Allocates nothing; on error nothing
    /// changes.
    pub fn truncate(&mut self, id: RequestId, len: usize) -> Result<()> {
        let s = self.request(id)?.seqs[0];
        let bs = self.cfg.block_size;
        let pool = &mut self.pool;
        let seq = self.seqs[s as usize].as_mut().expect("live sequence");
        if !seq.scoring {
            return Err(invalid(
                "request",
                "only a scoring request can be truncated",
            ));
        }
        if seq.out.finish.is_some() {
            return Err(invalid("request", "the request has finished"));
        }
        if len == 0 || len > seq.tokens.len() {
            return Err(invalid(
                "len",
                format!("{len} (must be 1..={})", seq.tokens.len()),
            ));
        }
        seq.tokens.truncate(len);
        seq.rows = len..len;
        let j = len / bs;
        let keep = if seq.block_hashes.len() > j && !len.is_multiple_of(bs) {
            j
        } else {
            len.div_ceil(bs)
        };
        seq.block_hashes.truncate(keep.min(len / bs));
        seq.table.truncate(keep.min(seq.table.len()), pool);
        seq.num_computed = seq.num_computed.min(len).min(seq.table.len() * bs);
        // A sliding-window group that released blocks its next query reads again (the request
        // went back by more than the window): compute it all again.
        let groups = self.backend.kv_groups();
        let hole = (0..groups.len()).any(|g| {
            let from = groups.first_needed_block(g, seq.num_computed, bs);
            seq.table.group(g)[from.min(seq.table.len())..].contains(&BlockId::NULL)
        });
        if hole {
            seq.table.release(pool);
            seq.block_hashes.clear();
            seq.num_computed = 0;
        }
        Ok(())
    }

    /// The tokens of a request's first sequence (a scoring request's whole sequence).
    pub(super) fn scoring_tokens(&self, id: RequestId) -> &[u32] {
        match self.request(id) {
            Ok(r) => {
                &self.seqs[r.seqs[0] as usize]
                    .as_ref()
                    .expect("live sequence")
                    .tokens
            }
            Err(_) => &[],
        }
    }

    /// Whether the request needs no more steps: every sequence finished, or (a scoring
    /// request) every token computed.
    pub fn is_idle(&self, id: RequestId) -> Result<bool> {
        let r = self.request(id)?;
        Ok(r.seqs.iter().all(|&s| {
            let q = self.seqs[s as usize].as_ref().expect("live sequence");
            q.out.finish.is_some()
                || (q.scoring && q.state == SeqState::Running && q.pending() == 0)
        }))
    }

    /// Take the output of sequence `i` of a request, leaving an empty one (for callers that
    /// release the request next and keep what it produced).
    pub fn take_output(&mut self, id: RequestId, i: usize) -> Result<super::SeqOutput> {
        let s = *self
            .request(id)?
            .seqs
            .get(i)
            .ok_or_else(|| invalid("index", format!("request has no sequence {i}")))?;
        let seq = self.seqs[s as usize].as_mut().expect("live sequence");
        let empty = super::SeqOutput {
            ids: Vec::new(),
            text: String::new(),
            piece_ends: Vec::new(),
            finish: seq.out.finish,
            error: None,
            submitted: seq.out.submitted,
            first_token: seq.out.first_token,
            last_token: seq.out.last_token,
            n_prompt: seq.out.n_prompt,
            n_cached: seq.out.n_cached,
            shifted_tokens: seq.out.shifted_tokens,
            draft_tokens: seq.out.draft_tokens,
            accepted_tokens: seq.out.accepted_tokens,
        };
        Ok(std::mem::replace(&mut seq.out, empty))
    }

    /// End a sequence whose logits row at `pos` holds a NaN: no token can be sampled or scored
    /// honestly from it. The one NaN rule of every entry point: the request finishes with
    /// [`FinishReason::Error`] and [`Error::NonFinite`] as its cause.
    pub(super) fn fail_nan(&mut self, slot: u32, pos: usize) {
        self.metrics.nan_logit_rows += 1;
        self.finish_seq(slot, FinishReason::Error);
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        seq.out.error = Some(Error::NonFinite(format!(
            "the logits after {} tokens hold NaN (are the model's weights finite? \
             `ember info --check-tensors` checks them)",
            pos + 1
        )));
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let n_vocab = self.model.config.n_vocab;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(invalid(
                "prompt",
                format!("token id {t} is outside the vocabulary ({n_vocab})"),
            ));
        }
        Ok(())
    }
}

/// `rows` must be empty or lie within positions `lo..hi`.
fn check_rows(rows: &Range<usize>, lo: usize, hi: usize) -> Result<()> {
    if !rows.is_empty() && (rows.start < lo || rows.end > hi) {
        return Err(invalid(
            "rows",
            format!(
                "logits rows {}..{} are outside positions {lo}..{hi}",
                rows.start, rows.end
            ),
        ));
    }
    Ok(())
}
