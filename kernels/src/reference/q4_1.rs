//! Q4_1: 32 unsigned 4-bit quants with an f16 scale and an f16 offset, `x = d * q + m`; dotted
//! with Q8_1.
//!
//! Nibble order as Q4_0: byte `j` holds element `j` low and element `j + 16` high. Quantization
//! is ggml's `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`,
//! `q = min(15, trunc((x - min) / d + 0.5))`. The dot uses Q8_1's `s = d_a * sum(q_a)` for the
//! offset term: `d_w * d_a * sum(q_w * q_a) + m_w * s_a`; `s_a` is rounded to f16, which is part
//! of ggml's result.

use super::q8::BlockQ8_1;
use super::{bytes, f16_le, to_f16_le, Block};

/// Elements per Q4_1 block (ggml's `QK4_1`).
pub const QK4_1: usize = 32;

/// A Q4_1 block, same bit layout as ggml's `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Offset (the block minimum), f16 little-endian.
    pub m: [u8; 2],
    /// Nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ4_1 {}

impl Block for BlockQ4_1 {
    const SIZE: usize = 20;
    const ELEMS: usize = QK4_1;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            m: [b[2], b[3]],
            qs: bytes(b, 4),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        out[2..4].copy_from_slice(&self.m);
        out[4..Self::SIZE].copy_from_slice(&self.qs);
    }
}

/// Q4_1 blocks to f32 (ggml's `dequantize_row_q4_1`: `q * d + m`, not fused).
pub fn dequantize_row_q4_1(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK4_1, out.len() * BlockQ4_1::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK4_1)
        .zip(src.chunks_exact(BlockQ4_1::SIZE))
    {
        let b = BlockQ4_1::read(b);
        let (d, m) = (f16_le(b.d), f16_le(b.m));
        let (lo, hi) = o.split_at_mut(QK4_1 / 2);
        for j in 0..QK4_1 / 2 {
            lo[j] = f32::from(b.qs[j] & 0x0f) * d + m;
            hi[j] = f32::from(b.qs[j] >> 4) * d + m;
        }
    }
}

/// f32 to Q4_1 blocks (ggml's `quantize_row_q4_1_ref`).
pub fn quantize_row_q4_1(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ4_1::SIZE, out.len() * QK4_1);
    for (x, o) in src
        .chunks_exact(QK4_1)
        .zip(out.chunks_exact_mut(BlockQ4_1::SIZE))
    {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // ggml: MIN(15, (int8_t)((x - min) * id + 0.5f)); the cast truncates toward zero.
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        let mut qs = [0u8; QK4_1 / 2];
        for j in 0..QK4_1 / 2 {
            qs[j] = q(x[j]) | (q(x[j + QK4_1 / 2]) << 4);
        }
        BlockQ4_1 {
            d: to_f16_le(d),
            m: to_f16_le(min),
            qs,
        }
        .write(o);
    }
}

/// Dot product of `n` Q4_1 weights with `n` Q8_1 activations: per block
/// `(d_w * d_a) * sumi + m_w * s_a`, summed in the order of ggml's AVX2
/// `ggml_vec_dot_q4_1_q8_1` (8 lanes of 4 elements each, `fma` per block, reduced by
/// [`hsum8`](crate::reference::q8::hsum8); the `m * s` terms in a separate fused f32 sum added
/// last). See [`vec_dot_q8_0_q8_0`](crate::reference::q8::vec_dot_q8_0_q8_0) for why the order
/// is part of the spec.
#[inline(always)]
pub fn vec_dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK4_1, 0);
    let nb = n / QK4_1;
    let (w, a) = (&w[..nb * BlockQ4_1::SIZE], &a[..nb * BlockQ8_1::SIZE]);
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ4_1::SIZE)
        .zip(a.chunks_exact(BlockQ8_1::SIZE))
    {
        let (x, y) = (BlockQ4_1::read(wb), BlockQ8_1::read(ab));
        // Lane l holds elements 4l..4l+3; low nibbles are elements 0..16, high 16..32.
        let d = f16_le(x.d) * f16_le(y.d);
        for (l, acc_l) in acc.iter_mut().enumerate() {
            let mut li = 0i32;
            for e in 4 * l..4 * l + 4 {
                let w = if e < 16 {
                    x.qs[e] & 0x0f
                } else {
                    x.qs[e - 16] >> 4
                };
                li += i32::from(w) * i32::from(y.qs[e]);
            }
            *acc_l = d.mul_add(li as f32, *acc_l);
        }
        summs = f16_le(x.m).mul_add(f16_le(y.s), summs);
    }
    crate::reference::q8::hsum8(&acc) + summs
}
