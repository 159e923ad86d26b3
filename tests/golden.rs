//! The real model against llama.cpp's reference outputs (`tests/golden/`, copied from
//! `shared/golden/`, produced by llama.cpp 0c1e57098 on SmolLM2-135M-Instruct Q4_1).
//!
//! - tokenization: ids equal, with and without special-token parsing;
//! - greedy decoding: llama.cpp's 64 generated ids are fed back one step at a time (so every
//!   step sees llama.cpp's context) and at each step our top-1 logit must be within 0.1 of
//!   llama.cpp's, and our argmax must equal llama.cpp's up to the first step where llama.cpp's
//!   own top-1/top-2 margin is below 0.05 (a near-tie that any rounding can flip); then free
//!   generation through `Session::generate` must produce the same ids up to that step;
//! - perplexity on GPL-3.txt with 512-token chunks within 1% of llama.cpp's figure.

use std::path::PathBuf;

use ember::model::Model;
use ember::session::{GenerateParams, KvBudget, Session, SessionConfig};
use serde_json::Value;

const LOGIT_TOL: f32 = 0.1;
const MARGIN_MIN: f64 = 0.05;
/// llama-perplexity -c 512 on GPL-3.txt (tests/golden/README.llama.cpp.md).
const LLAMA_CPP_PPL_512: f64 = 18.3459;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden(name: &str) -> Value {
    let p = repo().join("tests/golden").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("golden file")).expect("golden JSON")
}

fn model() -> Model {
    let p = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-model.sh (scripts/test.sh does)",
        p.display()
    );
    Model::load(&p).expect("load model")
}

fn session(n_ctx: usize, max_batch: usize, max_logits: usize) -> Session {
    let cfg = SessionConfig {
        cuda_weights: Default::default(),
        n_ctx,
        kv_budget: KvBudget::FullContext,
        block_size: 16,
        max_batch_tokens: max_batch,
        max_logits,
        threads: 2,
    };
    Session::new(model(), &cfg).expect("session")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn tokenization_matches_llama_cpp() {
    let m = model();
    let tok = ember::gguf::tokenizer_from_gguf(&m.file).expect("tokenizer");
    let g = golden("tokenize.json");
    let mut failures = Vec::new();
    let cases = g["cases"].as_array().unwrap();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        for (key, parse_special) in [("ids_parse_special", true), ("ids_no_parse_special", false)] {
            let want = ids(&c[key]);
            let got = tok.encode(text, true, parse_special).expect("encode");
            if got != want {
                failures.push(format!(
                    "case {} {key}: {text:?}\n  want {want:?}\n  got  {got:?}",
                    c["index"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} tokenizations differ:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
}

fn argmax(v: &[f32]) -> (u32, f32) {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    (best as u32, v[best])
}

/// Where a reference comparison went wrong, and the largest logit difference seen.
#[derive(Default)]
struct Report {
    problems: Vec<String>,
    worst: (f32, String),
}

/// The first step at which llama.cpp's own top-1/top-2 margin is below `MARGIN_MIN`.
fn first_tie(c: &Value) -> usize {
    c["top1_top2_logit_margin"]
        .as_array()
        .unwrap()
        .iter()
        .position(|m| m.as_f64().unwrap() < MARGIN_MIN)
        .unwrap_or(usize::MAX)
}

/// Feed llama.cpp's generated ids back one step at a time (the first `steps` of them) and check
/// our logits at each step: the top-1 logit within `LOGIT_TOL` of llama.cpp's, and our argmax
/// equal to llama.cpp's id before the first near-tie.
fn teacher_forced(s: &mut Session, c: &Value, steps: usize, r: &mut Report) {
    let name = c["name"].as_str().unwrap();
    let gen = ids(&c["generated_ids"]);
    let tie = first_tie(c);
    let top5 = c["steps_top5"].as_array().unwrap();
    let mut seq = s.new_sequence();
    seq.tokens.extend(ids(&c["prompt_ids"]));
    for (step, &next) in gen.iter().enumerate().take(steps) {
        let last = seq.tokens.len() - 1;
        let ref_id = top5[step][0][0].as_u64().unwrap() as usize;
        let ref_logit = top5[step][0][1].as_f64().unwrap() as f32;
        let mut ours = (0, 0.0, 0.0);
        s.eval(
            &mut seq,
            |p| p == last,
            |_, logits, _| {
                let (id, max) = argmax(logits);
                ours = (id, max, logits[ref_id]);
            },
        )
        .unwrap();
        let d = (ours.1 - ref_logit).abs().max((ours.2 - ref_logit).abs());
        if d > r.worst.0 {
            r.worst = (d, format!("{name} step {step}"));
        }
        if d > LOGIT_TOL {
            r.problems.push(format!(
                "{name} step {step}: top-1 logit {} (ours, token {}) / {} (ours, token {ref_id}) vs llama.cpp {ref_logit}",
                ours.1, ours.0, ours.2
            ));
        }
        if step < tie && ours.0 != next {
            r.problems.push(format!(
                "{name} step {step}: argmax {} != llama.cpp {next}",
                ours.0
            ));
        }
        seq.tokens.push(next);
    }
    s.release(&mut seq);
}

#[test]
fn greedy_matches_llama_cpp() {
    let mut s = session(512, 128, 1);
    let g = golden("greedy.json");
    let mut r = Report::default();
    for c in g["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let prompt_ids = ids(&c["prompt_ids"]);
        let gen = ids(&c["generated_ids"]);
        let got = s
            .tokenizer()
            .encode(c["prompt"].as_str().unwrap(), true, true)
            .unwrap();
        if got != prompt_ids {
            r.problems
                .push(format!("{name}: prompt ids {got:?} != {prompt_ids:?}"));
        }
        teacher_forced(&mut s, c, usize::MAX, &mut r);
        let first_tie = first_tie(c).min(gen.len());

        // Free-running greedy generation through the public path.
        let params = GenerateParams {
            max_tokens: gen.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let out = s.generate(&prompt_ids, &params, |_| {}).unwrap();
        if out.ids[..first_tie] != gen[..first_tie] {
            r.problems.push(format!(
                "{name}: generated {:?}\n  llama.cpp {:?} (compared up to step {first_tie})",
                &out.ids[..first_tie],
                &gen[..first_tie]
            ));
        }
    }
    eprintln!(
        "largest top-1 logit difference: {} at {}",
        r.worst.0, r.worst.1
    );
    assert!(r.problems.is_empty(), "{}", r.problems.join("\n"));
}

/// The first steps of one greedy case, teacher-forced and then free-running: a real-model check
/// short enough for an emulator (`scripts/test-aarch64.sh` runs it under qemu on both NEON
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
    let g = golden("greedy.json");
    let c = &g["cases"][0];
    let mut r = Report::default();
    teacher_forced(&mut s, c, STEPS, &mut r);
    let gen = ids(&c["generated_ids"]);
    let want = &gen[..STEPS.min(first_tie(c)).min(gen.len())];
    let params = GenerateParams {
        max_tokens: want.len(),
        ignore_eos: true,
        ..Default::default()
    };
    let out = s.generate(&ids(&c["prompt_ids"]), &params, |_| {}).unwrap();
    if out.ids.get(..want.len()) != Some(want) {
        r.problems
            .push(format!("generated {:?}, llama.cpp {want:?}", out.ids));
    }
    eprintln!(
        "largest top-1 logit difference in {STEPS} steps: {} at {}",
        r.worst.0, r.worst.1
    );
    assert!(r.problems.is_empty(), "{}", r.problems.join("\n"));
}

/// llama.cpp's goldens for the same weights dequantized to F32 (`greedy_f32_activations.json`),
/// where every product runs in plain f32: our F32 path (F32 weights, F32 activations) must give
/// the same logits within the tolerance, with llama.cpp's ids fed back at every step.
#[test]
fn f32_weights_match_llama_cpp_f32_goldens() {
    let q = model();
    let opts = ember::convert::ConvertOptions {
        weight_type: Some(ember_kernels::GgmlType::F32),
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
    };
    let mut s = Session::new(m, &cfg).unwrap();
    let g = golden("greedy_f32_activations.json");
    let mut r = Report::default();
    for c in g["cases"].as_array().unwrap() {
        teacher_forced(&mut s, c, usize::MAX, &mut r);
    }
    eprintln!(
        "F32 path: largest top-1 logit difference {} at {}",
        r.worst.0, r.worst.1
    );
    assert!(r.problems.is_empty(), "{}", r.problems.join("\n"));
}

#[test]
fn perplexity_matches_llama_cpp() {
    let mut s = session(512, 512, 256);
    let text = std::fs::read_to_string(repo().join("tests/golden/GPL-3.txt")).unwrap();
    let tokens = s.tokenizer().encode(&text, true, false).unwrap();
    assert_eq!(
        tokens.len(),
        7639,
        "GPL-3.txt token count (llama.cpp: 7639)"
    );
    let r = ember::perplexity::perplexity(&mut s, &tokens, 512, |_, _| {}).unwrap();
    let rel = (r.ppl - LLAMA_CPP_PPL_512).abs() / LLAMA_CPP_PPL_512;
    eprintln!(
        "perplexity {:.4} (llama.cpp {LLAMA_CPP_PPL_512}), {:.3}% off, {} chunks",
        r.ppl,
        rel * 100.0,
        r.chunks
    );
    assert_eq!(r.chunks, 14);
    assert!(
        rel < 0.01,
        "perplexity {} differs from llama.cpp's {LLAMA_CPP_PPL_512} by {:.3}%",
        r.ppl,
        rel * 100.0
    );
}
