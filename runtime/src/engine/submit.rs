//! A new request's sequences: how many tokens it may generate, and each sequence with every
//! buffer it will ever need reserved at submit (so stepping allocates nothing).

use super::*;

impl Engine {
    /// The tokens a request of a `n_prompt`-token prompt may generate when it asks for
    /// `max_tokens` (see [`Engine::submit`]). Checked arithmetic: `max_tokens` is the caller's
    /// and may be anything up to `usize::MAX`.
    pub(super) fn max_tokens_for(&self, n_prompt: usize, max_tokens: usize) -> Result<usize> {
        if n_prompt >= self.n_ctx {
            return Err(Error::PromptTooLong {
                n_prompt,
                n_ctx: self.n_ctx,
            });
        }
        if max_tokens > self.n_ctx - n_prompt {
            return Err(Error::ContextFull {
                n_ctx: self.n_ctx,
                requested: n_prompt.saturating_add(max_tokens),
            });
        }
        Ok(max_tokens)
    }

    /// A new sequence; `max_tokens` is the checked count of [`Engine::max_tokens_for`], so
    /// every reservation here is bounded by the context. `capacity` is the most tokens it may
    /// ever hold (prompt + `max_tokens`, or the context for a scoring sequence).
    pub(super) fn new_seq(
        &self,
        req: u32,
        prompt: &[u32],
        params: &RequestParams,
        max_tokens: usize,
        capacity: usize,
    ) -> Result<Seq> {
        let mut tokens = reserved(capacity)?;
        tokens.extend_from_slice(prompt);
        let max_blocks = capacity.div_ceil(self.cfg.block_size);
        let piece = self.tokenizer.max_piece_len().max(4);
        let mut text = String::new();
        text.try_reserve_exact(max_tokens.saturating_mul(piece).saturating_add(8))
            .map_err(|_| reserve_failed(max_tokens))?;
        Ok(Seq {
            req,
            tokens,
            n_prompt: prompt.len(),
            max_tokens,
            num_computed: 0,
            table: BlockTable::grouped(self.backend.kv_groups().len(), max_blocks),
            block_hashes: reserved(max_blocks)?,
            admitted_at: 0,
            state: SeqState::Waiting,
            sampler: Sampler::new(params.sampling.clone(), self.model.config.n_vocab)?,
            decoder: StreamDecoder::new(&self.tokenizer),
            stops: StopMatcher::new(&params.stop),
            grammar: match (&params.grammar, &self.vocab_trie) {
                (Some(g), Some(t)) => Some(GrammarMatcher::new(Arc::clone(g), Arc::clone(t))),
                (Some(_), None) => unreachable!("submit builds the trie first"),
                (None, _) => None,
            },
            speculative: params.speculative,
            shift: params.context_shift,
            shifted: false,
            dropped_generated: 0,
            draft: 0,
            draft_pause: (0, 0),
            draft_len: params.speculative.map_or(0, |s| s.k),
            draft_buf: reserved(params.speculative.map_or(0, |s| s.k))?,
            out: SeqOutput {
                ids: reserved(max_tokens)?,
                text,
                piece_ends: reserved(max_tokens)?,
                finish: None,
                error: None,
                submitted: Instant::now(),
                first_token: None,
                last_token: None,
                n_prompt: prompt.len(),
                n_cached: 0,
                shifted_tokens: 0,
                draft_tokens: 0,
                accepted_tokens: 0,
            },
            scoring: false,
            rows: 0..0,
        })
    }
}
