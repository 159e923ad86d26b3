//! Sampling under a constraint (a grammar): the distribution of masking every refused token
//! first, computed without the full mask when the filters make it unnecessary.

use super::{argmax, Sampler};

/// Refused tokens [`Sampler::sample_constrained`] accepts before it computes the full mask.
pub const LAZY_CHECKS: usize = 128;

/// Which tokens may come next (a grammar): [`Sampler::sample_constrained`] asks it.
pub trait Constraint {
    /// Whether token `id` may come next.
    fn allows(&mut self, id: u32) -> bool;
    /// Sets the logit of every token that may not come next to -inf; returns how many may.
    fn mask(&mut self, logits: &mut [f32]) -> usize;
}

impl Sampler {
    /// Picks the next token among those `constraint` allows (a grammar), or `None` when it
    /// allows none.
    ///
    /// The result is distributed exactly as [`Sampler::sample`]'s over the logits with every
    /// refused token set to -inf (the mask comes after the repetition penalty, before the
    /// filters), but the full mask is rarely needed:
    /// - greedy: the most likely token the constraint allows, found by asking about tokens in
    ///   order of likelihood (usually the first is allowed);
    /// - with `top_k`: the filters and the draw see only the `top_k` most likely allowed
    ///   tokens (top-p and min-p are relative to them), found the same way;
    /// - otherwise, or when more than [`LAZY_CHECKS`] tokens in a row are refused, the full
    ///   mask ([`Constraint::mask`]) and the usual pipeline.
    pub fn sample_constrained(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        constraint: &mut dyn Constraint,
    ) -> Option<u32> {
        let n = logits.len().min(self.vocab_size);
        let logits = &mut logits[..n];
        self.apply_repeat_penalty(logits, history);
        let t = self.params.temperature;
        let greedy = t.is_nan() || t <= 0.0;
        if greedy {
            let best = argmax(logits);
            if constraint.allows(best) {
                return Some(best);
            }
        }
        let k = if greedy { 1 } else { self.params.top_k };
        if k > 0 {
            self.fill_candidates(logits)?;
            if self.keep_allowed(k, constraint) {
                let top = self.candidates.first()?.logit;
                if greedy {
                    return Some(self.candidates[0].id);
                }
                self.top_p(top);
                self.min_p(top);
                return Some(self.draw(top));
            }
        }
        if constraint.mask(logits) == 0 {
            return None;
        }
        if greedy {
            return Some(argmax(logits));
        }
        let max_logit = self.fill_candidates(logits)?;
        self.top_k();
        self.top_p(max_logit);
        self.min_p(max_logit);
        Some(self.draw(max_logit))
    }

    /// Leaves in `candidates` the `k` most likely ones `constraint` allows, in order (fewer
    /// when fewer are allowed). False when it gave up after [`LAZY_CHECKS`] refusals.
    fn keep_allowed(&mut self, k: usize, constraint: &mut dyn Constraint) -> bool {
        let (mut kept, mut walked, mut prefix) = (0, 0, (2 * k).max(64));
        loop {
            self.sort_prefix(prefix);
            while walked < self.sorted_len && kept < k {
                if walked - kept >= LAZY_CHECKS {
                    return false;
                }
                if constraint.allows(self.candidates[walked].id) {
                    // Allowed ones gather at the front, still in order.
                    self.candidates.swap(kept, walked);
                    kept += 1;
                }
                walked += 1;
            }
            if kept == k || walked == self.candidates.len() {
                self.candidates.truncate(kept);
                self.sorted_len = kept;
                return true;
            }
            prefix = prefix.saturating_mul(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::SamplingParams;

    /// Allows the tokens whose bit is set.
    struct Allowed(Vec<bool>);

    impl Constraint for Allowed {
        fn allows(&mut self, id: u32) -> bool {
            self.0[id as usize]
        }

        fn mask(&mut self, logits: &mut [f32]) -> usize {
            let mut n = 0;
            for (l, &ok) in logits.iter_mut().zip(&self.0) {
                if ok {
                    n += 1;
                } else {
                    *l = f32::NEG_INFINITY;
                }
            }
            n
        }
    }

    /// A splitmix64 stream for test data.
    fn stream(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Token for token, the same choices as sampling from logits masked beforehand, for every
    /// filter setting, whether the allowed tokens are many, few or the unlikely ones (which
    /// makes it give up and mask), and with the repetition penalty.
    #[test]
    fn constrained_sampling_equals_sampling_the_masked_logits() {
        let n_vocab = 5000;
        let base = SamplingParams::default();
        let settings = [
            base.clone(),
            SamplingParams {
                temperature: 0.8,
                ..base.clone()
            },
            SamplingParams {
                temperature: 1.0,
                top_k: 0,
                ..base.clone()
            },
            SamplingParams {
                temperature: 1.0,
                top_k: 3,
                top_p: 1.0,
                min_p: 0.0,
                ..base.clone()
            },
            SamplingParams {
                temperature: 1.2,
                top_k: 100,
                top_p: 0.5,
                min_p: 0.2,
                ..base.clone()
            },
            SamplingParams {
                temperature: 0.7,
                repeat_penalty: 1.5,
                ..base
            },
        ];
        let mut rnd = stream(42);
        for params in settings {
            for density in [1, 10, 1000, 4999] {
                // `density` in 5000 tokens allowed; the last case allows only unlikely ones.
                let unlikely = density == 4999;
                for round in 0..20u64 {
                    let logits: Vec<f32> = (0..n_vocab)
                        .map(|i| {
                            let r = (rnd() % 10_000) as f32 / 1000.0;
                            if unlikely {
                                r - i as f32 * 0.01
                            } else {
                                r
                            }
                        })
                        .collect();
                    let allowed: Vec<bool> = (0..n_vocab)
                        .map(|i| {
                            if unlikely {
                                i >= n_vocab - 3
                            } else {
                                rnd() % 5000 < density
                            }
                        })
                        .collect();
                    if !allowed.contains(&true) {
                        continue;
                    }
                    let history: Vec<u32> =
                        (0..50).map(|_| (rnd() % n_vocab as u64) as u32).collect();
                    let p = SamplingParams {
                        seed: round,
                        ..params.clone()
                    };
                    let mut a = Sampler::new(p.clone(), n_vocab).unwrap();
                    let mut b = Sampler::new(p, n_vocab).unwrap();
                    let mut c = Allowed(allowed.clone());
                    let got = a.sample_constrained(&mut logits.clone(), &history, &mut c);
                    let mut masked = logits.clone();
                    c.mask(&mut masked);
                    let want = b.sample(&mut masked, &history);
                    assert_eq!(
                        got,
                        Some(want),
                        "{params:?} density {density} round {round}"
                    );
                    assert!(allowed[want as usize]);
                }
            }
        }
        // Nothing allowed: no token.
        let mut s = Sampler::new(SamplingParams::default(), 10).unwrap();
        assert_eq!(
            s.sample_constrained(&mut [1.0; 10], &[], &mut Allowed(vec![false; 10])),
            None
        );
    }
}
