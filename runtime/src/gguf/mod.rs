//! GGUF reader: zero-copy over a memory map, hardened against hostile files.
//!
//! Layout (ggml's `docs/gguf.md`, versions 2 and 3, little-endian): magic `GGUF`, `u32` version,
//! `u64` tensor count, `u64` metadata count, the metadata key/value pairs, the tensor infos
//! (name, dims, ggml type, offset relative to the data section), padding to `general.alignment`
//! (default 32), then the tensor data.
//!
//! Invariants established by `GgufFile::parse` before anything is handed out:
//! - every read is bounds- and overflow-checked; counts are capped by what the remaining bytes
//!   could possibly hold, so a huge count fails before any allocation;
//! - strings are valid UTF-8 (keys and tensor names always; string values when read);
//! - every tensor has 1..=4 dims, a known ggml type, a row length that is a whole number of
//!   blocks, an aligned offset, data that ends inside the file, and no two tensors overlap.
//!
//! Metadata values are not copied: strings and arrays are byte ranges of the mapping, decoded on
//! access. Tensor data is a slice of the mapping.

mod metadata;
mod tokenizer_spec;
pub mod writer;

pub use tokenizer_spec::{tokenizer_from_gguf, tokenizer_spec};

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

use ember_kernels::GgmlType;
use memmap2::Mmap;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
/// Longest string accepted (keys, names, values): 64 MiB. Token strings are far shorter, but
/// chat templates can be tens of KiB.
const MAX_STRING: u64 = 64 << 20;
/// Most dimensions a tensor may have.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted.
const MAX_ARRAY_DEPTH: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// The type of a metadata value (GGUF `gguf_metadata_value_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size of a fixed-size value; `None` for strings and arrays.
    fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// Fewest bytes one element of this type takes in a file (strings: their u64 length).
    fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1) as u64,
        }
    }
}

/// A metadata value. Scalars are decoded; strings and arrays are ranges of the file.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    /// A string: a byte range of the file, not yet checked for UTF-8.
    Str(Range<usize>),
    /// An array of `len` elements of type `elem`, stored in `bytes` of the file.
    Array {
        elem: ValueType,
        len: u64,
        bytes: Range<usize>,
    },
}

impl Value {
    /// The value as an unsigned integer, if it is any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            ref v => v.as_u64().map(|u| u as f64),
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
            Value::Str(_) => "string",
            Value::Array { .. } => "array",
        }
    }
}

/// One tensor's description; its data is [`GgufFile::tensor_data`].
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first (`ne[0]` is the row length); unused trailing dims are 1.
    pub ne: [u64; 4],
    /// Number of dimensions in the file (1..=4).
    pub n_dims: u32,
    /// ggml type.
    pub ty: GgmlType,
    /// Byte range of the data within the file.
    pub data: Range<usize>,
}

impl TensorInfo {
    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Shape as printed by `ember info`: `[576, 49152]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.ne[..self.n_dims as usize]
            .iter()
            .map(|d| d.to_string())
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

enum Backing {
    Mmap(Mmap),
    Owned(AlignedBytes),
}

/// File bytes held in memory, starting on a 64-byte boundary like a mapping's page, so tensor
/// data at aligned file offsets is aligned in memory too (a `Vec<u8>` only promises 1 byte:
/// Miri hands out such buffers, and f32 views of the data would be refused).
struct AlignedBytes {
    chunks: Vec<Chunk64>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk64([u8; 64]);

impl AlignedBytes {
    fn copy_of(bytes: &[u8]) -> AlignedBytes {
        let mut chunks = vec![Chunk64([0; 64]); bytes.len().div_ceil(64)];
        for (c, b) in chunks.iter_mut().zip(bytes.chunks(64)) {
            c.0[..b.len()].copy_from_slice(b);
        }
        AlignedBytes {
            chunks,
            len: bytes.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `Chunk64` is 64 plain bytes with no padding (repr(C), size 64), so the
        // vector's buffer is `chunks.len() * 64` initialized bytes, and `len` never exceeds that
        // (`copy_of` sizes it so); the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast::<u8>(), self.len) }
    }
}

/// A parsed GGUF file. Owns the mapping; metadata and tensor data borrow from it.
pub struct GgufFile {
    backing: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    kv: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_kv", &self.kv.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

fn err(offset: usize, what: impl Into<String>) -> Error {
    Error::Gguf {
        offset: offset as u64,
        what: what.into(),
    }
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(err(
                self.pos,
                format!(
                    "file truncated: {what} needs {n} bytes, {} remain",
                    self.remaining()
                ),
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string as a byte range.
    fn str_range(&mut self, what: &str) -> Result<Range<usize>> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(err(
                at,
                format!("{what}: string length {len} exceeds the limit of {MAX_STRING} bytes"),
            ));
        }
        let start = self.pos;
        self.take(len, what)?;
        Ok(start..self.pos)
    }

    /// A length-prefixed string that must be UTF-8 (keys, tensor names).
    fn string(&mut self, what: &str) -> Result<String> {
        let r = self.str_range(what)?;
        std::str::from_utf8(&self.buf[r.clone()])
            .map(str::to_owned)
            .map_err(|_| err(r.start, format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value> {
        use ValueType as T;
        Ok(match ty {
            T::U8 => Value::U8(self.array::<1>(key)?[0]),
            T::I8 => Value::I8(self.array::<1>(key)?[0] as i8),
            T::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            T::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            T::U32 => Value::U32(self.u32(key)?),
            T::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            T::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            T::U64 => Value::U64(self.u64(key)?),
            T::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            T::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            T::Bool => {
                let at = self.pos;
                match self.array::<1>(key)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(err(at, format!("key {key}: bool value {b} is not 0 or 1"))),
                }
            }
            T::String => Value::Str(self.str_range(key)?),
            T::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(err(
                        self.pos,
                        format!("key {key}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let at = self.pos;
                let raw = self.u32(key)?;
                let elem = ValueType::from_u32(raw).ok_or_else(|| {
                    err(at, format!("key {key}: unknown array element type {raw}"))
                })?;
                let len = self.u64(key)?;
                if len.saturating_mul(elem.min_size()) > self.remaining() {
                    return Err(err(
                        at,
                        format!(
                            "key {key}: array of {len} elements cannot fit in the {} bytes left",
                            self.remaining()
                        ),
                    ));
                }
                let start = self.pos;
                match elem.fixed_size() {
                    Some(sz) => {
                        self.take(len * sz as u64, key)?;
                    }
                    None => {
                        for _ in 0..len {
                            self.value(elem, key, depth + 1)?;
                        }
                    }
                }
                Value::Array {
                    elem,
                    len,
                    bytes: start..self.pos,
                }
            }
        })
    }
}

impl GgufFile {
    /// Open and parse a GGUF file, memory-mapping it (the weights are never copied).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process. The file could be changed
        // by another process while mapped, which would change the bytes we read but cannot break
        // memory safety of reads through `&[u8]` on Linux; model files are not modified in place.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map))
    }

    /// Parse a GGUF image held in memory (tests, fuzzing); the bytes are copied into a
    /// 64-byte-aligned buffer so tensor data is aligned as in a mapping.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Backing::Owned(AlignedBytes::copy_of(&bytes)))
    }

    fn parse(backing: Backing) -> Result<GgufFile> {
        let buf: &[u8] = match &backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v.as_slice(),
        };
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(err(
                0,
                format!("bad magic {magic:02x?}: not a GGUF file (expected \"GGUF\")"),
            ));
        }
        let version = c.u32("version")?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(err(
                4,
                "big-endian GGUF files are not supported: convert it to little-endian",
            ));
        }
        if version != 2 && version != 3 {
            return Err(err(
                4,
                format!("GGUF version {version} is not supported (supported: 2, 3)"),
            ));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each kv takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at
        // least 8 + 4 + 8 + 4 + 8.
        if n_kv.saturating_mul(13) > c.remaining() {
            return Err(err(
                16,
                format!(
                    "metadata count {n_kv} cannot fit in a file of {} bytes",
                    buf.len()
                ),
            ));
        }
        if n_tensors.saturating_mul(32) > c.remaining() {
            return Err(err(
                8,
                format!(
                    "tensor count {n_tensors} cannot fit in a file of {} bytes",
                    buf.len()
                ),
            ));
        }

        let mut kv = Vec::with_capacity(n_kv as usize);
        let mut kv_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let at = c.pos;
            let key = c.string(&format!("metadata key #{i}"))?;
            let traw = c.u32(&key)?;
            let ty = ValueType::from_u32(traw)
                .ok_or_else(|| err(at, format!("key {key}: unknown value type {traw}")))?;
            let value = c.value(ty, &key, 0)?;
            if kv_index.insert(key.clone(), kv.len()).is_some() {
                return Err(err(at, format!("duplicate metadata key {key}")));
            }
            kv.push((key, value));
        }

        let alignment = match kv_index.get("general.alignment").map(|&i| &kv[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(Error::BadKey {
                        key: "general.alignment".into(),
                        what: format!("{v:?} is not a power of two up to 1 MiB"),
                    })
                }
            },
        };

        struct Raw {
            name: String,
            ne: [u64; 4],
            n_dims: u32,
            ty: GgmlType,
            offset: u64,
            size: u64,
            at: usize,
        }
        let mut raws = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let at = c.pos;
            let name = c.string(&format!("tensor #{i} name"))?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(
                    at,
                    format!("tensor {name}: {n_dims} dimensions (must be 1..={MAX_DIMS})"),
                ));
            }
            let mut ne = [1u64; 4];
            for d in ne.iter_mut().take(n_dims as usize) {
                *d = c.u64(&name)?;
                if *d == 0 || *d > i64::MAX as u64 {
                    return Err(err(
                        at,
                        format!("tensor {name}: dimension {d} out of range"),
                    ));
                }
            }
            let n_el = ne
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| err(at, format!("tensor {name}: element count overflows")))?;
            let tid = c.u32(&name)?;
            let ty = GgmlType::from_id(tid)
                .ok_or_else(|| err(at, format!("tensor {name}: unknown ggml type id {tid}")))?;
            if ne[0] % ty.block_size() as u64 != 0 {
                return Err(err(
                    at,
                    format!(
                        "tensor {name}: row length {} is not a multiple of the {ty} block size {}",
                        ne[0],
                        ty.block_size()
                    ),
                ));
            }
            let size = (n_el / ty.block_size() as u64)
                .checked_mul(ty.type_size() as u64)
                .ok_or_else(|| err(at, format!("tensor {name}: byte size overflows")))?;
            let offset = c.u64(&name)?;
            if offset % alignment != 0 {
                return Err(err(
                    at,
                    format!("tensor {name}: offset {offset} is not aligned to {alignment}"),
                ));
            }
            raws.push(Raw {
                name,
                ne,
                n_dims,
                ty,
                offset,
                size,
                at,
            });
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        if n_tensors > 0 && data_offset > file_len {
            return Err(err(c.pos, "file truncated before the tensor data section"));
        }
        let mut tensors = Vec::with_capacity(raws.len());
        let mut tensor_index = HashMap::with_capacity(raws.len());
        for r in raws {
            let start = data_offset.checked_add(r.offset);
            let end = start.and_then(|s| s.checked_add(r.size));
            let (start, end) = match (start, end) {
                (Some(s), Some(e)) if e <= file_len => (s, e),
                _ => {
                    return Err(err(
                        r.at,
                        format!(
                            "tensor {}: data [{} + {}, {} bytes) runs past the end of the file ({file_len} bytes)",
                            r.name, data_offset, r.offset, r.size
                        ),
                    ))
                }
            };
            if tensor_index.insert(r.name.clone(), tensors.len()).is_some() {
                return Err(err(r.at, format!("duplicate tensor name {}", r.name)));
            }
            tensors.push(TensorInfo {
                name: r.name,
                ne: r.ne,
                n_dims: r.n_dims,
                ty: r.ty,
                data: start as usize..end as usize,
            });
        }
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].data.start);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.data.end > b.data.start {
                return Err(err(
                    a.data.start,
                    format!("tensors {} and {} overlap", a.name, b.name),
                ));
            }
        }

        Ok(GgufFile {
            backing,
            version,
            alignment,
            data_offset,
            kv,
            kv_index,
            tensors,
            tensor_index,
        })
    }

    /// All the file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v.as_slice(),
        }
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> usize {
        self.bytes().len()
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.kv.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.kv[i].1)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes: a slice of the mapping, never a copy.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes()[t.data.clone()]
    }
}
