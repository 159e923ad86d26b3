//! Sampling under a constraint (a grammar): the distribution of masking every refused token
//! first, computed without the full mask when the filters make it unnecessary.

use super::{argmax, Sampler};

/// Refused tokens [`Sampler::sample_constrained`] accepts before it computes the full mask.
pub const LAZY_CHECKS: usize = 128;

/// Tokens the filters without `top_k` ask about before [`Sampler::sample_constrained`] computes
/// the full mask instead (a flat distribution: the cut needs too many of them).
pub const LAZY_NUCLEUS: usize = 1024;

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
    /// - without `top_k` but with top-p or min-p: the most likely allowed tokens, asked about
    ///   in order, until their weights and a bound on every token not yet asked about fix
    ///   where top-p and min-p cut (see `nucleus_without_mask`);
    /// - otherwise, or when more than [`LAZY_CHECKS`] tokens in a row are refused (or
    ///   [`LAZY_NUCLEUS`] asked about without fixing the cut), the full mask
    ///   ([`Constraint::mask`]) and the usual pipeline.
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
        if k == 0 {
            if let Some(max_logit) = self.nucleus_without_mask(logits, constraint) {
                return Some(self.draw(max_logit));
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

    /// Top-p and min-p without `top_k`, without the full mask: leaves in `candidates` exactly
    /// the tokens that masking every refused token and running [`Sampler::top_p`] and
    /// [`Sampler::min_p`] would leave, in the same order, and returns the largest allowed
    /// logit; `None` (candidates undefined) when it cannot tell cheaply.
    ///
    /// Tokens are asked about in order of likelihood. The allowed ones found so far have the
    /// exact weights and running sums top-p computes; every token not asked about has a logit
    /// at most the last one asked about, so the allowed total `Z` lies in `[S, S + U·w]` (`S`
    /// the sum so far, `U` tokens left, `w` the last weight), widened by far more than the
    /// rounding of summing in another order. Top-p keeps up to the first running sum that
    /// reaches `top_p · Z`, a cut that can only move later as `Z` grows: when the cut for the
    /// smallest and the largest `Z` is the same token, or min-p (whose threshold is relative
    /// to the top token only, known exactly) cuts first for every `Z`, the result is the
    /// masked pipeline's.
    fn nucleus_without_mask(
        &mut self,
        logits: &[f32],
        constraint: &mut dyn Constraint,
    ) -> Option<f32> {
        let (p, m) = (self.params.top_p, self.params.min_p);
        if p >= 1.0 && m <= 0.0 {
            return None; // every allowed token stays: only the full mask knows them
        }
        self.fill_candidates(logits)?;
        let (mut kept, mut walked, mut prefix) = (0usize, 0usize, 64usize);
        let mut last = f32::INFINITY;
        loop {
            self.sort_prefix(prefix);
            let end = self.sorted_len.min(LAZY_NUCLEUS);
            while walked < end {
                let c = self.candidates[walked];
                last = c.logit;
                if constraint.allows(c.id) {
                    self.candidates.swap(kept, walked);
                    kept += 1;
                }
                walked += 1;
            }
            if kept > 0 {
                let left = self.candidates.len() - walked;
                if let Some(keep) = self.nucleus_cut(kept, left, last) {
                    let max_logit = self.candidates[0].logit;
                    self.candidates.truncate(keep);
                    self.sorted_len = keep;
                    if p >= 1.0 {
                        // Without top-p the pipeline never sorts: min-p keeps its survivors in
                        // vocabulary order, the order the draw walks.
                        self.candidates.sort_unstable_by_key(|c| c.id);
                        self.sorted_len = 0;
                    }
                    return Some(max_logit);
                }
            }
            if walked == self.candidates.len() || walked >= LAZY_NUCLEUS {
                return None;
            }
            prefix = prefix.saturating_mul(2);
        }
    }

    /// How many of the first `kept` candidates (the most likely allowed tokens, in order) top-p
    /// and then min-p keep, for every allowed total consistent with `left` more tokens of
    /// logit at most `last`; `None` when that depends on the tokens not yet asked about.
    fn nucleus_cut(&mut self, kept: usize, left: usize, last: f32) -> Option<usize> {
        let (p, m) = (self.params.top_p, self.params.min_p);
        let max_logit = self.candidates[0].logit;
        let mut total = 0.0f64;
        for c in &mut self.candidates[..kept] {
            // As Sampler::top_p computes them.
            c.weight = (c.logit - max_logit).exp();
            total += c.weight as f64;
        }
        let rest = if left == 0 {
            0.0
        } else {
            left as f64 * f64::from((last - max_logit).exp())
        };
        // Far wider than the difference between summing in two orders (< 1e-11 relative).
        let (z_lo, z_hi) = (total * (1.0 - 1e-9), (total + rest) * (1.0 + 1e-9));
        // Top-p: how many it keeps for the smallest and the largest total (None: more than
        // `kept`, or nothing when top-p is off).
        let keep_at = |z: f64| -> Option<usize> {
            if p >= 1.0 {
                return None;
            }
            let target = p as f64 * z;
            let mut cumulative = 0.0f64;
            for (i, c) in self.candidates[..kept].iter().enumerate() {
                cumulative += c.weight as f64;
                if cumulative >= target {
                    return Some(i + 1);
                }
            }
            None
        };
        let (k_lo, k_hi) = (keep_at(z_lo), keep_at(z_hi));
        // Min-p: how many have a logit at or above its threshold (None: not known yet, when
        // every one asked about is above it and those not asked about may be too).
        let min_p_keep = if m <= 0.0 {
            None
        } else {
            let threshold = max_logit + m.ln();
            match self.candidates[..kept]
                .iter()
                .position(|c| c.logit < threshold)
            {
                Some(i) => Some(i),
                None if left == 0 || last < threshold => Some(kept),
                None => None,
            }
        };
        match (k_lo, k_hi, min_p_keep) {
            // Min-p cuts at or before top-p's earliest cut.
            (Some(lo), _, Some(k)) if k <= lo => Some(k),
            (None, _, Some(k)) if p >= 1.0 || k <= kept => Some(k),
            // Top-p's cut is fixed, and min-p keeps at least as many.
            (Some(lo), Some(hi), k) if lo == hi => match k {
                Some(k) => Some(k.min(lo)),
                None => Some(lo), // all `kept` pass min-p, and lo <= kept
            },
            _ => None,
        }
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
            MASKS.with(|m| m.set(m.get() + 1));
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

    thread_local! {
        /// Full masks computed by [`Allowed`] on this thread.
        static MASKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
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

    /// Without top-k, top-p and min-p cut where the masked pipeline cuts, token for token,
    /// without the full mask when the distribution is peaked enough for the most likely
    /// allowed tokens to fix the cut (as a language model's usually is), and with it otherwise:
    /// many top-p / min-p settings, peaked and flat logits, dense and sparse constraints.
    #[test]
    fn nucleus_without_the_mask_equals_the_masked_pipeline() {
        let n_vocab = 8000;
        let mut rnd = stream(7);
        let (mut lazy, mut total) = (0, 0);
        for (top_p, min_p) in [
            (0.95, 0.05),
            (0.9, 0.0),
            (1.0, 0.05),
            (0.5, 0.2),
            (0.999, 0.0),
        ] {
            for temperature in [0.8f32, 1.0, 1.5] {
                for spread in [2.0f32, 8.0, 30.0] {
                    for density in [2, 50, 2000] {
                        for round in 0..6u64 {
                            // Gumbel logits of scale spread / 3: a few likely tokens, a long
                            // unlikely tail (flat for the smallest spread).
                            let logits: Vec<f32> = (0..n_vocab)
                                .map(|_| {
                                    let u = (rnd() % 1_000_000 + 1) as f32 / 1_000_001.0;
                                    -spread * (-u.ln()).ln() / 3.0
                                })
                                .collect();
                            let allowed: Vec<bool> =
                                (0..n_vocab).map(|_| rnd() % 2000 < density).collect();
                            if !allowed.contains(&true) {
                                continue;
                            }
                            let p = SamplingParams {
                                temperature,
                                top_k: 0,
                                top_p,
                                min_p,
                                seed: round,
                                ..SamplingParams::default()
                            };
                            let mut a = Sampler::new(p.clone(), n_vocab).unwrap();
                            let mut b = Sampler::new(p.clone(), n_vocab).unwrap();
                            let mut c = Allowed(allowed.clone());
                            for draw in 0..3 {
                                let before = MASKS.with(|m| m.get());
                                let got = a.sample_constrained(&mut logits.clone(), &[], &mut c);
                                lazy += usize::from(MASKS.with(|m| m.get()) == before);
                                total += 1;
                                let mut masked = logits.clone();
                                c.mask(&mut masked);
                                let want = b.sample(&mut masked, &[]);
                                assert_eq!(
                                    got,
                                    Some(want),
                                    "{p:?} spread {spread} density {density} round {round} \
                                     draw {draw}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // The point of it: most draws here need no mask (the flat, sparse ones do).
        assert!(lazy * 2 > total, "{lazy} of {total} draws without the mask");
        eprintln!("{lazy} of {total} draws without the full mask");
    }
}
