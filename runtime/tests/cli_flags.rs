//! Command-line conventions: help per command, repeated flags.

#[path = "support/cli.rs"]
mod cli;

use cli::{ember, expect_exit};

#[test]
fn help_per_command() {
    for (cmd, has, lacks) in [
        ("generate", "generate -p TEXT", "perplexity -f FILE"),
        ("serve", "/v1/chat/completions", "generate -p TEXT"),
        ("bench", "--concurrency C", "batch --input"),
    ] {
        for args in [
            vec![cmd, "--help"],
            vec!["help", cmd],
            vec![cmd, "-p", "x", "-h"],
        ] {
            let o = ember(&args);
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{args:?}: {}", cli::stderr(&o));
            assert!(
                out.starts_with(&format!("usage: ember {cmd}")),
                "{args:?}: {out}"
            );
            assert!(
                out.contains(has) && out.contains("common options:"),
                "{args:?}: {out}"
            );
            assert!(
                !out.contains(lacks),
                "{args:?} shows another command: {out}"
            );
        }
    }
    // The whole usage for `--help` alone and for an unknown name.
    for args in [vec!["--help"], vec!["help", "nope"]] {
        let o = ember(&args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("generate -p TEXT") && out.contains("perplexity -f FILE"),
            "{out}"
        );
    }
    // A bad flag is named, without the whole usage.
    let o = ember(&["generate", "--frobnicate"]);
    expect_exit(&o, 2, "unknown option --frobnicate");
    assert!(!cli::stderr(&o).contains("common options:"));
}

#[test]
fn repeated_stop_flags_accumulate() {
    let model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    assert!(
        cli::repo().join(model).exists(),
        "{model} missing: run scripts/fetch-model.sh"
    );
    // Greedy: " Paris.\n\nThe United States has ...". Both stop strings count: the earlier
    // match ends the text, whichever flag gave it.
    for stops in [[".", "United"], ["United", "."]] {
        let o = ember(&[
            "generate",
            "-m",
            model,
            "-p",
            "The capital of France is",
            "-n",
            "12",
            "--json",
            "--stop",
            stops[0],
            "--stop",
            stops[1],
        ]);
        assert!(o.status.success(), "{}", cli::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["text"], " Paris", "{stops:?}: {v}");
        assert_eq!(v["finish_reason"], "stop");
    }
}
