//! Every weight format and every architecture (llama, qwen2, gemma3) through the whole model, on synthetic models:
//! a prompt evaluated in one batch gives bit-identical logits to the same prompt fed one token
//! at a time (for Q4_K and Q6_K, whose batched products round as llama.cpp's do, within 1e-3 of
//! the largest logit), and to any KV block size (the paged cache is transparent); a full arena
//! or context is a clean error that leaves the session usable.

use ember::gguf::GgufFile;
use ember::model::Model;
use ember::session::{GenerateParams, KvBudget, Session, SessionConfig};
use ember::synth::{synth_gguf, SynthSpec};
use ember::Error;
use ember_kernels::GgmlType;

fn synth(arch: &str, ty: GgmlType) -> Model {
    let spec = SynthSpec {
        arch: arch.into(),
        n_embd: 256,
        n_ff: 512,
        n_head: 4,
        n_head_kv: 2,
        n_layer: 2,
        weight_type: ty,
        embd_type: if ty == GgmlType::F32 {
            GgmlType::F32
        } else {
            GgmlType::Q8_0
        },
        separate_output: ty != GgmlType::Q8_0,
        // gemma3: a window shorter than the prompt, across blocks of 5 and 16.
        sliding_window: 8,
        ..SynthSpec::default()
    };
    let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
    Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
}

fn session(m: Model, block_size: usize, max_batch: usize, kv: KvBudget) -> Session {
    let cfg = SessionConfig {
        cuda_weights: Default::default(),
        n_ctx: 128,
        kv_budget: kv,
        block_size,
        max_batch_tokens: max_batch,
        max_logits: max_batch,
        threads: 2,
        kv_type: Default::default(),
        swa_full: false,
    };
    Session::new(m, &cfg).unwrap()
}

/// Logits at every position of `prompt`, evaluated in batches of `max_batch`.
fn all_logits(s: &mut Session, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut seq = s.new_sequence();
    let mut out = Vec::new();
    for &t in prompt {
        seq.tokens.push(t);
    }
    s.eval(&mut seq, |_| true, |_, l, _| out.push(l.to_vec()))
        .unwrap();
    s.release(&mut seq);
    out
}

const PROMPT: [u32; 21] = [
    5, 90, 140, 7, 7, 200, 31, 255, 12, 100, 101, 102, 9, 44, 88, 260, 3, 1, 150, 151, 70,
];

#[test]
fn every_format_batched_equals_incremental_and_block_size_is_transparent() {
    let types = [
        ("llama", GgmlType::F32),
        ("llama", GgmlType::F16),
        ("llama", GgmlType::BF16),
        ("llama", GgmlType::Q4_0),
        ("llama", GgmlType::Q4_1),
        ("llama", GgmlType::Q8_0),
        ("llama", GgmlType::Q4_K),
        ("llama", GgmlType::Q5_K),
        ("llama", GgmlType::Q6_K),
        ("qwen2", GgmlType::Q8_0),
        ("qwen2", GgmlType::Q4_K),
        ("gemma3", GgmlType::Q8_0),
        ("gemma3", GgmlType::Q4_K),
    ];
    for (arch, ty) in types {
        let whole = all_logits(
            &mut session(synth(arch, ty), 16, 32, KvBudget::FullContext),
            &PROMPT,
        );
        let stepwise = all_logits(
            &mut session(synth(arch, ty), 16, 1, KvBudget::FullContext),
            &PROMPT,
        );
        let odd_blocks = all_logits(
            &mut session(synth(arch, ty), 5, 7, KvBudget::FullContext),
            &PROMPT,
        );
        let odd_blocks_whole = all_logits(
            &mut session(synth(arch, ty), 5, 32, KvBudget::FullContext),
            &PROMPT,
        );
        // Q4_K and Q6_K products round differently for some rows of a batch, as llama.cpp's x86
        // kernels do (`TypeTraits::vec_dot_batched`; bit-exact against the reference in the
        // kernels' dispatch tests, against llama.cpp in tests/gemma3.rs): for them batching
        // changes the last bits, which the activation quantization can enlarge, so batched and
        // one-at-a-time logits are compared within 1e-3 of the row's largest logit instead.
        let batch_rounding = ember_kernels::dispatch::KernelSet::detect()
            .unwrap()
            .traits(ty)
            .unwrap()
            .vec_dot_batched
            .is_some();
        assert_eq!(whole.len(), PROMPT.len());
        for (i, ((a, b), c)) in whole.iter().zip(&stepwise).zip(&odd_blocks).enumerate() {
            assert!(
                a.iter().all(|x| x.is_finite()),
                "{arch} {ty}: non-finite logits at {i}"
            );
            assert_eq!(
                a, &odd_blocks_whole[i],
                "{arch} {ty}: block size 5 differs at position {i}"
            );
            if batch_rounding {
                let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (what, o) in [("one-at-a-time", b), ("batch 7", c)] {
                    let d = a.iter().zip(o).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                    assert!(
                        d <= 1e-3 * scale,
                        "{arch} {ty}: batched and {what} logits differ by {d} at position {i}"
                    );
                }
                continue;
            }
            assert_eq!(
                a, b,
                "{arch} {ty}: batched and one-at-a-time logits differ at position {i}"
            );
            assert_eq!(
                a, c,
                "{arch} {ty}: block size 5 / batch 7 differs at position {i}"
            );
        }
        // Positions see different contexts: the logits must not all be equal.
        assert_ne!(whole[0], whole[PROMPT.len() - 1], "{arch} {ty}");
    }
}

#[test]
fn full_arena_and_full_context_are_clean_errors() {
    // 2 blocks of 8 tokens: a 10-token prompt fits, 20 generated tokens do not.
    let mut s = session(synth("llama", GgmlType::Q8_0), 8, 16, KvBudget::Blocks(2));
    let params = GenerateParams {
        max_tokens: 20,
        ignore_eos: true,
        ..Default::default()
    };
    let e = s.generate(&PROMPT[..10], &params, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            Error::KvCacheFull {
                total_blocks: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("KV cache full"), "{e}");
    // The failed request returned its blocks: a request that fits still runs.
    assert_eq!(s.free_blocks(), 2);
    let ok = GenerateParams {
        max_tokens: 4,
        ..params.clone()
    };
    assert_eq!(s.generate(&PROMPT[..10], &ok, |_| {}).unwrap().ids.len(), 4);

    // Prompt + max_tokens beyond the context (128) is refused up front.
    let mut s = session(
        synth("llama", GgmlType::Q8_0),
        16,
        16,
        KvBudget::FullContext,
    );
    let long = GenerateParams {
        max_tokens: 120,
        ..params
    };
    let e = s.generate(&PROMPT, &long, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ContextFull {
                n_ctx: 128,
                requested: 141
            }
        ),
        "{e}"
    );
    // Token ids outside the vocabulary are refused, not indexed.
    let e = s
        .generate(
            &[100_000],
            &GenerateParams {
                max_tokens: 1,
                ..Default::default()
            },
            |_| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
}

/// Every kernel set this CPU and build can run (scalar, AVX2 and AVX-512 here; the NEON sets on
/// aarch64), in one process, gives the reference's logits bit for bit through the whole model:
/// prefill and decode, llama and gemma3 (GELU, sliding window), every weight format with a
/// SIMD kernel, and every KV type (f16, and the quantized Q8_0 and Q4_0 rows).
#[test]
fn every_kernel_set_gives_the_reference_logits() {
    use ember::backend::CpuExecutor;
    use ember::compute::Compute;
    use ember::kv::{BlockId, KvArena, KvGroups, KvLayout, KvType};
    use ember::model::{BatchToken, Scratch};
    use ember_kernels::dispatch::KernelSet;

    let sets = KernelSet::available();
    eprintln!(
        "kernel sets: {:?}",
        sets.iter().map(|k| k.path().name()).collect::<Vec<_>>()
    );
    let cases = [
        ("llama", GgmlType::Q4_0, KvType::F16),
        ("llama", GgmlType::Q4_1, KvType::F16),
        ("llama", GgmlType::Q5_0, KvType::F16),
        ("llama", GgmlType::Q8_0, KvType::F16),
        ("llama", GgmlType::F16, KvType::F16),
        ("llama", GgmlType::Q4_K, KvType::F16),
        ("llama", GgmlType::Q6_K, KvType::F16),
        ("gemma3", GgmlType::Q8_0, KvType::F16),
        ("llama", GgmlType::Q4_1, KvType::Q8_0),
        ("qwen2", GgmlType::Q4_0, KvType::Q4_0),
        ("gemma3", GgmlType::Q8_0, KvType::Q8_0),
        ("gemma3", GgmlType::Q4_0, KvType::Q4_0),
    ];
    for (arch, ty, kv_type) in cases {
        let m = synth(arch, ty);
        let c = &m.config;
        let bs = 16;
        let groups = KvGroups::single(c.n_layer);
        let layout = KvLayout {
            block_layers: c.n_layer,
            n_kv_head: c.n_head_kv,
            head_dim: c.head_dim,
            block_size: bs,
            kv_type,
        };
        let n_blocks = PROMPT.len().div_ceil(bs) + 1;
        let table: Vec<BlockId> = (1..=n_blocks as u32).map(BlockId).collect();
        let tables: [&[BlockId]; 1] = [&table];
        // The prompt in one batch (every row's logits), then one decode token.
        let logits_of = |ks: KernelSet| -> Vec<f32> {
            let cx = Compute::new(2, ks).unwrap();
            let mut kv = KvArena::new(layout, n_blocks + 1).unwrap();
            let mut s = Scratch::new(&m, PROMPT.len(), PROMPT.len(), 64).unwrap();
            let batch: Vec<BatchToken> = PROMPT
                .iter()
                .enumerate()
                .map(|(pos, &token)| BatchToken {
                    token,
                    pos,
                    seq: 0,
                    logits: true,
                })
                .collect();
            let mut out = Vec::new();
            let n = m
                .forward(
                    &mut CpuExecutor::new(&m, &cx, &mut kv, &groups, &mut s),
                    &batch[..PROMPT.len() - 1],
                    &tables[..],
                )
                .unwrap();
            for i in 0..n {
                out.extend_from_slice(s.logits(i, c.n_vocab));
            }
            let last = &batch[PROMPT.len() - 1..];
            m.forward(
                &mut CpuExecutor::new(&m, &cx, &mut kv, &groups, &mut s),
                last,
                &tables[..],
            )
            .unwrap();
            out.extend_from_slice(s.logits(0, c.n_vocab));
            out
        };
        let want = logits_of(KernelSet::reference());
        for &ks in &sets {
            let got = logits_of(ks);
            let diff = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                diff.is_none(),
                "{arch} {ty}, {kv_type} KV, on {}: logit {} is {} (reference {})",
                ks.path().name(),
                diff.unwrap(),
                got[diff.unwrap()],
                want[diff.unwrap()]
            );
        }
    }
}

/// `ember chat`'s path: a session with prefix caching on prefills a second turn (the first
/// turn's prompt and reply, then new tokens) only past the blocks the first turn left, and
/// generates exactly what a session without the cache generates.
#[test]
fn a_second_turn_reuses_the_first_turns_blocks() {
    let turn1: Vec<u32> = PROMPT.iter().chain(&PROMPT).copied().collect(); // 42 tokens
    let params = GenerateParams {
        max_tokens: 8,
        ignore_eos: true,
        ..Default::default()
    };
    let run = |cached: bool| {
        let mut s = session(
            synth("llama", GgmlType::Q8_0),
            16,
            32,
            KvBudget::FullContext,
        );
        s.set_prefix_caching(cached);
        let first = s.generate(&turn1, &params, |_| {}).unwrap();
        let before = s.engine().metrics().prefix_hit_tokens;
        let turn2: Vec<u32> = turn1
            .iter()
            .chain(&first.ids)
            .chain(&[7, 8, 9])
            .copied()
            .collect();
        let second = s.generate(&turn2, &params, |_| {}).unwrap();
        let hits = s.engine().metrics().prefix_hit_tokens - before;
        (first.ids, second.ids, hits, turn2.len())
    };
    let (a1, a2, hits, n2) = run(true);
    let (b1, b2, no_hits, _) = run(false);
    assert_eq!((a1, a2), (b1, b2), "the prefix cache changed the output");
    assert_eq!(no_hits, 0);
    // Turn 1 computed its 42 prompt tokens and 7 of its 8 replies (the last is sampled, not
    // fed back): 49 tokens, all reusable by turn 2: 3 full blocks of 16, and the one token of
    // the released partial block (copied, engine/partial.rs).
    assert_eq!(
        hits, 49,
        "turn 2 ({n2} tokens) took {hits} tokens from the cache"
    );
}
