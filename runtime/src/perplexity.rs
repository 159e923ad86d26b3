//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it.
//!
//! The text's tokens are cut into chunks of `n_ctx` (a shorter tail is dropped). Each chunk is
//! evaluated from an empty cache, its first token replaced by BOS when the model adds one. With
//! `first = n_ctx / 2`, the logits at positions `first .. n_ctx - 2` score the tokens at
//! `first + 1 .. n_ctx - 1` (so `n_ctx - first - 1` tokens per chunk). The figure is
//! `exp(mean NLL)` over all scored tokens; the log-softmax sums in f64 as llama.cpp does.

use crate::engine::Engine;
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

/// Tokens of one chunk that `llama-perplexity` (default `-b 2048 -ub 512`) evaluates per
/// forward pass for chunks of `n_ctx`: it puts `2048 / n_ctx` chunks in one batch, as many
/// sequences, and cuts it into micro-batches of 512 tokens holding an equal share of each. Give
/// an engine this `max_batch_tokens` to reproduce its figures exactly: whether attention takes
/// ggml's tiled path depends on the query rows per pass (64 or more).
pub fn llama_batch(n_ctx: usize) -> usize {
    let n_seq = (2048 / n_ctx.max(1)).max(1);
    (512 / n_seq).clamp(1, n_ctx.max(1))
}

/// log p(token) under softmax(logits), max-subtracted, summed in f64.
fn log_softmax(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    f64::from(logits[token as usize] - max) - sum.ln()
}

/// Perplexity of `tokens` with chunks of `n_ctx` tokens, on a session's engine. `on_chunk(i,
/// ppl_so_far)` is called after each chunk.
pub fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    n_ctx: usize,
    on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity> {
    perplexity_on(session.engine_mut(), tokens, n_ctx, on_chunk)
}

/// [`perplexity`] on an engine: each chunk is one scoring request (the logits at positions
/// `first .. n_ctx - 1`, nothing sampled). A NaN logits row fails the whole figure with
/// [`Error::NonFinite`] (the engine's one NaN rule). Its steps may share forward passes with
/// other requests of the engine.
pub fn perplexity_on(
    engine: &mut Engine,
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
    let tok = engine.tokenizer();
    let bos = tok.add_bos().then(|| tok.bos()).flatten();
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let t0 = std::time::Instant::now();
    let mut chunk = Vec::with_capacity(n_ctx);
    for i in 0..n_chunks {
        chunk.clear();
        chunk.extend_from_slice(&tokens[i * n_ctx..(i + 1) * n_ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let id = engine.submit_scoring(&chunk, first..n_ctx - 1)?;
        let target = &tokens[i * n_ctx..(i + 1) * n_ctx];
        let r = score(engine, id, |pos, logits| {
            let lp = log_softmax(logits, target[pos + 1]);
            nll -= lp;
            nll2 += lp * lp;
            count += 1;
        });
        engine.release(id)?;
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

/// Step `engine` until scoring request `id` is computed, handing its rows to `on_row`.
fn score(
    engine: &mut Engine,
    id: crate::engine::RequestId,
    mut on_row: impl FnMut(usize, &[f32]),
) -> Result<()> {
    while !engine.is_idle(id)? {
        engine.step_with(|row| {
            if row.request == id {
                on_row(row.pos, row.logits);
            }
        })?;
    }
    let failed = engine
        .output(id)?
        .any(|o| o.finish == Some(crate::engine::FinishReason::Error));
    if failed {
        return Err(engine
            .take_output(id, 0)?
            .error
            .unwrap_or_else(|| Error::NonFinite("a logits row holds NaN".into())));
    }
    Ok(())
}
