//! The sampler with arbitrary parameters, logits (NaN and infinities included) and history.
//!
//! Properties: `Sampler::new` fails exactly when `SamplingParams::validate` does (non-finite or
//! out-of-range parameters are errors); `sample` never panics and returns an id inside the
//! logits it was given (token 0 for empty logits); with temperature 0 it returns the argmax of
//! the penalized logits, NaN counting as -inf and the lowest id winning ties, as documented;
//! with temperature > 0 it never picks a token that top-k cut or a NaN/-inf logit while a finite
//! one exists; the same seed gives the same token.
#![no_main]

use arbitrary::Arbitrary;
use ember::sampler::{Sampler, SamplingParams};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    temperature: f32,
    top_k: u16,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    repeat_last_n: u8,
    seed: u64,
    vocab_size: u16,
    /// Small ints pick special values (NaN, infinities, ties), others are read as f32 bits.
    logits: Vec<u32>,
    history: Vec<u16>,
    /// Use plausible parameters instead of raw ones, so sampling runs often.
    sane: bool,
}

fn logit(x: u32) -> f32 {
    match x % 16 {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => f32::MAX,
        4 => 0.0,
        5 => 1.0,
        6 => (x >> 8) as f32 / 16.0 - 8.0,
        _ => f32::from_bits(x),
    }
}

fuzz_target!(|inp: Input| {
    let mut params = SamplingParams {
        temperature: inp.temperature,
        top_k: inp.top_k as usize,
        top_p: inp.top_p,
        min_p: inp.min_p,
        repeat_penalty: inp.repeat_penalty,
        repeat_last_n: inp.repeat_last_n as usize,
        seed: inp.seed,
    };
    if inp.sane {
        let unit = |x: f32| if x.is_finite() { x.abs().fract() } else { 0.5 };
        params.temperature = if inp.temperature.is_finite() && inp.temperature > 0.0 {
            unit(inp.temperature) * 4.0
        } else {
            0.0
        };
        params.top_p = unit(inp.top_p);
        params.min_p = unit(inp.min_p);
        params.repeat_penalty = 0.5 + unit(inp.repeat_penalty) * 2.0;
    }
    let vocab = inp.vocab_size as usize;
    let valid = params.validate().is_ok();
    let sampler = Sampler::new(params.clone(), vocab);
    assert_eq!(
        sampler.is_ok(),
        valid && vocab > 0,
        "new and validate disagree: {params:?}, vocab {vocab}"
    );
    let Ok(mut sampler) = sampler else {
        return;
    };
    let logits: Vec<f32> = inp.logits.iter().map(|&x| logit(x)).collect();
    let history: Vec<u32> = inp.history.iter().map(|&h| h as u32 % 512).collect();
    let n = logits.len().min(vocab);

    let mut work = logits.clone();
    let id = sampler.sample(&mut work, &history);
    let penalized = reference_penalty(&logits[..n], &history, &params);
    if n == 0 {
        assert_eq!(id, 0, "empty logits give token 0");
        return;
    }
    assert!((id as usize) < n, "id {id} outside the {n} logits");
    if params.temperature == 0.0 {
        assert_eq!(id, argmax(&penalized), "greedy is not the argmax");
    } else {
        // The sampler's view of a logit: NaN is -inf, +inf is f32::MAX.
        let key = |x: f32| {
            if x.is_nan() {
                f32::NEG_INFINITY
            } else {
                x.min(f32::MAX)
            }
        };
        let chosen = key(penalized[id as usize]);
        if penalized.iter().any(|&x| key(x) > f32::NEG_INFINITY) {
            assert!(chosen > f32::NEG_INFINITY, "picked a NaN/-inf logit");
        }
        if params.top_k > 0 {
            let better = penalized.iter().filter(|&&x| key(x) > chosen).count();
            assert!(better < params.top_k, "picked a token top-k cut");
        }
    }
    // Determinism: a fresh sampler with the same seed picks the same token.
    let mut again = Sampler::new(params, vocab).unwrap();
    let mut work2 = logits.clone();
    assert_eq!(again.sample(&mut work2, &history), id);
});

/// llama.cpp's repetition penalty, written from the documentation: each distinct in-vocabulary
/// token of the last `repeat_last_n` history tokens is divided by the penalty when positive,
/// multiplied when not.
fn reference_penalty(logits: &[f32], history: &[u32], p: &SamplingParams) -> Vec<f32> {
    let mut out = logits.to_vec();
    if p.repeat_penalty == 1.0 || p.repeat_last_n == 0 {
        return out;
    }
    let window = &history[history.len().saturating_sub(p.repeat_last_n)..];
    let mut seen = vec![false; out.len()];
    for &t in window {
        let t = t as usize;
        if t < out.len() && !seen[t] {
            seen[t] = true;
            let l = out[t];
            out[t] = if l > 0.0 {
                l / p.repeat_penalty
            } else {
                l * p.repeat_penalty
            };
        }
    }
    out
}

/// The documented greedy choice: the largest logit, NaN never winning, the lowest id winning
/// ties; 0 when every logit is NaN or -inf.
fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, &x) in logits.iter().enumerate() {
        if !x.is_nan() && x > f32::NEG_INFINITY && best.is_none_or(|b| x > logits[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}
