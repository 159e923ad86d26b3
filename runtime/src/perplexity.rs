//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it.
//!
//! The text's tokens are cut into chunks of `n_ctx` (a shorter tail is dropped). Each chunk is
//! evaluated from an empty cache, its first token replaced by BOS when the model adds one. With
//! `first = n_ctx / 2`, the logits at positions `first .. n_ctx - 2` score the tokens at
//! `first + 1 .. n_ctx - 1` (so `n_ctx - first - 1` tokens per chunk). The figure is
//! `exp(mean NLL)` over all scored tokens; the log-softmax sums in f64 as llama.cpp does.

use crate::error::{Error, Result};
use crate::session::Session;

/// Outcome of [`perplexity`].
#[derive(Clone, Debug)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// Its standard error estimate, as llama.cpp prints it after `+/-`.
    pub ppl_err: f64,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens scored.
    pub scored: usize,
    /// Tokens per second over all evaluated tokens.
    pub tok_s: f64,
}

/// log p(token) under softmax(logits), max-subtracted, summed in f64.
fn log_softmax(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(logits[token as usize] - max) - sum.ln()
}

/// Perplexity of `tokens` with chunks of `n_ctx` tokens. `on_chunk(i, ppl_so_far)` is called
/// after each chunk.
pub fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    n_ctx: usize,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity> {
    if n_ctx < 4 {
        return Err(Error::InvalidParam {
            name: "ctx",
            what: format!("chunk size {n_ctx} is too small (at least 4)"),
        });
    }
    if tokens.len() < 2 * n_ctx {
        return Err(Error::InvalidParam {
            name: "ctx",
            what: format!(
                "the text has {} tokens; a chunk size of {n_ctx} needs at least {} (two chunks)",
                tokens.len(),
                2 * n_ctx
            ),
        });
    }
    let n_chunks = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let bos = session
        .tokenizer
        .add_bos()
        .then(|| session.tokenizer.bos())
        .flatten();
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let t0 = std::time::Instant::now();
    let mut seq = session.new_sequence();
    for i in 0..n_chunks {
        let chunk = &tokens[i * n_ctx..(i + 1) * n_ctx];
        seq.tokens.clear();
        seq.tokens.extend_from_slice(chunk);
        if let Some(b) = bos {
            seq.tokens[0] = b;
        }
        let r = session.eval(
            &mut seq,
            |p| p >= first && p + 1 < n_ctx,
            |p, logits, _| {
                let lp = log_softmax(logits, chunk[p + 1]);
                nll -= lp;
                nll2 += lp * lp;
                count += 1;
            },
        );
        session.release(&mut seq);
        r?;
        on_chunk(i, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let ppl_err = if var > 0.0 {
        (var / (count as f64 - 1.0)).sqrt() * ppl
    } else {
        0.0
    };
    Ok(Perplexity {
        ppl,
        ppl_err,
        chunks: n_chunks,
        scored: count,
        tok_s: (n_chunks * n_ctx) as f64 / t0.elapsed().as_secs_f64().max(1e-9),
    })
}
