//! `ember convert` writes the files llama-quantize writes: for the real models (SmolLM2 Q4_1 and
//! Gemma 3 Q4_K_M, requantized), every k-quant mix and a uniform k-quant must give a file whose
//! sha256 is the one recorded from llama-quantize (`tests/golden/quantize.json`, made by
//! `scripts/golden/kquant-golden.sh`). Equal whole files mean equal tensor types (the mix
//! rules and the fallbacks for rows that are not a multiple of 256), equal quantized bytes
//! (the k-quant searches, float for float), equal metadata and equal tensor order.
//!
//! On a mismatch, `scripts/golden/gguf-tensor-hashes.py` on both files names the tensors that
//! differ.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ember::convert::{convert, ConvertOptions, KMix, Quantization};
use ember::gguf::GgufFile;
use ember::model::Model;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("hex")[..64].to_string()
}

fn quantization(name: &str) -> Quantization {
    KMix::ALL
        .into_iter()
        .find(|m| m.name() == name)
        .map(Quantization::Mix)
        .or_else(|| {
            ember_kernels::SUPPORTED
                .iter()
                .find(|t| t.name() == name)
                .map(|&t| Quantization::Uniform(t))
        })
        .unwrap_or_else(|| panic!("unknown quantization {name} in quantize.json"))
}

fn check_model(key: &str, file: &str) {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/golden/quantize.json")).expect("golden"),
    )
    .expect("golden JSON");
    let path = repo().join("models").join(file);
    assert!(
        path.exists(),
        "{} missing: run scripts/fetch-model.sh",
        path.display()
    );
    let f = GgufFile::open(&path).expect("open model");
    let cases = golden[key].as_object().expect("cases");
    assert!(!cases.is_empty());
    for (name, want) in cases {
        let q = quantization(name);
        let opts = ConvertOptions {
            quantization: Some(q),
            keep_layers: None,
        };
        let bytes = convert(&f, &opts)
            .expect("convert")
            .to_bytes()
            .expect("bytes");
        assert_eq!(
            bytes.len() as u64,
            want["bytes"].as_u64().unwrap(),
            "{key} {name}: size differs from llama-quantize's"
        );
        assert_eq!(
            sha256(&bytes),
            want["sha256"].as_str().unwrap(),
            "{key} {name}: the file differs from llama-quantize's \
             (scripts/golden/gguf-tensor-hashes.py names the tensors)"
        );
        // And it is a model Ember runs.
        let m = Model::from_gguf(GgufFile::from_bytes(bytes).expect("parse")).expect("load");
        assert!(!m.weights.layers.is_empty());
    }
}

#[test]
fn smollm2_kquants_equal_llama_quantize() {
    check_model("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_kquants_equal_llama_quantize() {
    check_model("gemma3", "gemma-3-270m-q4_k_m.gguf");
}
