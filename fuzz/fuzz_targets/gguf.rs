//! GGUF reader on hostile files.
//!
//! Input: a file image when it starts with the magic `GGUF` (libFuzzer mutates the committed
//! seeds, a tiny valid model among them); otherwise a patch script applied to the tiny valid
//! model: 9-byte records `op, offset: u32, value: u32` that overwrite a byte, a u32 or a u64
//! (sign-extended, so counts and offsets near 2^64 come up) or truncate the file. The patches
//! reach the checks behind the header that random bytes rarely get past.
//!
//! Properties: parsing returns `Ok` or a typed `ember::Error` with a message (never a panic,
//! abort or huge allocation); a file that loads has every tensor's byte range aligned, inside
//! the data section and exactly as long as its type and shape say; the layers above the
//! reader (metadata getters, tokenizer, model config and weights) also fail cleanly.
#![no_main]

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use ember::gguf::{tokenizer_spec, GgufFile};
use ember::model::Model;
use ember::tokenizer::{Tokenizer, TokenizerSpec};
use ember::Error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = if data.starts_with(b"GGUF") {
        data.to_vec()
    } else {
        patched(ember_fuzz::tiny_gguf(), data)
    };
    check(bytes);
});

fn patched(base: &[u8], script: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for r in script.chunks_exact(9) {
        if b.is_empty() {
            break;
        }
        let off = u32::from_le_bytes([r[1], r[2], r[3], r[4]]) as usize % b.len();
        let v = u32::from_le_bytes([r[5], r[6], r[7], r[8]]);
        let put = |b: &mut Vec<u8>, bytes: &[u8]| {
            let end = (off + bytes.len()).min(b.len());
            b[off..end].copy_from_slice(&bytes[..end - off]);
        };
        match r[0] % 4 {
            0 => put(&mut b, &[v as u8]),
            1 => put(&mut b, &v.to_le_bytes()),
            2 => put(&mut b, &(v as i32 as i64 as u64).to_le_bytes()),
            _ => b.truncate(off),
        }
    }
    b
}

fn check(bytes: Vec<u8>) {
    let len = bytes.len();
    let f = match GgufFile::from_bytes(bytes) {
        Ok(f) => f,
        Err(e) => {
            assert!(
                matches!(e, Error::Gguf { .. } | Error::BadKey { .. }),
                "unexpected error kind from the reader: {e:?}"
            );
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(f.file_size(), len);
    assert!(f.alignment() > 0);
    assert_eq!(f.data_offset() % f.alignment(), 0);
    for t in f.tensors() {
        let r = &t.data;
        assert!(
            r.start <= r.end && r.end <= len,
            "{}: {r:?} of {len}",
            t.name
        );
        assert!(r.start as u64 >= f.data_offset(), "{}: before data", t.name);
        assert_eq!(r.start as u64 % f.alignment(), 0, "{}: unaligned", t.name);
        assert!((1..=4).contains(&t.n_dims));
        let rows: u64 = t.ne[1..].iter().product();
        let want = t.ty.row_bytes(t.ne[0]).map(|rb| rb * rows);
        assert_eq!(want, Some(r.len() as u64), "{}: size", t.name);
        assert_eq!(f.tensor_data(t).len(), r.len());
        let _ = t.shape_string();
    }
    for (k, v) in f.metadata() {
        let _ = f.display_value(v);
        let _ = f.get_str(k);
        let _ = f.get_u64(k);
        let _ = f.get_f32(k);
        let _ = f.get_bool(k);
        let _ = f.get_str_array(k);
        let _ = f.get_i32_array(k);
        let _ = f.get_f32_array(k);
    }
    if let Ok(spec) = tokenizer_spec(&f) {
        if first_time(&spec) {
            if let Ok(tok) = Tokenizer::from_spec(spec) {
                if let Ok(ids) = tok.encode("Hello, world! <|im_start|>", true, true) {
                    assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
                    let _ = tok.decode(&ids);
                }
            }
        }
    }
    if let Ok(m) = Model::from_gguf(f) {
        loaded_model_is_sane(&m);
    }
}

/// A model that loads has finite RoPE parameters and finite 1-D tensors (norms, biases,
/// frequency factors), and its RoPE tables either build finite or are refused with an error
/// (issue 16, row 15: such values used to give fluent garbage).
fn loaded_model_is_sane(m: &Model) {
    let c = &m.config;
    for (what, v) in [
        ("rope_base", c.rope_base),
        ("rope_freq_scale", c.rope_freq_scale),
        ("rope_base_swa", c.rope_base_swa),
        ("rms_eps", c.rms_eps),
    ] {
        assert!(v.is_finite(), "{what} = {v} loaded");
    }
    for t in m.file.tensors().iter().filter(|t| t.n_dims == 1) {
        let Some(tr) = ember_kernels::traits::reference_traits(t.ty) else {
            continue;
        };
        let n = t.ne[0] as usize;
        if t.ty.row_bytes(n as u64).unwrap_or(0) as usize != t.data.len() || n > 1 << 16 {
            continue;
        }
        let mut row = vec![0.0f32; n];
        (tr.to_float)(m.file.tensor_data(t), &mut row);
        assert!(
            row.iter().all(|v| v.is_finite()),
            "{} loaded non-finite",
            t.name
        );
    }
    let _ = ember::model::Scratch::new(m, 1, 1, c.n_ctx_train.clamp(1, 64));
}

/// Whether this tokenizer description is new to this process. Building a tokenizer (its
/// pre-tokenizer regexes) costs milliseconds, about all of an input's time; most mutations leave
/// the tokenizer keys alone, and a description that built once builds the same way again.
fn first_time(spec: &TokenizerSpec) -> bool {
    static SEEN: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
    let mut h = DefaultHasher::new();
    format!("{spec:?}").hash(&mut h);
    let mut seen = SEEN.lock().unwrap();
    let seen = seen.get_or_insert_with(HashSet::new);
    if seen.len() > 4096 {
        seen.clear();
    }
    seen.insert(h.finish())
}
