//! Q8_0 and Q8_1: 32 signed 8-bit quants with an f16 scale (Q8_1 adds the f16 `s = d * sum(qs)`).
//!
//! Q8_0 is both a weight type and the activation type of Q4_0 and Q8_0 weights; Q8_1 is the
//! activation type of Q4_1 weights (its `s` folds the Q4_1 offset into one multiply per block).
//! Quantization is ggml's `quantize_row_q8_0_ref` / `quantize_row_q8_1_ref`: `d = amax / 127`,
//! `q = roundf(x * (1/d))` (halfway cases away from zero), `d` stored as f16 after the quants were
//! computed with the f32 `d`.

use super::{f16_le, put_signed, roundf, signed_bytes, to_f16_le, Block};

/// Elements per Q8_0 / Q8_1 block (ggml's `QK8_0`, `QK8_1`).
pub const QK8: usize = 32;

/// A Q8_0 block, same bit layout as ggml's `block_q8_0`: `x[i] = d * qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Quants.
    pub qs: [i8; QK8],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const SIZE: usize = 34;
    const ELEMS: usize = QK8;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            qs: signed_bytes(b, 2),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        put_signed(out, 2, &self.qs);
    }
}

/// A Q8_1 block, same bit layout as ggml's `block_q8_1` (36 bytes): `x[i] = d * qs[i]`, and
/// `s = d * sum(qs)` rounded to f16.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// `d * sum(qs)` (computed in f32 with the f32 `d`), f16 little-endian.
    pub s: [u8; 2],
    /// Quants.
    pub qs: [i8; QK8],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

impl Block for BlockQ8_1 {
    const SIZE: usize = 36;
    const ELEMS: usize = QK8;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            s: [b[2], b[3]],
            qs: signed_bytes(b, 4),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        out[2..4].copy_from_slice(&self.s);
        put_signed(out, 4, &self.qs);
    }
}

/// The shared core of Q8_0 and Q8_1 quantization: the f32 scale and the quants of one block.
#[inline(always)]
fn quantize_block(x: &[f32]) -> (f32, [i8; QK8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = roundf(v * id) as i8;
    }
    (d, qs)
}

/// Q8_0 blocks to f32 (ggml's `dequantize_row_q8_0`).
pub fn dequantize_row_q8_0(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK8, out.len() * BlockQ8_0::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK8)
        .zip(src.chunks_exact(BlockQ8_0::SIZE))
    {
        let b = BlockQ8_0::read(b);
        let d = f16_le(b.d);
        for (y, &q) in o.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// f32 to Q8_0 blocks (ggml's `quantize_row_q8_0_ref`).
pub fn quantize_row_q8_0(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ8_0::SIZE, out.len() * QK8);
    for (x, o) in src
        .chunks_exact(QK8)
        .zip(out.chunks_exact_mut(BlockQ8_0::SIZE))
    {
        let (d, qs) = quantize_block(x);
        BlockQ8_0 {
            d: to_f16_le(d),
            qs,
        }
        .write(o);
    }
}

/// Dot product of `n` Q8_0 weights with `n` Q8_0 activations (ggml's generic
/// `ggml_vec_dot_q8_0_q8_0`: per block `sumi * (d_w * d_a)`, summed in f32).
pub fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK8, 0);
    let nb = n / QK8;
    let (w, a) = (&w[..nb * BlockQ8_0::SIZE], &a[..nb * BlockQ8_0::SIZE]);
    let mut sumf = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ8_0::SIZE)
        .zip(a.chunks_exact(BlockQ8_0::SIZE))
    {
        let (x, y) = (BlockQ8_0::read(wb), BlockQ8_0::read(ab));
        let mut sumi = 0i32;
        for j in 0..QK8 {
            sumi += i32::from(x.qs[j]) * i32::from(y.qs[j]);
        }
        sumf += sumi as f32 * (f16_le(x.d) * f16_le(y.d));
    }
    sumf
}

/// Q8_1 blocks to f32 (`x[i] = d * qs[i]`; `s` is redundant for this).
pub fn dequantize_row_q8_1(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK8, out.len() * BlockQ8_1::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK8)
        .zip(src.chunks_exact(BlockQ8_1::SIZE))
    {
        let b = BlockQ8_1::read(b);
        let d = f16_le(b.d);
        for (y, &q) in o.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// f32 to Q8_1 blocks (ggml's `quantize_row_q8_1_ref`): the quants and `d` of Q8_0, and
/// `s = f16(sum(qs) as f32 * d)` with the f32 `d`.
pub fn quantize_row_q8_1(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ8_1::SIZE, out.len() * QK8);
    for (x, o) in src
        .chunks_exact(QK8)
        .zip(out.chunks_exact_mut(BlockQ8_1::SIZE))
    {
        let (d, qs) = quantize_block(x);
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        BlockQ8_1 {
            d: to_f16_le(d),
            s: to_f16_le(sum as f32 * d),
            qs,
        }
        .write(o);
    }
}

/// Dot product of two Q8_1 rows (not a ggml kernel: Q8_1 is activation-only; provided so every
/// table entry has a dot). Per block `sumi * (d_w * d_a)`, summed in f32.
pub fn vec_dot_q8_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK8, 0);
    let nb = n / QK8;
    let (w, a) = (&w[..nb * BlockQ8_1::SIZE], &a[..nb * BlockQ8_1::SIZE]);
    let mut sumf = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ8_1::SIZE)
        .zip(a.chunks_exact(BlockQ8_1::SIZE))
    {
        let (x, y) = (BlockQ8_1::read(wb), BlockQ8_1::read(ab));
        let mut sumi = 0i32;
        for j in 0..QK8 {
            sumi += i32::from(x.qs[j]) * i32::from(y.qs[j]);
        }
        sumf += sumi as f32 * (f16_le(x.d) * f16_le(y.d));
    }
    sumf
}
