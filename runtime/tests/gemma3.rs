//! Gemma 3 270M (Q4_K_M: Q5_0, Q4_K, Q6_K, Q8_0 and F32 tensors) against llama.cpp's reference
//! outputs (`tests/golden/gemma3/`, copied from `shared/golden/gemma3/`, produced by llama.cpp
//! 0c1e57098; read its README for BOS handling and why the chat-format cases are degenerate).
//!
//! - tokenization (SentencePiece, 262 144 tokens, BOS added): ids equal, with and without
//!   special-token parsing;
//! - greedy decoding, teacher-forced, all eight cases: the top-1 logit within 0.1 of llama.cpp's
//!   at every step, our argmax equal to llama.cpp's up to the first step where llama.cpp's own
//!   top-1/top-2 margin is below 0.05, and free generation equal up to that step;
//! - perplexity on GPL-3.txt with 512- and 128-token chunks within 1% of llama.cpp's figures
//!   (`#[ignore]`d, minutes each on 2 cores: `cargo test -p ember --test gemma3 -- --ignored
//!   gemma_`);
//! - sliding-window attention: positions before the window are never read (poisoning them
//!   changes nothing) while the window does change the output; the greedy goldens run at an
//!   8k context, where the sliding-window layers' blocks are grouped apart and released.

#[path = "support/golden.rs"]
mod harness;

use ember::model::Model;
use ember::session::Session;
use harness::{ids, repo, session_of, Golden};

/// llama.cpp's outputs for Gemma 3 270M Q4_K_M.
const GEMMA3: Golden = Golden {
    dir: "tests/golden/gemma3",
    model: "gemma-3-270m-q4_k_m.gguf",
    fetch: "scripts/fetch-model.sh gemma3",
};
/// llama-perplexity -c 512 / -c 128 on GPL-3.txt (tests/golden/gemma3/README.md).
const LLAMA_CPP_PPL_512: f64 = 13.8844;
const LLAMA_CPP_PPL_128: f64 = 18.4950;

fn model() -> Model {
    GEMMA3.model()
}

#[test]
fn model_facts_match_llama_cpp() {
    let m = model();
    let c = &m.config;
    assert_eq!(c.arch, ember::model::Arch::Gemma3);
    assert_eq!(
        (
            c.n_vocab,
            c.n_embd,
            c.n_layer,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_ff
        ),
        (262_144, 640, 18, 4, 1, 256, 2048)
    );
    assert_eq!(c.sliding_window, 512);
    let global: Vec<usize> = (0..c.n_layer).filter(|&l| !c.swa_layers[l]).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!((c.rope_base, c.rope_base_swa), (1e6, 1e4));
    assert!(m.weights.tied_output);
    // The formats this file exercises.
    use ember_kernels::GgmlType as T;
    let l = &m.weights.layers;
    assert_eq!(l[0].wq.ty, T::Q5_0);
    assert_eq!(m.weights.token_embd.ty, T::Q8_0);
    let mut seen: Vec<T> = l
        .iter()
        .flat_map(|w| {
            [
                w.wq.ty,
                w.wk.ty,
                w.wv.ty,
                w.wo.ty,
                w.w_gate.ty,
                w.w_up.ty,
                w.w_down.ty,
            ]
        })
        .collect();
    seen.sort_by_key(|t| t.id());
    seen.dedup();
    assert_eq!(seen, [T::Q5_0, T::Q8_0, T::Q4_K, T::Q6_K]);
}

#[test]
fn tokenization_matches_llama_cpp() {
    harness::tokenization(&GEMMA3);
}

/// The full criterion on all eight cases: prompt ids exact, the top-1 logit within 0.1
/// of llama.cpp's at every teacher-forced step, our argmax equal to llama.cpp's and free
/// generation equal up to the first near-tie. Measured 2026-11-27: largest top-1 difference
/// 1e-6 (the logits equal llama.cpp's to the printed digits), once Ember took llama.cpp's x86
/// kernel numerics for Q4_K (repacked gemv/gemm), Q6_K (AVX2 dot; tiled matmul from 8 rows),
/// the fused multiply-adds of its NEOX RoPE and GELU table, and its last layer's FFN on the
/// logit rows only. About 3 minutes on 2 cores.
///
/// At an 8 192-token context, so the KV arena keeps the sliding-window layers in blocks of
/// their own (6 layer groups of 3 layers, `kv::KvGroups`): the goldens hold through the grouped
/// tables, and the arena per sequence is under a third of what keeping every block takes.
#[test]
fn greedy_matches_llama_cpp() {
    let mut s = session_of(model(), 8192, 128, 1);
    let e = s.engine();
    let g = e.kv_groups();
    assert_eq!(
        (g.len(), g.size(), g.window(0), g.window(1)),
        (6, 3, 0, 512)
    );
    let per_seq = e.blocks_for(8192) * e.backend().layout().block_bytes();
    let every_block = 8192 * 18 * 2 * 256 * 2; // positions × layers × (K, V) × dims × f16
    assert!(per_seq * 3 < every_block, "{per_seq} bytes per sequence");
    harness::greedy(&GEMMA3, &mut s, |_| true, true);
}

fn gpl_tokens(s: &Session) -> Vec<u32> {
    let text = std::fs::read_to_string(repo().join("tests/golden/GPL-3.txt")).unwrap();
    let tokens = s.tokenizer().encode(&text, true, false).unwrap();
    assert_eq!(
        tokens.len(),
        7563,
        "GPL-3.txt token count (llama.cpp: 7562 + BOS)"
    );
    tokens
}

fn check_perplexity(n_ctx: usize, want: f64, chunks: usize) -> f64 {
    // Passes of the size llama-perplexity evaluates (ember::perplexity::llama_batch).
    let step = ember::perplexity::llama_batch(n_ctx);
    let mut s = session_of(model(), n_ctx, step, step.min(n_ctx / 2));
    let tokens = gpl_tokens(&s);
    harness::perplexity(&mut s, &tokens, n_ctx, want, chunks)
}

/// Equal to llama.cpp's figure to its four decimals (13.8844, measured 2026-12-05; 13.9004
/// before attention of 64+-token passes followed ggml's tiled path), 14 chunks; about a
/// minute on the 2-core CI machine kind, too much for CI's Gemma budget next to the greedy
/// test, so run it by hand: `cargo test -p ember --test gemma3 -- --ignored gemma_`.
#[test]
#[ignore = "about a minute on 2 cores; run with --ignored"]
fn gemma_perplexity_512_matches_llama_cpp() {
    let ppl = check_perplexity(512, LLAMA_CPP_PPL_512, 14);
    assert!((ppl - LLAMA_CPP_PPL_512).abs() < 5e-5, "{ppl:.6}");
}

/// The same text in 128-token chunks: as costly as the 512 run (about as many scored rows),
/// so not in CI. 18.4963 against 18.4950 (0.007%): llama-perplexity packs 16 chunks into each
/// 512-token micro-batch here, and something in those shared passes rounds differently; run
/// one chunk per batch (`-b 128 -ub 32`, the 32-token passes Ember makes) and llama.cpp gives
/// 18.4963 too.
#[test]
#[ignore = "as slow as the 512-token run; run with --ignored"]
fn gemma_perplexity_128_matches_llama_cpp() {
    check_perplexity(128, LLAMA_CPP_PPL_128, 59);
}

/// Runs `tokens` through `Model::forward` on a private arena (block size 8), then re-runs the
/// last token after `poison` has scribbled on the arena; returns the last token's logits of
/// both runs.
fn last_logits_with_poison(
    m: &Model,
    tokens: &[u32],
    poison: impl Fn(&mut ember::kv::KvArena, &[ember::kv::BlockId]),
) -> (Vec<f32>, Vec<f32>) {
    use ember::backend::CpuExecutor;
    use ember::kv::{BlockId, KvArena, KvGroups, KvLayout};
    use ember::model::{BatchToken, Scratch};
    let c = &m.config;
    let bs = 8;
    let n_blocks = tokens.len().div_ceil(bs);
    // One layer group: this test's table holds every layer.
    let groups = KvGroups::single(c.n_layer);
    let layout = KvLayout {
        block_layers: c.n_layer,
        n_kv_head: c.n_head_kv,
        head_dim: c.head_dim,
        block_size: bs,
        kv_type: Default::default(),
    };
    let mut kv = KvArena::new(layout, n_blocks + 1).unwrap();
    // Block 0 is the pool's null block; use the others in reverse, so the table is not the
    // identity.
    let table: Vec<BlockId> = (1..=n_blocks as u32).rev().map(BlockId).collect();
    let tables: [&[BlockId]; 1] = [&table];
    let ks = ember_kernels::dispatch::KernelSet::detect().unwrap();
    let cx = ember::compute::Compute::new(2, ks).unwrap();
    let mut s = Scratch::new(m, tokens.len(), 1, tokens.len()).unwrap();
    let last = tokens.len() - 1;
    let batch: Vec<BatchToken> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &token)| BatchToken {
            token,
            pos,
            seq: 0,
            logits: pos == last,
        })
        .collect();
    let mut ex = CpuExecutor::new(m, &cx, &mut kv, &groups, &mut s);
    m.forward(&mut ex, &batch, &tables[..]).unwrap();
    let before = s.logits(0, c.n_vocab).to_vec();
    poison(&mut kv, &table);
    let mut ex = CpuExecutor::new(m, &cx, &mut kv, &groups, &mut s);
    m.forward(&mut ex, &batch[last..], &tables[..]).unwrap();
    (before, s.logits(0, c.n_vocab).to_vec())
}

#[test]
fn sliding_window_masks_through_the_block_table() {
    const WINDOW: usize = 12;
    let mut m = model();
    m.config.sliding_window = WINDOW;
    let tok = ember::gguf::tokenizer_from_gguf(&m.file).unwrap();
    let tokens = tok
        .encode(
            "Sliding windows: each local layer of the model sees only the most recent twelve \
             positions of the sequence, while every sixth layer sees all of them, from the \
             first token to the last one.",
            true,
            false,
        )
        .unwrap();
    assert!(tokens.len() > 2 * WINDOW + 8, "{} tokens", tokens.len());
    let last = tokens.len() - 1;
    let first_seen = last + 1 - WINDOW;
    let c = m.config.clone();
    // NaN keys and values at `positions` of every sliding-window layer.
    let poison = |positions: std::ops::Range<usize>| {
        let c = c.clone();
        move |kv: &mut ember::kv::KvArena, table: &[ember::kv::BlockId]| {
            let nan = vec![f32::NAN; c.kv_dim()];
            for p in positions.clone() {
                for l in (0..c.n_layer).filter(|&l| c.swa_layers[l]) {
                    kv.write(table[p / 8].index(), p % 8, l, &nan, &nan);
                }
            }
        }
    };
    // Everything before the window may be garbage: the output does not change by a bit.
    let (clean, poisoned) = last_logits_with_poison(&m, &tokens, poison(0..first_seen));
    assert!(clean.iter().all(|x| x.is_finite()));
    let same = clean
        .iter()
        .zip(&poisoned)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "a sliding-window layer read a position before its window"
    );
    // The first position inside the window is read. (NaN does not survive to the logits:
    // activation quantization turns NaN into 0, so look for any change.)
    let (_, poisoned) = last_logits_with_poison(&m, &tokens, poison(first_seen..first_seen + 1));
    let changed = clean
        .iter()
        .zip(&poisoned)
        .any(|(a, b)| a.to_bits() != b.to_bits());
    assert!(
        changed,
        "position {first_seen} is inside the window of position {last} but was not read"
    );
    // And the window matters: without it the logits differ.
    m.config.sliding_window = 4096;
    let (full, _) = last_logits_with_poison(&m, &tokens, |_, _| {});
    let max_diff = full
        .iter()
        .zip(&clean)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff > 0.1, "window made no difference ({max_diff})");
}

/// The Gemma turn template shipped for `ember chat --chat-template` renders the exact turn text
/// llama.cpp tokenized in `tokenize.json` (case 35), and its ids match.
#[test]
fn chat_template_file_renders_gemma_turns() {
    let template =
        std::fs::read_to_string(repo().join("tests/golden/gemma3/chat_template.jinja")).unwrap();
    let msgs = [ember::chat::ChatMessage::new("user", "Hi")];
    let text = ember::chat::render_chat(&template, &msgs, true, "<bos>", "<eos>").unwrap();
    let g = GEMMA3.json("tokenize.json");
    let case = &g["cases"][35];
    assert_eq!(text, case["text"].as_str().unwrap());
    let f = ember::gguf::GgufFile::open(repo().join("models/gemma-3-270m-q4_k_m.gguf")).unwrap();
    let tok = ember::gguf::tokenizer_from_gguf(&f).unwrap();
    assert_eq!(
        tok.encode(&text, true, true).unwrap(),
        ids(&case["ids_parse_special"])
    );
}
