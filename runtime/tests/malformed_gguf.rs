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
        Ok(f) => Model::from_gguf(f)
            .and_then(|m| ember::gguf::tokenizer_from_gguf(&m.file))
            .map(|_| ()),
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

/// One malformed file and what its error must say (every string in `want`, and one of `any`
/// when it is not empty).
struct Case {
    name: String,
    bytes: Vec<u8>,
    want: Vec<&'static str>,
    any: Vec<&'static str>,
}

fn case(name: &str, bytes: Vec<u8>, want: &[&'static str]) -> Case {
    Case {
        name: name.into(),
        bytes,
        want: want.to_vec(),
        any: Vec::new(),
    }
}

fn with_spec(edit: impl FnOnce(&mut GgufWriter)) -> Vec<u8> {
    let mut w = synth_gguf(&SynthSpec::default()).unwrap();
    edit(&mut w);
    w.to_bytes().unwrap()
}

/// `bytes` with `v` written as a little-endian u64 at `at`.
fn put_u64(bytes: &[u8], at: u64, v: u64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    b
}

fn read_u64(bytes: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}

/// The malformed-model table: truncation at every section boundary, bad magic and
/// versions, absurd counts and lengths, out-of-range, misaligned and overlapping offsets,
/// dimensions whose product overflows, shapes inconsistent with the metadata, missing keys and
/// tensors, unknown and unsupported types, bad metadata values.
fn table() -> Vec<Case> {
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

fn check_message(c: &Case, msg: &str) {
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

#[test]
fn every_malformed_file_is_a_specific_error() {
    let cases = table();
    assert!(cases.len() > 40, "{} cases", cases.len());
    for c in &cases {
        let r = std::panic::catch_unwind(|| load_err(c.bytes.clone()));
        let msg = r.unwrap_or_else(|_| panic!("{}: loaded, or panicked", c.name));
        check_message(c, &msg);
    }
}

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

/// NaN and infinite weights (documented behaviour): the file loads (loading reads no weight
/// data); `Model::check_tensors` / `ember info --check-tensors` name the tensor and position;
/// generation whose logits come out NaN ends with an error instead of sampling junk — from a
/// session `Error::NonFinite`, in the engine the request finishes with `FinishReason::Error`
/// and its blocks come back.
#[test]
fn nan_and_inf_weights_are_reported_not_sampled() {
    use ember::engine::{Engine, EngineConfig, RequestParams};
    use ember::session::{FinishReason, GenerateParams, KvBudget, Session, SessionConfig};

    let nan_norm = with_spec(|w| {
        let mut v: Vec<u8> = Vec::new();
        for i in 0..64 {
            let x = if i == 5 { f32::NAN } else { 1.0f32 };
            v.extend_from_slice(&x.to_le_bytes());
        }
        w.replace_tensor("output_norm.weight", GgmlType::F32, &[64], v);
    });
    // 1-D tensors (norms, biases, RoPE factors) are read at load: a NaN norm weight would
    // otherwise reach the logits through quantized activations, where it becomes 0, and give
    // fluent garbage instead of an error.
    let e = Model::from_gguf(GgufFile::from_bytes(nan_norm.clone()).unwrap()).unwrap_err();
    assert!(matches!(e, Error::NonFinite(_)), "{e:?}");
    assert_contains(
        &e.to_string(),
        "tensor output_norm.weight holds NaN at element 5",
    );

    // An infinite f16 scale in a quantized block (Q8_0: the scale is the block's first 2 bytes).
    let inf_scale = with_spec(|w| {
        let q8 = GgmlType::Q8_0;
        let row = q8.row_bytes(64).unwrap() as usize;
        let mut v = vec![0u8; row * 64];
        v[row * 3 + 34..row * 3 + 36].copy_from_slice(&0x7c00u16.to_le_bytes()); // +inf
        w.replace_tensor("blk.1.attn_q.weight", q8, &[64, 64], v);
    });
    let m = Model::from_gguf(GgufFile::from_bytes(inf_scale.clone()).unwrap()).unwrap();
    let msg = m.check_tensors().unwrap_err().to_string();
    assert_contains(&msg, "tensor blk.1.attn_q.weight holds");
    assert_contains(&msg, "at row 3, column 32");

    // The same through the CLI: `ember info` loads the file; `--check-tensors` fails on it.
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

    // The valid synthetic model passes the check.
    let (bytes, _) = valid();
    Model::from_gguf(GgufFile::from_bytes(bytes).unwrap())
        .unwrap()
        .check_tensors()
        .unwrap();

    // Generation with NaN logits (a NaN in row 7 of an f32 output projection: only logit 7 is
    // NaN, which a sampler skipping NaN would hide): a session says so...
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
    let nan_output = w.to_bytes().unwrap();
    let model = || Model::from_gguf(GgufFile::from_bytes(nan_output.clone()).unwrap()).unwrap();
    let cfg = SessionConfig {
        n_ctx: 64,
        threads: 1,
        ..SessionConfig::default()
    };
    let mut s = Session::new(model(), &cfg).unwrap();
    let e = s
        .generate(
            &[3, 4, 5],
            &GenerateParams {
                max_tokens: 4,
                ..GenerateParams::default()
            },
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite(_)), "{e:?}");
    assert_contains(&e.to_string(), "hold NaN");

    // ...and the engine ends the request (both samples of an n = 2 request) with an error.
    let mut eng = Engine::new(
        model(),
        EngineConfig {
            n_ctx: 64,
            kv_budget: KvBudget::Blocks(16),
            block_size: 4,
            threads: 1,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let id = eng
        .submit(
            &[3, 4, 5],
            &RequestParams {
                n: 2,
                max_tokens: 4,
                ..RequestParams::default()
            },
        )
        .unwrap();
    let mut steps = 0;
    while eng.has_work() {
        eng.step().unwrap();
        steps += 1;
        assert!(steps < 10);
    }
    for out in eng.output(id).unwrap() {
        assert_eq!(out.finish, Some(FinishReason::Error));
        assert!(out.ids.is_empty(), "nothing sampled from NaN logits");
    }
    let m = eng.metrics();
    assert_eq!((m.nan_logit_rows, m.blocks_used), (1, 0));

    // ...and `ember batch` writes that request's result line with `finish_reason` "error" and
    // the cause in `error`, and exits 1 (a request failed).
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

#[test]
fn errors_are_typed() {
    let e = GgufFile::from_bytes(b"GGUF".to_vec()).unwrap_err();
    assert!(matches!(e, Error::Gguf { offset: 4, .. }), "{e:?}");
}

/// Issue 16, row 15: RoPE parameters whose derived values are not finite are load errors
/// (they produced fluent garbage before), and a value of the wrong type is shown as a value.
#[test]
fn non_finite_rope_parameters_are_load_errors() {
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // Head dim 16 (64 / 4 heads): rope_freqs holds 8 factors.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            with_spec(|w| {
                w.kv("llama.rope.scaling.type", MetaValue::Str("linear".into()))
                    .kv("llama.rope.scaling.factor", MetaValue::F32(1e-45));
            }),
            "llama.rope.scaling.factor: 0.000000000000000000000000000000000000000000001 is too small",
        ),
        (
            with_spec(|w| {
                w.tensor("rope_freqs.weight", GgmlType::F32, &[8], f32s(&[0.0; 8]));
            }),
            "tensor rope_freqs.weight: frequency factor 0 is 0",
        ),
        (
            with_spec(|w| {
                let mut v = [1.0f32; 8];
                v[3] = f32::NAN;
                w.tensor("rope_freqs.weight", GgmlType::F32, &[8], f32s(&v));
            }),
            "tensor rope_freqs.weight holds NaN at element 3",
        ),
        (
            with_spec(|w| {
                w.remove_kv("llama.rope.freq_base")
                    .kv("llama.rope.freq_base", MetaValue::Str("10000".into()));
            }),
            "llama.rope.freq_base: expected a number, found the string \"10000\"",
        ),
    ];
    for (bytes, want) in cases {
        assert_contains(&load_err(bytes), want);
    }
    // A finite scale whose angles overflow far into the context: refused when the RoPE
    // tables are built, never rotated by NaN.
    let bytes = with_spec(|w| {
        w.kv("llama.rope.scaling.type", MetaValue::Str("linear".into()))
            .kv("llama.rope.scaling.factor", MetaValue::F32(1e-37));
    });
    let m = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    let e = ember::session::Session::new(
        m,
        &ember::session::SessionConfig {
            n_ctx: 256,
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_contains(&e.to_string(), "RoPE angle of position");
}
