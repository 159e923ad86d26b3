//! Quantized KV (`EngineConfig::kv_type` Q8_0 / Q4_0) through the engine: the paged cache,
//! the scheduler, prompt cache files and context shifts treat quantized rows as they treat f16
//! ones. (Not run under Miri, see scripts/ci/miri.sh: safe code over the same pool calls.)

use std::path::Path;

use super::tests::{greedy, run_to_end};
use super::*;
use crate::gguf::GgufFile;
use crate::kv::KvType;
use crate::synth::{synth_gguf, SynthSpec};

/// A synthetic model with heads of 64 (so quantized rows are also rotated) and Q8_0 weights
/// (whose batched products equal the one-row ones: chunked prefill is exact).
fn model(arch: &str) -> Model {
    let spec = SynthSpec {
        arch: arch.into(),
        n_embd: 128,
        n_layer: 2,
        n_head: 2,
        n_head_kv: 1,
        n_ff: 128,
        n_ctx: 128,
        sliding_window: 6,
        // An output matrix of its own: with tied embeddings a random model repeats its input.
        separate_output: true,
        ..SynthSpec::default()
    };
    let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
    Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
}

fn engine(arch: &str, kv_type: KvType, blocks: usize, bs: usize, budget: usize) -> Engine {
    let cfg = EngineConfig {
        n_ctx: 64,
        kv_budget: KvBudget::Blocks(blocks),
        block_size: bs,
        max_seqs: 4,
        max_batch_tokens: budget,
        max_requests: 8,
        threads: 1,
        kv_type,
        ..EngineConfig::default()
    };
    Engine::new(model(arch), cfg).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    (0..4)
        .map(|i| {
            (0..9 + 3 * i)
                .map(|k| (k * 31 + i * 7 + 5) % 250 + 3)
                .collect()
        })
        .collect()
}

/// Every prompt's sampled ids (seeded: they follow the logits, and a random model's greedy
/// output is one token over and over) and the engine's preemption count.
fn run_all(e: &mut Engine) -> (Vec<Vec<u32>>, u64) {
    let params = |i: usize| RequestParams {
        sampling: crate::sampler::SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7 + i as u64,
            ..Default::default()
        },
        ..greedy(8)
    };
    let ids: Vec<RequestId> = prompts()
        .iter()
        .enumerate()
        .map(|(i, p)| e.submit(p, &params(i)).unwrap())
        .collect();
    run_to_end(e);
    let outs = ids
        .iter()
        .map(|&id| {
            let o = e.take_output(id, 0).unwrap().ids;
            e.release(id).unwrap();
            o
        })
        .collect();
    assert_eq!(e.metrics().blocks_used, 0, "every block returned");
    e.pool.check_invariants().unwrap();
    (outs, e.metrics().preemptions)
}

/// Quantized rows are quantized one token and one head at a time, so the block size, chunked
/// prefill and preemption (recompute) change nothing: a tight engine gives the ids of a roomy
/// one, for both quantized types, llama and gemma3 (a sliding window shorter than the prompts).
#[test]
fn quantized_kv_is_transparent_to_blocks_chunks_and_preemption() {
    for arch in ["llama", "gemma3"] {
        for kv in [KvType::Q8_0, KvType::Q4_0] {
            let (roomy, p0) = run_all(&mut engine(arch, kv, 32, 16, 64));
            assert_eq!(p0, 0);
            // (Gemma's sliding layers give back their blocks out of the window: a tighter
            // arena still preempts.)
            let tiny = if arch == "gemma3" { 4 } else { 6 };
            let (tight, p1) = run_all(&mut engine(arch, kv, tiny, 5, 4));
            assert!(p1 > 0, "{arch} {kv}: the tiny arena preempts");
            assert_eq!(tight, roomy, "{arch} {kv}");
            let distinct: std::collections::HashSet<_> = roomy.iter().flatten().collect();
            assert!(distinct.len() > 8, "{arch} {kv}: varied output {roomy:?}");
        }
    }
}

/// The same byte budget holds 64/34 (Q8_0) and 64/18 (Q4_0) times the blocks of f16.
#[test]
fn a_byte_budget_holds_more_quantized_tokens() {
    let blocks = |kv_type| {
        let cfg = EngineConfig {
            kv_budget: KvBudget::Bytes(4 << 20),
            kv_type,
            threads: 1,
            ..EngineConfig::default()
        };
        Engine::new(model("llama"), cfg).unwrap().kv_blocks() as f64
    };
    let f16 = blocks(KvType::F16);
    let (q8, q4) = (blocks(KvType::Q8_0) / f16, blocks(KvType::Q4_0) / f16);
    assert!((q8 - 64.0 / 34.0).abs() < 0.01, "Q8_0: {q8}x");
    assert!((q4 - 64.0 / 18.0).abs() < 0.01, "Q4_0: {q4}x");
}

/// A prompt cache written by a Q8_0 engine loads into a Q8_0 engine (same ids as computing the
/// prompt, smaller file than f16's) and is refused by an f16 or Q4_0 one, naming both types.
#[test]
fn quantized_prompt_caches_round_trip_and_name_their_type() {
    let prompt: Vec<u32> = (0..21).map(|k| (k * 13 + 4) % 250 + 3).collect();
    let save = |kv| {
        let mut e = engine("llama", kv, 32, 4, 64);
        let id = e.submit(&prompt, &greedy(5)).unwrap();
        run_to_end(&mut e);
        let ids = e.take_output(id, 0).unwrap().ids;
        e.release(id).unwrap();
        let blocks = e.cached_prefix_blocks(&prompt).unwrap();
        let mut bytes = Vec::new();
        e.write_prompt_cache(&mut bytes, &prompt, &blocks, Path::new("mem"))
            .unwrap();
        (bytes, ids)
    };
    let (q8, want) = save(KvType::Q8_0);
    let (f16, _) = save(KvType::F16);
    assert!(
        q8.len() < f16.len() * 6 / 10,
        "{} vs {}",
        q8.len(),
        f16.len()
    );
    let mut e = engine("llama", KvType::Q8_0, 32, 4, 64);
    let l = e
        .read_prompt_cache(&mut &q8[..], q8.len() as u64, Path::new("mem"))
        .unwrap();
    assert_eq!(l.loaded_tokens, 20);
    let id = e.submit(&prompt, &greedy(5)).unwrap();
    run_to_end(&mut e);
    let out = e.take_output(id, 0).unwrap();
    assert_eq!((out.ids, out.n_cached), (want, 20));
    for (kv, bytes, what) in [
        (KvType::F16, &q8, "KV type q8_0, this engine stores f16"),
        (KvType::Q4_0, &q8, "KV type q8_0, this engine stores q4_0"),
        (KvType::Q8_0, &f16, "KV type f16, this engine stores q8_0"),
    ] {
        let mut e = engine("llama", kv, 32, 4, 64);
        let err = e
            .read_prompt_cache(&mut &bytes[..], bytes.len() as u64, Path::new("mem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{err}");
        assert_eq!(e.pool.num_cached(), 0);
    }
}

/// A context shift on quantized keys rotates the key itself, not its stored (Hadamard-turned)
/// form: after a shift, layer 0's moved keys, read back, equal the keys a fresh engine computes
/// at the new positions to within the type's quantization step, and generation runs past the
/// context to its length.
#[test]
fn quantized_keys_shift_like_keys_computed_at_their_new_positions() {
    use crate::engine::ContextShift;
    for kv in [KvType::Q8_0, KvType::Q4_0] {
        let mut e = engine("llama", kv, 40, 4, 64);
        let p: Vec<u32> = (0..50).map(|k| (k * 37 + 11) % 250 + 3).collect();
        let params = RequestParams {
            context_shift: Some(ContextShift { keep: 0 }),
            ..greedy(30)
        };
        let id = e.submit(&p, &params).unwrap();
        while e.metrics().context_shifts == 0 {
            e.step().unwrap();
        }
        let s = e.request(id).unwrap().seqs[0];
        let seq = e.seqs[s as usize].as_ref().unwrap();
        let tokens = seq.tokens[..seq.num_computed].to_vec();
        let moved = seq.table.blocks()[1..].to_vec();
        let keys = |e: &Engine, blocks: &[crate::kv::BlockId]| {
            let l = e.backend.layout();
            let (mut k, mut v) = (vec![0u8; l.keys_bytes()], vec![0u8; l.keys_bytes()]);
            let mut rows = Vec::new();
            for b in blocks {
                e.backend.read_block(b.index(), &mut k, &mut v).unwrap();
                // Layer 0, the one KV head: the first tile.
                for r in k[..l.tile_bytes()].chunks_exact(l.row_bytes()) {
                    let mut row = vec![0f32; l.head_dim];
                    l.kv_type.load_row(r, &mut row);
                    rows.push(row);
                }
            }
            rows
        };
        let shifted = keys(&e, &moved);
        let mut fresh = engine("llama", kv, 40, 4, 64);
        let f = fresh.submit_scoring(&tokens, 0..0).unwrap();
        run_to_end(&mut fresh);
        let fs = fresh.request(f).unwrap().seqs[0];
        let blocks = fresh.seqs[fs as usize].as_ref().unwrap().table.blocks()[1..].to_vec();
        let want = keys(&fresh, &blocks);
        // Two quantizations apart (the shifted key was stored, turned, rotated and stored
        // again): at most about one quantization step of the row's largest element.
        let step = if kv == KvType::Q8_0 {
            1.0 / 64.0
        } else {
            1.0 / 4.0
        };
        for (i, (a, b)) in shifted.iter().zip(&want).take(tokens.len() - 4).enumerate() {
            let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= step * amax,
                "{kv}: key {i}: error {err}, largest {amax}"
            );
        }
        run_to_end(&mut e);
        let out = e.take_output(id, 0).unwrap();
        assert_eq!(out.ids.len(), 30, "{kv}");
        assert!(out.shifted_tokens > 0);
        e.release(id).unwrap();
        assert_eq!(e.pool.num_used(), 0);
    }
}
