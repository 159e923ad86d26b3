//! Malformed GGUF files give errors that say what is wrong, never panics.
//!
//! Files are built with the project's writer (a valid synthetic model), then truncated or
//! corrupted at the byte offsets the writer reports for each section.

use ember::gguf::writer::{GgufWriter, MetaValue};
use ember::gguf::GgufFile;
use ember::model::Model;
use ember::synth::{synth_gguf, SynthSpec};
use ember::Error;
use ember_kernels::GgmlType;

fn valid() -> (Vec<u8>, ember::gguf::writer::GgufLayout) {
    synth_gguf(&SynthSpec::default())
        .unwrap()
        .to_bytes_with_layout()
        .unwrap()
}

/// Parse `bytes` and, if that succeeds, build a model from them; return the error message.
fn load_err(bytes: Vec<u8>) -> String {
    let r = std::panic::catch_unwind(|| match GgufFile::from_bytes(bytes) {
        Err(e) => Err(e),
        Ok(f) => Model::from_gguf(f).map(|_| ()),
    });
    match r {
        Err(_) => panic!("loading panicked"),
        Ok(Ok(())) => panic!("malformed file loaded without error"),
        Ok(Err(e)) => e.to_string(),
    }
}

fn assert_contains(msg: &str, want: &str) {
    assert!(
        msg.contains(want),
        "error {msg:?} does not mention {want:?}"
    );
}

#[test]
fn the_valid_file_loads() {
    let (bytes, _) = valid();
    let m = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    assert_eq!(m.config.n_layer, 2);
}

#[test]
fn truncation_at_every_section_boundary_is_an_error() {
    let (bytes, layout) = valid();
    let mut cuts: Vec<u64> = layout.boundaries();
    // And a few bytes into each section.
    cuts.extend(layout.boundaries().iter().map(|b| b + 3));
    for cut in cuts {
        if cut >= bytes.len() as u64 {
            continue;
        }
        let msg = load_err(bytes[..cut as usize].to_vec());
        assert!(
            msg.contains("truncated") || msg.contains("past the end") || msg.contains("cannot fit"),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn empty_file_and_bad_magic() {
    assert_contains(&load_err(Vec::new()), "truncated");
    let (mut bytes, _) = valid();
    bytes[0..4].copy_from_slice(b"GGML");
    assert_contains(&load_err(bytes), "not a GGUF file");
}

#[test]
fn unsupported_and_big_endian_versions() {
    let (mut bytes, _) = valid();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert_contains(&load_err(bytes.clone()), "GGUF version 7 is not supported");
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert_contains(&load_err(bytes), "big-endian");
}

#[test]
fn huge_counts_fail_before_allocating() {
    let (bytes, _) = valid();
    let mut b = bytes.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_contains(&load_err(b), "tensor count");
    let mut b = bytes;
    b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert_contains(&load_err(b), "metadata count");
}

#[test]
fn huge_string_and_array_lengths() {
    let (bytes, layout) = valid();
    // The first key's length prefix.
    let at = layout.kvs[0].start as usize;
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert_contains(&load_err(b), "exceeds the limit");
    // An array count: tokenizer.ggml.tokens is an array of strings; its count follows the
    // element type, 4 bytes after the value type.
    let kv = layout
        .kvs
        .iter()
        .find(|k| k.key == "tokenizer.ggml.tokens")
        .unwrap();
    let count_at = kv.value_type_at as usize + 8;
    let mut b = bytes;
    b[count_at..count_at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_contains(&load_err(b), "cannot fit");
}

#[test]
fn out_of_bounds_and_misaligned_offsets() {
    let (bytes, layout) = valid();
    let t = &layout.tensors[3];
    let at = t.offset_at as usize;
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let msg = load_err(b);
    assert_contains(&msg, &t.name);
    assert_contains(&msg, "past the end");
    let mut b = bytes.clone();
    let off = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    b[at..at + 8].copy_from_slice(&(off + 4).to_le_bytes());
    assert_contains(&load_err(b), "not aligned");
    // Overlap: point tensor 3 at tensor 2's data.
    let mut b = bytes;
    let prev = layout.tensors[2].offset_at as usize;
    let prev_off: [u8; 8] = b[prev..prev + 8].try_into().unwrap();
    b[at..at + 8].copy_from_slice(&prev_off);
    assert_contains(&load_err(b), "overlap");
}

#[test]
fn unknown_and_unsupported_tensor_types() {
    let (bytes, layout) = valid();
    let t = &layout.tensors[2];
    let mut b = bytes;
    b[t.type_at as usize..t.type_at as usize + 4].copy_from_slice(&1234u32.to_le_bytes());
    let msg = load_err(b);
    assert_contains(&msg, "unknown ggml type id 1234");
    assert_contains(&msg, &t.name);

    // A well-formed file whose projection is IQ4_NL, which Ember does not compute with.
    let mut w = synth_gguf(&SynthSpec::default()).unwrap();
    let q5 = GgmlType::IQ4_NL;
    w.replace_tensor(
        "blk.0.attn_q.weight",
        q5,
        &[64, 64],
        vec![0; q5.row_bytes(64).unwrap() as usize * 64],
    );
    let msg = load_err(w.to_bytes().unwrap());
    assert_contains(
        &msg,
        "blk.0.attn_q.weight: type IQ4_NL is not supported (supported: F32",
    );
}

#[test]
fn missing_keys_and_tensors_and_bad_shapes() {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", MetaValue::Str("mamba".into()));
    assert_contains(
        &load_err(w.to_bytes().unwrap()),
        "architecture \"mamba\" is not supported",
    );

    let mut w = GgufWriter::new();
    w.kv("general.architecture", MetaValue::Str("llama".into()));
    assert_contains(
        &load_err(w.to_bytes().unwrap()),
        "llama.embedding_length is missing",
    );

    let mut w = synth_gguf(&SynthSpec::default()).unwrap();
    w.remove_tensor("blk.1.ffn_down.weight");
    assert_contains(
        &load_err(w.to_bytes().unwrap()),
        "tensor blk.1.ffn_down.weight is missing",
    );

    let mut w = synth_gguf(&SynthSpec::default()).unwrap();
    w.replace_tensor(
        "blk.0.attn_k.weight",
        GgmlType::F32,
        &[64, 16],
        vec![0; 64 * 16 * 4],
    );
    let msg = load_err(w.to_bytes().unwrap());
    assert_contains(&msg, "blk.0.attn_k.weight");
    assert_contains(&msg, "does not match the metadata");
}

#[test]
fn errors_are_typed() {
    let e = GgufFile::from_bytes(b"GGUF".to_vec()).unwrap_err();
    assert!(matches!(e, Error::Gguf { offset: 4, .. }), "{e:?}");
}
