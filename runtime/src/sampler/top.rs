//! Sampling from a row's most likely tokens only: what a backend that keeps the logits on the
//! device (CUDA) sends back instead of a whole vocabulary row.
//!
//! With `top_k` set, everything after the top-k stage of the chain sees only the `top_k` most
//! likely tokens, so those (after the repetition penalty) are all the sampler needs. The penalty
//! comes first and changes the ranking, so the backend cannot know the penalized top k; but a
//! penalty of at least 1 only lowers logits, and at most `h` tokens are penalized (the distinct
//! tokens of the window, `h <= repeat_last_n`): a token outside the *unpenalized* top `k + h`
//! has `k + h` tokens at or above it, at least `k` of them unpenalized, so it is not in the
//! penalized top k either. [`Sampler::device_top`] names that `k + h`; the backend returns the
//! row's [`top_candidates`]; [`Sampler::sample_top`] applies the penalty to them and runs the
//! rest of the chain, drawing the same token from the same RNG state as [`Sampler::sample`] on
//! the whole row (the unit tests below check it on rows with ties, infinities and few finite
//! logits).

use super::{by_likelihood, sanitize, Candidate, Sampler};

/// Most candidates a backend is asked for per row ([`Sampler::device_top`]).
pub const MAX_DEVICE_TOP: usize = 256;

/// The spec of what a backend computes for [`Sampler::sample_top`]: the `k` most likely tokens
/// of `logits` as `(id, raw logit)`, most likely first (ranked by the sanitized logit, NaN as
/// -inf and +inf as `f32::MAX`, the lowest id first among equals), leaving out tokens whose
/// sanitized logit is -inf; and whether that list holds every such token (the row has at most
/// `k` finite ones).
pub fn top_candidates(logits: &[f32], k: usize) -> (Vec<(u32, f32)>, bool) {
    let mut ids: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| sanitize(logits[i as usize]) > f32::NEG_INFINITY)
        .collect();
    let complete = ids.len() <= k;
    ids.sort_by(|&a, &b| {
        sanitize(logits[b as usize])
            .total_cmp(&sanitize(logits[a as usize]))
            .then(a.cmp(&b))
    });
    ids.truncate(k);
    (
        ids.into_iter().map(|i| (i, logits[i as usize])).collect(),
        complete,
    )
}

impl Sampler {
    /// How many of a row's most likely tokens [`Sampler::sample_top`] needs for the next token of
    /// a sequence whose history holds `history_len` tokens; `None` when it needs the whole row:
    /// greedy decoding (the backend's argmax serves it when there is no penalty), no top-k, a
    /// penalty below 1 (it raises logits), or more than [`MAX_DEVICE_TOP`] candidates or the
    /// vocabulary.
    pub fn device_top(&self, history_len: usize) -> Option<usize> {
        let p = &self.params;
        let t = p.temperature;
        if t.is_nan() || t <= 0.0 || p.top_k == 0 {
            return None;
        }
        let penalized = if self.penalized_in.is_empty() || p.repeat_penalty == 1.0 {
            0
        } else if p.repeat_penalty < 1.0 {
            return None;
        } else {
            p.repeat_last_n.min(history_len)
        };
        let k = p.top_k.checked_add(penalized)?;
        (k <= MAX_DEVICE_TOP && k < self.vocab_size).then_some(k)
    }

    /// The token [`Sampler::sample`] would pick from the whole row, picked from its
    /// [`top_candidates`] for the `k` that [`Sampler::device_top`] gave (their ids and raw
    /// logits, `complete` as returned there). Consumes the same RNG draw. Allocation-free.
    pub fn sample_top(
        &mut self,
        ids: &[u32],
        vals: &[f32],
        complete: bool,
        history: &[u32],
    ) -> u32 {
        let t = self.params.temperature;
        let p = self.params.repeat_penalty;
        let penalty = !self.penalized_in.is_empty() && p != 1.0;
        if penalty {
            // Stage 1 over the candidates: mark the window's distinct tokens, as
            // `apply_repeat_penalty` does over the row.
            self.next_epoch();
            let epoch = self.epoch;
            for &token in self.window(history) {
                if let Some(s) = self.penalized_in.get_mut(token as usize) {
                    *s = epoch;
                }
            }
        }
        self.candidates.clear();
        self.sorted_len = 0;
        let mut max_logit = f32::NEG_INFINITY;
        for (&id, &raw) in ids.iter().zip(vals) {
            if id as usize >= self.vocab_size {
                continue;
            }
            let l = if penalty && self.penalized_in[id as usize] == self.epoch {
                if raw > 0.0 {
                    raw / p
                } else {
                    raw * p
                }
            } else {
                raw
            };
            let logit = sanitize(l);
            if logit == f32::NEG_INFINITY {
                continue;
            }
            max_logit = max_logit.max(logit);
            self.candidates.push(Candidate {
                id,
                logit,
                weight: 0.0,
            });
        }
        if self.candidates.is_empty() || t.is_nan() || t <= 0.0 {
            // No usable logit in the row (the whole-row argmax is then token 0), or a greedy
            // sampler (callers take the backend's argmax instead): the best candidate.
            return self
                .candidates
                .iter()
                .min_by(|a, b| by_likelihood(a, b))
                .map_or(0, |c| c.id);
        }
        if complete {
            // Every usable token: in vocabulary order, as `fill_candidates` leaves them.
            self.candidates.sort_unstable_by_key(|c| c.id);
        } else {
            // The row has more usable tokens than `top_k`: the top-k stage keeps the first
            // `top_k` in likelihood order.
            self.candidates.sort_unstable_by(by_likelihood);
            self.candidates.truncate(self.params.top_k);
            self.sorted_len = self.candidates.len();
        }
        self.top_k();
        self.top_p(max_logit);
        self.min_p(max_logit);
        self.draw(max_logit)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Rng, SamplingParams};
    use super::*;

    /// Rows of the awkward kinds: spread, coarse (many ties), with infinities and NaN, few
    /// usable logits, none.
    fn rows(n: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
        let spread: Vec<f32> = (0..n)
            .map(|_| (rng.next_f64() * 16.0 - 8.0) as f32)
            .collect();
        let coarse: Vec<f32> = (0..n)
            .map(|_| ((rng.next_f64() * 6.0) as i32) as f32 - 2.0)
            .collect();
        let mut special = spread.clone();
        for (i, v) in special.iter_mut().enumerate() {
            *v = match i % 11 {
                0 => f32::NEG_INFINITY,
                3 => f32::NAN,
                5 if i % 3 == 0 => f32::INFINITY,
                7 => f32::MAX,
                8 => -0.0,
                9 => 0.0,
                _ => *v,
            };
        }
        let few: Vec<f32> = (0..n)
            .map(|i| {
                if i % 97 == 4 {
                    (i % 5) as f32
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let huge: Vec<f32> = (0..n)
            .map(|i| if i % 2 == 0 { -3.0e38 } else { -1.0 })
            .collect();
        vec![
            spread,
            coarse,
            special,
            few,
            huge,
            vec![f32::NEG_INFINITY; n],
        ]
    }

    /// For every parameter set and row kind, a sampler fed the row's top candidates picks what a
    /// sampler with the same seed picks from the whole row, step after step.
    #[test]
    fn top_candidates_sample_like_the_whole_row() {
        let n = 1000;
        let mut rng = Rng::new(7);
        let mut checked = 0;
        for (top_k, top_p, min_p, penalty, last_n, t) in [
            (40, 0.95, 0.05, 1.0, 64, 0.8),
            (40, 1.0, 0.0, 1.3, 64, 1.0),
            (1, 1.0, 0.0, 1.0, 64, 0.7),
            (5, 0.5, 0.1, 1.1, 8, 1.5),
            (100, 0.9, 0.0, 2.0, 150, 0.9),
            (64, 1.0, 0.2, 1.0e30, 32, 1.2),
        ] {
            let params = SamplingParams {
                temperature: t,
                top_k,
                top_p,
                min_p,
                repeat_penalty: penalty,
                repeat_last_n: last_n,
                seed: rng.next_u64(),
            };
            let mut whole = Sampler::new(params.clone(), n).unwrap();
            let mut top = Sampler::new(params, n).unwrap();
            // A history with repeats, ids outside the vocabulary, and the rows' top tokens.
            let mut history: Vec<u32> = (0..300).map(|i| (i * 7 % 1100) as u32).collect();
            for row in rows(n, &mut rng) {
                for _ in 0..4 {
                    let k = top.device_top(history.len()).expect("a top-k sampler");
                    let (cands, complete) = top_candidates(&row, k);
                    let (ids, vals): (Vec<u32>, Vec<f32>) = cands.into_iter().unzip();
                    let a = whole.sample(&mut row.clone(), &history);
                    let b = top.sample_top(&ids, &vals, complete, &history);
                    assert_eq!(a, b, "k {k}, complete {complete}");
                    history.push(a);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 6 * 6 * 4);
    }

    #[test]
    fn device_top_names_when_the_whole_row_is_needed() {
        let s = |temperature, top_k, repeat_penalty| {
            let p = SamplingParams {
                temperature,
                top_k,
                repeat_penalty,
                ..SamplingParams::default()
            };
            Sampler::new(p, 1000).unwrap()
        };
        assert_eq!(s(0.0, 40, 1.0).device_top(10), None, "greedy");
        assert_eq!(s(0.8, 0, 1.0).device_top(10), None, "no top-k");
        assert_eq!(s(0.8, 40, 0.9).device_top(10), None, "a penalty below 1");
        assert_eq!(s(0.8, 40, 1.0).device_top(500), Some(40));
        assert_eq!(
            s(0.8, 40, 1.1).device_top(10),
            Some(50),
            "10 tokens of history"
        );
        assert_eq!(s(0.8, 40, 1.1).device_top(500), Some(104), "a window of 64");
        assert_eq!(
            s(0.8, 250, 1.1).device_top(500),
            None,
            "over MAX_DEVICE_TOP"
        );
        assert_eq!(
            Sampler::new(
                SamplingParams {
                    temperature: 1.0,
                    ..Default::default()
                },
                40
            )
            .unwrap()
            .device_top(0),
            None,
            "the whole vocabulary"
        );
    }
}
