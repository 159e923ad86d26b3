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

/// A path for `name` in this test process's scratch folder, `target/tmp/ember-cli-<pid>`.
///
/// The tests write models and inputs of up to 50 MB there. A test binary cannot clean up when
/// it exits, so the first call removes the folders of earlier runs whose process is gone (on
/// Linux, where `/proc` says so): a developer's disk does not fill up run after run.
pub fn tmp(name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix("ember-cli-"));
                let gone = pid.is_some_and(|p| {
                    std::path::Path::new("/proc/self").exists()
                        && !std::path::Path::new("/proc").join(p).exists()
                });
                if gone {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(format!("ember-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
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
