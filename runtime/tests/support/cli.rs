//! Running the `ember` binary from tests (cli.rs, cli_structured.rs).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run ember")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `o` exited with `code` and its stderr says `want` (and nothing panicked).
#[track_caller]
pub fn expect_exit(o: &Output, code: i32, want: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(want), "stderr lacks {want:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn run_batch(
    model: &str,
    input: &std::path::Path,
    output: &std::path::Path,
    threads: u32,
) -> Output {
    run_batch_with(model, input, output, threads, &[])
}

/// `ember batch` with `extra` options after the usual ones.
pub fn run_batch_with(
    model: &str,
    input: &std::path::Path,
    output: &std::path::Path,
    threads: u32,
    extra: &[&str],
) -> Output {
    let t = threads.to_string();
    let args = [
        "batch",
        "-m",
        model,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "-t",
        &t,
    ];
    ember(&[&args[..], extra].concat())
}

pub fn result_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A small synthetic model shared by a test file's tests (written once per test process).
pub fn synth_model() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let p = tmp("hostile-synth.gguf");
        let o = ember(&["synth", "-o", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        p
    })
    .clone()
}
