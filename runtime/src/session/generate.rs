//! Generation through a session: one request of the engine, stepped until it finishes, its
//! text streamed as the engine emits it.

use std::time::Instant;

use super::{invalid, FinishReason, Generation, RequestParams, Session};
use crate::engine::encode_prompt;
use crate::error::{Error, Result};

impl Session {
    /// Tokenize `prompt` (special tokens parsed, BOS per the model) and generate.
    ///
    /// A prompt whose byte length alone shows it cannot fit the context is refused before it
    /// is tokenized ([`Error::ContextFull`] with the fewest tokens it could encode to), so a
    /// huge text costs neither the time nor the memory of tokenizing it.
    pub fn generate_text(
        &mut self,
        prompt: &str,
        params: &RequestParams,
        mut on_piece: impl FnMut(&str),
    ) -> Result<(Vec<u32>, Generation)> {
        self.generate_text_until(prompt, params, |p| {
            on_piece(p);
            true
        })
    }

    /// [`Session::generate_text`] with a callback that can stop generation: when `on_piece`
    /// returns false (its reader went away, say), generation ends at once with
    /// [`FinishReason::Cancelled`].
    pub fn generate_text_until(
        &mut self,
        prompt: &str,
        params: &RequestParams,
        on_piece: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<u32>, Generation)> {
        let ids = encode_prompt(self.tokenizer(), prompt, self.n_ctx())?;
        let g = self.generate_until(&ids, params, on_piece)?;
        Ok((ids, g))
    }

    /// Generate a continuation of `prompt_ids`, streaming complete UTF-8 text pieces to
    /// `on_piece`. The request's blocks are released at the end.
    pub fn generate(
        &mut self,
        prompt_ids: &[u32],
        params: &RequestParams,
        mut on_piece: impl FnMut(&str),
    ) -> Result<Generation> {
        self.generate_until(prompt_ids, params, |p| {
            on_piece(p);
            true
        })
    }

    /// [`Session::generate`] with a callback that can stop generation (see
    /// [`Session::generate_text_until`]). `params.n` must be 1 (an [`Engine`] samples more
    /// sequences of one prompt).
    ///
    /// A NaN logits row ends the request ([`FinishReason::Error`]); its cause,
    /// [`Error::NonFinite`], is returned as `Err`.
    ///
    /// [`Engine`]: crate::engine::Engine
    pub fn generate_until(
        &mut self,
        prompt_ids: &[u32],
        params: &RequestParams,
        mut on_piece: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if prompt_ids.is_empty() {
            return Err(invalid(
                "prompt",
                "the prompt has no tokens (nothing to continue)",
            ));
        }
        if params.n != 1 {
            return Err(invalid(
                "n",
                format!("{} (a session generates one sequence)", params.n),
            ));
        }
        params.sampling.validate()?;
        // Checked: `max_tokens` is the caller's number (`-n 18446744073709551615`).
        let n_ctx = self.n_ctx();
        // With a context shift only the prompt must fit (the engine checks it).
        let total = prompt_ids.len().saturating_add(params.max_tokens);
        if total > n_ctx && params.context_shift.is_none() {
            return Err(Error::ContextFull {
                n_ctx,
                requested: total,
            });
        }
        if params.max_tokens == 0 {
            return Ok(nothing_generated(prompt_ids.len()));
        }
        let id = self.engine.submit(prompt_ids, params)?;
        let mut sent = 0;
        let mut reader_left = false;
        let mut result = Ok(());
        while !self.engine.is_finished(id)? {
            match self.engine.step() {
                Ok(s) if s.seqs == 0 => {
                    result = Err(invalid(
                        "request",
                        "the session cannot schedule its sequence (is another one held?)",
                    ));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            let out = self.engine.output(id)?.next().expect("one sequence");
            if out.text.len() > sent {
                let piece = &out.text[sent..];
                sent = out.text.len();
                if !on_piece(piece) {
                    reader_left = true;
                    self.engine.cancel(id)?;
                    break;
                }
            }
        }
        let failed = result.and_then(|()| self.failure(id));
        let mut g = self.engine.take_output(id, 0)?;
        self.engine.release(id)?;
        failed?;
        if reader_left {
            g.finish = Some(FinishReason::Cancelled);
        }
        Ok(g)
    }
}

/// The output of a request for no tokens: nothing is computed.
fn nothing_generated(n_prompt: usize) -> Generation {
    let now = Instant::now();
    Generation {
        ids: Vec::new(),
        text: String::new(),
        piece_ends: Vec::new(),
        finish: Some(FinishReason::Length),
        error: None,
        submitted: now,
        first_token: None,
        last_token: None,
        n_prompt,
        n_cached: 0,
        shifted_tokens: 0,
        draft_tokens: 0,
        accepted_tokens: 0,
    }
}
