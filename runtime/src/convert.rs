//! Rewrite a GGUF model: convert its weight matrices to another type and/or keep only its first
//! N transformer blocks.
//!
//! Used to make test models from the real one: an F32 copy (llama.cpp's `greedy_f32_activations`
//! goldens were made from such a copy, where every product runs in plain f32), and truncated
//! copies small enough for machines that cannot receive the full file. Metadata is copied value
//! by value; 1-D tensors (norms, biases) keep their type.

use ember_kernels::traits::reference_traits;
use ember_kernels::GgmlType;

use crate::error::{Error, Result};
use crate::gguf::writer::{GgufWriter, MetaArray, MetaValue};
use crate::gguf::{GgufFile, Value, ValueType};

/// What to change.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Convert every 2-D tensor to this type (`None`: keep types).
    pub weight_type: Option<GgmlType>,
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

/// Build the rewritten model.
pub fn convert(f: &GgufFile, opts: &ConvertOptions) -> Result<GgufWriter> {
    convert_with(f, opts, |_, _| {})
}

/// [`convert`], calling `on_tensor(done, total)` after each tensor (for a progress report).
pub fn convert_with(
    f: &GgufFile,
    opts: &ConvertOptions,
    mut on_tensor: impl FnMut(usize, usize),
) -> Result<GgufWriter> {
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
    let mut w = GgufWriter::new();
    for (key, v) in f.metadata() {
        if key == "general.alignment" {
            continue;
        }
        let mut mv = meta_value(f, key, v)?;
        if let (Some(n), true) = (opts.keep_layers, key == format!("{arch}.block_count")) {
            mv = MetaValue::U32(n as u32);
        }
        w.kv(key, mv);
    }
    let total = f.tensors().len();
    for (i, t) in f.tensors().iter().enumerate() {
        on_tensor(i, total);
        if let (Some(n), Some(b)) = (opts.keep_layers, block_of(&t.name)) {
            if b >= n {
                continue;
            }
        }
        let data = f.tensor_data(t);
        let dims = &t.ne[..t.n_dims as usize];
        let target = match opts.weight_type {
            Some(ty) if t.n_dims == 2 && ty != t.ty => ty,
            _ => {
                w.tensor(&t.name, t.ty, dims, data.to_vec());
                continue;
            }
        };
        let unsupported = |ty: GgmlType| Error::UnsupportedType {
            tensor: t.name.clone(),
            ty: ty.name().into(),
        };
        let src = reference_traits(t.ty).ok_or_else(|| unsupported(t.ty))?;
        let dst = reference_traits(target)
            .and_then(|k| k.from_float)
            .ok_or_else(|| unsupported(target))?;
        let cols = t.ne[0] as usize;
        let rows = (t.n_elements() / t.ne[0]) as usize;
        let (src_rb, dst_rb) = (
            t.ty.row_bytes(t.ne[0]).expect("checked by the reader") as usize,
            target.row_bytes(t.ne[0]).ok_or_else(|| Error::BadTensor {
                name: t.name.clone(),
                what: format!("row length {cols} is not a multiple of the {target} block size"),
            })? as usize,
        );
        let mut out = vec![0u8; rows * dst_rb];
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            (src.to_float)(&data[r * src_rb..(r + 1) * src_rb], &mut row);
            dst(&row, &mut out[r * dst_rb..(r + 1) * dst_rb]);
        }
        w.tensor(&t.name, target, dims, out);
    }
    on_tensor(total, total);
    Ok(w)
}
