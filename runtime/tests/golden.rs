//! The real model against llama.cpp's reference outputs (`tests/golden/`, copied from
//! `shared/golden/`, produced by llama.cpp 0c1e57098 on SmolLM2-135M-Instruct Q4_1).
//!
//! - tokenization: ids equal, with and without special-token parsing;
//! - greedy decoding: llama.cpp's 64 generated ids are fed back one step at a time (so every
//!   step sees llama.cpp's context) and at each step our top-1 logit must be within 0.1 of
//!   llama.cpp's, and our argmax must equal llama.cpp's up to the first step where llama.cpp's
//!   own top-1/top-2 margin is below 0.05 (a near-tie that any rounding can flip); then free
//!   generation through `Session::generate` must produce the same ids up to that step;
//! - perplexity on GPL-3.txt with 512-token chunks equal to llama.cpp's figure (4 decimals).

#[path = "support/golden.rs"]
mod harness;

use ember::model::Model;
use ember::session::{KvBudget, Session, SessionConfig};
use harness::{free_running, session_of, teacher_forced, Golden, Report};

/// llama.cpp's outputs for SmolLM2-135M-Instruct Q4_1.
const SMOLLM2: Golden = Golden {
    dir: "tests/golden",
    model: "SmolLM2-135M-Instruct.Q4_1.gguf",
    fetch: "scripts/fetch-model.sh",
};
/// llama-perplexity -c 512 on GPL-3.txt (tests/golden/README.llama.cpp.md).
const LLAMA_CPP_PPL_512: f64 = 18.3459;

fn session(n_ctx: usize, max_batch: usize, max_logits: usize) -> Session {
    session_of(SMOLLM2.model(), n_ctx, max_batch, max_logits)
}

#[test]
fn tokenization_matches_llama_cpp() {
    harness::tokenization(&SMOLLM2);
}

/// Ember merges byte-level BPE itself (for start-up time); on real text of every kind in the
/// repository it gives the ids of the `tokenizers` crate's BPE model over the same vocabulary,
/// merges and SmolLM2 pre-tokenizer (digits alone, then GPT-2's byte-level regex).
#[test]
fn bpe_merges_equal_the_tokenizers_crate_on_real_text() {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper,
    };
    let m = SMOLLM2.model();
    let spec = ember::gguf::tokenizer_spec(&m.file).expect("spec");
    assert_eq!(spec.pre.as_deref(), Some("smollm"));
    let vocab: tokenizers::models::bpe::Vocab = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let pairs = spec
        .merges
        .iter()
        .filter_map(|m| {
            let (a, b) = m.split_at(m.bytes().skip(1).position(|c| c == b' ')? + 1);
            let (a, b) = (a.to_string(), b[1..].to_string());
            let known = |t: &str| vocab.contains_key(t);
            (known(&a) && known(&b) && known(&format!("{a}{b}"))).then_some((a, b))
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .build()
        .expect("reference BPE");
    let mut reference = tokenizers::Tokenizer::new(bpe);
    reference.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ])));
    let tok = ember::gguf::tokenizer_from_gguf(&m.file).expect("tokenizer");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut total = 0;
    for file in [
        "tests/golden/GPL-3.txt",
        "README.md",
        "ARCHITECTURE.md",
        "runtime/src/tokenizer/bpe.rs",
        "include/ember.h",
        "tests/golden/gemma3/chat_template.jinja",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect(file);
        let want = reference
            .encode_fast(text.as_str(), false)
            .expect("reference");
        let got = tok.encode(&text, false, false).expect("encode");
        assert_eq!(got, want.get_ids(), "{file}");
        total += got.len();
    }
    assert!(total > 20_000, "{total} tokens compared");
}

#[test]
fn greedy_matches_llama_cpp() {
    let mut s = session(512, 128, 1);
    harness::greedy(&SMOLLM2, &mut s, |_| true, true);
}

/// The first steps of one greedy case, teacher-forced and then free-running: a real-model check
/// short enough for an emulator (`scripts/ci/test-aarch64.sh` runs it under qemu on both NEON
/// paths); `greedy_matches_llama_cpp` is the full check. With `EMBER_EXPECT_CPU` set, the
/// selected kernel path must be that one, so the check is known to have run those kernels.
#[test]
fn greedy_first_steps_match_llama_cpp() {
    const STEPS: usize = 8;
    let path = ember_kernels::dispatch::select().expect("kernel path");
    eprintln!("kernel path: {}", path.name());
    if let Ok(want) = std::env::var("EMBER_EXPECT_CPU") {
        assert_eq!(path.name(), want, "EMBER_EXPECT_CPU");
    }
    let mut s = session(64, 32, 1);
    let g = SMOLLM2.json("greedy.json");
    let c = &g["cases"][0];
    let mut r = Report::default();
    teacher_forced(&mut s, c, STEPS, true, &mut r);
    free_running(&mut s, c, STEPS, &mut r);
    r.finish(&format!("{STEPS} steps"));
}

/// llama.cpp's goldens for the same weights dequantized to F32 (`greedy_f32_activations.json`),
/// where every product runs in plain f32: our F32 path (F32 weights, F32 activations) must give
/// the same logits within the tolerance, with llama.cpp's ids fed back at every step. The first
/// 24 steps of each of the 7 cases (a 540 MB weight read per step): the F32 products are what is
/// checked here, and `greedy_matches_llama_cpp` checks every step of the quantized model.
#[test]
fn f32_weights_match_llama_cpp_f32_goldens() {
    let q = SMOLLM2.model();
    let opts = ember::convert::ConvertOptions {
        quantization: Some(ember_kernels::GgmlType::F32.into()),
        keep_layers: None,
    };
    let bytes = ember::convert::convert(&q.file, &opts)
        .unwrap()
        .to_bytes()
        .unwrap();
    drop(q);
    let m = Model::from_gguf(ember::gguf::GgufFile::from_bytes(bytes).unwrap()).unwrap();
    assert_eq!(m.weights.layers[0].wq.ty, ember_kernels::GgmlType::F32);
    let cfg = SessionConfig {
        cuda_weights: Default::default(),
        n_ctx: 512,
        kv_budget: KvBudget::FullContext,
        block_size: 16,
        max_batch_tokens: 128,
        max_logits: 1,
        threads: 2,
        kv_type: Default::default(),
        swa_full: false,
    };
    let mut s = Session::new(m, &cfg).unwrap();
    let g = SMOLLM2.json("greedy_f32_activations.json");
    let mut r = Report::default();
    for c in g["cases"].as_array().unwrap() {
        teacher_forced(&mut s, c, 24, true, &mut r);
    }
    r.finish("F32 path, 24 steps per case");
}

#[test]
fn perplexity_matches_llama_cpp() {
    let mut s = session(512, 512, 256);
    let text = std::fs::read_to_string(harness::repo().join("tests/golden/GPL-3.txt")).unwrap();
    let tokens = s.tokenizer().encode(&text, true, false).unwrap();
    assert_eq!(
        tokens.len(),
        7639,
        "GPL-3.txt token count (llama.cpp: 7639)"
    );
    let ppl = harness::perplexity(&mut s, &tokens, 512, LLAMA_CPP_PPL_512, 14);
    // Every operation follows llama.cpp's order, attention of these 512-token passes its tiled
    // path included: the figure is llama.cpp's to the four decimals it prints.
    assert!(
        (ppl - LLAMA_CPP_PPL_512).abs() < 5e-5,
        "perplexity {ppl:.6} is not llama.cpp's {LLAMA_CPP_PPL_512}"
    );
}
