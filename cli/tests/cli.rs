//! The `ember` binary end to end: JSON output, exit codes and error messages.

use std::process::{Command, Output};

#[path = "support/cli.rs"]
mod cli_support;
use cli_support::{ember, expect_exit, repo, result_lines, run_batch, stderr, tmp};

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

/// A chat longer than its context: under the default policy the oldest turns are left out
/// (said on stderr) and every line gets a reply; under `--context-policy error` the turn that
/// does not fit ends the chat with "context full" after the replies that did.
#[test]
fn a_chat_longer_than_its_context_truncates_or_refuses() {
    let lines = b"Name a color.\nName a fruit.\nName a city.\nName an animal.\nBye.\n";
    let run = |policy: &str| {
        // Under shift, replies longer than the context: each one shifts it.
        let n = if policy == "shift" { "90" } else { "8" };
        let mut c = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["chat", "--ctx", "80", "-n", n, "-t", "2", "--ignore-eos"])
            .args(["--system", "Be brief.", "--context-policy", policy])
            .current_dir(repo())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A usage error exits before reading: then the write may fail with a broken pipe.
        let _ = std::io::Write::write_all(&mut c.stdin.take().unwrap(), lines);
        c.wait_with_output().unwrap()
    };
    let o = run("truncate");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("left out to fit the context of 80 tokens"),
        "{err}"
    );
    let replies = String::from_utf8_lossy(&o.stdout).lines().count();
    assert!(replies >= 5, "one reply per line: {replies}\n{err}");

    let o = run("error");
    expect_exit(&o, 1, "context full");
    let replies = String::from_utf8_lossy(&o.stdout).lines().count();
    assert!(replies >= 2, "the turns that fit were answered: {replies}");

    let o = run("shift");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("oldest tokens dropped").count(), 5, "{err}");
    let replies = String::from_utf8_lossy(&o.stdout).lines().count();
    assert!(replies >= 5, "one reply per line: {replies}\n{err}");
    let o = run("rotate");
    expect_exit(&o, 2, "expected error, truncate or shift");
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

    // --bandwidth: the streaming read and the decode speed it allows (bandwidth / weight bytes).
    let o = ember(&[
        "bench",
        "-m",
        m,
        "-p",
        "4",
        "-n",
        "2",
        "-r",
        "1",
        "--bandwidth",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (bw, limit) = (
        v["bandwidth_gb_s"].as_f64().unwrap(),
        v["decode_limit_tok_s"].as_f64().unwrap(),
    );
    assert!(bw > 0.1 && limit > 0.0, "{v}");
    let weights = std::fs::metadata(&p).unwrap().len() as f64;
    assert!(
        limit * weights >= bw * 1e9,
        "at most the file's bytes are weights: {v}"
    );

    let input = tmp("requests.jsonl");
    let output = tmp("results.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"prompt\": \"the cat\", \"max_tokens\": 5}\n\
         {\"id\": 7, \"prompt\": \"hello\", \"max_tokens\": 3, \"temperature\": 0.8, \"seed\": 1}\n\
         {\"id\": \"too-long\", \"prompt\": \"x\", \"max_tokens\": 100000}\n",
    )
    .unwrap();
    let o = run_batch(m, &input, &output, 2);
    // One request failed (it cannot fit the context): its error line is written, the others
    // run, and the exit status says that something failed.
    expect_exit(&o, 1, "arena_utilization");
    assert!(
        stderr(&o).contains("1 of 3 requests failed"),
        "{}",
        stderr(&o)
    );
    let lines = result_lines(&output);
    assert_eq!(lines.len(), 3);
    // Lines come in completion order, each with its id.
    let by_id = |id: serde_json::Value| lines.iter().find(|l| l["id"] == id).unwrap();
    assert_eq!(by_id("a".into())["ids"].as_array().unwrap().len(), 5);
    assert_eq!(by_id(7.into())["ids"].as_array().unwrap().len(), 3);
    let long = by_id("too-long".into());
    assert_eq!(long["finish_reason"], "error");
    assert!(
        long["error"].as_str().unwrap().contains("context full"),
        "{long}"
    );
}

/// `--prompt-cache`: the first run writes the prompt's full blocks, the next loads them and
/// computes only the rest with the same ids; a damaged, truncated or foreign file is refused.
#[test]
fn prompt_cache_files_reuse_the_prompt_and_refuse_bad_files() {
    let prompt = format!(
        "{}Question: what should I pack for a day in the mountains?",
        "You are a careful assistant running on a small device. ".repeat(5)
    );
    let cache = tmp("smollm2.prompt-cache");
    let _ = std::fs::remove_file(&cache);
    let run = |cache: Option<&std::path::Path>| {
        let mut args = vec!["generate", "-p", &prompt, "-n", "8", "-t", "2", "--json"];
        if let Some(c) = cache {
            args.extend(["--prompt-cache", c.to_str().unwrap()]);
        }
        ember(&args)
    };
    let json = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let plain = json(&run(None));
    let n_prompt = plain["prompt_ids"].as_array().unwrap().len();
    assert!(n_prompt > 64, "{n_prompt} prompt tokens");
    let first = json(&run(Some(&cache)));
    assert_eq!(first["ids"], plain["ids"]);
    assert_eq!(first["cached_prompt_tokens"], 0);
    assert!(cache.exists(), "the first run writes the cache");
    let second = json(&run(Some(&cache)));
    assert_eq!(
        second["ids"], plain["ids"],
        "ids equal those without a cache"
    );
    // Every full block but one token to compute.
    let want = (n_prompt - 1) / 16 * 16;
    assert_eq!(second["cached_prompt_tokens"], want);

    let bytes = std::fs::read(&cache).unwrap();
    let damaged = tmp("damaged.prompt-cache");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    std::fs::write(&damaged, &flipped).unwrap();
    expect_exit(&run(Some(&damaged)), 1, "damaged");
    std::fs::write(&damaged, &bytes[..bytes.len() - 100]).unwrap();
    expect_exit(&run(Some(&damaged)), 1, "truncated");
    assert_eq!(
        std::fs::read(&damaged).unwrap().len(),
        bytes.len() - 100,
        "a refused file is left as it is"
    );

    // A cache written by the Gemma 3 model.
    let gemma = repo().join("models/gemma-3-270m-q4_k_m.gguf");
    let foreign = tmp("gemma.prompt-cache");
    let _ = std::fs::remove_file(&foreign);
    let o = ember(&[
        "generate",
        "-m",
        gemma.to_str().unwrap(),
        "-p",
        &prompt,
        "-n",
        "1",
        "-t",
        "2",
        "--prompt-cache",
        foreign.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    expect_exit(&run(Some(&foreign)), 1, "written for another model");

    // Chat: the first turn's prompt (the long system prompt) is what a restart reuses.
    let chat_cache = tmp("chat.prompt-cache");
    let _ = std::fs::remove_file(&chat_cache);
    let system = "You are a careful assistant running on a small device. ".repeat(6);
    let chat = |user: &str| {
        let o = ember(&[
            "chat",
            "--system",
            &system,
            "-p",
            user,
            "-n",
            "4",
            "-t",
            "2",
            "--verbose",
            "--prompt-cache",
            chat_cache.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    assert!(chat("Hello!").contains(", 0 of them from the cache"));
    let again = chat("What is the weather like?");
    let cached: usize = again
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cached count in {again}"));
    assert!(
        cached >= 64,
        "a restarted chat reuses the system prompt: {again}"
    );
}

/// Gemma 3 270M (base, `models/`, fetched by scripts/fetch-model.sh) has no chat template: `ember chat` says so and names `--chat-template`, and
/// runs with one.
#[test]
fn chat_without_template_is_refused_clearly() {
    let model = repo().join("models/gemma-3-270m-q4_k_m.gguf");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["chat", "-m", model.to_str().unwrap(), "-p", "Hi", "-n", "2"])
            .args(["--threads", "2", "--ctx", "64"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no tokenizer.chat_template") && err.contains("--chat-template FILE"),
        "{err}"
    );
    let t = repo().join("tests/golden/gemma3/chat_template.jinja");
    let o = run(&["--chat-template", t.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
