//! `ember generate` and `ember batch` with grammars, JSON schemas and prompt-lookup
//! speculation, on the real model: outputs that parse, the same ids with and without
//! speculation, and usage errors that say what is wrong.

#[path = "support/cli.rs"]
mod cli_support;
use cli_support::{ember, expect_exit, result_lines, run_batch, stderr, tmp};
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let o = ember(args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn grammars_and_schemas_shape_the_output() {
    let schema = r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer", "minimum": 0}}, "required": ["city", "population"]}"#;
    let v = json(&[
        "generate",
        "-p",
        "The largest city of France, as JSON:",
        "-n",
        "60",
        "-t",
        "2",
        "--json-schema",
        schema,
        "--json",
    ]);
    assert_eq!(v["finish_reason"], "eos", "{v}");
    let doc: Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
    assert!(
        doc["city"].is_string() && doc["population"].as_u64().is_some(),
        "{doc}"
    );

    let g = tmp("yes-no.gbnf");
    std::fs::write(
        &g,
        "# a one-word answer\nroot ::= (\"yes\" | \"no\") \".\"\n",
    )
    .unwrap();
    let v = json(&[
        "generate",
        "-p",
        "Is Paris in France? Answer:",
        "-n",
        "8",
        "-t",
        "2",
        "--grammar-file",
        g.to_str().unwrap(),
        "--json",
    ]);
    let text = v["text"].as_str().unwrap();
    assert!(text == "yes." || text == "no.", "{text:?}");
    assert_eq!(v["finish_reason"], "eos");

    let o = ember(&["generate", "-p", "x", "--grammar", "root ::= \"a\" |"]);
    assert!(
        o.status.success(),
        "an empty alternative is valid: {}",
        stderr(&o)
    );
    let o = ember(&["generate", "-p", "x", "--grammar", "root ::= [b-a]"]);
    expect_exit(
        &o,
        2,
        "--grammar: line 1, column 11: character range out of order",
    );
    let o = ember(&[
        "generate",
        "-p",
        "x",
        "--grammar",
        "root ::= \"a\"",
        "--json-schema",
        "{}",
    ]);
    expect_exit(&o, 2, "give one");
    let o = ember(&["generate", "-p", "x", "--json-schema", r#"{"allOf": []}"#]);
    expect_exit(&o, 2, "unsupported keyword `allOf`");
    let o = ember(&[
        "generate",
        "-p",
        "x",
        "--json-schema",
        "/nonexistent/schema.json",
    ]);
    expect_exit(&o, 2, "cannot read /nonexistent/schema.json");
}

#[test]
fn prompt_lookup_keeps_the_output_and_reports_its_drafts() {
    let prompt = "<|im_start|>user\nCopy this line: the quick brown fox jumps over the lazy dog \
                  near the river bank.<|im_end|>\n<|im_start|>assistant\n";
    let base = [
        "generate", "-p", prompt, "-n", "24", "-t", "2", "--seed", "3", "--json",
    ];
    for temp in ["0", "0.7"] {
        let plain = json(&[&base[..], &["--temp", temp]].concat());
        let spec = json(
            &[
                &base[..],
                &["--temp", temp, "--spec", "lookup", "--draft-k", "6"],
            ]
            .concat(),
        );
        assert_eq!(spec["ids"], plain["ids"], "temperature {temp}");
        assert_eq!(plain["draft_tokens"], 0);
        let (d, a) = (
            spec["draft_tokens"].as_u64().unwrap(),
            spec["accepted_tokens"].as_u64().unwrap(),
        );
        assert!(a <= d, "{a} accepted of {d}");
        if temp == "0" {
            assert!(a > 0, "a reply that copies its prompt should accept drafts");
        }
    }
    // A draft model: the ids are again those of plain decoding.
    let draft = draft_model();
    for temp in ["0", "0.7"] {
        let plain = json(&[&base[..], &["--temp", temp]].concat());
        let d = draft.to_str().unwrap();
        let spec = json(
            &[
                &base[..],
                &["--temp", temp, "--spec", "draft", "--draft-model", d],
            ]
            .concat(),
        );
        assert_eq!(spec["ids"], plain["ids"], "draft model, temperature {temp}");
        assert!(spec["draft_tokens"].as_u64().unwrap() > 0, "{spec}");
    }
    expect_exit(
        &ember(&["generate", "-p", "x", "--spec", "draft"]),
        2,
        "needs --draft-model FILE",
    );
    let synth = tmp("draft-synth.gguf");
    let o = ember(&["synth", "-o", synth.to_str().unwrap()]);
    assert!(o.status.success());
    expect_exit(
        &ember(&[
            "generate",
            "-p",
            "x",
            "--spec",
            "draft",
            "--draft-model",
            synth.to_str().unwrap(),
        ]),
        1,
        "must share the vocabulary",
    );
    expect_exit(
        &ember(&["generate", "-p", "x", "--spec", "lookup", "--draft-k", "40"]),
        2,
        "1..=16",
    );
    expect_exit(
        &ember(&["generate", "-p", "x", "--draft-k", "4"]),
        2,
        "need --spec lookup or --spec draft",
    );
}

/// SmolLM2 cut to 2 of its 30 blocks (same vocabulary): a draft model (written once).
fn draft_model() -> std::path::PathBuf {
    static ONCE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let draft = tmp("draft-2-layers.gguf");
        let o = ember(&["convert", "--layers", "2", "-o", draft.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        draft
    })
    .clone()
}

#[test]
fn batch_lines_take_grammars_schemas_and_draft_k() {
    let input = tmp("structured.jsonl");
    let output = tmp("structured-out.jsonl");
    let lines = [
        r#"{"id": "g", "prompt": "Count to three:", "max_tokens": 20, "grammar": "root ::= [1-3] (\", \" [1-3]){2}"}"#,
        r#"{"id": "s", "prompt": "A color as JSON:", "max_tokens": 40, "json_schema": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]}}"#,
        r#"{"id": "k", "prompt": "Say: one two three one two three", "max_tokens": 12, "draft_k": 4}"#,
        r#"{"id": "bad", "prompt": "x", "grammar": "root ::= ("}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let o = run_batch("models/SmolLM2-135M-Instruct.Q4_1.gguf", &input, &output, 2);
    assert_eq!(o.status.code(), Some(1), "one line fails: {}", stderr(&o));
    let results = result_lines(&output);
    let by_id = |id: &str| results.iter().find(|r| r["id"] == id).unwrap().clone();
    let g = by_id("g");
    let text = g["text"].as_str().unwrap();
    assert_eq!(text.len(), 7, "{text:?}");
    assert_eq!(g["finish_reason"], "eos");
    let s: Value = serde_json::from_str(by_id("s")["text"].as_str().unwrap()).unwrap();
    assert!(["red", "green", "blue"].contains(&s["color"].as_str().unwrap()));
    assert_eq!(by_id("k")["ids"].as_array().unwrap().len(), 12);
    assert!(by_id("bad")["error"]
        .as_str()
        .unwrap()
        .contains("grammar: line 1"));
    // With --draft-model, draft_k drafts with the model: the same ids as without drafting.
    let lines = [
        r#"{"id": "plain", "prompt": "Say: one two three one two three", "max_tokens": 12}"#,
        r#"{"id": "k", "prompt": "Say: one two three one two three", "max_tokens": 12, "draft_k": 4}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let d = draft_model();
    let o = ember(&[
        "batch",
        "-m",
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "-t",
        "2",
        "--draft-model",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let results = result_lines(&output);
    let by_id = |id: &str| results.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(by_id("k")["ids"], by_id("plain")["ids"]);
}
