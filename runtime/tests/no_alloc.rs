//! After start-up, generating a token allocates nothing: a counting global allocator sees zero
//! heap allocations during 50 decode steps of one sequence (forward pass over the paged KV
//! arena, worker threads, sampling, streaming detokenization).
//!
//! This file holds a single test so that no other test thread allocates while it counts.

use ember::model::Model;
use ember::sampler::{Sampler, SamplingParams};
use ember::session::{KvBudget, Session, SessionConfig};
use ember::tokenizer::StreamDecoder;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::count_allocations;

#[test]
fn decode_steps_allocate_nothing() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} missing: run scripts/fetch-model.sh",
        path.display()
    );
    let model = Model::load(&path).unwrap();
    let cfg = SessionConfig {
        cuda_weights: Default::default(),
        n_ctx: 256,
        kv_budget: KvBudget::FullContext,
        block_size: 16,
        max_batch_tokens: 64,
        max_logits: 1,
        threads: 2,
        kv_type: Default::default(),
        swa_full: false,
    };
    let mut s = Session::new(model, &cfg).unwrap();
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.1,
        repeat_last_n: 64,
        seed: 7,
    };
    let mut sampler = Sampler::new(params, s.model().config.n_vocab).unwrap();
    let mut decoder = StreamDecoder::new(s.tokenizer());
    let prompt = s
        .tokenizer()
        .encode("Once upon a time,", true, true)
        .unwrap();
    let mut seq = s.new_sequence();
    seq.tokens.extend_from_slice(&prompt);
    let mut text_bytes = 0;

    let mut step = |s: &mut Session, seq: &mut ember::session::Sequence| {
        let last = seq.tokens.len() - 1;
        let mut next = 0;
        s.eval(
            seq,
            |p| p == last,
            |_, logits, hist| next = sampler.sample(logits, hist),
        )
        .unwrap();
        seq.tokens.push(next);
        text_bytes += decoder.push(s.tokenizer(), next).len();
    };
    // Warm-up: prefill and a few steps (first-touch of the arena and scratch pages).
    for _ in 0..3 {
        step(&mut s, &mut seq);
    }
    let n = count_allocations(|| {
        for _ in 0..50 {
            step(&mut s, &mut seq);
        }
    });
    assert_eq!(seq.tokens.len(), prompt.len() + 53);
    assert!(text_bytes > 0);
    assert_eq!(n, 0, "{n} heap allocations during 50 decode steps");

    // 96 more tokens of a sequence: its first pass of 64 takes the tiled attention path (the
    // thread pool's per-thread workspaces), and the row-wise operations spread over the
    // threads. (The sequence starts with a short evaluation: starting a request allocates.)
    s.release(&mut seq);
    let mut seq = s.new_sequence();
    seq.tokens.extend_from_slice(&prompt);
    s.eval(&mut seq, |_| false, |_, _, _| {}).unwrap();
    seq.tokens.extend((0..96).map(|i| prompt[i % prompt.len()]));
    let last = seq.tokens.len() - 1;
    let mut seen = 0;
    let n = count_allocations(|| {
        s.eval(&mut seq, |p| p == last, |_, _, _| seen += 1)
            .unwrap();
    });
    assert_eq!(seen, 1);
    assert_eq!(n, 0, "{n} heap allocations prefilling 96 tokens");
    s.release(&mut seq);
}
