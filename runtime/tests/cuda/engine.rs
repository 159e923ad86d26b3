//! The engine on CUDA: many sequences per step, prefix sharing and partial-block reuse, prompt-cache
//! files through the device, speculative decoding and grammars, context shifts; each against lone
//! CUDA sessions or the CPU.

use super::models::{argmax, session_cfg, synth_gemma3, synth_model};
use super::*;

/// The engine on CUDA (many sequences per step, chunked prefill, prefix-cache hits, `n = 2`
/// forks that copy a shared block on the device) must give each sequence exactly the ids a
/// lone CUDA session gives it: every CUDA kernel computes a token's row the same way whatever
/// else is in the batch, so any difference is a paging, table or copy-on-write bug.
#[test]
fn engine_on_cuda_equals_lone_cuda_sessions() {
    if device("engine_on_cuda_equals_lone_cuda_sessions").is_none() {
        return;
    }
    let cfg = EngineConfig {
        cuda_weights: Default::default(),
        n_ctx: 512,
        kv_budget: KvBudget::Blocks(200),
        block_size: 16,
        max_seqs: EXACT_BATCH,
        max_batch_tokens: EXACT_BATCH,
        max_requests: 16,
        threads: 2,
        prefix_caching: true,
        kv_type: Default::default(),
        swa_full: false,
    };
    let shared: Vec<u32> = (0..37).map(|i| (i * 13 + 7) % 500).collect();
    let reqs: Vec<(Vec<u32>, RequestParams)> = (0..10u32)
        .map(|r| {
            let mut p = shared.clone();
            p.extend((0..(r * 7 % 23)).map(|i| (i * 31 + r) % 500));
            // Greedy requests take the argmax computed on the device (their rows stay there);
            // every fourth samples at a temperature, so its rows come back whole, in the same
            // steps; n = 2 copies the first row for the sibling to fork from.
            let sampling = SamplingParams {
                temperature: if r % 4 == 1 { 0.8 } else { 0.0 },
                seed: u64::from(r),
                ..SamplingParams::default()
            };
            let params = RequestParams {
                sampling,
                max_tokens: 24 + r as usize,
                ignore_eos: true,
                n: if r % 3 == 0 { 2 } else { 1 },
                ..RequestParams::default()
            };
            (p, params)
        })
        .collect();
    let mut e =
        Engine::with_backend(synth_model(GgmlType::Q8_0, 5), cfg, BackendKind::Cuda).unwrap();
    let ids: Vec<_> = reqs.iter().map(|(p, q)| e.submit(p, q).unwrap()).collect();
    while e.has_work() {
        e.step().unwrap();
    }
    let m = e.metrics();
    assert!(m.prefix_hit_tokens > 0, "the prefix cache was used");
    let mut solo = Session::with_backend(
        synth_model(GgmlType::Q8_0, 5),
        &session_cfg(),
        BackendKind::Cuda,
    )
    .unwrap();
    let mut n_seq = 0;
    for ((p, q), id) in reqs.iter().zip(&ids) {
        let want = if q.sampling.temperature > 0.0 {
            solo.generate(
                p,
                &GenerateParams {
                    sampling: q.sampling.clone(),
                    max_tokens: q.max_tokens,
                    ignore_eos: true,
                    ..GenerateParams::default()
                },
                |_| {},
            )
            .unwrap()
            .ids
        } else {
            // The host's argmax over whole rows read back.
            let mut seq = solo.new_sequence();
            seq.tokens.extend_from_slice(p);
            let mut ids = Vec::new();
            for _ in 0..q.max_tokens {
                let last = seq.tokens.len() - 1;
                let mut next = 0;
                solo.eval(&mut seq, |i| i == last, |_, l, _| next = argmax(l) as u32)
                    .unwrap();
                seq.tokens.push(next);
                ids.push(next);
            }
            solo.release(&mut seq);
            ids
        };
        for (i, o) in e.output(*id).unwrap().enumerate() {
            assert_eq!(o.ids, want, "request prompt len {} sequence {i}", p.len());
            n_seq += 1;
        }
    }
    println!(
        "engine: {n_seq} sequences equal to lone sessions ({} prefix-hit tokens, {} steps)",
        m.prefix_hit_tokens, m.steps
    );
}

/// A conversation on a model with layer groups (synthetic Gemma 3: window 16, context 512)
/// through a CUDA engine with the prefix cache: the second turn takes the first turn's whole
/// blocks and the first tokens of its last, partial block in every group (slots copied on the
/// device), and both turns give the ids of an engine that computes everything.
#[test]
fn grouped_partial_block_reuse_on_cuda() {
    if device("grouped_partial_block_reuse_on_cuda").is_none() {
        return;
    }
    let run = |prefix_caching: bool| {
        let cfg = EngineConfig {
            n_ctx: 512,
            kv_budget: KvBudget::Blocks(200),
            block_size: 16,
            max_seqs: 2,
            max_batch_tokens: EXACT_BATCH,
            max_requests: 4,
            threads: 2,
            prefix_caching,
            ..EngineConfig::default()
        };
        let model = synth_gemma3(GgmlType::Q8_0, 256, 4, 5);
        let mut e = Engine::with_backend(model, cfg, BackendKind::Cuda).unwrap();
        assert!(e.kv_groups().len() > 1, "the window is grouped");
        let params = RequestParams {
            max_tokens: 13,
            ignore_eos: true,
            ..RequestParams::default()
        };
        let turn1: Vec<u32> = (0..40).map(|i| (i * 41 + 7) % 500).collect();
        let a = e.submit(&turn1, &params).unwrap();
        while e.has_work() {
            e.step().unwrap();
        }
        let first = e.output(a).unwrap().next().unwrap().ids.clone();
        e.release(a).unwrap();
        let mut turn2 = turn1.clone();
        turn2.extend(&first);
        turn2.extend([3, 5, 7]);
        let hit0 = e.metrics().prefix_hit_tokens;
        let b = e.submit(&turn2, &params).unwrap();
        while e.has_work() {
            e.step().unwrap();
        }
        let second = e.output(b).unwrap().next().unwrap().ids.clone();
        (first, second, e.metrics().prefix_hit_tokens - hit0)
    };
    let (first, second, hits) = run(true);
    // 40 + 12 tokens computed in the first turn: 3 blocks of 16 and 4 tokens of the fourth.
    assert_eq!(hits, 52, "every token the first turn computed");
    let (first0, second0, _) = run(false);
    assert_eq!((first, second), (first0, second0));
    println!("grouped partial reuse on CUDA: {hits} prompt tokens reused, ids equal");
}

/// Prompt cache files through device memory: a cache written by the CPU engine, loaded into a
/// CUDA engine and saved again from it, is byte for byte the same file (the blocks went to the
/// device and back unchanged); a CUDA engine that loads a cache written on CUDA gives the ids of
/// computing the prompt, with the prompt's full blocks taken from the cache.
#[test]
fn prompt_cache_files_round_trip_through_the_device() {
    if device("prompt_cache_files_round_trip_through_the_device").is_none() {
        return;
    }
    let cfg = EngineConfig {
        cuda_weights: Default::default(),
        n_ctx: 512,
        kv_budget: KvBudget::Blocks(64),
        block_size: 16,
        max_seqs: 2,
        max_batch_tokens: EXACT_BATCH,
        max_requests: 4,
        threads: 2,
        prefix_caching: true,
        kv_type: Default::default(),
        swa_full: false,
    };
    let prompt: Vec<u32> = (0..75).map(|i| (i * 29 + 3) % 500).collect();
    let params = RequestParams {
        max_tokens: 16,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let dir = std::env::temp_dir().join(format!("ember-cuda-pc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |e: &mut Engine| {
        let id = e.submit(&prompt, &params).unwrap();
        while e.has_work() {
            e.step().unwrap();
        }
        let o = e.output(id).unwrap().next().unwrap();
        let r = (o.ids.clone(), o.n_cached);
        e.release(id).unwrap();
        r
    };
    let model = || synth_model(GgmlType::Q8_0, 11);

    let mut cpu = Engine::with_backend(model(), cfg.clone(), BackendKind::Cpu).unwrap();
    run(&mut cpu);
    let from_cpu = dir.join("cpu.kvc");
    assert_eq!(cpu.save_prompt_cache(&from_cpu, &prompt).unwrap(), 64);
    let mut gpu = Engine::with_backend(model(), cfg.clone(), BackendKind::Cuda).unwrap();
    assert_eq!(gpu.load_prompt_cache(&from_cpu).unwrap().loaded_tokens, 64);
    let back = dir.join("back.kvc");
    assert_eq!(gpu.save_prompt_cache(&back, &prompt).unwrap(), 64);
    assert!(
        std::fs::read(&from_cpu).unwrap() == std::fs::read(&back).unwrap(),
        "the blocks came back from the device changed"
    );

    let mut gpu = Engine::with_backend(model(), cfg.clone(), BackendKind::Cuda).unwrap();
    let (want, cached) = run(&mut gpu);
    assert_eq!(cached, 0);
    let from_gpu = dir.join("gpu.kvc");
    assert_eq!(gpu.save_prompt_cache(&from_gpu, &prompt).unwrap(), 64);
    let mut fresh = Engine::with_backend(model(), cfg, BackendKind::Cuda).unwrap();
    assert_eq!(
        fresh.load_prompt_cache(&from_gpu).unwrap().loaded_tokens,
        64
    );
    assert_eq!(run(&mut fresh), (want, 64));
    let _ = std::fs::remove_dir_all(&dir);
    println!("prompt cache: 64 of 75 prompt tokens loaded on CUDA, ids equal");
}

/// Every weight type a model may hold (the CPU's list) has a CUDA kernel, and this file tests
/// each one (`ALL_WEIGHTS`): a model the CPU loads is never refused for its weight types. (No
/// device needed: the lists are constants.)
/// Speculative decoding on the device (the real token and its drafts in one step, a logits row
/// each) gives the ids of plain decoding, and a grammar-constrained request follows its
/// grammar: both are host-side logic over the device's logits rows.
#[test]
fn speculation_and_grammars_on_cuda() {
    if device("speculation_and_grammars_on_cuda").is_none() {
        return;
    }
    use ember::engine::Speculative;
    use ember::grammar::Grammar;
    use std::sync::Arc;
    let cfg = EngineConfig {
        n_ctx: 256,
        kv_budget: KvBudget::Blocks(32),
        max_seqs: 2,
        max_batch_tokens: EXACT_BATCH,
        ..EngineConfig::default()
    };
    let mut gpu =
        Engine::with_draft_rows(synth_model(GgmlType::Q8_0, 5), cfg, BackendKind::Cuda).unwrap();
    let prompt: Vec<u32> = (0..30).map(|i| 40 + (i % 5) * 11).collect();
    let mut run = |params: &RequestParams| {
        let id = gpu.submit(&prompt, params).unwrap();
        while gpu.has_work() {
            gpu.step().unwrap();
        }
        let o = gpu.output(id).unwrap().next().unwrap();
        let r = (
            o.ids.clone(),
            o.text.clone(),
            o.draft_tokens,
            o.accepted_tokens,
        );
        gpu.release(id).unwrap();
        r
    };
    let plain = RequestParams {
        max_tokens: 40,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let (want, _, _, _) = run(&plain);
    for k in [2, 8] {
        let spec = RequestParams {
            speculative: Some(Speculative::lookup(k)),
            ..plain.clone()
        };
        let (got, _, drafted, accepted) = run(&spec);
        assert_eq!(got, want, "k {k}");
        eprintln!("speculation on CUDA, k {k}: {accepted} of {drafted} drafts accepted");
    }
    let g = Arc::new(
        Grammar::parse("root ::= \"[\" [0-9]{1,3} (\", \" [0-9]{1,3}){0,3} \"]\"").unwrap(),
    );
    let params = RequestParams {
        max_tokens: 40,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: 9,
            ..Default::default()
        },
        grammar: Some(Arc::clone(&g)),
        ..RequestParams::default()
    };
    let (_, text, _, _) = run(&params);
    assert!(g.accepts(&text), "{text:?}");
    // A repeated prompt: its last block's first tokens are copied on the device from the
    // block that holds them (partial-block reuse), and the output is unchanged.
    let (again, _, _, _) = run(&plain);
    assert_eq!(again, want, "prefix reuse below block granularity on CUDA");
    // A draft model (the model itself: every greedy guess is right) in a CUDA engine of its own.
    gpu.set_draft_model(synth_model(GgmlType::Q8_0, 5)).unwrap();
    let spec = RequestParams {
        speculative: Some(Speculative {
            k: 4,
            drafter: ember::engine::Drafter::Model,
        }),
        ..plain.clone()
    };
    let id = gpu.submit(&prompt, &spec).unwrap();
    while gpu.has_work() {
        gpu.step().unwrap();
    }
    let o = gpu.output(id).unwrap().next().unwrap();
    assert_eq!(o.ids, want, "draft model on CUDA");
    // (Batched and one-row products may round apart: near-ties can refuse a guess.)
    assert!(o.accepted_tokens > 0 && o.accepted_tokens <= o.draft_tokens);
    eprintln!(
        "draft model on CUDA: {} of {} drafts accepted",
        o.accepted_tokens, o.draft_tokens
    );
    gpu.release(id).unwrap();
}

/// Context shift on the device, for every KV type: a generation of more than twice the context
/// runs to the end through several shifts (keys rotated by the device kernel, cached blocks
/// copied first), the same request gives the same ids again, and every block comes back.
#[test]
fn context_shift_on_cuda() {
    if device("context_shift_on_cuda").is_none() {
        return;
    }
    for kv_type in ember::kv::KvType::ALL {
        shift_on_cuda(kv_type);
    }
}

fn shift_on_cuda(kv_type: ember::kv::KvType) {
    let cfg = EngineConfig {
        n_ctx: 64,
        kv_budget: KvBudget::Blocks(16),
        max_seqs: 2,
        max_batch_tokens: EXACT_BATCH,
        kv_type,
        ..EngineConfig::default()
    };
    let mut gpu =
        Engine::with_backend(synth_model(GgmlType::Q8_0, 7), cfg, BackendKind::Cuda).unwrap();
    let prompt: Vec<u32> = (0..30).map(|i| 40 + (i * 7) % 300).collect();
    let params = RequestParams {
        max_tokens: 150,
        ignore_eos: true,
        context_shift: Some(ember::engine::ContextShift { keep: 16 }),
        ..RequestParams::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let id = gpu.submit(&prompt, &params).unwrap();
        while gpu.has_work() {
            gpu.step().unwrap();
        }
        let o = gpu.output(id).unwrap().next().unwrap();
        assert_eq!(o.ids.len(), 150);
        assert!(o.shifted_tokens >= 96, "{}", o.shifted_tokens);
        runs.push(o.ids.clone());
        gpu.release(id).unwrap();
    }
    assert_eq!(runs[0], runs[1]);
    assert!(gpu.metrics().context_shifts >= 4);
    assert_eq!(gpu.metrics().blocks_used, 0);
}

/// Decode steps of many sequences run as CUDA graphs, one per shape (tokens, attention
/// partitions), and give the ids that direct launches give: 20 requests finishing at different
/// steps make the batch shrink from 20 sequences (tensor-core products) to 1 (matrix-vector),
/// so graphs of both kinds are captured and replayed; greedy requests take the device argmax
/// after the replay, sampled ones the device candidates.
#[test]
fn decode_graphs_equal_direct_launches() {
    if device("decode_graphs_equal_direct_launches").is_none() {
        return;
    }
    let cfg = EngineConfig {
        cuda_weights: Default::default(),
        n_ctx: 256,
        kv_budget: KvBudget::Blocks(400),
        block_size: 16,
        max_seqs: 20,
        max_batch_tokens: 512,
        max_requests: 32,
        threads: 2,
        prefix_caching: false,
        kv_type: Default::default(),
        swa_full: false,
    };
    let reqs: Vec<(Vec<u32>, RequestParams)> = (0..20u32)
        .map(|r| {
            let prompt: Vec<u32> = (0..(5 + r * 3)).map(|i| (i * 29 + r * 7) % 500).collect();
            let sampling = SamplingParams {
                temperature: if r % 3 == 1 { 0.9 } else { 0.0 },
                top_k: 40,
                seed: u64::from(r),
                ..SamplingParams::default()
            };
            let params = RequestParams {
                sampling,
                max_tokens: 6 + r as usize * 2,
                ignore_eos: true,
                ..RequestParams::default()
            };
            (prompt, params)
        })
        .collect();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K] {
        let run = |graphs: bool| {
            let mut e =
                Engine::with_backend(synth_model(ty, 5), cfg.clone(), BackendKind::Cuda).unwrap();
            e.set_cuda_graph(graphs);
            let ids: Vec<_> = reqs.iter().map(|(p, q)| e.submit(p, q).unwrap()).collect();
            while e.has_work() {
                e.step().unwrap();
            }
            let out: Vec<Vec<u32>> = ids
                .iter()
                .map(|&id| e.output(id).unwrap().next().unwrap().ids.clone())
                .collect();
            (out, e.backend().cuda_graphs())
        };
        let (direct, none) = run(false);
        let (graphed, captured) = run(true);
        assert_eq!(none, 0, "{ty}: graphs off");
        // Every batch size from 20 down to 1 after the prefill, one attention partition.
        assert!(
            (10..=20).contains(&captured),
            "{ty}: {captured} decode graphs captured"
        );
        for (r, (a, b)) in direct.iter().zip(&graphed).enumerate() {
            assert_eq!(a.len(), 6 + r * 2);
            assert_eq!(a, b, "{ty}: request {r} differs with decode graphs");
        }
    }
}
