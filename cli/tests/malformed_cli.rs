//! The CLI on malformed and non-finite model files: the error printed, exit status 1, never a
//! panic (the files are the library tests', `runtime/tests/support/malformed.rs`).

#[path = "../../runtime/tests/support/malformed.rs"]
mod malformed;
use malformed::*;

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
