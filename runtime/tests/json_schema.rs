//! JSON Schema-constrained generation on the real model: for every schema of
//! `tests/schemas/valid.json`, greedy and sampled outputs are complete JSON documents that an
//! independent validator (Python's `jsonschema`, installed by scripts/test.sh) accepts.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use ember::engine::{Engine, EngineConfig, FinishReason, KvBudget, RequestParams};
use ember::grammar::Grammar;
use ember::model::Model;
use ember::sampler::SamplingParams;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn schema_outputs_validate() {
    let p = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-model.sh",
        p.display()
    );
    let cfg = EngineConfig {
        n_ctx: 512,
        kv_budget: KvBudget::Blocks(64),
        max_seqs: 4,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(Model::load(&p).unwrap(), cfg).unwrap();
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/schemas/valid.json")).unwrap(),
    )
    .unwrap();
    let mut checks = Vec::new();
    for case in cases.as_array().unwrap() {
        let schema = &case["schema"];
        let g = Arc::new(Grammar::from_json_schema(&schema.to_string()).unwrap());
        // Greedy, and three samples at temperature 0.8 (top-k 40 and the other defaults).
        for sampling in [
            SamplingParams::default(),
            SamplingParams {
                temperature: 0.8,
                seed: 1,
                ..SamplingParams::default()
            },
        ] {
            let n = if sampling.temperature > 0.0 { 3 } else { 1 };
            let params = RequestParams {
                sampling,
                max_tokens: 256,
                n,
                grammar: Some(Arc::clone(&g)),
                ..RequestParams::default()
            };
            let id = e
                .submit_text(case["prompt"].as_str().unwrap(), &params)
                .unwrap();
            while e.has_work() {
                e.step().unwrap();
            }
            for out in e.output(id).unwrap() {
                assert_eq!(
                    out.finish,
                    Some(FinishReason::Eos),
                    "{}: {:?} ({:?})",
                    case["name"],
                    out.text,
                    out.error
                );
                assert!(g.accepts(&out.text), "{}: {:?}", case["name"], out.text);
                checks.push(json!({"name": case["name"], "schema": schema, "text": out.text}));
            }
            e.release(id).unwrap();
        }
    }
    // The independent check: parse each text and validate it against its schema.
    let script = r#"
import json, sys
import jsonschema
failed = 0
for c in json.load(sys.stdin):
    try:
        jsonschema.validate(json.loads(c["text"]), c["schema"])
    except Exception as e:
        failed += 1
        print(c["name"], repr(c["text"]), e)
print("validated", len(sys.argv) and "ok" if not failed else "FAILED")
sys.exit(1 if failed else 0)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test.sh installs its jsonschema package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(checks.clone()).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert_eq!(checks.len(), 6 * 4);
    for c in &checks {
        eprintln!("{}: {}", c["name"], c["text"]);
    }
}
