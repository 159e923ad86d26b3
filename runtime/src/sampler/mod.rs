//! Token sampling: turns one row of logits into the next token id.
//!
//! The pipeline is llama.cpp's default sampler chain, applied in this order:
//!
//! 1. **repetition penalty**: each *distinct* token among the last `repeat_last_n` tokens of the
//!    history has its logit divided by `repeat_penalty` when positive, multiplied when not;
//! 2. **top-k**: keep the `top_k` largest logits;
//! 3. **top-p** (nucleus): keep the smallest set of most likely tokens whose probability sums to at
//!    least `top_p`;
//! 4. **min-p**: drop tokens whose probability is below `min_p` times the top token's;
//! 5. **temperature**: divide the surviving logits by `temperature`;
//! 6. **draw** one token from the softmax of what is left, with the sampler's seeded RNG.
//!
//! As in llama.cpp, top-p and min-p see the probabilities at temperature 1: temperature only
//! reshapes the distribution among the tokens that survived the filters. A temperature of 0 means
//! greedy decoding: the penalized logits' argmax, the lowest id winning ties (the filters cannot
//! change the argmax, so they are skipped). Every filter keeps at least the top token.
//!
//! Invariants:
//! - [`Sampler::sample`] allocates nothing: the candidate list and the penalty bookkeeping are
//!   sized for the vocabulary in [`Sampler::new`].
//! - Top-k never sorts the vocabulary: it selects the k largest with `select_nth_unstable_by` and
//!   sorts those k. Top-p without top-k sorts a growing prefix (64, 128, ...) until the nucleus
//!   is covered, so a peaked distribution costs a few linear passes, not a full sort.
//! - NaN logits are treated as -inf and +inf as `f32::MAX`; no input makes `sample` panic.
//! - Determinism: the same parameters, seed, logits and history give the same tokens. The RNG is
//!   xoshiro256** seeded through splitmix64, written here so results do not depend on a crate's
//!   version.

use std::cmp::Ordering;
use std::fmt;

mod constrained;
mod top;

pub use constrained::{Constraint, LAZY_CHECKS, LAZY_NUCLEUS};
pub use top::{top_candidates, MAX_DEVICE_TOP};

/// How the next token is chosen. [`SamplingParams::default`] is greedy decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature, finite and >= 0. 0 means greedy (argmax, lowest id wins ties).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns the filter off.
    pub top_k: usize,
    /// Nucleus sampling threshold in [0, 1]; 1.0 turns the filter off, 0.0 keeps only the top
    /// token.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the top token, in [0, 1]; 0.0 turns it off.
    pub min_p: f32,
    /// Repetition penalty, finite and > 0; 1.0 turns it off. llama.cpp semantics: a penalized
    /// logit `l` becomes `l / p` when `l > 0`, else `l * p`.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the repetition penalty looks at; 0 turns the
    /// penalty off.
    pub repeat_last_n: usize,
    /// Seed of the sampler's RNG.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy decoding (`temperature` 0) with llama.cpp's filter defaults ready for when a
    /// temperature is set: `top_k` 40, `top_p` 0.95, `min_p` 0.05, `repeat_penalty` 1.0 (off)
    /// over `repeat_last_n` 64 tokens, `seed` 0.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// An invalid sampling parameter: which one, and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerError {
    /// The parameter's name (`"top_p"`, `"vocab_size"`, ...).
    pub param: &'static str,
    /// What was wrong and the allowed range.
    pub message: String,
}

impl fmt::Display for SamplerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid sampling parameter {}: {}",
            self.param, self.message
        )
    }
}

impl std::error::Error for SamplerError {}

fn invalid(param: &'static str, message: String) -> Result<(), SamplerError> {
    Err(SamplerError { param, message })
}

impl SamplingParams {
    /// Checks every parameter's range. NaN is rejected everywhere.
    ///
    /// Errors: the first parameter out of range, with the range it must be in.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return invalid(
                "temperature",
                format!("must be a finite number >= 0 (0 = greedy), got {t}"),
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return invalid(
                "top_p",
                format!("must be in [0, 1] (1 = off), got {}", self.top_p),
            );
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid(
                "min_p",
                format!("must be in [0, 1] (0 = off), got {}", self.min_p),
            );
        }
        let p = self.repeat_penalty;
        if !(p.is_finite() && p > 0.0) {
            return invalid(
                "repeat_penalty",
                format!("must be a finite number > 0 (1 = off), got {p}"),
            );
        }
        Ok(())
    }
}

/// A token still in the running, with its (penalized, sanitized) logit and a scratch weight.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
    /// exp((logit - max) / temperature) once a stage has computed it.
    weight: f32,
}

/// Most likely first; the lowest id first among equal logits, so every order is deterministic.
fn by_likelihood(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// NaN becomes -inf (never chosen) and +inf the largest finite value (so softmax stays finite).
fn sanitize(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else {
        l.min(f32::MAX)
    }
}

/// Index of the largest logit, the lowest index winning ties; NaN never wins. 0 when every logit
/// is NaN or -inf.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_logit {
            best = i;
            best_logit = l;
        }
    }
    best as u32
}

/// xoshiro256** (Blackman & Vigna), state seeded from one u64 through splitmix64.
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [splitmix(), splitmix(), splitmix(), splitmix()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Chooses tokens for one sequence. Owns its RNG and all scratch memory, sized for the vocabulary
/// at construction, so [`Sampler::sample`] never allocates.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    rng: Rng,
    /// Tokens still in the running. Capacity: vocab_size.
    candidates: Vec<Candidate>,
    /// How many leading `candidates` are known to be the most likely ones, in `by_likelihood`
    /// order.
    sorted_len: usize,
    /// Per token: the `epoch` in which it was last penalized, so each distinct history token is
    /// penalized once per step without a set. Length vocab_size, or 0 when the penalty is off.
    penalized_in: Vec<u32>,
    epoch: u32,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab_size` tokens, seeded with `params.seed`.
    ///
    /// Errors: any parameter out of range (see [`SamplingParams::validate`]), or a `vocab_size`
    /// of 0 or above `u32::MAX`.
    pub fn new(params: SamplingParams, vocab_size: usize) -> Result<Sampler, SamplerError> {
        params.validate()?;
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            return Err(SamplerError {
                param: "vocab_size",
                message: format!("must be in [1, {}], got {vocab_size}", u32::MAX),
            });
        }
        let penalty_on = params.repeat_penalty != 1.0 && params.repeat_last_n > 0;
        Ok(Sampler {
            rng: Rng::new(params.seed),
            params,
            vocab_size,
            candidates: Vec::with_capacity(vocab_size),
            sorted_len: 0,
            penalized_in: if penalty_on {
                vec![0; vocab_size]
            } else {
                Vec::new()
            },
            epoch: 0,
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The vocabulary size this sampler was built for.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether [`Sampler::sample`] picks the argmax of rows `vocab_size` wide untouched (greedy,
    /// no repetition penalty) and changes no state doing it: then an argmax computed elsewhere
    /// (on the GPU) is the sample.
    pub fn is_plain_argmax(&self) -> bool {
        let t = self.params.temperature;
        (t.is_nan() || t <= 0.0) && self.penalized_in.is_empty()
    }

    /// Restarts the RNG from `seed`, as if the sampler had just been built with it.
    pub fn reseed(&mut self, seed: u64) {
        self.params.seed = seed;
        self.rng = Rng::new(seed);
    }

    /// Picks the next token.
    ///
    /// `logits` holds one logit per vocabulary token; it is modified in place (the repetition
    /// penalty is applied to it). `history` is the sequence so far (prompt and generated tokens).
    /// Allocation-free. Never panics: logits past `vocab_size` are ignored, history ids outside
    /// the vocabulary are skipped, empty logits give token 0, and when every logit is NaN or
    /// -inf the result is token 0.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let n = logits.len().min(self.vocab_size);
        let logits = &mut logits[..n];
        self.apply_repeat_penalty(logits, history);
        let t = self.params.temperature;
        // The NaN check guards against params mutated after validation (they are private, but
        // `sample` must not panic whatever they hold).
        if t.is_nan() || t <= 0.0 {
            return argmax(logits);
        }
        let Some(max_logit) = self.fill_candidates(logits) else {
            return argmax(logits);
        };
        self.top_k();
        self.top_p(max_logit);
        self.min_p(max_logit);
        self.draw(max_logit)
    }

    /// A new stamp for `penalized_in` (stage 1 marks the window's tokens with it).
    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // The stamps from 2^32 steps ago would alias the new epoch: start over.
            self.penalized_in.fill(0);
            self.epoch = 1;
        }
    }

    /// The penalty window: the last `repeat_last_n` tokens of `history`.
    fn window<'h>(&self, history: &'h [u32]) -> &'h [u32] {
        &history[history.len().saturating_sub(self.params.repeat_last_n)..]
    }

    /// Stage 1: llama.cpp's repetition penalty over the distinct tokens of the history window.
    fn apply_repeat_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = self.params.repeat_penalty;
        if self.penalized_in.is_empty() || p == 1.0 {
            return;
        }
        self.next_epoch();
        for &token in self.window(history) {
            let i = token as usize;
            if i >= logits.len() || self.penalized_in[i] == self.epoch {
                continue;
            }
            self.penalized_in[i] = self.epoch;
            let l = logits[i];
            logits[i] = if l > 0.0 { l / p } else { l * p };
        }
    }

    /// Loads every token with a logit above -inf into `candidates`; returns the largest logit,
    /// or `None` when no token has a usable logit.
    fn fill_candidates(&mut self, logits: &[f32]) -> Option<f32> {
        self.candidates.clear();
        self.sorted_len = 0;
        let mut max_logit = f32::NEG_INFINITY;
        for (id, &raw) in logits.iter().enumerate() {
            let logit = sanitize(raw);
            if logit == f32::NEG_INFINITY {
                continue;
            }
            max_logit = max_logit.max(logit);
            self.candidates.push(Candidate {
                id: id as u32,
                logit,
                weight: 0.0,
            });
        }
        (!self.candidates.is_empty()).then_some(max_logit)
    }

    /// Makes the first `k` candidates the `k` most likely, in order, extending the sorted prefix
    /// with a selection over the rest and a sort of only the newly placed part.
    fn sort_prefix(&mut self, k: usize) {
        let k = k.min(self.candidates.len());
        if k <= self.sorted_len {
            return;
        }
        let rest = &mut self.candidates[self.sorted_len..];
        let need = k - self.sorted_len;
        if need < rest.len() {
            rest.select_nth_unstable_by(need - 1, by_likelihood);
        }
        rest[..need].sort_unstable_by(by_likelihood);
        self.sorted_len = k;
    }

    /// Stage 2: keep the `top_k` most likely.
    fn top_k(&mut self) {
        let k = self.params.top_k;
        if k == 0 || k >= self.candidates.len() {
            return;
        }
        self.sort_prefix(k);
        self.candidates.truncate(k);
    }

    /// Stage 3: keep the smallest most-likely prefix whose probability (temperature 1) reaches
    /// `top_p`.
    fn top_p(&mut self, max_logit: f32) {
        let p = self.params.top_p;
        if p >= 1.0 {
            return;
        }
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            c.weight = (c.logit - max_logit).exp();
            total += c.weight as f64;
        }
        let target = p as f64 * total;
        let mut cumulative = 0.0f64;
        let mut walked = 0;
        let mut prefix = 64;
        loop {
            self.sort_prefix(prefix);
            while walked < self.sorted_len {
                cumulative += self.candidates[walked].weight as f64;
                walked += 1;
                if cumulative >= target {
                    self.candidates.truncate(walked);
                    self.sorted_len = walked;
                    return;
                }
            }
            if self.sorted_len == self.candidates.len() {
                return; // rounding left the sum just short of the target: keep everything
            }
            prefix = prefix.saturating_mul(2);
        }
    }

    /// Stage 4: drop tokens whose probability is below `min_p` times the top token's, i.e. whose
    /// logit is below `max_logit + ln(min_p)`.
    fn min_p(&mut self, max_logit: f32) {
        let m = self.params.min_p;
        if m <= 0.0 {
            return;
        }
        let threshold = max_logit + m.ln();
        if self.sorted_len == self.candidates.len() {
            let keep = self
                .candidates
                .iter()
                .position(|c| c.logit < threshold)
                .unwrap_or(self.candidates.len());
            self.candidates.truncate(keep);
            self.sorted_len = keep;
        } else {
            self.candidates.retain(|c| c.logit >= threshold);
            self.sorted_len = 0;
        }
    }

    /// Stages 5 and 6: softmax at the temperature over the survivors, then one draw.
    fn draw(&mut self, max_logit: f32) -> u32 {
        let t = self.params.temperature;
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            // (logit - max) <= 0, so the weight is in [0, 1] and never overflows.
            c.weight = ((c.logit - max_logit) / t).exp();
            total += c.weight as f64;
        }
        let target = self.rng.next_f64() * total;
        let mut cumulative = 0.0f64;
        let mut last_nonzero = None;
        for c in &self.candidates {
            if c.weight > 0.0 {
                cumulative += c.weight as f64;
                last_nonzero = Some(c.id);
                if cumulative > target {
                    return c.id;
                }
            }
        }
        // Only reached when rounding leaves `cumulative` at `target`; the top token always has
        // weight 1, so `last_nonzero` is set whenever candidates exist.
        last_nonzero.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Deterministic pseudo-random logits in [-4, 4).
    fn random_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| (rng.next_f64() * 8.0 - 4.0) as f32)
            .collect()
    }

    fn run(sampler: &mut Sampler, logits: &[f32], steps: usize) -> Vec<u32> {
        let mut scratch = logits.to_vec();
        (0..steps)
            .map(|_| {
                scratch.copy_from_slice(logits);
                sampler.sample(&mut scratch, &[])
            })
            .collect()
    }

    #[test]
    fn greedy_is_argmax_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::default(), 1000).unwrap();
        for seed in 0..20 {
            let logits = random_logits(1000, seed);
            let want = (0..1000)
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap() as u32;
            assert_eq!(s.sample(&mut logits.clone(), &[]), want);
        }
        let mut s = Sampler::new(SamplingParams::default(), 5).unwrap();
        assert_eq!(s.sample(&mut [1.0, 3.0, 0.0, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_sequence_different_seed_differs() {
        let logits = random_logits(100, 7);
        let p = SamplingParams {
            seed: 42,
            ..params(1.0)
        };
        let a = run(&mut Sampler::new(p.clone(), 100).unwrap(), &logits, 200);
        let b = run(&mut Sampler::new(p.clone(), 100).unwrap(), &logits, 200);
        assert_eq!(a, b);
        let mut reseeded = Sampler::new(
            SamplingParams {
                seed: 1,
                ..p.clone()
            },
            100,
        )
        .unwrap();
        reseeded.reseed(42);
        assert_eq!(run(&mut reseeded, &logits, 200), a);
        let c = run(
            &mut Sampler::new(SamplingParams { seed: 43, ..p }, 100).unwrap(),
            &logits,
            200,
        );
        assert_ne!(a, c);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let p = SamplingParams {
            top_k: 1,
            ..params(1.5)
        };
        let mut s = Sampler::new(p, 500).unwrap();
        for seed in 0..50 {
            let logits = random_logits(500, seed);
            assert_eq!(s.sample(&mut logits.clone(), &[]), argmax(&logits));
        }
    }

    #[test]
    fn top_k_keeps_exactly_the_k_largest() {
        let p = SamplingParams {
            top_k: 3,
            ..params(1.0)
        };
        let mut s = Sampler::new(p, 200).unwrap();
        let logits = random_logits(200, 3);
        let mut order: Vec<u32> = (0..200).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        s.sample(&mut logits.clone(), &[]);
        let kept: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
        assert_eq!(kept, order[..3]);
    }

    #[test]
    fn tiny_top_p_equals_greedy() {
        let p = SamplingParams {
            top_p: 1e-6,
            ..params(1.0)
        };
        let mut s = Sampler::new(p, 300).unwrap();
        for seed in 0..50 {
            let logits = random_logits(300, seed);
            assert_eq!(s.sample(&mut logits.clone(), &[]), argmax(&logits));
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_of_a_large_vocab() {
        // Forces several rounds of the growing sorted prefix (64, 128, ...).
        let n = 5000;
        let logits = random_logits(n, 11);
        let p = SamplingParams {
            top_p: 0.9,
            ..params(1.0)
        };
        let mut s = Sampler::new(p, n).unwrap();
        s.sample(&mut logits.clone(), &[]);
        let kept: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();

        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let total: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
        let mut cumulative = 0.0;
        let mut want = Vec::new();
        for &i in &order {
            cumulative += (logits[i] - max).exp() as f64;
            want.push(i as u32);
            if cumulative >= 0.9 * total {
                break;
            }
        }
        assert!(want.len() > 128, "nucleus too small to test growth");
        assert_eq!(kept, want);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // Probabilities 0.4, 0.3, 0.2, 0.1: min_p 0.5 keeps p >= 0.2, i.e. tokens 0, 1, 2.
        let logits = [0.4f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let p = SamplingParams {
            min_p: 0.5,
            ..params(1.0)
        };
        let mut s = Sampler::new(p, 4).unwrap();
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        assert_eq!(seen[3], 0, "token 3 (p 0.1 < 0.5 * 0.4) must be filtered");
        assert!(seen[..3].iter().all(|&c| c > 0), "{seen:?}");
        // Combined with top_k (sorted path) the result is the same set.
        let p = SamplingParams {
            min_p: 0.5,
            top_k: 4,
            ..params(1.0)
        };
        let mut s = Sampler::new(p, 4).unwrap();
        s.sample(&mut logits.clone(), &[]);
        let kept: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
        assert_eq!(kept, [0, 1, 2]);
    }

    #[test]
    fn repetition_penalty_follows_llama_cpp() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(p.clone(), 4).unwrap();
        let mut logits = [2.0, -1.0, 1.0, 0.5];
        // Token 0 appears twice but is penalized once; token 7 is outside the vocab: skipped.
        s.sample(&mut logits, &[0, 1, 0, 7]);
        assert_eq!(logits, [1.0, -2.0, 1.0, 0.5]);
        // The penalty flips the greedy choice.
        let mut logits = [2.0, 1.5, 0.0, 0.0];
        assert_eq!(s.sample(&mut logits, &[0]), 1);
        // Only the last `repeat_last_n` tokens count.
        let mut s = Sampler::new(
            SamplingParams {
                repeat_last_n: 1,
                ..p
            },
            4,
        )
        .unwrap();
        let mut logits = [2.0, 1.0, 1.0, 1.0];
        s.sample(&mut logits, &[0, 1]);
        assert_eq!(logits, [2.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn distribution_matches_softmax() {
        // Expected frequencies 0.5 / 0.25 / 0.25 over 20k draws. The standard deviation of a
        // frequency is at most sqrt(0.25 / 20000) = 0.0035; the tolerance 0.02 is over 5 sigma.
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()];
        let mut s = Sampler::new(
            SamplingParams {
                seed: 1234,
                ..params(1.0)
            },
            3,
        )
        .unwrap();
        let draws = 20_000;
        let mut counts = [0usize; 3];
        for t in run(&mut s, &logits, draws) {
            counts[t as usize] += 1;
        }
        for (count, want) in counts.iter().zip([0.5, 0.25, 0.25]) {
            let got = *count as f64 / draws as f64;
            assert!((got - want).abs() < 0.02, "frequencies {counts:?}");
        }
    }

    #[test]
    fn nan_and_inf_logits_do_not_panic() {
        let mut s = Sampler::new(params(1.0), 4).unwrap();
        for _ in 0..100 {
            let t = s.sample(&mut [f32::NAN, 1.0, f32::NAN, 1.0], &[]);
            assert!(t == 1 || t == 3);
        }
        assert_eq!(s.sample(&mut [f32::NAN; 4], &[]), 0);
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 4], &[]), 0);
        assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 0.0, 0.0], &[]), 1);
        assert_eq!(s.sample(&mut [], &[]), 0);
        let mut greedy = Sampler::new(SamplingParams::default(), 3).unwrap();
        assert_eq!(greedy.sample(&mut [f32::NAN, -1.0, f32::NAN], &[]), 1);
    }

    #[test]
    fn validate_names_the_parameter() {
        let bad = [
            (params(f32::NAN), "temperature"),
            (params(-1.0), "temperature"),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..params(1.0)
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: f32::NAN,
                    ..params(1.0)
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..params(1.0)
                },
                "repeat_penalty",
            ),
        ];
        for (p, name) in bad {
            let e = Sampler::new(p, 10).unwrap_err();
            assert_eq!(e.param, name);
            assert!(e.to_string().contains(name), "{e}");
        }
        assert_eq!(
            Sampler::new(SamplingParams::default(), 0)
                .unwrap_err()
                .param,
            "vocab_size"
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
