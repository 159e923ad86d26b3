//! The `ember` binary end to end: JSON output, exit codes and error messages.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run ember")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn generate_json_is_greedy_and_complete() {
    let o = ember(&[
        "generate",
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "-t",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["prompt_ids"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    // llama.cpp's greedy continuation (tests/golden/greedy.json, plain_capital).
    assert_eq!(
        v["ids"],
        serde_json::json!([7042, 30, 198, 198, 504, 1797, 1918, 553])
    );
    assert_eq!(v["text"], " Paris.\n\nThe United States has");
    assert_eq!(v["finish_reason"], "length");
    for k in ["prefill_tok_s", "decode_tok_s", "load_ms"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
}

#[test]
fn tokenize_json_and_special_parsing() {
    let o = ember(&["tokenize", "--json", "<|im_start|>Hello world"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ids"], serde_json::json!([1, 19556, 905]));
    let o = ember(&["tokenize", "--json", "--no-parse-special", "<|im_start|>"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["ids"].as_array().unwrap().len() > 1);
}

#[test]
fn malformed_model_is_a_clear_error() {
    let p = tmp("bad.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00\xff\xff").unwrap();
    let o = ember(&["info", "-m", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("malformed GGUF at offset 8: file truncated"),
        "{}",
        stderr(&o)
    );
    let o = ember(&["generate", "-m", "/nonexistent.gguf", "-p", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent.gguf not found"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_parameters_are_usage_errors() {
    let o = ember(&["generate", "-p", "x", "--temp", "-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("temperature"), "{}", stderr(&o));
    let o = ember(&["generate", "-p", "x", "--top-k", "many"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--top-k"), "{}", stderr(&o));
    let o = ember(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn chat_without_template_says_so() {
    let p = tmp("synth.gguf");
    let o = ember(&["synth", "-o", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ember(&["chat", "-m", p.to_str().unwrap(), "-p", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no tokenizer.chat_template"),
        "{}",
        stderr(&o)
    );
    // The synthetic model itself loads and generates.
    let o = ember(&[
        "generate",
        "-m",
        p.to_str().unwrap(),
        "-p",
        "abc",
        "-n",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn batch_and_concurrent_bench_run_through_the_engine() {
    let p = tmp("synth-batch.gguf");
    assert!(ember(&["synth", "-o", p.to_str().unwrap()])
        .status
        .success());
    let m = p.to_str().unwrap();
    let o = ember(&[
        "bench",
        "-m",
        m,
        "--concurrency",
        "4",
        "-p",
        "8",
        "-n",
        "4",
        "--json",
        "-t",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["concurrency"], 4);
    assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0);

    let input = tmp("requests.jsonl");
    let output = tmp("results.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"prompt\": \"the cat\", \"max_tokens\": 5}\n\
         {\"id\": 7, \"prompt\": \"hello\", \"max_tokens\": 3, \"temperature\": 0.8, \"seed\": 1}\n\
         {\"id\": \"too-long\", \"prompt\": \"x\", \"max_tokens\": 100000}\n",
    )
    .unwrap();
    let o = ember(&[
        "batch",
        "-m",
        m,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "-t",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("arena_utilization"), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[0]["ids"].as_array().unwrap().len(), 5);
    assert_eq!(lines[1]["id"], 7);
    assert_eq!(lines[2]["finish_reason"], "error");
    assert!(
        lines[2]["error"].as_str().unwrap().contains("context full"),
        "{}",
        lines[2]
    );
}
