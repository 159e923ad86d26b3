//! How the KV cache stores a row (the key or value of one token for one KV head): f16, or
//! quantized per row in ggml's Q8_0 / Q4_0 block layouts (llama.cpp's `-ctk/-ctv q8_0|q4_0`).
//!
//! Quantized rows are stored rotated, as llama.cpp stores them: keys (and the queries that meet
//! them) and values go through an orthonormal Walsh–Hadamard transform ([`hadamard`]) before
//! they are quantized, and attention's output goes back through it (the transform is its own
//! inverse). The scores and the weighted sums are unchanged in exact arithmetic, but a head's
//! outlier dimensions are spread over the whole block, so 4-bit rows lose far less: on
//! SmolLM2, Q4_0 KV costs 6% of perplexity with the rotation and 23% without (BENCHMARKS.md).
//!
//! Attention reads a quantized row back exactly: every element is `d * q` (Q8_0) or
//! `d * (q - 8)` (Q4_0) in f32, which is exact (an f16 scale times a small integer), so the fast
//! kernels and the reference agree to the bit whatever the order of their loads.

use half::f16;

use crate::reference::{q4_0, q8};

/// Storage type of the KV cache's rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// IEEE half precision, 2 bytes per element (the default; llama.cpp's default too).
    #[default]
    F16,
    /// ggml's Q8_0: blocks of 32 elements, an f16 scale and 32 signed bytes (34 bytes).
    Q8_0,
    /// ggml's Q4_0: blocks of 32 elements, an f16 scale and 16 bytes of 4-bit values (18 bytes).
    Q4_0,
}

impl KvType {
    /// Every type, in the order of [`KvType::code`].
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The name used on the command line and in files: `f16`, `q8_0`, `q4_0`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The type named `name` (any case), if any.
    pub fn parse(name: &str) -> Option<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// A stable small number for files and the C ABI (0 f16, 1 q8_0, 2 q4_0).
    pub fn code(self) -> u32 {
        match self {
            KvType::F16 => 0,
            KvType::Q8_0 => 1,
            KvType::Q4_0 => 2,
        }
    }

    /// The type of [`KvType::code`] `code`.
    pub fn from_code(code: u32) -> Option<KvType> {
        KvType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Elements per quantization block (1 for f16).
    pub fn block_elems(self) -> usize {
        match self {
            KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => 32,
        }
    }

    /// Bytes of one row of `d` elements; `None` when `d` is not a whole number of blocks
    /// (quantized types need head sizes that are multiples of 32).
    pub fn row_bytes(self, d: usize) -> Option<usize> {
        if !d.is_multiple_of(self.block_elems()) {
            return None;
        }
        Some(match self {
            KvType::F16 => 2 * d,
            KvType::Q8_0 => d / 32 * 34,
            KvType::Q4_0 => d / 32 * 18,
        })
    }

    /// The size of the Walsh–Hadamard blocks keys and queries are rotated by before keys are
    /// stored, for heads of `d` elements: `None` for f16 (stored as computed) and for heads that
    /// are not a multiple of 64; else the largest power of two dividing `d` (llama.cpp's
    /// `attn_rot_k`).
    pub fn key_rotation(self, d: usize) -> Option<usize> {
        if self == KvType::F16 || d == 0 || !d.is_multiple_of(64) {
            return None;
        }
        Some(1 << d.trailing_zeros())
    }

    /// The size of the Walsh–Hadamard blocks values are rotated by before they are stored (and
    /// attention's output rotated back by): `None` for f16 and heads that are not a multiple of
    /// 64; else 64 (llama.cpp's `attn_rot_v`).
    pub fn value_rotation(self, d: usize) -> Option<usize> {
        self.key_rotation(d).map(|_| 64)
    }

    /// Store one row: `src` (`d` elements) into `out` (`row_bytes(d)` bytes). f16 rounds to
    /// nearest even; the quantized types are ggml's reference quantizers
    /// (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`).
    pub fn store_row(self, src: &[f32], out: &mut [u8]) {
        match self {
            KvType::F16 => {
                for (o, &x) in out.chunks_exact_mut(2).zip(src) {
                    o.copy_from_slice(&f16::from_f32(x).to_le_bytes());
                }
            }
            KvType::Q8_0 => q8::quantize_row_q8_0(src, out),
            KvType::Q4_0 => q4_0::quantize_row_q4_0(src, out),
        }
    }

    /// Read one row back: `src` (`row_bytes(d)` bytes) into `out` (`d` elements), exactly.
    #[inline]
    pub fn load_row(self, src: &[u8], out: &mut [f32]) {
        match self {
            KvType::F16 => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            KvType::Q8_0 => q8::dequantize_row_q8_0(src, out),
            KvType::Q4_0 => q4_0::dequantize_row_q4_0(src, out),
        }
    }
}

/// `x ← H x` for each consecutive block of `n` elements of `x` (`n` a power of two), `H` the
/// orthonormal Walsh–Hadamard matrix of size `n` in Sylvester order (`H = H₁ ⊗ … ⊗ H₁ / √n`,
/// `H₁ = [[1, 1], [1, -1]]`): symmetric and its own inverse. The fast transform: `log2 n`
/// passes of butterflies in f32, then the scale. Panics unless `n` is a power of two dividing
/// `x.len()`.
pub fn hadamard(x: &mut [f32], n: usize) {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
    let scale = 1.0 / (n as f32).sqrt();
    for b in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for i in (0..n).step_by(2 * h) {
                for j in i..i + h {
                    let (a, c) = (b[j], b[j + h]);
                    b[j] = a + c;
                    b[j + h] = a - c;
                }
            }
            h *= 2;
        }
        b.iter_mut().for_each(|v| *v *= scale);
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<KvType, String> {
        KvType::parse(s).ok_or_else(|| {
            let names: Vec<&str> = KvType::ALL.iter().map(|t| t.name()).collect();
            format!("unknown KV type {s:?} (one of {})", names.join(", "))
        })
    }
}

/// Consecutive K or V rows of one KV head, as stored: whole rows of [`KvType::row_bytes`].
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a> {
    /// How the rows are stored.
    pub ty: KvType,
    /// The rows' bytes.
    pub bytes: &'a [u8],
}

impl<'a> KvRows<'a> {
    /// Rows stored as `ty` in `bytes`.
    pub fn new(ty: KvType, bytes: &'a [u8]) -> KvRows<'a> {
        KvRows { ty, bytes }
    }

    /// f16 rows.
    pub fn f16(rows: &'a [f16]) -> KvRows<'a> {
        // SAFETY: `f16` is two plain bytes with no invalid bit patterns; the byte view covers
        // exactly the same memory and borrows it for the same lifetime; u8 needs no alignment.
        let bytes =
            unsafe { std::slice::from_raw_parts(rows.as_ptr().cast::<u8>(), 2 * rows.len()) };
        KvRows {
            ty: KvType::F16,
            bytes,
        }
    }

    /// Rows of `d` elements held (panics when `d` does not fit the type: a caller bug).
    pub fn n_rows(&self, d: usize) -> usize {
        let rb = self.ty.row_bytes(d).expect("head size fits the KV type");
        self.bytes.len().checked_div(rb).unwrap_or(0)
    }

    /// Rows `rows` (of `d` elements each).
    pub fn slice(&self, rows: std::ops::Range<usize>, d: usize) -> KvRows<'a> {
        let rb = self.ty.row_bytes(d).expect("head size fits the KV type");
        KvRows {
            ty: self.ty,
            bytes: &self.bytes[rows.start * rb..rows.end * rb],
        }
    }

    /// Row `j` (of `d` elements) as f32, exactly.
    #[inline]
    pub fn load(&self, j: usize, d: usize, out: &mut [f32]) {
        let rb = self.ty.row_bytes(d).expect("head size fits the KV type");
        self.ty
            .load_row(&self.bytes[j * rb..(j + 1) * rb], &mut out[..d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transform is Sylvester's matrix (checked against the matrix built as llama.cpp's
    /// `ggml_gen_hadamard` builds it), keeps dot products, and undoes itself.
    #[test]
    fn hadamard_is_the_orthonormal_sylvester_matrix() {
        let n = 64;
        let mut h = vec![0f32; n * n];
        h[0] = 1.0 / (n as f32).sqrt();
        let mut s = 1;
        while s < n {
            for i in 0..s {
                for j in 0..s {
                    let v = h[i * n + j];
                    h[(i + s) * n + j] = v;
                    h[i * n + j + s] = v;
                    h[(i + s) * n + j + s] = -v;
                }
            }
            s *= 2;
        }
        let x: Vec<f32> = (0..2 * n)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.37)
            .collect();
        let mut y = x.clone();
        hadamard(&mut y, n);
        for (blk, yb) in x.chunks_exact(n).zip(y.chunks_exact(n)) {
            for i in 0..n {
                let want: f32 = (0..n).map(|j| h[i * n + j] * blk[j]).sum();
                assert!((yb[i] - want).abs() < 1e-4, "row {i}: {} vs {want}", yb[i]);
            }
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
        let z: Vec<f32> = x.iter().rev().copied().collect();
        let mut hz = z.clone();
        hadamard(&mut hz, n);
        assert!((dot(&x, &z) - dot(&y, &hz)).abs() < 1e-3);
        hadamard(&mut y, n);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5);
        }
        assert_eq!(KvType::Q4_0.key_rotation(64), Some(64));
        assert_eq!(KvType::Q8_0.key_rotation(256), Some(256));
        assert_eq!(KvType::Q8_0.key_rotation(192), Some(64));
        assert_eq!(KvType::Q8_0.value_rotation(256), Some(64));
        assert_eq!(KvType::Q8_0.key_rotation(32), None);
        assert_eq!(KvType::F16.key_rotation(64), None);
    }

    #[test]
    fn rows_round_trip_within_the_types_precision() {
        let src: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173)
            .collect();
        for ty in KvType::ALL {
            let rb = ty.row_bytes(64).unwrap();
            let mut bytes = vec![0u8; rb];
            ty.store_row(&src, &mut bytes);
            let mut back = vec![0f32; 64];
            KvRows::new(ty, &bytes).load(0, 64, &mut back);
            let amax = src.iter().fold(0f32, |m, x| m.max(x.abs()));
            let tol = match ty {
                KvType::F16 => amax / 1024.0,
                KvType::Q8_0 => amax / 127.0,
                KvType::Q4_0 => amax / 7.0,
            };
            for (a, b) in src.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{ty}: {a} vs {b}");
            }
        }
        assert_eq!(KvType::Q8_0.row_bytes(48), None);
        assert_eq!(KvType::F16.row_bytes(48), Some(96));
        assert_eq!(KvType::parse("Q4_0"), Some(KvType::Q4_0));
        assert_eq!(KvType::parse("q5_0"), None);
        for t in KvType::ALL {
            assert_eq!(KvType::from_code(t.code()), Some(t));
        }
    }
}
