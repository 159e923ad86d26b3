//! The golden harness shared by `golden.rs` (SmolLM2) and `gemma3.rs` (Gemma 3): llama.cpp's
//! reference outputs, loaded from `tests/golden/` and compared the same way for every model.
//!
//! Greedy cases are checked with teacher forcing: llama.cpp's generated ids are fed back one
//! step at a time, so every step sees llama.cpp's context. At each step our top-1 logit must be
//! within [`LOGIT_TOL`] of llama.cpp's. Our argmax must equal llama.cpp's up to the first step
//! where llama.cpp's own top-1/top-2 margin is below [`MARGIN_MIN`], a near-tie that any
//! rounding can flip. Free generation through `Session::generate` must then produce the same
//! ids up to that step.

use std::path::PathBuf;

use ember::model::Model;
use ember::session::{GenerateParams, KvBudget, Session, SessionConfig};
use serde_json::Value;

/// Largest difference of the top-1 logit from llama.cpp's.
pub const LOGIT_TOL: f32 = 0.1;
/// llama.cpp top-1/top-2 margins below this are near-ties: argmax is compared only before them.
pub const MARGIN_MIN: f64 = 0.05;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One model's reference outputs: where they are and which model file they belong to.
pub struct Golden {
    /// Folder under the repository root (`tests/golden`, `tests/golden/gemma3`).
    pub dir: &'static str,
    /// Model file under `models/`.
    pub model: &'static str,
    /// The command that fetches the model.
    pub fetch: &'static str,
}

impl Golden {
    /// A reference JSON file of this model.
    pub fn json(&self, name: &str) -> Value {
        let p = repo().join(self.dir).join(name);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).expect("golden JSON")
    }

    /// The model, loaded (it must have been fetched).
    pub fn model(&self) -> Model {
        let p = repo().join("models").join(self.model);
        assert!(
            p.exists(),
            "{} is missing: run {} (scripts/test.sh does)",
            p.display(),
            self.fetch
        );
        Model::load(&p).expect("load model")
    }
}

/// A session over `m` with the whole context's KV and these batch sizes.
pub fn session_of(m: Model, n_ctx: usize, max_batch: usize, max_logits: usize) -> Session {
    let cfg = SessionConfig {
        cuda_weights: Default::default(),
        n_ctx,
        kv_budget: KvBudget::FullContext,
        block_size: 16,
        max_batch_tokens: max_batch,
        max_logits,
        threads: 2,
        kv_type: Default::default(),
        swa_full: false,
    };
    Session::new(m, &cfg).expect("session")
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Index and value of the largest logit (the lowest index among equals).
pub fn argmax(v: &[f32]) -> (u32, f32) {
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
pub struct Report {
    /// One line per failed check.
    pub problems: Vec<String>,
    /// The largest top-1 logit difference and where it was.
    pub worst: (f32, String),
}

impl Report {
    /// Print the largest difference (`what` names the run) and fail on any problem.
    pub fn finish(&self, what: &str) {
        eprintln!(
            "{what}: largest top-1 logit difference {} at {}",
            self.worst.0, self.worst.1
        );
        assert!(self.problems.is_empty(), "{}", self.problems.join("\n"));
    }
}

/// The first step at which llama.cpp's own top-1/top-2 margin is below [`MARGIN_MIN`].
pub fn first_tie(c: &Value) -> usize {
    c["top1_top2_logit_margin"]
        .as_array()
        .unwrap()
        .iter()
        .position(|m| m.as_f64().unwrap() < MARGIN_MIN)
        .unwrap_or(usize::MAX)
}

/// Feed llama.cpp's generated ids of case `c` back one step at a time (the first `steps`) and
/// check our logits at each step: the top-1 logit within [`LOGIT_TOL`] of llama.cpp's (when
/// `check_logits`), and our argmax equal to llama.cpp's id before the first near-tie.
pub fn teacher_forced(
    s: &mut Session,
    c: &Value,
    steps: usize,
    check_logits: bool,
    r: &mut Report,
) {
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
        if check_logits && d > LOGIT_TOL {
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

/// Free-running greedy generation of case `c` through the public path: the first `steps` ids
/// (and none past the first near-tie) must be llama.cpp's.
pub fn free_running(s: &mut Session, c: &Value, steps: usize, r: &mut Report) {
    let name = c["name"].as_str().unwrap();
    let gen = ids(&c["generated_ids"]);
    let want = &gen[..steps.min(first_tie(c)).min(gen.len())];
    let params = GenerateParams {
        max_tokens: gen.len().min(steps),
        ignore_eos: true,
        ..Default::default()
    };
    let out = s.generate(&ids(&c["prompt_ids"]), &params, |_| {}).unwrap();
    if out.ids.get(..want.len()) != Some(want) {
        r.problems.push(format!(
            "{name}: generated {:?}\n  llama.cpp {want:?} (compared up to step {})",
            out.ids,
            want.len()
        ));
    }
}

/// Every greedy case of `greedy.json` whose name passes `cases`: the prompt's ids exact, then
/// [`teacher_forced`] and [`free_running`] over all its steps.
pub fn greedy(g: &Golden, s: &mut Session, cases: impl Fn(&str) -> bool, check_logits: bool) {
    let golden = g.json("greedy.json");
    let mut r = Report::default();
    for c in golden["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        if !cases(name) {
            continue;
        }
        let prompt_ids = ids(&c["prompt_ids"]);
        let got = s
            .tokenizer()
            .encode(c["prompt"].as_str().unwrap(), true, true)
            .unwrap();
        if got != prompt_ids {
            r.problems
                .push(format!("{name}: prompt ids {got:?} != {prompt_ids:?}"));
        }
        teacher_forced(s, c, usize::MAX, check_logits, &mut r);
        free_running(s, c, usize::MAX, &mut r);
    }
    r.finish(g.dir);
}

/// Tokenization of every case of `tokenize.json`, with and without special-token parsing.
pub fn tokenization(g: &Golden) {
    let m = g.model();
    let tok = ember::gguf::tokenizer_from_gguf(&m.file).expect("tokenizer");
    let golden = g.json("tokenize.json");
    let mut failures = Vec::new();
    let cases = golden["cases"].as_array().unwrap();
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

/// Perplexity of `tokens` in chunks of `n_ctx` within 1% of llama.cpp's `want`, over `chunks`
/// chunks; returns it.
pub fn perplexity(s: &mut Session, tokens: &[u32], n_ctx: usize, want: f64, chunks: usize) -> f64 {
    let r = ember::perplexity::perplexity(s, tokens, n_ctx, |_, _| {}).unwrap();
    let rel = (r.ppl - want).abs() / want;
    eprintln!(
        "perplexity -c {n_ctx}: {:.4} (llama.cpp {want}), {:.3}% off, {} chunks, {:.1} tok/s",
        r.ppl,
        rel * 100.0,
        r.chunks,
        r.tok_s
    );
    assert_eq!(r.chunks, chunks);
    assert!(
        rel < 0.01,
        "perplexity {} differs from llama.cpp's {want} by {:.3}%",
        r.ppl,
        rel * 100.0
    );
    r.ppl
}
