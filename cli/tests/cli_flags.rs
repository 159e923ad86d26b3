//! Command-line conventions: help per command, repeated flags, `--version`, `EMBER_MODEL`,
//! random seeds, `ember info`'s layout.

#[path = "support/cli.rs"]
mod cli;

use std::process::Command;

use cli::{ember, expect_exit, repo, run_batch_with, stderr, synth_model, tmp};

#[test]
fn help_per_command() {
    for (cmd, has, lacks) in [
        ("generate", "--prompt <TEXT>", "--chunk <N>"),
        ("serve", "--max-queue <Q>", "--prompt <TEXT>"),
        ("bench", "--concurrency <C>", "--input <FILE>"),
    ] {
        for args in [
            vec![cmd, "--help"],
            vec!["help", cmd],
            vec![cmd, "-t", "1", "-h"],
        ] {
            let o = ember(&args);
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{args:?}: {}", cli::stderr(&o));
            assert!(
                out.contains(&format!("Usage: ember {cmd} [OPTIONS]")),
                "{args:?}: {out}"
            );
            // The command's own flags and the common ones (every command loads a model).
            assert!(
                out.contains(has) && out.contains("--model <PATH>"),
                "{args:?}: {out}"
            );
            assert!(
                !out.contains(lacks),
                "{args:?} shows another command's flag: {out}"
            );
        }
    }
    // The whole usage: every command, one line each.
    let o = ember(&["--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for cmd in [
        "generate",
        "chat",
        "tokenize",
        "info",
        "perplexity",
        "bench",
        "batch",
        "serve",
        "convert",
        "synth",
    ] {
        assert!(out.contains(&format!("\n  {cmd} ")), "{cmd}: {out}");
    }
    // No command, or an unknown one: a usage error.
    let o = ember(&[]);
    assert_eq!(o.status.code(), Some(2));
    expect_exit(
        &ember(&["help", "nope"]),
        2,
        "unrecognized subcommand 'nope'",
    );
    // A bad flag is named, with the command's usage line, without the whole help.
    let o = ember(&["generate", "--frobnicate"]);
    expect_exit(&o, 2, "unexpected argument '--frobnicate'");
    assert!(cli::stderr(&o).contains("Usage: ember generate"));
    assert!(!cli::stderr(&o).contains("--model <PATH>"));
    // A close misspelling is suggested.
    expect_exit(&ember(&["generate", "--tmep", "1"]), 2, "--temp");
    // A flag of another command is not accepted.
    expect_exit(&ember(&["synth", "--threads", "2"]), 2, "'--threads'");
}

/// A flag given twice takes its last value (a script's defaults, then the user's).
#[test]
fn a_repeated_flag_takes_its_last_value() {
    let out = tmp("repeated.gguf");
    let out = out.to_str().unwrap();
    let o = ember(&["synth", "-o", out, "--layers", "1", "--layers", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ember(&["info", "-m", out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(info.contains("| 3 layers,"), "{info}");
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

/// `--version`; `EMBER_MODEL` names the default model; without `--seed` every run draws a new
/// seed, `--json` prints it and `--seed` with it reproduces the run.
#[test]
fn version_ember_model_and_random_seeds() {
    let o = ember(&["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = String::from_utf8_lossy(&o.stdout);
    assert!(
        v.starts_with(&format!(
            "ember {} (cpu kernels: ",
            env!("CARGO_PKG_VERSION")
        )),
        "{v}"
    );

    let with_env = |model: &std::path::Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(args)
            .env("EMBER_MODEL", model)
            .current_dir(repo())
            .output()
            .expect("run ember")
    };
    let o = with_env(
        std::path::Path::new("/nonexistent.gguf"),
        &["generate", "-p", "x"],
    );
    expect_exit(&o, 1, "named by the EMBER_MODEL environment variable");

    let model = synth_model();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "generate", "-p", "a b c", "-n", "12", "--temp", "1.5", "--json",
        ];
        args.extend_from_slice(extra);
        let o = with_env(&model, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let runs: Vec<serde_json::Value> = (0..3).map(|_| run(&[])).collect();
    let seeds: Vec<u64> = runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert!(
        seeds[0] != seeds[1] && seeds[1] != seeds[2],
        "seeds {seeds:?}"
    );
    let again = run(&["--seed", &seeds[1].to_string()]);
    assert_eq!(again["seed"], seeds[1]);
    assert_eq!(again["ids"], runs[1]["ids"], "--seed reproduces the run");
}

/// `ember info`: the summary first, the tensor table only with `--tensors`.
#[test]
fn info_summary_first_and_tensors_on_request() {
    let m = synth_model();
    let m = m.to_str().unwrap();
    let text = |args: &[&str]| {
        let o = ember(args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let out = text(&["info", "-m", m]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].starts_with("model: llama"), "{out}");
    assert!(lines[2].starts_with("parameters: "), "{out}");
    assert!(lines[3].starts_with("weights: "), "{out}");
    assert!(lines[4].starts_with("compute: cpu"), "{out}");
    assert!(
        out.contains("memory plan:") && out.contains("metadata ("),
        "{out}"
    );
    assert!(
        out.contains("tensors: `ember info --tensors` lists them"),
        "{out}"
    );
    assert!(!out.contains("token_embd.weight"), "{out}");
    let all = text(&["info", "-m", m, "--tensors"]);
    assert!(all.contains("token_embd.weight"), "{all}");
    assert!(all.starts_with(&out[..out.find("metadata (").unwrap()]));
}

#[test]
fn malformed_model_is_a_clear_error() {
    let p = tmp("bad.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00\xff\xff").unwrap();
    let o = ember(&["info", "-m", p.to_str().unwrap()]);
    expect_exit(&o, 1, "malformed GGUF at offset 8: file truncated");
    let o = ember(&["generate", "-m", "/nonexistent.gguf", "-p", "x"]);
    expect_exit(&o, 1, "/nonexistent.gguf not found");
}

#[test]
fn bad_parameters_are_usage_errors() {
    let o = ember(&["generate", "-p", "x", "--temp", "-1"]);
    expect_exit(&o, 2, "temperature");
    let o = ember(&["generate", "-p", "x", "--top-k", "many"]);
    expect_exit(&o, 2, "--top-k");
    let o = ember(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
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
fn chat_without_template_says_so() {
    let p = tmp("synth.gguf");
    let o = ember(&["synth", "-o", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ember(&["chat", "-m", p.to_str().unwrap(), "-p", "hi"]);
    expect_exit(&o, 1, "no tokenizer.chat_template");
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

/// Progress lines: on a terminal (forced here with `EMBER_PROGRESS=1`), never in a log.
#[test]
fn progress_only_when_asked_or_on_a_terminal() {
    let m = synth_model();
    let out = tmp("progress-q8.gguf");
    let run = |progress: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ember"));
        c.args([
            "convert",
            "-m",
            m.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(["--type", "q8_0"])
        .current_dir(repo());
        if let Some(p) = progress {
            c.env("EMBER_PROGRESS", p);
        }
        let o = c.output().expect("run ember");
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let drawn = run(Some("1"));
    assert!(
        drawn.contains("convert: tensors ") && drawn.contains("(100%)"),
        "{drawn:?}"
    );
    assert!(
        drawn.contains("\r\x1b[2K"),
        "the line is erased at the end: {drawn:?}"
    );
    // stderr is a pipe here: nothing drawn unless asked.
    for quiet in [run(None), run(Some("0"))] {
        assert!(
            !quiet.contains("convert: tensors") && !quiet.contains('\r'),
            "{quiet:?}"
        );
    }
}

/// `--type` takes llama-quantize's mix names (any case) as well as weight types; the mix's
/// rules and the file type are applied (their bytes are checked against llama-quantize on the
/// real models in convert_kquants.rs); an unknown name lists both.
#[test]
fn convert_takes_k_quant_mixes() {
    let m = tmp("kmix-synth.gguf");
    let o = ember(&[
        "synth",
        "-o",
        m.to_str().unwrap(),
        "--embd",
        "256",
        "--ff",
        "512",
        "--layers",
        "8",
        "--separate-output",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tmp("kmix-q4km.gguf");
    let convert = |ty: &str| {
        let (m, o) = (m.to_str().unwrap(), out.to_str().unwrap());
        ember(&["convert", "-m", m, "-o", o, "--type", ty])
    };
    let o = convert("q4_k_m");
    assert!(o.status.success(), "{}", stderr(&o));
    let f = ember::gguf::GgufFile::open(&out).expect("converted file");
    assert_eq!(f.get_u64("general.file_type").unwrap(), Some(15));
    let ty = |name: &str| f.tensors().iter().find(|t| t.name == name).expect(name).ty;
    use ember_kernels::GgmlType::{Q4_K, Q6_K};
    assert_eq!(ty("output.weight"), Q6_K);
    assert_eq!(ty("token_embd.weight"), Q4_K);
    assert_eq!(ty("blk.0.attn_q.weight"), Q4_K);
    // 8 layers: the first and last (8 / 8 = 1) and every third between get more bits.
    let six: Vec<usize> = (0..8)
        .filter(|i| ty(&format!("blk.{i}.ffn_down.weight")) == Q6_K)
        .collect();
    assert_eq!(six, [0, 3, 6, 7]);
    // It runs.
    let o = ember(&[
        "generate",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "ab",
        "-n",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    expect_exit(
        &convert("Q3_K_M"),
        2,
        "mixes: Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M",
    );
}

/// `generate --context-policy shift`: a generation longer than the context runs to `-n`,
/// reporting the tokens its shifts dropped; without it, the same request is refused; `--keep`
/// goes with shift only.
#[test]
fn generate_shifts_the_context_when_asked() {
    let m = synth_model();
    let m = m.to_str().unwrap();
    let base = [
        "generate", "-m", m, "-p", "abcdef", "-n", "200", "--ctx", "64",
    ];
    let o = ember(
        &[
            &base[..],
            &["--ignore-eos", "--json", "--context-policy", "shift"],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 200);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["shifted_tokens"].as_u64().unwrap() >= 140, "{v}");
    let o = ember(
        &[
            &base[..],
            &["--ignore-eos", "--context-policy", "shift", "--keep", "8"],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    expect_exit(&ember(&base), 1, "context full");
    expect_exit(
        &ember(&[&base[..], &["--keep", "8"]].concat()),
        2,
        "--keep goes with",
    );
    expect_exit(
        &ember(&[&base[..], &["--context-policy", "truncate"]].concat()),
        2,
        "expected error or shift",
    );
}

/// `--kv-type`: a quantized KV cache generates and `ember info` plans it (a smaller arena for
/// the same blocks); an unknown type is a usage error listing the types, and a head size the
/// type cannot store a runtime error saying so.
#[test]
fn kv_type_flag() {
    let m = tmp("kv-type-d64.gguf");
    let ms = m.to_str().unwrap();
    let o = ember(&[
        "synth",
        "-o",
        ms,
        "--embd",
        "128",
        "--heads",
        "2",
        "--kv-heads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = |kv: &str| {
        let o = ember(&["info", "-m", ms, "--ctx", "64", "--kv-type", kv]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = out
            .lines()
            .find(|l| l.contains("KV arena"))
            .unwrap()
            .to_owned();
        let bytes: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        (bytes, line)
    };
    let (f16, _) = plan("f16");
    let (q4, line) = plan("q4_0");
    assert!(line.contains("tokens of q4_0 K/V"), "{line}");
    assert_eq!(q4 * 64, f16 * 18, "{line}");
    for kv in ["q8_0", "Q4_0"] {
        let o = ember(&[
            "generate",
            "-m",
            ms,
            "-p",
            "abc",
            "-n",
            "6",
            "--kv-type",
            kv,
            "--json",
        ]);
        assert!(o.status.success(), "{kv}: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap())
                .unwrap();
        assert_eq!(v["ids"].as_array().unwrap().len(), 6, "{kv}: {v}");
    }
    let base = ["generate", "-m", ms, "-p", "abc", "-n", "2", "--kv-type"];
    expect_exit(
        &ember(&[&base[..], &["q5_0"]].concat()),
        2,
        "one of f16, q8_0, q4_0",
    );
    // The shared synthetic model has heads of 16.
    let small = synth_model();
    let o = ember(&[
        "generate",
        "-m",
        small.to_str().unwrap(),
        "-p",
        "abc",
        "--kv-type",
        "q8_0",
    ]);
    expect_exit(&o, 1, "multiple of 32");
}

/// A model with sliding-window layers (a synthetic Gemma 3: 6 layers, window 32): `ember info`
/// plans the grouped arena at a context past the window, and `batch` gives the same ids with
/// and without `--swa-full` (which keeps every block).
#[test]
fn sliding_window_plan_and_swa_full() {
    let m = tmp("swa-gemma3.gguf");
    let ms = m.to_str().unwrap();
    let o = ember(&[
        "synth", "-o", ms, "--arch", "gemma3", "--layers", "6", "--window", "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ember(&["info", "-m", ms, "--ctx", "256"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = out.lines().find(|l| l.contains("KV per sequence"));
    let line = line.unwrap_or_else(|| panic!("no grouped plan in {out}"));
    assert!(line.contains("6 layer groups of 1 layer(s)"), "{line}");
    // Within the window nothing is grouped.
    let o = ember(&["info", "-m", ms, "--ctx", "8"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("KV per sequence"));

    let input = tmp("swa-requests.jsonl");
    std::fs::write(
        &input,
        r#"{"id": "a", "prompt": "the quick brown fox jumps over the lazy dog", "max_tokens": 40, "temperature": 1.5, "seed": 4}"#,
    )
    .unwrap();
    let ids = |extra: &[&str]| {
        let output = tmp(&format!("swa-out{}.jsonl", extra.len()));
        let extra = [&["--ctx", "128"][..], extra].concat();
        let o = run_batch_with(ms, &input, &output, 1, &extra);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = std::fs::read_to_string(&output).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        v["ids"].clone()
    };
    assert_eq!(ids(&["--swa-full"]), ids(&[]));
    // The one-sequence commands take it too, with the same output.
    let generate = |extra: &[&str]| {
        let args = [
            &[
                "generate",
                "-m",
                ms,
                "--ctx",
                "128",
                "-p",
                "the quick brown fox",
                "-n",
                "30",
            ][..],
            &["--temp", "1.5", "--seed", "4", "--json", "-t", "1"],
            extra,
        ]
        .concat();
        let o = ember(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ids"].clone()
    };
    assert_eq!(generate(&["--swa-full"]), generate(&[]));
}
