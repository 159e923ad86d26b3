//! The engine allocates nothing in `step()`: a counting global allocator sees zero heap
//! allocations in 100 steps with 8 running sequences (scheduling, block allocation, batched
//! forward pass, sampling, streaming text, stop strings).
//!
//! This file holds a single test so that no other test thread allocates while it counts.

use ember::engine::{Engine, EngineConfig, RequestParams};
use ember::model::Model;
use ember::sampler::SamplingParams;
use ember::session::KvBudget;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::count_allocations;

#[test]
fn hundred_steps_with_eight_sequences_allocate_nothing() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} missing: run scripts/fetch-model.sh",
        path.display()
    );
    let cfg = EngineConfig {
        cuda_weights: Default::default(),
        n_ctx: 256,
        kv_budget: KvBudget::Blocks(128),
        block_size: 16,
        max_seqs: 8,
        max_batch_tokens: 64,
        max_requests: 16,
        threads: 2,
        prefix_caching: true,
        kv_type: Default::default(),
        swa_full: false,
    };
    let mut e = Engine::new(Model::load(&path).unwrap(), cfg).unwrap();
    let prompts = [
        "Once upon a time,",
        "The capital of France is",
        "def fibonacci(n):",
        "Hello",
        "1, 2, 3,",
        "Water boils at",
        "<|im_start|>user\nHi<|im_end|>\n",
        "In 1492,",
    ];
    let mut ids = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let params = RequestParams {
            sampling: SamplingParams {
                temperature: 0.7,
                seed: i as u64,
                repeat_penalty: 1.1,
                ..SamplingParams::default()
            },
            max_tokens: 150,
            stop: vec!["never appears in this text 0xdeadbeef".into()],
            ignore_eos: true,
            ..RequestParams::default()
        };
        ids.push(e.submit_text(p, &params).unwrap());
    }
    // Warm-up: prefill every prompt and a few decode steps (first-touch of arena pages).
    for _ in 0..4 {
        e.step().unwrap();
    }
    let mut sampled = 0;
    let n = count_allocations(|| {
        for _ in 0..100 {
            let s = e.step().unwrap();
            assert_eq!(s.seqs, 8);
            sampled += s.sampled;
        }
    });
    assert_eq!(sampled, 800);
    assert_eq!(n, 0, "{n} heap allocations in 100 engine steps");
    for id in ids {
        assert!(!e.output(id).unwrap().next().unwrap().text.is_empty());
    }
}
