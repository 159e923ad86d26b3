//! Rewrite a GGUF model: convert its weight matrices to another type and/or keep only its first
//! N transformer blocks.
//!
//! Used to make test models from the real one: an F32 copy (llama.cpp's `greedy_f32_activations`
//! goldens were made from such a copy, where every product runs in plain f32), and truncated
//! copies small enough for machines that cannot receive the full file. And for users, the
//! quantizations llama-quantize makes (`recipe`): the same tensors, byte for byte, from the same
//! input. Metadata is copied value by value (`general.file_type` set to the new quantization);
//! 1-D tensors (norms, biases) keep their type.

mod recipe;

pub use recipe::{KMix, Quantization};

use ember_kernels::traits::reference_traits;
use ember_kernels::GgmlType;

use crate::error::{Error, Result};
use crate::gguf::writer::{GgufWriter, MetaArray, MetaValue};
use crate::gguf::{GgufFile, Value, ValueType};

/// What to change.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Convert the weight matrices (`None`: keep types).
    pub quantization: Option<Quantization>,
    /// Keep only blocks `0..n` (`None`: keep all).
    pub keep_layers: Option<usize>,
}

fn read_scalar(bytes: &[u8], ty: ValueType) -> Option<(MetaValue, usize)> {
    let le4 = |b: &[u8]| b.get(..4).map(|s| [s[0], s[1], s[2], s[3]]);
    let le8 = |b: &[u8]| b.get(..8).map(|s| <[u8; 8]>::try_from(s).expect("8 bytes"));
    Some(match ty {
        ValueType::U8 => (MetaValue::U8(*bytes.first()?), 1),
        ValueType::I8 => (MetaValue::I8(*bytes.first()? as i8), 1),
        ValueType::Bool => (MetaValue::Bool(*bytes.first()? != 0), 1),
        ValueType::U16 => (
            MetaValue::U16(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?])),
            2,
        ),
        ValueType::I16 => (
            MetaValue::I16(i16::from_le_bytes([*bytes.first()?, *bytes.get(1)?])),
            2,
        ),
        ValueType::U32 => (MetaValue::U32(u32::from_le_bytes(le4(bytes)?)), 4),
        ValueType::I32 => (MetaValue::I32(i32::from_le_bytes(le4(bytes)?)), 4),
        ValueType::F32 => (MetaValue::F32(f32::from_le_bytes(le4(bytes)?)), 4),
        ValueType::U64 => (MetaValue::U64(u64::from_le_bytes(le8(bytes)?)), 8),
        ValueType::I64 => (MetaValue::I64(i64::from_le_bytes(le8(bytes)?)), 8),
        ValueType::F64 => (MetaValue::F64(f64::from_le_bytes(le8(bytes)?)), 8),
        ValueType::String | ValueType::Array => return None,
    })
}

/// Convert a metadata value of `f` into the writer's representation.
fn meta_value(f: &GgufFile, key: &str, v: &Value) -> Result<MetaValue> {
    let bad = || Error::BadKey {
        key: key.into(),
        what: "cannot be copied (nested arrays are not supported)".into(),
    };
    Ok(match v {
        Value::U8(x) => MetaValue::U8(*x),
        Value::I8(x) => MetaValue::I8(*x),
        Value::U16(x) => MetaValue::U16(*x),
        Value::I16(x) => MetaValue::I16(*x),
        Value::U32(x) => MetaValue::U32(*x),
        Value::I32(x) => MetaValue::I32(*x),
        Value::F32(x) => MetaValue::F32(*x),
        Value::Bool(x) => MetaValue::Bool(*x),
        Value::U64(x) => MetaValue::U64(*x),
        Value::I64(x) => MetaValue::I64(*x),
        Value::F64(x) => MetaValue::F64(*x),
        Value::Str(_) => MetaValue::Str(f.get_str(key)?.unwrap_or_default().to_string()),
        Value::Array { elem, bytes, .. } => {
            if *elem == ValueType::String {
                let v = f.get_str_array(key)?.unwrap_or_default();
                return Ok(MetaValue::Array(MetaArray::Str(
                    v.into_iter().map(str::to_owned).collect(),
                )));
            }
            let raw = &f.bytes()[bytes.clone()];
            let mut items = Vec::new();
            let mut at = 0;
            while at < raw.len() {
                let (m, n) = read_scalar(&raw[at..], *elem).ok_or_else(bad)?;
                items.push(m);
                at += n;
            }
            macro_rules! collect {
                ($var:ident) => {
                    MetaArray::$var(
                        items
                            .into_iter()
                            .map(|m| match m {
                                MetaValue::$var(x) => x,
                                _ => unreachable!("all elements share the array type"),
                            })
                            .collect(),
                    )
                };
            }
            MetaValue::Array(match elem {
                ValueType::U8 => collect!(U8),
                ValueType::I8 => collect!(I8),
                ValueType::U16 => collect!(U16),
                ValueType::I16 => collect!(I16),
                ValueType::U32 => collect!(U32),
                ValueType::I32 => collect!(I32),
                ValueType::F32 => collect!(F32),
                ValueType::Bool => collect!(Bool),
                ValueType::U64 => collect!(U64),
                ValueType::I64 => collect!(I64),
                ValueType::F64 => collect!(F64),
                ValueType::String | ValueType::Array => return Err(bad()),
            })
        }
    })
}

/// The block index of a tensor called `blk.N.*`.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Build the rewritten model in memory.
pub fn convert(f: &GgufFile, opts: &ConvertOptions) -> Result<GgufWriter> {
    convert_with(f, opts, |_, _| {})
}

/// [`convert`], calling `on_tensor(done, total)` after each tensor (for a progress report).
pub fn convert_with(
    f: &GgufFile,
    opts: &ConvertOptions,
    mut on_tensor: impl FnMut(usize, usize),
) -> Result<GgufWriter> {
    let mut plan = plan(f, opts)?;
    let total = plan.jobs.len();
    for (i, job) in plan.jobs.iter().enumerate() {
        on_tensor(i, total);
        let mut data = Vec::new();
        produce(f, job, &mut data);
        let t = job.src;
        plan.writer
            .replace_tensor(&t.name, job.target, &t.ne[..t.n_dims as usize], data);
    }
    on_tensor(total, total);
    Ok(plan.writer)
}

/// Converts into the file `path`, one tensor at a time (memory holds one converted tensor, not
/// the model), through a temporary file renamed over `path` at the end (see
/// [`GgufWriter::write_streaming`]). Calls `on_tensor(done, total)` as it goes.
///
/// Errors: those of [`convert`] (before anything is written) and of the write.
pub fn convert_to_file(
    f: &GgufFile,
    opts: &ConvertOptions,
    path: &std::path::Path,
    mut on_tensor: impl FnMut(usize, usize),
) -> Result<()> {
    let plan = plan(f, opts)?;
    let total = plan.jobs.len();
    on_tensor(0, total);
    plan.writer
        .write_streaming(path, |i, buf| {
            produce(f, &plan.jobs[i], buf);
            on_tensor(i + 1, total);
            Ok(())
        })
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// One tensor of the output: where its data comes from and its new type.
struct Job<'a> {
    src: &'a crate::gguf::TensorInfo,
    target: GgmlType,
}

/// The output's metadata and tensor infos (data deferred), and one job per output tensor, in
/// the writer's order. Every check happens here, before any data is converted.
struct Plan<'a> {
    writer: GgufWriter,
    jobs: Vec<Job<'a>>,
}

fn plan<'a>(f: &'a GgufFile, opts: &ConvertOptions) -> Result<Plan<'a>> {
    let arch = f
        .get_str("general.architecture")?
        .unwrap_or_default()
        .to_string();
    if let Some(n) = opts.keep_layers {
        let blocks = f.get_u64(&format!("{arch}.block_count"))?.unwrap_or(0);
        if n == 0 || n as u64 > blocks {
            return Err(Error::InvalidParam {
                name: "layers",
                what: format!(
                    "{n}: the model has {blocks} blocks; keep 1..={blocks} (a file with no \
                     block, or with blocks it does not hold, would not load)"
                ),
            });
        }
    }
    let n_layer = match opts.keep_layers {
        Some(n) => n,
        None => f.get_u64(&format!("{arch}.block_count"))?.unwrap_or(0) as usize,
    };
    let kept = |name: &str| match (opts.keep_layers, block_of(name)) {
        (Some(n), Some(b)) => b < n,
        _ => true,
    };
    let head_count = |key: &str| f.get_u64(&format!("{arch}.attention.{key}"));
    let shape = recipe::ModelShape {
        n_layer,
        n_attn_v: f
            .tensors()
            .iter()
            .filter(|t| kept(&t.name) && recipe::is_attn_v(&t.name))
            .count(),
        tied_embeddings: !f.tensors().iter().any(|t| t.name == "output.weight"),
        llama_70b: arch == "llama"
            && n_layer == 80
            && head_count("head_count")? != head_count("head_count_kv")?,
    };
    // The file type names the new quantization (llama.cpp reads it for its model description).
    // Set as llama-quantize sets it: removed where it was, appended after the quantization
    // version.
    let file_type = opts.quantization.and_then(Quantization::file_type);
    let mut w = GgufWriter::new();
    for (key, v) in f.metadata() {
        let retyped = matches!(key, "general.quantization_version" | "general.file_type");
        if key == "general.alignment" || (retyped && file_type.is_some()) {
            continue;
        }
        let mut mv = meta_value(f, key, v)?;
        if let (Some(n), true) = (opts.keep_layers, key == format!("{arch}.block_count")) {
            mv = MetaValue::U32(n as u32);
        }
        w.kv(key, mv);
    }
    if let Some(ft) = file_type {
        w.kv("general.quantization_version", MetaValue::U32(2));
        w.kv("general.file_type", MetaValue::U32(ft));
    }
    // In llama-quantize's order (its loader's map: by block number, tensors outside blocks
    // first, then by name), which is also the order its counters of value and FFN down
    // projections advance in.
    let mut order: Vec<&crate::gguf::TensorInfo> = f.tensors().iter().collect();
    order.sort_by(|a, b| {
        let layer = |n: &str| block_of(n).map_or(-1, |b| b as i64);
        (layer(&a.name), &a.name).cmp(&(layer(&b.name), &b.name))
    });
    let mut seen = recipe::Counters::default();
    let mut jobs = Vec::new();
    for t in order {
        if !kept(&t.name) {
            continue;
        }
        let target = match opts.quantization {
            Some(q) if recipe::quantizable(&t.name, t.n_dims) => {
                recipe::target_type(q, &shape, &t.name, t.ne[0], &mut seen)
            }
            _ => t.ty,
        };
        if target != t.ty {
            let unsupported = |ty: GgmlType| Error::UnsupportedType {
                tensor: t.name.clone(),
                ty: ty.name().into(),
            };
            reference_traits(t.ty).ok_or_else(|| unsupported(t.ty))?;
            reference_traits(target)
                .and_then(|k| k.from_float)
                .ok_or_else(|| unsupported(target))?;
            if target.row_bytes(t.ne[0]).is_none() {
                return Err(Error::BadTensor {
                    name: t.name.clone(),
                    what: format!(
                        "row length {} is not a multiple of the {target} block size",
                        t.ne[0]
                    ),
                });
            }
        }
        w.tensor_deferred(&t.name, target, &t.ne[..t.n_dims as usize]);
        jobs.push(Job { src: t, target });
    }
    Ok(Plan { writer: w, jobs })
}

/// The bytes of one output tensor, appended to `out`: the input's as they are, or converted
/// (types checked by [`plan`]).
fn produce(f: &GgufFile, job: &Job<'_>, out: &mut Vec<u8>) {
    let (t, target) = (job.src, job.target);
    let data = f.tensor_data(t);
    if target == t.ty {
        out.extend_from_slice(data);
        return;
    }
    let src = reference_traits(t.ty).expect("checked by plan");
    let dst = reference_traits(target)
        .and_then(|k| k.from_float)
        .expect("checked by plan");
    let cols = t.ne[0] as usize;
    let rows = (t.n_elements() / t.ne[0]) as usize;
    let src_rb = t.ty.row_bytes(t.ne[0]).expect("checked by the reader") as usize;
    let dst_rb = target.row_bytes(t.ne[0]).expect("checked by plan") as usize;
    let at = out.len();
    out.resize(at + rows * dst_rb, 0);
    // Rows are independent (every format quantizes row by row): one run of rows per thread.
    // The k-quants' searches make this the slow part of a conversion.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (chunk, dst_rows) in out[at..].chunks_mut(per * dst_rb).enumerate() {
            let src_rows = &data[chunk * per * src_rb..];
            s.spawn(move || {
                let mut row = vec![0f32; cols];
                for (r, o) in dst_rows.chunks_exact_mut(dst_rb).enumerate() {
                    (src.to_float)(&src_rows[r * src_rb..(r + 1) * src_rb], &mut row);
                    dst(&row, o);
                }
            });
        }
    });
}
