//! The `ember` binary end to end: JSON output, exit codes and error messages.

use std::path::PathBuf;
use std::process::{Command, Output};

#[path = "support/cli.rs"]
mod cli_support;
use cli_support::{ember, expect_exit, repo, result_lines, run_batch, stderr, synth_model, tmp};

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

/// `ember batch -m MODEL --input IN --output OUT -t THREADS`.
// ---- Hostile input (issue 16): one test per row of its table, numbered as there. ----
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

/// `ember` with arguments that may not be UTF-8.
fn ember_os(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run ember")
}

/// `ember` under `sh -c` with a shell prefix (redirections, `ulimit`).
fn ember_sh(prefix: &str, args: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{prefix} exec '{}' {args}",
            env!("CARGO_BIN_EXE_ember")
        ))
        .current_dir(repo())
        .output()
        .expect("run sh")
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Row 1: a non-UTF-8 argument is a usage error naming the flag; a non-UTF-8 path just works.
#[test]
fn row01_non_utf8_arguments() {
    let bad = OsStr::from_bytes(b"\xff");
    for (args, flag) in [
        (vec![os("generate"), os("-p"), bad], "--prompt"),
        (
            vec![os("generate"), os("-p"), os("x"), os("--stop"), bad],
            "--stop",
        ),
        (vec![os("tokenize"), bad], "positional argument"),
        (
            vec![
                os("generate"),
                os("-p"),
                os("x"),
                OsStr::from_bytes(b"--temp=\xff"),
            ],
            "--temp",
        ),
    ] {
        let o = ember_os(&args);
        expect_exit(&o, 2, flag);
        assert!(stderr(&o).contains("not valid UTF-8"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // A model path with a non-UTF-8 byte: copied there, it loads and generates.
    let dir = tmp("paths");
    std::fs::create_dir_all(&dir).unwrap();
    let mut name = dir.into_os_string();
    name.push(OsStr::from_bytes(b"/model-\xff.gguf"));
    std::fs::copy(synth_model(), &name).unwrap();
    let o = ember_os(&[
        os("generate"),
        os("-m"),
        &name,
        os("-p"),
        os("abc"),
        os("-n"),
        os("2"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&name).unwrap();
}

/// Row 2: a `max_tokens` that would wrap `prompt + max_tokens` is "context full", not a panic.
#[test]
fn row02_huge_max_tokens() {
    let m = synth_model();
    let m = m.to_str().unwrap();
    let o = ember(&["generate", "-m", m, "-p", "x", "-n", "18446744073709551615"]);
    expect_exit(&o, 1, "context full");
    // In a batch line: that request gets its line, the others run.
    let (input, output) = (tmp("row02.jsonl"), tmp("row02.out.jsonl"));
    std::fs::write(
        &input,
        "{\"id\": \"huge\", \"prompt\": \"x\", \"max_tokens\": 18446744073709551615}\n\
         {\"id\": \"ok\", \"prompt\": \"x\", \"max_tokens\": 2}\n",
    )
    .unwrap();
    let o = run_batch(m, &input, &output, 1);
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let lines = result_lines(&output);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = lines.iter().find(|l| l["id"] == "ok").unwrap();
    assert_eq!(ok["ids"].as_array().unwrap().len(), 2);
    assert!(lines.iter().any(|l| l["id"] == "huge"));
}

/// Row 3: absurd thread and sequence counts are usage errors or capped, never a panic.
#[test]
fn row03_absurd_counts() {
    let m = synth_model();
    let m = m.to_str().unwrap();
    let max = "18446744073709551615";
    for args in [
        vec!["bench", "-m", m, "--concurrency", max, "-p", "4", "-n", "2"],
        vec![
            "batch",
            "-m",
            m,
            "--max-seqs",
            max,
            "--input",
            "x",
            "--output",
            "y",
        ],
    ] {
        let o = ember(&args);
        expect_exit(&o, 2, "must be 1..=");
    }
    // --threads 2^64-1: capped to the CPUs there are, with a warning; it still generates.
    // --threads: values past the machine's CPUs are capped (row 10), absurd ones refused.
    let o = ember(&[
        "generate",
        "-m",
        m,
        "-p",
        "abc",
        "-n",
        "2",
        "--threads",
        max,
    ]);
    expect_exit(&o, 2, "--threads must be 0..=1024");
}

/// Row 4: stdout closed early or full. A closed pipe ends the command quietly (status 141,
/// as SIGPIPE would) at the first write; a full disk is an error, status 1.
#[test]
fn row04_stdout_closed_or_full() {
    let m = synth_model();
    let m = m.to_str().unwrap();
    // A pipe whose reader is gone before `ember` starts (`ember ... | true` where `true` won
    // the race): the first write fails, whatever the size of the output.
    for args in [
        vec!["info", "-m", m],
        vec!["generate", "-m", m, "-p", "abc", "-n", "60", "--ignore-eos"],
        vec!["tokenize", "-m", m, "abc abc abc"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(&args)
            .current_dir(repo())
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(141), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).is_empty(), "{args:?}: {}", stderr(&o));
    }
    for cmd in [
        format!("info -m '{m}'"),
        format!("tokenize -m '{m}' abc"),
        format!("generate -m '{m}' -p abc -n 4"),
        format!("generate -m '{m}' -p abc -n 4 --json"),
    ] {
        let o = ember_sh("", &format!("{cmd} > /dev/full"));
        expect_exit(&o, 1, "writing to stdout");
    }
}

/// Row 8: a context of 2^24 positions: the KV budget is checked before anything large is
/// computed, so under a memory limit the answer is an error, not an abort.
#[test]
fn row08_huge_context_fails_before_allocating() {
    let p = tmp("row08-ctx.gguf");
    let o = ember(&[
        "synth",
        "-o",
        p.to_str().unwrap(),
        "--ctx",
        "16777216",
        "--embd",
        "1024",
        "--heads",
        "16",
        "--kv-heads",
        "16",
        "--layers",
        "4",
        "--ff",
        "256",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let args = format!(
        "generate -m '{}' --ctx 16777216 -p hi -n 1 -t 1",
        p.display()
    );
    let o = ember_sh("ulimit -v 3000000;", &args);
    expect_exit(&o, 1, "KV arena");
    // With a small arena the same context runs: RoPE tables cover the reachable positions.
    let o = ember_sh("ulimit -v 3000000;", &format!("{args} --kv-blocks 64"));
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&p).unwrap();
}

/// Row 9: a 50 MB prompt is refused from its byte length, at once and in bounded memory
/// (before: 4.3 GB and 39 s of tokenizing) — in a batch line and on chat's stdin.
#[test]
fn row09_huge_prompts_are_refused_from_their_length() {
    let (input, output) = (tmp("row09.jsonl"), tmp("row09.out.jsonl"));
    let big = "word ".repeat(10 << 20);
    std::fs::write(
        &input,
        format!("{{\"id\": \"big\", \"prompt\": \"{big}\"}}\n{{\"id\": \"ok\", \"prompt\": \"hi\", \"max_tokens\": 2}}\n"),
    )
    .unwrap();
    let o = ember_sh(
        "ulimit -v 1500000;",
        &format!(
            "batch --input '{}' --output '{}' -t 1",
            input.display(),
            output.display()
        ),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines = result_lines(&output);
    let big = lines.iter().find(|l| l["id"] == "big").unwrap();
    assert!(
        big["error"].as_str().unwrap().contains("context full"),
        "{big}"
    );
    assert!(lines
        .iter()
        .any(|l| l["id"] == "ok" && l["finish_reason"] == "length"));

    // chat: a 50 MB line on stdin.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 1500000; exec '{}' chat -t 1",
            env!("CARGO_BIN_EXE_ember")
        ))
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let line = "a".repeat(50 << 20);
    // The reader may stop early: a write error here is expected.
    let _ = stdin.write_all(line.as_bytes());
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    expect_exit(&o, 1, "longer than");
}

/// Row 10: far more threads than cores are capped with a warning, and generation runs.
#[test]
fn row10_threads_beyond_the_cores_are_capped() {
    let m = synth_model();
    let o = ember(&[
        "generate",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "abc",
        "-n",
        "3",
        "--threads",
        "1000",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--threads 1000 exceeds"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 3);
}

/// Rows 11 and 12: more requests than the engine holds at once all run; a malformed line gets
/// an error line of its own and every other line is processed; the exit status is 1.
#[test]
fn row11_12_batch_streams_and_reports_bad_lines() {
    let m = synth_model();
    let (input, output) = (tmp("row11.jsonl"), tmp("row11.out.jsonl"));
    let mut text: Vec<u8> = b"\xef\xbb\xbf".to_vec(); // a BOM before the first line
    for i in 0..300 {
        text.extend(format!("{{\"id\": {i}, \"prompt\": \"p{i}\", \"max_tokens\": 1}}\n").bytes());
    }
    let bad: [(&[u8], &str); 8] = [
        (b"not json", "bad JSON"),
        (b"{\"prompt\": 5}", "prompt must be a string"),
        (b"{\"max_tokens\": 5}", "\"prompt\" (a string) is required"),
        (
            b"{\"prompt\": \"x\", \"temprature\": 1}",
            "unknown field \"temprature\"",
        ),
        (
            b"{\"prompt\": \"x\", \"ignore_eos\": \"yes\"}",
            "ignore_eos must be true or false",
        ),
        (b"{\"prompt\": \"\xff\"}", "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (&[b'['; 200], "recursion limit"),
    ];
    for (line, _) in bad {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    std::fs::write(&input, text).unwrap();
    let o = run_batch(m.to_str().unwrap(), &input, &output, 2);
    expect_exit(&o, 1, "8 of 308 requests failed");
    let lines = result_lines(&output);
    assert_eq!(lines.len(), 308);
    for i in 0..300 {
        let l = lines.iter().find(|l| l["id"] == i).unwrap();
        assert_eq!(l["ids"].as_array().unwrap().len(), 1, "{l}");
    }
    for (k, (_, want)) in bad.iter().enumerate() {
        let line_no = 301 + k;
        let l = lines.iter().find(|l| l["line"] == line_no).unwrap();
        assert_eq!(l["finish_reason"], "error");
        assert!(l["error"].as_str().unwrap().contains(want), "{l}");
    }
}

/// Row 13: an interrupted batch keeps what finished: result lines are written and flushed as
/// each request finishes.
#[test]
fn row13_interrupted_batch_keeps_finished_results() {
    // The real model: the long requests take tens of seconds, so the interruption lands
    // while they run.
    let (input, output) = (tmp("row13.jsonl"), tmp("row13.out.jsonl"));
    let mut text = String::new();
    for i in 0..64 {
        let n = if i < 4 { 1 } else { 400 };
        text += &format!(
            "{{\"id\": {i}, \"prompt\": \"p\", \"max_tokens\": {n}, \"ignore_eos\": true}}\n"
        );
    }
    std::fs::write(&input, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "batch",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "-t",
            "1",
        ])
        .current_dir(repo())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) for the four one-token requests to be written, then interrupt.
    let mut written = 0;
    for _ in 0..600 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        written = std::fs::read_to_string(&output).map_or(0, |s| s.lines().count());
        if written >= 4 {
            break;
        }
    }
    assert!(
        written >= 4,
        "the finished requests were not written while running"
    );
    // SIGINT, as Ctrl-C would send it.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(2),
        "not interrupted while running: {status:?}"
    );
    let lines = result_lines(&output);
    for i in 0..4 {
        assert!(
            lines.iter().any(|l| l["id"] == i),
            "request {i} lost: {lines:?}"
        );
    }
}

/// Row 14: `convert` refuses a layer count the model does not have, and its own input as
/// output; it writes through a temporary file.
#[test]
fn row14_convert_refuses_bad_layers_and_its_input() {
    let m = synth_model();
    let m = m.to_str().unwrap();
    let out = tmp("row14.gguf");
    for layers in ["0", "1000"] {
        let o = ember(&[
            "convert",
            "-m",
            m,
            "-o",
            out.to_str().unwrap(),
            "--layers",
            layers,
        ]);
        expect_exit(&o, 1, "keep 1..=2");
        assert!(!out.exists());
    }
    let before = std::fs::read(m).unwrap();
    let alias = format!("{}/../{}", tmp("x").parent().unwrap().display(), {
        let p = PathBuf::from(m);
        format!(
            "{}/{}",
            p.parent().unwrap().file_name().unwrap().to_str().unwrap(),
            p.file_name().unwrap().to_str().unwrap()
        )
    });
    for o_path in [m, alias.as_str()] {
        let o = ember(&["convert", "-m", m, "-o", o_path, "--layers", "1"]);
        expect_exit(&o, 2, "is the input model itself");
    }
    assert_eq!(std::fs::read(m).unwrap(), before, "the input was changed");
    let o = ember(&[
        "convert",
        "-m",
        m,
        "-o",
        out.to_str().unwrap(),
        "--layers",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ember(&[
        "generate",
        "-m",
        out.to_str().unwrap(),
        "-p",
        "abc",
        "-n",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Smaller items: an arena budget of 2^64-1 blocks is reported as too large (it used to wrap
/// to "does not hold a single block"); `synth` bounds its shape instead of aborting or looping.
#[test]
fn smaller_items_kv_blocks_and_synth_bounds() {
    let m = synth_model();
    let o = ember(&[
        "generate",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "x",
        "--kv-blocks",
        "18446744073709551615",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("does not hold a single block"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("overflow the address space"),
        "{}",
        stderr(&o)
    );
    let out = tmp("too-big.gguf");
    for args in [["--embd", "1099511627776"], ["--layers", "4294967296"]] {
        let o = ember(&["synth", "-o", out.to_str().unwrap(), args[0], args[1]]);
        expect_exit(&o, 1, "shape too large");
    }
}

/// Inputs without end (`/dev/zero`) as a batch file, a chat template or a perplexity text:
/// each is read up to its bound (README, "Limits") and refused, never read until memory or
/// patience runs out.
#[test]
fn endless_inputs_are_read_only_up_to_their_bound() {
    let m = synth_model();
    let m = m.to_str().unwrap();
    let out = tmp("zero.out.jsonl");
    let o = ember(&[
        "batch",
        "-m",
        m,
        "--input",
        "/dev/zero",
        "--output",
        out.to_str().unwrap(),
        "-t",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines = result_lines(&out);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("longer than"),
        "{}",
        lines[0]
    );
    for (args, want) in [
        (
            vec!["chat", "-m", m, "--chat-template", "/dev/zero", "-p", "hi"],
            "larger than 1048576 bytes",
        ),
        (
            vec!["perplexity", "-m", m, "-f", "/dev/zero"],
            "larger than 268435456 bytes",
        ),
    ] {
        let o = ember(&args);
        expect_exit(&o, 1, want);
    }
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
