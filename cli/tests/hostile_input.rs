//! Hostile input to the `ember` binary: the rows of the hostile-input issue's table (one test
//! per row, numbered as there: non-UTF-8 arguments, wrapping counts, closed or full stdout, huge
//! contexts and prompts, endless inputs, interrupted batches), and malformed and non-finite model
//! files (the library tests' table, `runtime/tests/support/malformed.rs`): each gets its error
//! printed and a non-zero exit status, never a panic, a hang or lost results.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

#[path = "support/cli.rs"]
mod cli_support;
use cli_support::{ember, expect_exit, repo, result_lines, run_batch, stderr, synth_model, tmp};
#[path = "../../runtime/tests/support/malformed.rs"]
mod malformed;
use malformed::*;

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

// ---- Malformed and non-finite model files ----

/// `ember info` on each file of the table prints the error and exits with status 1 (and
/// never panics: a panic exits with 101).
#[test]
fn ember_info_prints_the_error_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("ember-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, c) in table().iter().enumerate() {
        let path = dir.join(format!("case{i}.gguf"));
        std::fs::write(&path, &c.bytes).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["info", "-m", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: {stderr}", c.name);
        check_message(c, &stderr);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// NaN and infinite weights through the CLI: `ember info` loads a file with an infinite scale
/// and `--check-tensors` fails on it naming the tensor; a NaN norm fails at load.
#[test]
fn info_check_tensors_reports_non_finite_weights() {
    let (inf_scale, nan_norm) = (inf_scale_file(), nan_norm_file());
    let path = std::env::temp_dir().join(format!("ember-nan-{}.gguf", std::process::id()));
    std::fs::write(&path, &inf_scale).unwrap();
    let info = |check: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ember"));
        c.args(["info", "-m", path.to_str().unwrap()]);
        if check {
            c.arg("--check-tensors");
        }
        c.output().unwrap()
    };
    assert!(info(false).status.success());
    let o = info(true);
    assert_eq!(o.status.code(), Some(1));
    assert_contains(
        &String::from_utf8_lossy(&o.stderr),
        "tensor blk.1.attn_q.weight holds",
    );
    // The NaN norm fails at load, with or without --check-tensors.
    std::fs::write(&path, &nan_norm).unwrap();
    let o = info(false);
    assert_eq!(o.status.code(), Some(1));
    assert_contains(
        &String::from_utf8_lossy(&o.stderr),
        "tensor output_norm.weight holds NaN",
    );
    std::fs::remove_file(&path).unwrap();
}

/// A request whose logits come out NaN: `ember batch` writes its result line with
/// `finish_reason` "error" and the cause in `error`, and exits 1 (a request failed).
#[test]
fn batch_reports_nan_logits_as_a_failed_request() {
    let nan_output = nan_output_file();
    let dir = std::env::temp_dir().join(format!("ember-nan-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (model_path, input, output) = (dir.join("m.gguf"), dir.join("in"), dir.join("out"));
    std::fs::write(&model_path, &nan_output).unwrap();
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"prompt\": \"hi\", \"max_tokens\": 4}\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["batch", "-t", "1", "-m", model_path.to_str().unwrap()])
        .args([
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
    assert_eq!(line["id"], "a");
    assert_eq!(line["finish_reason"], "error");
    assert_eq!(line["ids"], serde_json::json!([]));
    assert_contains(line["error"].as_str().unwrap(), "hold NaN");
    std::fs::remove_dir_all(&dir).unwrap();
}
