//! Speculative decoding with a draft model: a second, smaller GGUF with the same vocabulary
//! guesses the next tokens, greedily, and the target model checks them in one step (the
//! checking is `speculative.rs`'s, shared with prompt lookup).
//!
//! The draft model runs in an engine of its own ([`Engine::set_draft_model`]: its own arena and
//! scratch, the target's context and sequence count) where each target sequence that drafts
//! with it has one scoring request, created with the target request. To propose, the draft
//! request is brought level with the target sequence — [`Engine::truncate`] to the tokens they
//! still share (the drafts the target refused go), [`Engine::append`] of the target's new
//! tokens — and then stepped `k` times, each step's argmax appended as the next guess. So the
//! draft model computes each token of the sequence once, plus the refused guesses; nothing is
//! allocated after the request is submitted.
//!
//! The guesses are deterministic (argmax), so the target's "sample, then compare" rule keeps
//! its output exactly that of plain decoding, greedy or sampled.

use super::{Engine, RequestId};
use crate::error::{Error, Result};
use crate::model::Model;

/// The draft model's engine and, per target sequence slot, its draft request.
pub(super) struct DraftModel {
    engine: Box<Engine>,
    reqs: Vec<Option<RequestId>>,
}

impl Engine {
    /// Use `model` (same vocabulary, ideally far smaller) to draft for requests that ask for
    /// [`Drafter::Model`](super::Drafter::Model). It gets an engine of its own on this
    /// engine's backend kind: a KV arena for this engine's sequence count at full context,
    /// the same block size, threads and batch limits. Replaces an earlier draft model (only
    /// while no request is held).
    pub fn set_draft_model(&mut self, model: Model) -> Result<()> {
        let (want, got) = (self.model.config.n_vocab, model.config.n_vocab);
        if want != got {
            return Err(Error::InvalidParam {
                name: "draft_model",
                what: format!("its vocabulary has {got} tokens, the model's {want}: a draft model must share the vocabulary"),
            });
        }
        if self.requests.iter().any(Option::is_some) {
            return Err(Error::InvalidParam {
                name: "draft_model",
                what: "requests are held: set the draft model before submitting".into(),
            });
        }
        let cfg = super::EngineConfig {
            n_ctx: self.n_ctx,
            // One draft request per target sequence.
            max_requests: self.seqs.len().min(super::MAX_REQUESTS),
            kv_budget: super::KvBudget::FullContext,
            // Each draft request is private: nothing to share, and no cached block to keep.
            prefix_caching: false,
            ..self.cfg.clone()
        };
        let kind = match self.backend.name() {
            "cuda" => crate::backend::BackendKind::Cuda,
            _ => crate::backend::BackendKind::Cpu,
        };
        let engine = Engine::with_backend(model, cfg, kind)?;
        self.draft_model = Some(Box::new(DraftModel {
            engine: Box::new(engine),
            reqs: vec![None; self.seqs.len()],
        }));
        Ok(())
    }

    /// Whether a draft model is set.
    pub fn has_draft_model(&self) -> bool {
        self.draft_model.is_some()
    }

    /// Open the draft request of new target sequence `slot` (its prompt `tokens`). Without
    /// room in the draft engine the sequence simply does not draft.
    pub(super) fn open_draft(&mut self, slot: u32, tokens: &[u32]) {
        if let Some(dm) = self.draft_model.as_mut() {
            let id = dm.engine.submit_scoring(tokens, 0..0).ok();
            dm.reqs[slot as usize] = id;
        }
    }

    /// Close the draft request of target sequence `slot`, if it has one.
    pub(super) fn close_draft(&mut self, slot: u32) {
        if let Some(dm) = self.draft_model.as_mut() {
            if let Some(id) = dm.reqs[slot as usize].take() {
                let _ = dm.engine.release(id);
            }
        }
    }

    /// Up to `k` greedy guesses of the draft model after `tokens` (the target sequence `slot`'s
    /// tokens, its last one just sampled), appended to `out`. Fewer (or none) when the draft
    /// engine fails or runs out of context.
    pub(super) fn draft_with_model(
        &mut self,
        slot: u32,
        tokens: &[u32],
        k: usize,
        out: &mut Vec<u32>,
    ) {
        let Some(dm) = self.draft_model.as_mut() else {
            return;
        };
        let Some(id) = dm.reqs[slot as usize] else {
            return;
        };
        let e = &mut dm.engine;
        // What the draft request holds that the target still has (its refused guesses go);
        // at least the last token is appended again, for its logits row.
        let held = e.scoring_tokens(id);
        let common = held
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len() - 1);
        let len = tokens.len();
        let ok = e.truncate(id, common.max(1)).is_ok()
            && (common == 0 || e.append(id, &tokens[common..], len - 1..len).is_ok());
        if !ok || common == 0 {
            // A draft request holds at least its first token; one that shares nothing (never
            // the case: the prompt is shared) is left alone.
            return;
        }
        for i in 0..k {
            let Some(guess) = next_argmax(e, id) else {
                return;
            };
            out.push(guess);
            if i + 1 < k && e.append(id, &[guess], len + i..len + i + 1).is_err() {
                return;
            }
        }
    }
}

/// Step the draft engine until request `id` is idle; the argmax of the logits row it asked for.
fn next_argmax(e: &mut Engine, id: RequestId) -> Option<u32> {
    let mut best: Option<u32> = None;
    while !e.is_idle(id).ok()? {
        // A step that computes nothing (the request waits for a sequence slot that other,
        // preempted sequences' draft requests hold) would repeat forever: no guess then.
        let st = e
            .step_with(|row| {
                if row.request == id {
                    let mut arg = 0usize;
                    for (i, &x) in row.logits.iter().enumerate() {
                        if x > row.logits[arg] {
                            arg = i;
                        }
                    }
                    best = Some(arg as u32);
                }
            })
            .ok()?;
        if st.seqs == 0 {
            return None;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::super::tests::{
        equivalence_cases, run_requests, spec_engine, tiny_model, tiny_spec,
    };
    use super::super::{Drafter, Engine, RequestParams, Speculative};
    use crate::gguf::GgufFile;
    use crate::model::Model;
    use crate::synth::{synth_gguf, SynthSpec};

    fn synth(spec: SynthSpec) -> Model {
        let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
        Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
    }

    /// Same shape and vocabulary as the tiny model, other weights: its guesses are mostly wrong.
    fn other_model() -> Model {
        synth(SynthSpec {
            seed: 99,
            ..tiny_spec()
        })
    }

    fn engine(kv_blocks: usize, draft: Option<Model>) -> Engine {
        let mut e = spec_engine(kv_blocks);
        if let Some(d) = draft {
            e.set_draft_model(d).unwrap();
        }
        e
    }

    /// Ids per sequence of four requests, drafted and accepted tokens; every block of both
    /// engines comes back.
    fn run(
        blocks: usize,
        draft: Option<Model>,
        params: &RequestParams,
    ) -> (Vec<Vec<u32>>, usize, usize) {
        let mut e = engine(blocks, draft);
        let prompts: Vec<Vec<u32>> = (0..4u32)
            .map(|i| (0..5 + i).map(|j| 30 + 11 * i + 3 * j).collect())
            .collect();
        let r = run_requests(&mut e, &prompts, params);
        let dm = e
            .draft_model
            .as_ref()
            .map_or(0, |d| d.engine.metrics().blocks_used);
        assert_eq!(dm, 0, "every draft block returned");
        r
    }

    /// Token for token what plain decoding gives, with a perfect drafter (the model itself)
    /// and a poor one, greedy, sampled with `n = 2`, under a grammar, and in an arena small
    /// enough to preempt.
    #[test]
    fn draft_model_output_equals_plain_decoding() {
        let cases = equivalence_cases(20, 5);
        for (c, params) in cases.iter().enumerate() {
            let (plain, _, _) = run(80, None, params);
            for k in [1, 4] {
                let spec = RequestParams {
                    speculative: Some(Speculative {
                        k,
                        drafter: Drafter::Model,
                    }),
                    ..params.clone()
                };
                let (outs, drafted, accepted) = run(80, Some(tiny_model()), &spec);
                assert_eq!(outs, plain, "perfect drafter, k {k}, case {c}");
                assert!(drafted > 0 && accepted <= drafted);
                if c == 0 {
                    assert_eq!(
                        accepted, drafted,
                        "the model itself guesses its greedy output"
                    );
                }
                let (outs, _, _) = run(80, Some(other_model()), &spec);
                assert_eq!(outs, plain, "poor drafter, k {k}, case {c}");
                let (outs, _, _) = run(20, Some(tiny_model()), &spec);
                assert_eq!(outs, plain, "small arena, k {k}, case {c}");
            }
        }
    }

    #[test]
    fn a_draft_model_is_checked_and_required() {
        let spec = RequestParams {
            speculative: Some(Speculative {
                k: 2,
                drafter: Drafter::Model,
            }),
            max_tokens: 4,
            ..RequestParams::default()
        };
        let mut e = engine(40, None);
        let err = e.submit(&[1, 2, 3], &spec).unwrap_err();
        assert!(err.to_string().contains("set_draft_model"), "{err}");
        let small_vocab = synth(SynthSpec {
            n_vocab: 300,
            ..tiny_spec()
        });
        let err = e.set_draft_model(small_vocab).unwrap_err();
        assert!(err.to_string().contains("vocabulary"), "{err}");
        let id = e
            .submit(
                &[1, 2, 3],
                &RequestParams {
                    max_tokens: 4,
                    ..RequestParams::default()
                },
            )
            .unwrap();
        let err = e.set_draft_model(tiny_model()).unwrap_err();
        assert!(err.to_string().contains("requests are held"), "{err}");
        e.release(id).unwrap();
        e.set_draft_model(tiny_model()).unwrap();
        assert!(e.has_draft_model());
        assert!(e.submit(&[1, 2, 3], &spec).is_ok());
    }
}
