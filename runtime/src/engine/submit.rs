//! Submitting a request: its checks (prompt, parameters, room in the context and the arena),
//! how many tokens it may generate, and each sequence with every buffer it will ever need
//! reserved at submit (so stepping allocates nothing).

use super::*;

impl Engine {
    /// Tokenize `prompt` (special tokens parsed, BOS per the model) and submit it.
    pub fn submit_text(&mut self, prompt: &str, params: &RequestParams) -> Result<RequestId> {
        // Refused from its byte length alone when it cannot fit (no time or memory spent
        // tokenizing a huge text).
        let ids = encode_prompt(&self.tokenizer, prompt, self.n_ctx)?;
        self.submit(&ids, params)
    }

    /// Queue a request. Refused (nothing queued) when it can never fit: a prompt that leaves no
    /// room in the context ([`Error::PromptTooLong`]), prompt + `max_tokens` beyond the context
    /// ([`Error::ContextFull`]), or more blocks than the whole arena holds
    /// ([`Error::KvCacheFull`] with `needed_blocks > total_blocks`); or when the request table is
    /// full.
    ///
    /// `max_tokens` is taken literally, whatever its size (checked arithmetic: `usize::MAX` is
    /// [`Error::ContextFull`], as a session's `generate` says it): prompt + `max_tokens` must
    /// fit the context.
    pub fn submit(&mut self, prompt: &[u32], params: &RequestParams) -> Result<RequestId> {
        let n_vocab = self.model.config.n_vocab;
        if prompt.is_empty() {
            return Err(invalid("prompt", "the prompt has no tokens"));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(invalid(
                "prompt",
                format!("token id {t} is outside the vocabulary ({n_vocab})"),
            ));
        }
        if params.n == 0 || params.n > self.cfg.max_seqs {
            return Err(invalid(
                "n",
                format!("{} (must be 1..={})", params.n, self.cfg.max_seqs),
            ));
        }
        if params.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1"));
        }
        params.sampling.validate()?;
        if let Some(s) = params.speculative {
            if !(1..=speculative::MAX_DRAFT).contains(&s.k) {
                let max = speculative::MAX_DRAFT;
                return Err(invalid(
                    "speculative.k",
                    format!("{} (must be 1..={max})", s.k),
                ));
            }
            if params.context_shift.is_some() {
                return Err(invalid(
                    "speculative",
                    "speculative decoding and context shift do not go together (a shift \
                     would have to move the drafts too)",
                ));
            }
            if s.drafter == speculative::Drafter::Model && self.draft_model.is_none() {
                return Err(invalid(
                    "speculative.drafter",
                    "drafting with a model needs one: Engine::set_draft_model",
                ));
            }
        }
        if let Some(s) = &params.context_shift {
            self.check_shift(s)?;
        }
        let max_tokens = match params.context_shift {
            // The context shifts instead of filling up: only the prompt must fit.
            Some(_) => self
                .max_tokens_for(prompt.len(), 1)
                .map(|_| params.max_tokens)?,
            None => self.max_tokens_for(prompt.len(), params.max_tokens)?,
        };
        if params.grammar.is_some() && self.vocab_trie.is_none() {
            self.vocab_trie = Some(Arc::new(VocabTrie::new(&self.tokenizer, n_vocab)));
        }
        // Both at most `n_ctx` now (a shifting sequence holds at most `n_ctx + 1` tokens):
        // nothing below can overflow (`n <= max_seqs`).
        let total = match params.context_shift {
            Some(_) => (self.n_ctx + 1).min(prompt.len().saturating_add(max_tokens)),
            None => prompt.len() + max_tokens,
        };
        let per_fork = max_tokens.min(self.n_ctx);
        let bs = self.cfg.block_size;
        // (A shifting sequence's newest token waits for its shift: n_ctx slots at most.)
        let need = self.blocks_for(total.min(self.n_ctx)).saturating_add(
            (params.n - 1).saturating_mul(self.blocks_for(per_fork.saturating_add(bs))),
        );
        let slot = self.take_request_slot(need, params.n)?;
        self.request_generation = self.request_generation.wrapping_add(1);
        let mut seq_slots = Vec::with_capacity(params.n);
        for i in 0..params.n {
            let params_i = RequestParams {
                sampling: SamplingParams {
                    seed: params.sampling.seed.wrapping_add(i as u64),
                    ..params.sampling.clone()
                },
                ..params.clone()
            };
            let seq = match self.new_seq(slot, prompt, &params_i, max_tokens, total) {
                Ok(s) => s,
                Err(e) => {
                    for s in seq_slots.drain(..) {
                        self.seqs[s as usize] = None;
                        self.free_seqs.push(s);
                    }
                    self.free_requests.push(slot);
                    return Err(e);
                }
            };
            let s = self
                .free_seqs
                .pop()
                .expect("free sequence count checked above");
            self.seqs[s as usize] = Some(seq);
            seq_slots.push(s);
            if params
                .speculative
                .is_some_and(|x| x.drafter == speculative::Drafter::Model)
            {
                self.open_draft(s, prompt);
            }
        }
        // Sequence 0 computes the prompt; the others fork from it.
        self.waiting.push_back(seq_slots[0]);
        for &s in &seq_slots[1..] {
            self.seq_mut(s).state = SeqState::ForkPending;
        }
        self.requests[slot as usize] = Some(Request {
            generation: self.request_generation,
            seqs: seq_slots,
            stop_ids: params.stop_ids.clone(),
            ignore_eos: params.ignore_eos,
            fork_logits: if params.n > 1 {
                vec![0.0; n_vocab]
            } else {
                Vec::new()
            },
            fork_work: if params.n > 1 {
                vec![0.0; n_vocab]
            } else {
                Vec::new()
            },
        });
        Ok(RequestId {
            slot,
            generation: self.request_generation,
        })
    }

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
