//! Whole forward passes: greedy decoding on CUDA against the CPU, mapped against uploaded
//! weights, graph replay against direct launches, the engine on CUDA against lone sessions.

use super::*;

fn synth_model(ty: GgmlType, seed: u64) -> Model {
    let spec = SynthSpec {
        n_vocab: 512,
        n_embd: 256,
        n_layer: 4,
        n_head: 8,
        n_head_kv: 2,
        n_ff: 768,
        n_ctx: 1024,
        weight_type: ty,
        embd_type: ty,
        seed,
        ..SynthSpec::default()
    };
    let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
    Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
}

fn session_cfg() -> SessionConfig {
    SessionConfig {
        cuda_weights: Default::default(),
        n_ctx: 512,
        kv_budget: KvBudget::FullContext,
        block_size: 16,
        max_batch_tokens: EXACT_BATCH,
        max_logits: 1,
        threads: 2,
        kv_type: Default::default(),
        swa_full: false,
    }
}

/// Near-tie margin across backends, as a fraction of the step's logit range (at least 0.5). The
/// CPU reproduces llama.cpp's CPU numerics, including the f16 accumulator of ggml's flash
/// attention (the weighted sum of V rounded to f16 after every position); the GPU accumulates
/// attention in f32. Activations are re-quantized to 8 bits after every layer, so these
/// differences move logits by ~1-2% of their range on the models tested here (the largest
/// difference is printed). Where the CPU's top two are closer than this, the GPU may pick the
/// other one; the foundation's CPU-vs-llama.cpp margin (0.05) assumes identical arithmetic.
const MARGIN_REL: f32 = 0.01;
/// At most this many such near-tie flips in one comparison.
const MAX_FLIPS: usize = 3;
/// The largest logit difference must stay below this fraction of the CPU logits' range (a
/// wrong kernel moves logits by their whole range).
const MAX_REL_DIFF: f32 = 0.05;

fn argmax(l: &[f32]) -> usize {
    let mut b = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[b] {
            b = i;
        }
    }
    b
}

/// Greedy decoding of `n` tokens after `prompt` on both backends, teacher-forced with the CPU's
/// choices so that one near-tie does not end the comparison: at every step the GPU's argmax must
/// be the CPU's, except where the CPU's logits put the two within [`MARGIN_REL`] (a near-tie
/// any rounding can flip). Reports the largest logit difference.
fn compare_greedy(make: &dyn Fn() -> Model, prompt: &[u32], n: usize, what: &str) {
    compare_greedy_kv(make, prompt, n, what, Default::default())
}

/// [`compare_greedy`] with keys and values stored as `kv_type` on both backends.
fn compare_greedy_kv(
    make: &dyn Fn() -> Model,
    prompt: &[u32],
    n: usize,
    what: &str,
    kv_type: ember::kv::KvType,
) {
    let cfg = SessionConfig {
        kv_type,
        ..session_cfg()
    };
    compare_greedy_cfg(make, prompt, n, what, &cfg);
}

/// [`compare_greedy`] on sessions of configuration `cfg`.
fn compare_greedy_cfg(
    make: &dyn Fn() -> Model,
    prompt: &[u32],
    n: usize,
    what: &str,
    cfg: &SessionConfig,
) {
    let cfg = cfg.clone();
    let mut cpu = Session::new(make(), &cfg).unwrap();
    let mut gpu = Session::with_backend(make(), &cfg, BackendKind::Cuda).unwrap();
    let (mut sc, mut sg) = (cpu.new_sequence(), gpu.new_sequence());
    sc.tokens.extend_from_slice(prompt);
    sg.tokens.extend_from_slice(prompt);
    let (mut max_diff, mut max_rel) = (0f32, 0f32);
    let (mut ties, mut min_range) = (Vec::new(), f32::INFINITY);
    for step in 0..n {
        let last = sc.tokens.len() - 1;
        let (mut lc, mut lg) = (Vec::new(), Vec::new());
        cpu.eval(&mut sc, |p| p == last, |_, l, _| lc = l.to_vec())
            .unwrap();
        gpu.eval(&mut sg, |p| p == last, |_, l, _| lg = l.to_vec())
            .unwrap();
        let mut step_diff = 0f32;
        for (a, b) in lc.iter().zip(&lg) {
            step_diff = step_diff.max((a - b).abs());
        }
        let range = lc.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
            - lc.iter().cloned().fold(f32::INFINITY, f32::min);
        assert!(
            step_diff <= MAX_REL_DIFF * range,
            "{what}: step {step}: logits differ by {step_diff}, over {MAX_REL_DIFF} of their \
             range {range}"
        );
        max_diff = max_diff.max(step_diff);
        max_rel = max_rel.max(step_diff / range);
        min_range = min_range.min(range);
        let (a, b) = (argmax(&lc), argmax(&lg));
        if a != b {
            let gap = lc[a] - lc[b];
            let margin = (MARGIN_REL * range).max(0.5);
            assert!(
                gap < margin,
                "{what}: step {step}: cpu picks {a}, gpu {b}; the CPU logits are {gap} apart, \
                 over the near-tie margin {margin} (range {range}); largest logit difference \
                 so far {max_diff}"
            );
            ties.push((step, gap));
        }
        sc.tokens.push(a as u32);
        sg.tokens.push(a as u32);
    }
    assert!(
        ties.len() <= MAX_FLIPS,
        "{what}: {} near-tie flips (step, gap): {ties:?}",
        ties.len()
    );
    cpu.release(&mut sc);
    gpu.release(&mut sg);
    println!(
        "{what}: {n} greedy steps (teacher-forced), argmax equal at all but near-ties \
         (step, CPU gap) {ties:?}; largest logit difference {max_diff:.3}, {:.2}% of the \
         step's range (smallest range {min_range:.1})",
        100.0 * max_rel
    );
}

#[test]
fn greedy_cuda_equals_cpu_on_synthetic_models() {
    if device("greedy_cuda_equals_cpu_on_synthetic_models").is_none() {
        return;
    }
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 500).collect();
    // Not Q6_K: the reference has no Q6_K quantizer, so `synth` fills Q6_K weights with random
    // bytes, random signed 8-bit sub-block scales included; that model's attention saturates and
    // its logits move by 5-9% of their range under last-bit differences (measured on the H100),
    // so greedy agreement says nothing there. The Q6_K kernels are checked against the CPU dot
    // by `matmul_matches_cpu_dots` and its activations by `quantize_q8_k_is_bit_exact`.
    for ty in ALL_WEIGHTS.into_iter().filter(|&t| t != GgmlType::Q6_K) {
        compare_greedy(
            &|| synth_model(ty, 11),
            &prompt,
            64,
            &format!("synthetic {ty}"),
        );
    }
}

/// Prompts prefilled in passes of many tokens, so that every quantized product of the prompt
/// runs on the tensor-core kernels (`mmq.cu`), then greedy decoding; against the CPU as above.
#[test]
fn tensor_core_prefill_matches_cpu() {
    if device("tensor_core_prefill_matches_cpu").is_none() {
        return;
    }
    let prompt: Vec<u32> = (0..150).map(|i| (i * 37 + 11) % 500).collect();
    let cfg = SessionConfig {
        max_batch_tokens: 256,
        ..session_cfg()
    };
    assert!(prompt.len() >= MMQ_MIN_TOKENS);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
    ] {
        compare_greedy_cfg(
            &|| synth_model(ty, 11),
            &prompt,
            8,
            &format!("synthetic {ty}, 150-token prefill"),
            &cfg,
        );
    }
}

/// A synthetic Gemma 3 (`ember synth --arch gemma3`): six layers, so five sliding-window
/// layers (window 16, two tables of RoPE) and one global; QK-norm, post-norms, GELU, scaled
/// embeddings and q scaling all on the path.
fn synth_gemma3(ty: GgmlType, n_embd: usize, n_head: usize, seed: u64) -> Model {
    let spec = SynthSpec {
        arch: "gemma3".into(),
        n_vocab: 512,
        n_embd,
        n_layer: 6,
        n_head,
        n_head_kv: 1,
        n_ff: 768,
        n_ctx: 1024,
        weight_type: ty,
        embd_type: ty,
        seed,
        sliding_window: 16,
        ..SynthSpec::default()
    };
    let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
    Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
}

/// Gemma 3 on CUDA equals the CPU: head size 64 in groups of 4 (the grouped-query attention
/// kernel) and Gemma 3's own head size 256 (the general kernel), over several weight types.
/// The 40-token prompt and 48 steps run well past the window.
#[test]
fn greedy_cuda_equals_cpu_on_synthetic_gemma3() {
    if device("greedy_cuda_equals_cpu_on_synthetic_gemma3").is_none() {
        return;
    }
    let prompt: Vec<u32> = (0..40).map(|i| (i * 41 + 7) % 500).collect();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::F16,
    ] {
        for (e, h) in [(256, 4), (512, 2)] {
            compare_greedy(
                &|| synth_gemma3(ty, e, h, 5),
                &prompt,
                48,
                &format!("synthetic gemma3 {ty}, head size {}", e / h),
            );
        }
    }
}

/// Quantized KV (Q8_0 and Q4_0 rows) on CUDA equals the CPU: heads of 32 (stored as
/// computed; the general attention kernel), 64 (stored turned; the grouped-query kernel) and
/// 256 (gemma3's: turned, the general kernel, sliding windows), past the windows.
#[test]
fn greedy_cuda_equals_cpu_with_quantized_kv() {
    use ember::kv::KvType;
    if device("greedy_cuda_equals_cpu_with_quantized_kv").is_none() {
        return;
    }
    let prompt: Vec<u32> = (0..40).map(|i| (i * 29 + 3) % 500).collect();
    for kv in [KvType::Q8_0, KvType::Q4_0] {
        compare_greedy_kv(
            &|| synth_model(GgmlType::Q8_0, 11),
            &prompt,
            48,
            &format!("synthetic llama Q8_0, {kv} KV, head size 32"),
            kv,
        );
        for (e, h) in [(256, 4), (512, 2)] {
            compare_greedy_kv(
                &|| synth_gemma3(GgmlType::Q8_0, e, h, 5),
                &prompt,
                48,
                &format!("synthetic gemma3 Q8_0, {kv} KV, head size {}", e / h),
                kv,
            );
        }
    }
}

#[test]
fn greedy_cuda_equals_cpu_on_real_model() {
    if device("greedy_cuda_equals_cpu_on_real_model").is_none() {
        return;
    }
    let Some(path) = std::env::var_os("EMBER_CUDA_MODEL") else {
        println!("greedy_cuda_equals_cpu_on_real_model: skipped: EMBER_CUDA_MODEL not set");
        return;
    };
    let path = std::path::PathBuf::from(path);
    let m = Model::load(&path).unwrap();
    let s = Session::new(m, &session_cfg()).unwrap();
    let prompt = s
        .tokenizer()
        .encode("The history of the printing press begins", true, true)
        .unwrap();
    drop(s);
    compare_greedy(
        &|| Model::load(&path).unwrap(),
        &prompt,
        64,
        &path.display().to_string(),
    );
}

/// With the weights read in place through a host mapping (`CudaWeights::Mapped`) the logits
/// must be those of uploaded weights bit for bit (same kernels, same bytes), so greedy ids too.
fn compare_mapped(make: &dyn Fn() -> Model, prompt: &[u32], n: usize, what: &str) {
    let mapped_cfg = SessionConfig {
        cuda_weights: CudaWeights::Mapped,
        ..session_cfg()
    };
    let mut up = Session::with_backend(make(), &session_cfg(), BackendKind::Cuda).unwrap();
    let mut mp = Session::with_backend(make(), &mapped_cfg, BackendKind::Cuda).unwrap();
    let described = mp.backend().describe();
    assert!(
        described.contains("mapped from host memory"),
        "{what}: {described}"
    );
    let (mut su, mut sm) = (up.new_sequence(), mp.new_sequence());
    su.tokens.extend_from_slice(prompt);
    sm.tokens.extend_from_slice(prompt);
    for step in 0..n {
        let last = su.tokens.len() - 1;
        let (mut lu, mut lm) = (Vec::new(), Vec::new());
        up.eval(&mut su, |p| p == last, |_, l, _| lu = l.to_vec())
            .unwrap();
        mp.eval(&mut sm, |p| p == last, |_, l, _| lm = l.to_vec())
            .unwrap();
        let differ = lu
            .iter()
            .zip(&lm)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{what}: step {step}: {differ} logits differ between uploaded and mapped weights"
        );
        let a = argmax(&lu) as u32;
        su.tokens.push(a);
        sm.tokens.push(a);
    }
    up.release(&mut su);
    mp.release(&mut sm);
    println!("{what}: mapped weights: {n} greedy steps, logits bit-equal to uploaded weights");
}

#[test]
fn mapped_weights_equal_uploaded_weights() {
    if device("mapped_weights_equal_uploaded_weights").is_none() {
        return;
    }
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 500).collect();
    // In-memory files (a heap buffer, not page-aligned: the mapping widens it to pages).
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K] {
        compare_mapped(
            &|| synth_model(ty, 13),
            &prompt,
            24,
            &format!("synthetic {ty}"),
        );
    }
    // A memory-mapped (read-only) file, as `ember` loads it.
    match std::env::var_os("EMBER_CUDA_MODEL") {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            let s = Session::new(Model::load(&path).unwrap(), &session_cfg()).unwrap();
            let prompt = s
                .tokenizer()
                .encode("The capital of France is", true, true)
                .unwrap();
            drop(s);
            compare_mapped(
                &|| Model::load(&path).unwrap(),
                &prompt,
                24,
                &path.display().to_string(),
            );
        }
        None => println!(
            "mapped_weights_equal_uploaded_weights: real model skipped: EMBER_CUDA_MODEL not set"
        ),
    }
}

/// A lone decode token's step replayed from a captured graph gives the logits of the same
/// launches made one by one, bit for bit, also when the graph is captured mid-sequence; greedy
/// ids therefore too. (Partition boundaries: `paged_attention_matches_f64_reference`.)
#[test]
fn graph_replay_equals_direct_launches() {
    if device("graph_replay_equals_direct_launches").is_none() {
        return;
    }
    // A context of 4096: two attention partitions of 2048, the second empty until the
    // sequence passes position 2048 (which it does below).
    let cfg = SessionConfig {
        n_ctx: 4096,
        ..session_cfg()
    };
    let model = |ty| {
        let spec = SynthSpec {
            n_vocab: 512,
            n_embd: 256,
            n_layer: 2,
            n_head: 8,
            n_head_kv: 2,
            n_ff: 512,
            n_ctx: 4096,
            weight_type: ty,
            embd_type: ty,
            seed: 17,
            ..SynthSpec::default()
        };
        let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
        Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
    };
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K] {
        let mut direct = Session::with_backend(model(ty), &cfg, BackendKind::Cuda).unwrap();
        direct.set_cuda_graph(false);
        let mut graph = Session::with_backend(model(ty), &cfg, BackendKind::Cuda).unwrap();
        let (mut sd, mut sg) = (direct.new_sequence(), graph.new_sequence());
        let prompt: Vec<u32> = (0..2030).map(|i| (i * 53 + 7) % 500).collect();
        sd.tokens.extend_from_slice(&prompt);
        sg.tokens.extend_from_slice(&prompt);
        for step in 0..40 {
            // Off and on again once: the graph is dropped and captured anew.
            if step == 20 {
                graph.set_cuda_graph(false);
                graph.set_cuda_graph(true);
            }
            let last = sd.tokens.len() - 1;
            let (mut ld, mut lg) = (Vec::new(), Vec::new());
            direct
                .eval(&mut sd, |p| p == last, |_, l, _| ld = l.to_vec())
                .unwrap();
            graph
                .eval(&mut sg, |p| p == last, |_, l, _| lg = l.to_vec())
                .unwrap();
            let differ = ld
                .iter()
                .zip(&lg)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "{ty}: step {step} (position {last}): {differ} logits differ"
            );
            let a = argmax(&ld) as u32;
            sd.tokens.push(a);
            sg.tokens.push(a);
        }
        direct.release(&mut sd);
        graph.release(&mut sg);
        println!(
            "{ty}: 40 decode steps from a graph (positions 2029..2068), logits bit-equal to \
             direct launches"
        );
    }
}

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
        max_seqs: 8,
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

#[test]
fn cuda_backend_takes_every_weight_type() {
    let mut cpu = ember_kernels::SUPPORTED.to_vec();
    let mut gpu = ember::backend::cuda::SUPPORTED_WEIGHTS.to_vec();
    let mut tested = ALL_WEIGHTS.to_vec();
    for v in [&mut cpu, &mut gpu, &mut tested] {
        v.sort_by_key(|t| t.to_string());
    }
    assert_eq!(gpu, cpu);
    assert_eq!(tested, cpu);
}
