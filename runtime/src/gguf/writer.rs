//! A GGUF writer: builds files for tests, synthetic models and models cut to fewer layers.
//!
//! Layout written (GGUF v3, little-endian, as specified in ggml's `docs/gguf.md`):
//!
//! ```text
//! header       magic "GGUF", u32 version, u64 tensor_count, u64 kv_count      (24 bytes)
//! kv pairs     string key, u32 value type, value                              (kv_count times)
//! tensor infos string name, u32 n_dims, n_dims x u64 ne, u32 ggml type id,
//!              u64 offset relative to the data section                        (tensor_count times)
//! padding      zeros up to the next multiple of the alignment
//! data         each tensor at its offset, every offset a multiple of the alignment,
//!              zero padding after each tensor (the last one included)
//! ```
//!
//! A string is a u64 byte length and the bytes (no terminator). An array value is a u32 element
//! type, a u64 count and the elements; arrays may nest. `ne[0]` is the innermost (row) length.
//!
//! The writer checks only what it needs to lay out the data (each tensor's byte size matches its
//! type and dims, the alignment is a power of two) and otherwise writes what it is told:
//! duplicate keys, a `general.alignment` of the wrong type, bogus versions. That is deliberate,
//! so malformed-file tests can build hostile input; [`GgufWriter::to_bytes_with_layout`] reports
//! where every section starts so tests can truncate or corrupt the bytes at each boundary.

use std::path::Path;

use ember_kernels::GgmlType;

/// The alignment GGUF uses when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// Bytes in the fixed header: magic, version, tensor count, kv count.
pub const HEADER_LEN: u64 = 24;

/// The key whose u32 value sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// A metadata value. The GGUF value type id of each variant is given by
/// [`MetaValue::type_id`].
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: all elements of one type. `Array` holds nested arrays, whose element types
/// may differ from one another (the spec allows it; readers may not).
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaValue {
    /// The GGUF value type id: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string,
    /// 9 array, 10 u64, 11 i64, 12 f64.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }
}

impl MetaArray {
    /// The GGUF value type id of the elements (see [`MetaValue::type_id`]).
    pub fn elem_type_id(&self) -> u32 {
        match self {
            MetaArray::U8(_) => 0,
            MetaArray::I8(_) => 1,
            MetaArray::U16(_) => 2,
            MetaArray::I16(_) => 3,
            MetaArray::U32(_) => 4,
            MetaArray::I32(_) => 5,
            MetaArray::F32(_) => 6,
            MetaArray::Bool(_) => 7,
            MetaArray::Str(_) => 8,
            MetaArray::Array(_) => 9,
            MetaArray::U64(_) => 10,
            MetaArray::I64(_) => 11,
            MetaArray::F64(_) => 12,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor to be written.
#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    /// `None`: produced while writing ([`GgufWriter::tensor_deferred`]).
    data: Option<Vec<u8>>,
}

/// Where one kv pair sits in the written file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// The key.
    pub key: String,
    /// Offset of the pair (the key's u64 length).
    pub start: u64,
    /// Offset of the u32 value type.
    pub value_type_at: u64,
}

/// Where one tensor's info and data sit in the written file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorLayout {
    /// The tensor's name.
    pub name: String,
    /// Offset of the tensor info (the name's u64 length).
    pub info_start: u64,
    /// Offset of the info's u32 ggml type id.
    pub type_at: u64,
    /// Offset of the info's u64 data offset.
    pub offset_at: u64,
    /// Absolute offset of the tensor's data.
    pub data_start: u64,
    /// Bytes of tensor data (padding excluded).
    pub data_len: u64,
}

/// Byte offsets of every section of a written file. The header starts at 0 and is
/// [`HEADER_LEN`] bytes; the kv pairs start right after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufLayout {
    /// Each kv pair in file order (the automatic `general.alignment` one included).
    pub kvs: Vec<KvLayout>,
    /// Offset of the first tensor info (the end of the kv pairs).
    pub tensor_infos_start: u64,
    /// Each tensor in file order.
    pub tensors: Vec<TensorLayout>,
    /// Offset of the data section (the end of the tensor infos, rounded up to the alignment).
    pub data_start: u64,
    /// Length of the file.
    pub len: u64,
}

impl GgufLayout {
    /// Every section boundary, sorted and without duplicates: each header field, each kv pair and
    /// its value type, each tensor info and its type and offset fields, the data section, each
    /// tensor's data, and the end of the file. Truncating at, or corrupting from, each of these
    /// exercises every read of a parser.
    pub fn boundaries(&self) -> Vec<u64> {
        let mut b = vec![0, 4, 8, 16, HEADER_LEN, self.tensor_infos_start];
        for kv in &self.kvs {
            b.extend([kv.start, kv.value_type_at]);
        }
        for t in &self.tensors {
            b.extend([t.info_start, t.type_at, t.offset_at, t.data_start]);
        }
        b.extend([self.data_start, self.len]);
        b.sort_unstable();
        b.dedup();
        b
    }
}

/// Builds a GGUF file in memory. Setters return `&mut Self` to chain; nothing is checked until
/// [`GgufWriter::to_bytes`].
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u32,
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (its type id is written by the caller).
fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => put_u32(out, *x),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::Str(x) => put_str(out, x),
        MetaValue::Array(a) => put_array(out, a),
        MetaValue::U64(x) => put_u64(out, *x),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Writes an array value: element type, count, elements.
fn put_array(out: &mut Vec<u8>, a: &MetaArray) {
    put_u32(out, a.elem_type_id());
    put_u64(out, a.len() as u64);
    match a {
        MetaArray::U8(v) => out.extend_from_slice(v),
        MetaArray::I8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::Bool(v) => v.iter().for_each(|&x| out.push(u8::from(x))),
        MetaArray::Str(v) => v.iter().for_each(|s| put_str(out, s)),
        MetaArray::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
        MetaArray::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
    }
}

/// Pads `out` with zeros to a multiple of `align` (a power of two).
fn pad_to(out: &mut Vec<u8>, align: u64) {
    let len = out.len() as u64;
    out.resize(len.next_multiple_of(align) as usize, 0);
}

/// Bytes a tensor of type `ty` and dims `dims` takes, or why it cannot exist. No dims means one
/// element.
fn tensor_bytes(ty: GgmlType, dims: &[u64]) -> Result<u64, String> {
    let ne0 = dims.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if ne0 % block != 0 {
        return Err(format!(
            "ne[0] = {ne0} is not a multiple of the {ty} block size {block}"
        ));
    }
    ty.row_bytes(ne0)
        .and_then(|row| {
            dims.iter()
                .skip(1)
                .try_fold(row, |acc, &d| acc.checked_mul(d))
        })
        .ok_or_else(|| format!("{ty} {dims:?} overflows u64 bytes"))
}

impl GgufWriter {
    /// An empty GGUF v3 file with alignment 32.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the header's version field. Any value is written: 2 gives a v2 file (same layout as
    /// v3 here), others a file a reader must refuse.
    pub fn version(&mut self, v: u32) -> &mut Self {
        self.version = v;
        self
    }

    /// Sets the data alignment (a power of two, checked when writing). When it is not 32, a u32
    /// `general.alignment` kv is appended after the other kvs, unless one was added with
    /// [`GgufWriter::kv`]: that one is written as given, which lets a test declare a different
    /// alignment than the layout uses.
    pub fn alignment(&mut self, a: u32) -> &mut Self {
        self.alignment = a;
        self
    }

    /// Adds a kv pair, in order. Duplicate keys are written as given.
    pub fn kv(&mut self, key: &str, v: MetaValue) -> &mut Self {
        self.kvs.push((key.to_string(), v));
        self
    }

    /// Adds a tensor, in order. `dims` is ggml's `ne` (`dims[0]` the row length); `data` must be
    /// exactly the bytes the type and dims imply, which [`GgufWriter::to_bytes`] checks.
    pub fn tensor(&mut self, name: &str, ty: GgmlType, dims: &[u64], data: Vec<u8>) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            ty,
            dims: dims.to_vec(),
            data: Some(data),
        });
        self
    }

    /// Adds a tensor whose data is produced only when the file is written, by the `fill`
    /// function of [`GgufWriter::write_streaming`]: a file larger than memory can be written
    /// one tensor at a time. [`GgufWriter::to_bytes`] refuses a writer holding one.
    pub fn tensor_deferred(&mut self, name: &str, ty: GgmlType, dims: &[u64]) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            ty,
            dims: dims.to_vec(),
            data: None,
        });
        self
    }

    /// Replaces the type, dims and data of the tensor called `name`, keeping its place; adds it
    /// when absent.
    pub fn replace_tensor(
        &mut self,
        name: &str,
        ty: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> &mut Self {
        match self.tensors.iter_mut().find(|t| t.name == name) {
            Some(t) => {
                t.ty = ty;
                t.dims = dims.to_vec();
                t.data = Some(data);
                self
            }
            None => self.tensor(name, ty, dims, data),
        }
    }

    /// Removes every kv pair with this key.
    pub fn remove_kv(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    /// Removes the tensor called `name`, if present.
    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self
    }

    /// The file's bytes.
    ///
    /// Errors: the alignment is not a power of two, or a tensor's data length does not match
    /// its type and dims.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        self.to_bytes_with_layout().map(|(bytes, _)| bytes)
    }

    /// The file's bytes and the offset of every section (see [`GgufLayout`]).
    ///
    /// Errors: as [`GgufWriter::to_bytes`], and a tensor added with
    /// [`GgufWriter::tensor_deferred`].
    pub fn to_bytes_with_layout(&self) -> Result<(Vec<u8>, GgufLayout), String> {
        let (mut out, mut layout) = self.head()?;
        for (t, l) in self.tensors.iter().zip(&layout.tensors) {
            let data = t.data.as_deref().ok_or_else(|| {
                format!(
                    "tensor {}: its data is deferred (write it with write_streaming)",
                    t.name
                )
            })?;
            debug_assert_eq!(out.len() as u64, l.data_start);
            out.extend_from_slice(data);
            pad_to(&mut out, self.alignment as u64);
        }
        layout.len = out.len() as u64;
        Ok((out, layout))
    }

    /// Everything before the tensor data (header, kv pairs, tensor infos, padding), and the
    /// layout of the whole file (`len` set to where the data would end).
    fn head(&self) -> Result<(Vec<u8>, GgufLayout), String> {
        if !self.alignment.is_power_of_two() {
            return Err(format!(
                "alignment {} is not a power of two; to write a bad {ALIGNMENT_KEY}, keep a valid \
                 alignment and add the key with kv()",
                self.alignment
            ));
        }
        let align = self.alignment as u64;
        let mut sizes = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let want =
                tensor_bytes(t.ty, &t.dims).map_err(|e| format!("tensor {}: {e}", t.name))?;
            if let Some(d) = t.data.as_ref().filter(|d| d.len() as u64 != want) {
                return Err(format!(
                    "tensor {}: data is {} bytes but {} {:?} needs {want}",
                    t.name,
                    d.len(),
                    t.ty,
                    t.dims
                ));
            }
            sizes.push(want);
        }

        let auto_alignment = (self.alignment != DEFAULT_ALIGNMENT
            && !self.kvs.iter().any(|(k, _)| k == ALIGNMENT_KEY))
        .then(|| (ALIGNMENT_KEY.to_string(), MetaValue::U32(self.alignment)));
        let kvs: Vec<&(String, MetaValue)> = self.kvs.iter().chain(&auto_alignment).collect();

        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        put_u32(&mut out, self.version);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, kvs.len() as u64);

        let mut kv_layout = Vec::with_capacity(kvs.len());
        for (key, value) in kvs {
            let start = out.len() as u64;
            put_str(&mut out, key);
            let value_type_at = out.len() as u64;
            put_u32(&mut out, value.type_id());
            put_value(&mut out, value);
            kv_layout.push(KvLayout {
                key: key.clone(),
                start,
                value_type_at,
            });
        }

        let tensor_infos_start = out.len() as u64;
        let mut tensor_layout = Vec::with_capacity(self.tensors.len());
        let mut data_offset = 0u64;
        for (t, &len) in self.tensors.iter().zip(&sizes) {
            let info_start = out.len() as u64;
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            t.dims.iter().for_each(|&d| put_u64(&mut out, d));
            let type_at = out.len() as u64;
            put_u32(&mut out, t.ty.id());
            let offset_at = out.len() as u64;
            put_u64(&mut out, data_offset);
            tensor_layout.push(TensorLayout {
                name: t.name.clone(),
                info_start,
                type_at,
                offset_at,
                data_start: data_offset, // relative for now, made absolute below
                data_len: len,
            });
            data_offset = (data_offset + len).next_multiple_of(align);
        }

        pad_to(&mut out, align);
        let data_start = out.len() as u64;
        for l in &mut tensor_layout {
            l.data_start += data_start;
        }
        let layout = GgufLayout {
            kvs: kv_layout,
            tensor_infos_start,
            tensors: tensor_layout,
            data_start,
            len: data_start + data_offset,
        };
        Ok((out, layout))
    }

    /// Writes the file to `path` as [`GgufWriter::write_to`] does, one tensor at a time: the
    /// data of a tensor added with [`GgufWriter::tensor_deferred`] is produced by
    /// `fill(index, buf)` (the tensor's index in file order; `buf` comes empty and must hold
    /// exactly the tensor's bytes on return), so only one such tensor is in memory at a time.
    ///
    /// Errors: those of [`GgufWriter::write_to`], `fill`'s (as `Other`), and a `fill` that
    /// produced the wrong number of bytes (`InvalidData`). The temporary file is removed.
    pub fn write_streaming(
        &self,
        path: &Path,
        mut fill: impl FnMut(usize, &mut Vec<u8>) -> Result<(), String>,
    ) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind, Write};
        let (head, layout) = self
            .head()
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
        write_atomically(path, |file| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            w.write_all(&head)?;
            let mut buf = Vec::new();
            let zeros = [0u8; 256];
            for (i, (t, l)) in self.tensors.iter().zip(&layout.tensors).enumerate() {
                let data = match &t.data {
                    Some(d) => d.as_slice(),
                    None => {
                        buf.clear();
                        fill(i, &mut buf).map_err(Error::other)?;
                        if buf.len() as u64 != l.data_len {
                            return Err(Error::new(
                                ErrorKind::InvalidData,
                                format!(
                                    "tensor {}: {} bytes produced, {} needed",
                                    t.name,
                                    buf.len(),
                                    l.data_len
                                ),
                            ));
                        }
                        buf.as_slice()
                    }
                };
                w.write_all(data)?;
                let end = l.data_start + l.data_len;
                let pad = (end.next_multiple_of(self.alignment as u64) - end) as usize;
                for chunk in std::iter::repeat_n(&zeros[..], pad / 256) {
                    w.write_all(chunk)?;
                }
                w.write_all(&zeros[..pad % 256])?;
            }
            w.flush()
        })
    }

    /// Writes the file to `path`.
    ///
    /// Errors: those of [`GgufWriter::to_bytes`] (as `InvalidInput`) and of the write.
    ///
    /// The bytes go to a temporary file beside `path` (`.NAME.tmp-PID`), which is then renamed
    /// over `path`: a reader never sees a half-written file, a failed write leaves `path` as it
    /// was, and a file that is mapped by another process (or is this process's own input)
    /// keeps its old contents for as long as it is mapped instead of changing under it.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let bytes = self
            .to_bytes()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        write_atomically(path, |f| f.write_all(&bytes))
    }
}

/// Runs `write` on a new temporary file beside `path` (`.NAME.tmp-PID`), then renames it over
/// `path`; on any error the temporary file is removed and `path` is left as it was.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the output path names no file",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| write(&mut f))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests;
