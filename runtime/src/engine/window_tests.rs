//! Sliding-window layers in blocks of their own (`kv::KvGroups`): the blocks that fall out of
//! the window go back to the pool while a sequence runs, and nothing the engine computes
//! changes — checked against the same engine keeping every block (`EngineConfig::swa_full`),
//! through preemption, the prefix cache, forks, prompt cache files and context shifts.

use super::tests::{greedy, run_to_end};
use super::*;
use crate::gguf::GgufFile;
use crate::kv::KvType;
use crate::synth::{synth_gguf, SynthSpec};

/// Gemma 3's pattern over 6 layers (one full-attention layer, five with a window of 8): six
/// groups of one layer. Q8_0 weights, whose batched products equal the one-row ones, so
/// chunked prefill and preemption are exact.
fn model() -> Model {
    let spec = SynthSpec {
        arch: "gemma3".into(),
        n_embd: 64,
        n_layer: 6,
        n_head: 2,
        n_head_kv: 1,
        n_ff: 64,
        n_ctx: 256,
        sliding_window: 8,
        separate_output: true,
        ..SynthSpec::default()
    };
    let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
    Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
}

fn config(blocks: usize, swa_full: bool, budget: usize) -> EngineConfig {
    EngineConfig {
        n_ctx: 96,
        kv_budget: KvBudget::Blocks(blocks),
        block_size: 4,
        max_seqs: 4,
        max_batch_tokens: budget,
        max_requests: 16,
        threads: 1,
        swa_full,
        ..EngineConfig::default()
    }
}

fn engine(blocks: usize, swa_full: bool, budget: usize) -> Engine {
    Engine::new(model(), config(blocks, swa_full, budget)).unwrap()
}

/// Seeded sampling at a high temperature: the ids follow the logits closely (a random model's
/// greedy output repeats one token).
fn sampled(max_tokens: usize, seed: u64) -> RequestParams {
    RequestParams {
        sampling: crate::sampler::SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..Default::default()
        },
        ..greedy(max_tokens)
    }
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|k| ((k * 31 + i * 7 + 5) % 250 + 3) as u32)
        .collect()
}

fn ids(e: &Engine, id: RequestId) -> Vec<u32> {
    e.output(id).unwrap().next().unwrap().ids.clone()
}

#[test]
fn out_of_window_blocks_return_to_the_pool_and_change_nothing() {
    let mut full = engine(200, true, 16);
    let mut split = engine(200, false, 16);
    assert_eq!(full.kv_groups().len(), 1);
    let g = split.kv_groups().clone();
    assert_eq!((g.len(), g.size(), g.window(0), g.window(1)), (6, 1, 0, 8));
    let p = prompt(0, 30);
    let a = full.submit(&p, &sampled(50, 3)).unwrap();
    let b = split.submit(&p, &sampled(50, 3)).unwrap();
    run_to_end(&mut full);
    // Step by step: the blocks held are the full group's whole context and, per sliding
    // group, only the blocks from its window's first position on (released when the next
    // step is reserved, so the window of a position up to one step, 16 tokens, back).
    let bs = 4;
    let (mut peak, mut last) = (0, 0);
    while split.has_work() {
        split.step().unwrap();
        let Some(seq) = split.seqs.iter().flatten().find(|s| s.out.finish.is_none()) else {
            continue;
        };
        let n = seq.num_computed;
        let len = n.div_ceil(bs);
        let first = g.first_needed_block(1, n.saturating_sub(16), bs);
        let held = seq.table.held();
        assert!(held <= len + 5 * (len - first), "{held} blocks at {n}");
        (peak, last) = (peak.max(held), held);
    }
    assert_eq!(ids(&split, b), ids(&full, a));
    // At 79 positions: 20 blocks of one layer for the full group and at most 3 per sliding
    // group (8 positions and the token of the step), 35 single-layer blocks where keeping
    // every block takes 20 six-layer ones (120).
    assert!(last <= 20 + 5 * 3, "{last} blocks at the end");
    assert!(peak <= 20 + 5 * 7, "peak {peak}");
    assert_eq!(split.metrics().blocks_used, 0);
    assert_eq!(
        full.backend().layout().block_bytes(),
        6 * split.backend().layout().block_bytes()
    );
}

#[test]
fn preemption_prefix_cache_and_forks_match_a_roomy_engine() {
    let run = |e: &mut Engine| -> Vec<Vec<u32>> {
        // Two prompts sharing 16 tokens, each asked twice (prefix cache), one with n = 2
        // (forks), all past the window.
        let mut shared = prompt(1, 16);
        shared.extend(prompt(2, 7));
        let reqs: Vec<(Vec<u32>, RequestParams)> = vec![
            (
                prompt(1, 16).into_iter().chain(prompt(3, 5)).collect(),
                sampled(30, 1),
            ),
            (shared.clone(), sampled(30, 2)),
            (
                shared.clone(),
                RequestParams {
                    n: 2,
                    ..sampled(25, 3)
                },
            ),
            (prompt(4, 40), sampled(20, 4)),
        ];
        let mut out = Vec::new();
        for round in 0..2 {
            let ids: Vec<RequestId> = reqs.iter().map(|(p, r)| e.submit(p, r).unwrap()).collect();
            run_to_end(e);
            for id in ids {
                for o in e.output(id).unwrap() {
                    out.push(o.ids.clone());
                }
                e.release(id).unwrap();
            }
            assert_eq!(e.metrics().blocks_used, 0, "round {round}");
            e.pool.check_invariants().unwrap();
        }
        out
    };
    // Passes under 64 tokens in every engine: from 64 on, attention takes ggml's tiled path
    // (`attention_tiled`), whose rounding differs, as llama.cpp's does, so a recompute in
    // smaller passes would not give the same bits.
    let want = run(&mut engine(400, true, 48));
    let roomy = run(&mut engine(800, false, 48));
    assert_eq!(roomy, want);
    // 80 single-layer blocks: a few sequences at a time, preempted and recomputed.
    let mut tiny = engine(80, false, 8);
    let got = run(&mut tiny);
    assert_eq!(got, want);
    assert!(tiny.metrics().preemptions > 0);
    assert!(tiny.metrics().prefix_hit_tokens > 0);
}

#[test]
fn a_second_request_takes_the_cached_window_only() {
    // Prefill in chunks of 8: the sliding groups' first blocks go back during the prefill.
    let mut e = engine(400, false, 8);
    let p = prompt(5, 40);
    let a = e.submit(&p, &greedy(1)).unwrap();
    run_to_end(&mut e);
    let first = ids(&e, a);
    e.release(a).unwrap();
    // Evict the first block of every sliding group (released first while the request ran,
    // so evicted before the blocks released when it finished).
    let h0 = crate::kv::hash_block(None, &p[..4]);
    let mut taken = Vec::new();
    while (1..6).any(|g| e.pool.lookup(crate::kv::group_hash(h0, g)).is_some()) {
        taken.push(e.pool.allocate().unwrap());
    }
    assert!(
        e.pool.lookup(h0).is_some(),
        "the full group's blocks are kept longer"
    );
    for b in taken {
        e.pool.free(b);
    }
    // The full group has every block, the sliding groups the two its next query reads.
    let hit0 = e.metrics().prefix_hit_tokens;
    let b = e.submit(&p, &greedy(1)).unwrap();
    run_to_end(&mut e);
    assert_eq!(ids(&e, b), first);
    assert_eq!(
        e.metrics().prefix_hit_tokens - hit0,
        39,
        "9 whole blocks of 4 cached, then 3 tokens of the tenth copied from its blocks"
    );
}

/// Reuse below block granularity with layer groups: a conversation's next turn takes the
/// cached whole blocks and then the first tokens of the last, partial block of every group
/// (released with the earlier turn), as an engine keeping every block does; outputs are equal.
#[test]
fn partial_blocks_of_every_group_continue_a_conversation() {
    let run = |swa_full: bool| {
        let mut e = engine(400, swa_full, 64);
        // 30 prompt tokens (past the window of 8) and 5 samples: 34 computed, the ninth block
        // holds 2 when the request is released.
        let p = prompt(3, 30);
        let a = e.submit(&p, &sampled(5, 11)).unwrap();
        run_to_end(&mut e);
        let first = ids(&e, a);
        e.release(a).unwrap();
        let mut longer = p.clone();
        longer.extend_from_slice(&first);
        longer.push(9);
        let hit0 = e.metrics().prefix_hit_tokens;
        let b = e.submit(&longer, &sampled(4, 12)).unwrap();
        run_to_end(&mut e);
        (first, ids(&e, b), e.metrics().prefix_hit_tokens - hit0)
    };
    let grouped = run(false);
    assert_eq!(grouped.2, 34, "8 whole blocks and 2 tokens of the ninth");
    assert_eq!(grouped, run(true));
}

#[test]
fn prompt_cache_files_round_trip_through_groups() {
    let dir = std::env::temp_dir().join(format!("ember-window-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.kvc");
    let p = prompt(6, 41);
    let mut a = engine(400, false, 64);
    let ra = a.submit(&p, &sampled(12, 9)).unwrap();
    run_to_end(&mut a);
    assert_eq!(a.save_prompt_cache(&path, &p).unwrap(), 40);
    // The file holds every layer in model order: an engine keeping all blocks reads it too.
    for swa_full in [false, true] {
        let mut b = engine(400, swa_full, 64);
        let loaded = b.load_prompt_cache(&path).unwrap();
        assert_eq!(loaded.loaded_tokens, 40);
        let rb = b.submit(&p, &sampled(12, 9)).unwrap();
        run_to_end(&mut b);
        assert_eq!(ids(&b, rb), ids(&a, ra), "swa_full {swa_full}");
        assert_eq!(b.output(rb).unwrap().next().unwrap().n_cached, 40);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn context_shifts_keep_the_kept_blocks_of_sliding_groups() {
    let shifting = |mut r: RequestParams| {
        r.context_shift = Some(ContextShift { keep: 8 });
        r
    };
    let mut out = Vec::new();
    for swa_full in [true, false] {
        let mut e = engine(400, swa_full, 16);
        let id = e
            .submit(&prompt(7, 20), &shifting(sampled(200, 5)))
            .unwrap();
        run_to_end(&mut e);
        assert!(e.metrics().context_shifts >= 2);
        out.push(ids(&e, id));
    }
    assert_eq!(out[1], out[0]);
}

#[test]
fn quantized_kv_in_groups_equals_keeping_every_block() {
    for kv_type in [KvType::Q8_0, KvType::Q4_0] {
        let mut outs = Vec::new();
        for swa_full in [true, false] {
            let cfg = EngineConfig {
                kv_type,
                ..config(200, swa_full, 16)
            };
            // Heads of 32: quantized rows need multiples of 32.
            let mut e = Engine::new(model(), cfg).unwrap();
            let id = e.submit(&prompt(8, 30), &sampled(40, 6)).unwrap();
            run_to_end(&mut e);
            outs.push(ids(&e, id));
        }
        assert_eq!(outs[1], outs[0], "{kv_type}");
    }
}
