//! Malformed and non-finite GGUF files, built with the project's writer (a valid synthetic
//! model, then truncated or corrupted at the byte offsets the writer reports for each section):
//! shared by the library's tests (`malformed_gguf.rs`) and the CLI's (`cli/tests/hostile_input.rs`).
#![allow(dead_code)]

use ember::gguf::writer::{GgufWriter, MetaValue};
use ember::synth::{synth_gguf, SynthSpec};
use ember_kernels::GgmlType;

pub fn valid() -> (Vec<u8>, ember::gguf::writer::GgufLayout) {
    synth_gguf(&SynthSpec::default())
        .unwrap()
        .to_bytes_with_layout()
        .unwrap()
}

pub fn assert_contains(msg: &str, want: &str) {
    assert!(
        msg.contains(want),
        "error {msg:?} does not mention {want:?}"
    );
}

/// One malformed file and what its error must say (every string in `want`, and one of `any`
/// when it is not empty).
pub struct Case {
    pub name: String,
    pub bytes: Vec<u8>,
    pub want: Vec<&'static str>,
    pub any: Vec<&'static str>,
}

pub fn case(name: &str, bytes: Vec<u8>, want: &[&'static str]) -> Case {
    Case {
        name: name.into(),
        bytes,
        want: want.to_vec(),
        any: Vec::new(),
    }
}

pub fn with_spec(edit: impl FnOnce(&mut GgufWriter)) -> Vec<u8> {
    let mut w = synth_gguf(&SynthSpec::default()).unwrap();
    edit(&mut w);
    w.to_bytes().unwrap()
}

/// `bytes` with `v` written as a little-endian u64 at `at`.
pub fn put_u64(bytes: &[u8], at: u64, v: u64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    b
}

pub fn read_u64(bytes: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}

/// The malformed-model table: truncation at every section boundary, bad magic and
/// versions, absurd counts and lengths, out-of-range, misaligned and overlapping offsets,
/// dimensions whose product overflows, shapes inconsistent with the metadata, missing keys and
/// tensors, unknown and unsupported types, bad metadata values.
pub fn table() -> Vec<Case> {
    let (bytes, layout) = valid();
    let mut cases = Vec::new();
    for cut in layout.boundaries().into_iter().flat_map(|b| [b, b + 3]) {
        if cut < bytes.len() as u64 {
            cases.push(Case {
                name: format!("truncated at {cut}"),
                bytes: bytes[..cut as usize].to_vec(),
                want: Vec::new(),
                any: vec!["truncated", "past the end", "cannot fit"],
            });
        }
    }
    cases.push(case("empty", Vec::new(), &["truncated"]));
    let mut b = bytes.clone();
    b[0..4].copy_from_slice(b"GGML");
    cases.push(case("bad magic", b, &["not a GGUF file"]));
    let mut b = bytes.clone();
    b[4..8].copy_from_slice(&7u32.to_le_bytes());
    cases.push(case("version 7", b, &["GGUF version 7 is not supported"]));
    let mut b = bytes.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    cases.push(case("big-endian", b, &["big-endian"]));
    cases.push(case(
        "huge tensor count",
        put_u64(&bytes, 8, u64::MAX),
        &["tensor count"],
    ));
    cases.push(case(
        "huge metadata count",
        put_u64(&bytes, 16, 1 << 60),
        &["metadata count"],
    ));
    cases.push(case(
        "huge key length",
        put_u64(&bytes, layout.kvs[0].start, u64::MAX / 2),
        &["exceeds the limit"],
    ));
    let tokens = layout
        .kvs
        .iter()
        .find(|k| k.key == "tokenizer.ggml.tokens")
        .unwrap();
    cases.push(case(
        "huge array count",
        put_u64(&bytes, tokens.value_type_at + 8, 1 << 50),
        &["cannot fit"],
    ));
    // blk.0.attn_q.weight moved out of range, off the alignment, and onto the previous
    // tensor's data.
    let qi = layout
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    assert!(qi > 0);
    let t = &layout.tensors[qi];
    cases.push(case(
        "offset past the end",
        put_u64(&bytes, t.offset_at, 1 << 40),
        &["blk.0.attn_q.weight", "past the end"],
    ));
    cases.push(case(
        "misaligned offset",
        put_u64(&bytes, t.offset_at, read_u64(&bytes, t.offset_at) + 4),
        &["not aligned"],
    ));
    let prev_off = read_u64(&bytes, layout.tensors[qi - 1].offset_at);
    cases.push(case(
        "overlapping tensors",
        put_u64(&bytes, t.offset_at, prev_off),
        &["overlap"],
    ));
    // A 2-D tensor's dims sit just before its type field: ne[0] at type_at - 16.
    let b = put_u64(&bytes, t.type_at - 16, 1 << 40);
    cases.push(case(
        "dims whose product overflows",
        put_u64(&b, t.type_at - 8, 1 << 40),
        &["blk.0.attn_q.weight", "overflows"],
    ));
    cases.push(case(
        "a zero dimension",
        put_u64(&bytes, t.type_at - 8, 0),
        &["blk.0.attn_q.weight"],
    ));
    let mut b = bytes.clone();
    let ty = t.type_at as usize;
    b[ty..ty + 4].copy_from_slice(&1234u32.to_le_bytes());
    cases.push(case(
        "unknown type id",
        b,
        &["unknown ggml type id 1234", "blk.0.attn_q.weight"],
    ));
    let iq = GgmlType::IQ4_NL;
    cases.push(case(
        "unsupported type",
        with_spec(|w| {
            w.replace_tensor(
                "blk.0.attn_q.weight",
                iq,
                &[64, 64],
                vec![0; iq.row_bytes(64).unwrap() as usize * 64],
            );
        }),
        &["blk.0.attn_q.weight: type IQ4_NL is not supported (supported: F32"],
    ));
    let mut w = GgufWriter::new();
    w.kv("general.architecture", MetaValue::Str("mamba".into()));
    cases.push(case(
        "unsupported architecture",
        w.to_bytes().unwrap(),
        &["architecture \"mamba\" is not supported"],
    ));
    for key in [
        "general.architecture",
        "llama.embedding_length",
        "llama.block_count",
        "llama.attention.head_count",
        "llama.feed_forward_length",
        "tokenizer.ggml.tokens",
    ] {
        cases.push(case(
            &format!("missing {key}"),
            with_spec(|w| {
                w.remove_kv(key);
            }),
            &[key],
        ));
    }
    cases.push(case(
        "block count out of range",
        with_spec(|w| {
            w.remove_kv("llama.block_count")
                .kv("llama.block_count", MetaValue::U32(0));
        }),
        &["llama.block_count", "out of range"],
    ));
    cases.push(case(
        "key of the wrong type",
        with_spec(|w| {
            w.remove_kv("llama.embedding_length")
                .kv("llama.embedding_length", MetaValue::Str("64".into()));
        }),
        &["llama.embedding_length"],
    ));
    cases.push(case(
        "missing tensor",
        with_spec(|w| {
            w.remove_tensor("blk.1.ffn_down.weight");
        }),
        &["tensor blk.1.ffn_down.weight is missing"],
    ));
    cases.push(case(
        "shape inconsistent with the metadata",
        with_spec(|w| {
            w.replace_tensor(
                "blk.0.attn_k.weight",
                GgmlType::F32,
                &[64, 16],
                vec![0; 64 * 16 * 4],
            );
        }),
        &["blk.0.attn_k.weight", "does not match the metadata"],
    ));
    cases.push(case(
        "embedding rows inconsistent with the vocabulary",
        with_spec(|w| {
            w.replace_tensor(
                "token_embd.weight",
                GgmlType::F32,
                &[64, 300],
                vec![0; 64 * 300 * 4],
            );
        }),
        &["token_embd.weight: 300 rows", "has 272 tokens"],
    ));
    cases
}

pub fn check_message(c: &Case, msg: &str) {
    for w in &c.want {
        assert!(
            msg.contains(w),
            "{}: error {msg:?} does not mention {w:?}",
            c.name
        );
    }
    assert!(
        c.any.is_empty() || c.any.iter().any(|w| msg.contains(w)),
        "{}: error {msg:?} mentions none of {:?}",
        c.name,
        c.any
    );
}

/// A NaN in the output norm's weights (element 5): a load error.
pub fn nan_norm_file() -> Vec<u8> {
    with_spec(|w| {
        let mut v: Vec<u8> = Vec::new();
        for i in 0..64 {
            let x = if i == 5 { f32::NAN } else { 1.0f32 };
            v.extend_from_slice(&x.to_le_bytes());
        }
        w.replace_tensor("output_norm.weight", GgmlType::F32, &[64], v);
    })
}

/// An infinite f16 scale in a quantized block (Q8_0: the scale is the block's first 2 bytes),
/// row 3 of blk.1.attn_q.weight: the file loads; `check_tensors` finds it.
pub fn inf_scale_file() -> Vec<u8> {
    with_spec(|w| {
        let q8 = GgmlType::Q8_0;
        let row = q8.row_bytes(64).unwrap() as usize;
        let mut v = vec![0u8; row * 64];
        v[row * 3 + 34..row * 3 + 36].copy_from_slice(&0x7c00u16.to_le_bytes()); // +inf
        w.replace_tensor("blk.1.attn_q.weight", q8, &[64, 64], v);
    })
}

/// An f32 output projection with a NaN in row 7 (only logit 7 is NaN, which a sampler skipping
/// NaN would hide): generation must fail, not sample.
pub fn nan_output_file() -> Vec<u8> {
    let mut w = synth_gguf(&SynthSpec {
        separate_output: true,
        ..SynthSpec::default()
    })
    .unwrap();
    let mut out = vec![0u8; 64 * 272 * 4];
    for (i, x) in out.chunks_exact_mut(4).enumerate() {
        let v = if i / 64 == 7 {
            f32::NAN
        } else {
            ((i % 13) as f32 - 6.0) * 0.01
        };
        x.copy_from_slice(&v.to_le_bytes());
    }
    w.replace_tensor("output.weight", GgmlType::F32, &[64, 272], out);
    w.to_bytes().unwrap()
}
