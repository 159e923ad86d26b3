//! Tests of the GGUF writer: what it writes reads back, and llama.cpp's `gguf` package agrees.

use super::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Bytes 0, 1, 2, ... of length `n`: recognizable and different per tensor via `seed`.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn every_value_type() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.alignment(64)
        .kv("general.architecture", MetaValue::Str("llama".into()))
        .kv("t.u8", MetaValue::U8(200))
        .kv("t.i8", MetaValue::I8(-100))
        .kv("t.u16", MetaValue::U16(60_000))
        .kv("t.i16", MetaValue::I16(-30_000))
        .kv("t.u32", MetaValue::U32(4_000_000_000))
        .kv("t.i32", MetaValue::I32(-2_000_000_000))
        .kv("t.f32", MetaValue::F32(0.1))
        .kv("t.bool", MetaValue::Bool(true))
        .kv("t.str", MetaValue::Str("héllo, 世界".into()))
        .kv("t.u64", MetaValue::U64(u64::MAX))
        .kv("t.i64", MetaValue::I64(i64::MIN))
        .kv("t.f64", MetaValue::F64(-2.5e300))
        .kv("a.u8", MetaValue::Array(MetaArray::U8(vec![1, 2, 255])))
        .kv("a.i8", MetaValue::Array(MetaArray::I8(vec![-1, 0, 127])))
        .kv("a.u16", MetaValue::Array(MetaArray::U16(vec![65535])))
        .kv("a.i16", MetaValue::Array(MetaArray::I16(vec![-2, 2])))
        .kv("a.u32", MetaValue::Array(MetaArray::U32(vec![7, 8, 9])))
        .kv("a.i32", MetaValue::Array(MetaArray::I32(vec![-7, 0, 7])))
        .kv("a.f32", MetaValue::Array(MetaArray::F32(vec![1.5, -0.25])))
        .kv(
            "a.bool",
            MetaValue::Array(MetaArray::Bool(vec![true, false])),
        )
        .kv(
            "a.str",
            MetaValue::Array(MetaArray::Str(vec!["a".into(), "".into(), "ünï".into()])),
        )
        .kv("a.u64", MetaValue::Array(MetaArray::U64(vec![1 << 40])))
        .kv("a.i64", MetaValue::Array(MetaArray::I64(vec![-(1 << 40)])))
        .kv(
            "a.f64",
            MetaValue::Array(MetaArray::F64(vec![0.125, 1e-300])),
        )
        .kv("a.empty", MetaValue::Array(MetaArray::I32(vec![])))
        .kv(
            "a.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U32(vec![1, 2]),
                MetaArray::U32(vec![3]),
            ])),
        )
        .tensor(
            "f32",
            GgmlType::F32,
            &[3, 2],
            [1.0f32, 2.0, 3.0, -4.0, 5.5, 6.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .tensor(
            "f16",
            GgmlType::F16,
            &[5],
            f16_bytes(&[0.5, 1.0, -2.0, 3.0, 4.0]),
        )
        .tensor("q4_0", GgmlType::Q4_0, &[64, 1], pattern(36, 1))
        .tensor("q8_0", GgmlType::Q8_0, &[32, 3], pattern(102, 2))
        .tensor("q4_k", GgmlType::Q4_K, &[256], pattern(144, 3))
        .tensor("q6_k", GgmlType::Q6_K, &[256, 1, 2], pattern(420, 4));
    w
}

/// A file written one deferred tensor at a time is the file `to_bytes` builds; a `fill` that
/// fails or produces the wrong length leaves no file (and no temporary one) behind.
#[test]
fn streaming_writes_the_same_file() {
    let full = every_value_type();
    let want = full.to_bytes().unwrap();
    let mut w = full.clone();
    let datas: Vec<Vec<u8>> = full
        .tensors
        .iter()
        .map(|t| t.data.clone().unwrap())
        .collect();
    // Every other tensor deferred (the rest keep their data), in place.
    for t in w.tensors.iter_mut().step_by(2) {
        t.data = None;
    }
    assert!(w.to_bytes().unwrap_err().contains("deferred"));
    let dir = std::env::temp_dir().join(format!("ember-writer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("streamed.gguf");
    let mut filled = Vec::new();
    w.write_streaming(&path, |i, buf| {
        filled.push(i);
        buf.extend_from_slice(&datas[i]);
        Ok(())
    })
    .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), want);
    assert_eq!(filled, [0, 2, 4]);
    let bad = dir.join("bad.gguf");
    let short = w.write_streaming(&bad, |i, buf| {
        buf.extend_from_slice(&datas[i][1..]);
        Ok(())
    });
    assert_eq!(short.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    let failed = w.write_streaming(&bad, |_, _| Err("no data".into()));
    assert!(failed.unwrap_err().to_string().contains("no data"));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("streamed.gguf")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layout_is_aligned_and_consistent() {
    let w = every_value_type();
    let (bytes, layout) = w.to_bytes_with_layout().unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 6);
    // 27 explicit kvs plus the automatic general.alignment, written last.
    assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 28);
    assert_eq!(layout.kvs.len(), 28);
    assert_eq!(layout.kvs[0].start, HEADER_LEN);
    assert_eq!(layout.kvs[27].key, ALIGNMENT_KEY);
    assert_eq!(layout.len, bytes.len() as u64);
    assert_eq!(layout.data_start % 64, 0);
    for t in &layout.tensors {
        assert_eq!(t.data_start % 64, 0, "{}", t.name);
        let at = t.offset_at as usize;
        let rel = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        assert_eq!(layout.data_start + rel, t.data_start);
    }
    let b = layout.boundaries();
    assert!(b.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(b.last(), Some(&(bytes.len() as u64)));
}

#[test]
fn default_alignment_writes_no_alignment_key_and_user_key_wins() {
    let mut w = GgufWriter::new();
    w.kv("k", MetaValue::U8(1));
    let (_, layout) = w.to_bytes_with_layout().unwrap();
    assert_eq!(layout.kvs.len(), 1);
    // A test may declare a bogus alignment while the layout uses a valid one.
    let mut w = GgufWriter::new();
    w.alignment(64)
        .kv(ALIGNMENT_KEY, MetaValue::Str("64".into()));
    let (bytes, layout) = w.to_bytes_with_layout().unwrap();
    assert_eq!(layout.kvs.len(), 1);
    let at = layout.kvs[0].value_type_at as usize;
    assert_eq!(bytes[at], 8, "written as the string the test asked for");
}

#[test]
fn build_errors_name_the_problem() {
    let mut w = GgufWriter::new();
    w.tensor("w", GgmlType::F32, &[3, 2], vec![0; 20]);
    let e = w.to_bytes().unwrap_err();
    assert!(e.contains("tensor w") && e.contains("24"), "{e}");
    let mut w = GgufWriter::new();
    w.tensor("q", GgmlType::Q4_0, &[33], vec![0; 18]);
    assert!(w.to_bytes().unwrap_err().contains("block size 32"));
    let mut w = GgufWriter::new();
    w.tensor("big", GgmlType::F32, &[u64::MAX, 2], vec![]);
    assert!(w.to_bytes().unwrap_err().contains("overflows"));
    let mut w = GgufWriter::new();
    w.alignment(48);
    assert!(w.to_bytes().unwrap_err().contains("power of two"));
    let bad = std::env::temp_dir().join("ember-unwritten.gguf");
    let e = w.write_to(&bad).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn version_is_written_as_given() {
    for v in [2, 3, 0xdead] {
        let mut w = GgufWriter::new();
        w.version(v);
        let bytes = w.to_bytes().unwrap();
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), v);
        assert_eq!(bytes.len() as u64, HEADER_LEN.next_multiple_of(32));
    }
}

/// The repository root: the runtime crate's parent.
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python_has_gguf() -> bool {
    Command::new("python3")
        .args(["-c", "import gguf"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What `tests/tools/check_gguf.py` must print for [`every_value_type`]'s file.
fn expected_summary(layout: &GgufLayout) -> Value {
    let tensors: Vec<Value> = [
        ("f32", 0, json!([3, 2]), 24),
        ("f16", 1, json!([5]), 10),
        ("q4_0", 2, json!([64, 1]), 36),
        ("q8_0", 8, json!([32, 3]), 102),
        ("q4_k", 12, json!([256]), 144),
        ("q6_k", 14, json!([256, 1, 2]), 420),
    ]
    .into_iter()
    .zip(&layout.tensors)
    .map(|((name, ty, shape, n_bytes), t)| {
        json!({
            "name": name, "type": ty, "shape": shape, "n_bytes": n_bytes,
            "data_offset": t.data_start,
        })
    })
    .collect();
    json!({
        "version": 3,
        "tensor_count": 6,
        "kv_count": 28,
        "alignment": 64,
        "data_offset": layout.data_start,
        "kvs": {
            "general.architecture": {"types": [8], "value": "llama"},
            "t.u8": {"types": [0], "value": 200},
            "t.i8": {"types": [1], "value": -100},
            "t.u16": {"types": [2], "value": 60000},
            "t.i16": {"types": [3], "value": -30000},
            "t.u32": {"types": [4], "value": 4_000_000_000u32},
            "t.i32": {"types": [5], "value": -2_000_000_000},
            "t.f32": {"types": [6], "value": 0.1f32 as f64},
            "t.bool": {"types": [7], "value": true},
            "t.str": {"types": [8], "value": "héllo, 世界"},
            "t.u64": {"types": [10], "value": u64::MAX},
            "t.i64": {"types": [11], "value": i64::MIN},
            "t.f64": {"types": [12], "value": -2.5e300},
            "a.u8": {"types": [9, 0], "value": [1, 2, 255]},
            "a.i8": {"types": [9, 1], "value": [-1, 0, 127]},
            "a.u16": {"types": [9, 2], "value": [65535]},
            "a.i16": {"types": [9, 3], "value": [-2, 2]},
            "a.u32": {"types": [9, 4], "value": [7, 8, 9]},
            "a.i32": {"types": [9, 5], "value": [-7, 0, 7]},
            "a.f32": {"types": [9, 6], "value": [1.5, -0.25]},
            "a.bool": {"types": [9, 7], "value": [true, false]},
            "a.str": {"types": [9, 8], "value": ["a", "", "ünï"]},
            "a.u64": {"types": [9, 10], "value": [1u64 << 40]},
            "a.i64": {"types": [9, 11], "value": [-(1i64 << 40)]},
            "a.f64": {"types": [9, 12], "value": [0.125, 1e-300]},
            // gguf-py records only the array type for an empty array.
            "a.empty": {"types": [9], "value": []},
            // gguf-py flattens nested arrays.
            "a.nested": {"types": [9, 9, 4], "value": [1, 2, 3]},
            "general.alignment": {"types": [4], "value": 64},
        },
        "tensors": tensors,
    })
}

/// Writes a file with every value type, nested and empty arrays, alignment 64 and six tensor
/// types, and has gguf-py's `GGUFReader` (an independent implementation) read it back.
#[test]
fn python_gguf_reader_agrees() {
    if !python_has_gguf() {
        eprintln!(
            "\n*** skipped: python gguf not installed (pip install gguf) - the GGUF writer was \
             NOT checked against gguf-py ***\n"
        );
        return;
    }
    let w = every_value_type();
    let (bytes, layout) = w.to_bytes_with_layout().unwrap();
    let path = std::env::temp_dir().join(format!(
        "ember-writer-{}-{:?}.gguf",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::write(&path, &bytes).unwrap();
    let script = repo_root().join("tests/tools/check_gguf.py");
    let out = Command::new("python3").arg(&script).arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Tensor data is compared byte for byte, then dropped from the summary.
    for (t, want) in got["tensors"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(&w.tensors)
    {
        let hex: String = want
            .data
            .iter()
            .flatten()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(t["data"], json!(hex), "tensor {}", want.name);
        t.as_object_mut().unwrap().remove("data");
    }
    let want = expected_summary(&layout);
    assert_eq!(
        got,
        want,
        "gguf-py read:\n{}\nexpected:\n{}",
        serde_json::to_string_pretty(&got).unwrap_or_default(),
        serde_json::to_string_pretty(&want).unwrap_or_default()
    );
}
