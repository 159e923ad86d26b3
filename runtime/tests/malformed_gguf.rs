//! Malformed GGUF files give errors that say what is wrong, never panics.
//!
//! Files are built with the project's writer (a valid synthetic model), then truncated or
//! corrupted at the byte offsets the writer reports for each section.

#[path = "support/malformed.rs"]
mod malformed;
use malformed::*;

use ember::gguf::writer::MetaValue;
use ember::gguf::GgufFile;
use ember::model::Model;
use ember::Error;
use ember_kernels::GgmlType;

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

#[test]
fn the_valid_file_loads() {
    let (bytes, _) = valid();
    let m = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    assert_eq!(m.config.n_layer, 2);
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

/// NaN and infinite weights (documented behaviour): the file loads (loading reads no weight
/// data); `Model::check_tensors` / `ember info --check-tensors` name the tensor and position;
/// generation whose logits come out NaN ends with an error instead of sampling junk — from a
/// session `Error::NonFinite`, in the engine the request finishes with `FinishReason::Error`
/// and its blocks come back.
#[test]
fn nan_and_inf_weights_are_reported_not_sampled() {
    use ember::engine::{Engine, EngineConfig, RequestParams};
    use ember::session::{FinishReason, GenerateParams, KvBudget, Session, SessionConfig};

    let nan_norm = nan_norm_file();
    // 1-D tensors (norms, biases, RoPE factors) are read at load: a NaN norm weight would
    // otherwise reach the logits through quantized activations, where it becomes 0, and give
    // fluent garbage instead of an error.
    let e = Model::from_gguf(GgufFile::from_bytes(nan_norm.clone()).unwrap()).unwrap_err();
    assert!(matches!(e, Error::NonFinite(_)), "{e:?}");
    assert_contains(
        &e.to_string(),
        "tensor output_norm.weight holds NaN at element 5",
    );

    let inf_scale = inf_scale_file();
    let m = Model::from_gguf(GgufFile::from_bytes(inf_scale.clone()).unwrap()).unwrap();
    let msg = m.check_tensors().unwrap_err().to_string();
    assert_contains(&msg, "tensor blk.1.attn_q.weight holds");
    assert_contains(&msg, "at row 3, column 32");

    // The valid synthetic model passes the check.
    let (bytes, _) = valid();
    Model::from_gguf(GgufFile::from_bytes(bytes).unwrap())
        .unwrap()
        .check_tensors()
        .unwrap();

    // Generation with NaN logits (a NaN in row 7 of an f32 output projection: only logit 7 is
    // NaN, which a sampler skipping NaN would hide): a session says so...
    let nan_output = nan_output_file();
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
