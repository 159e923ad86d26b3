//! Q5_1: 32 unsigned 5-bit quants with an f16 scale and an f16 offset, `x = d * q + m`; dotted
//! with Q8_1.
//!
//! Same bit layout as ggml's `block_q5_1`: quants packed as Q5_0's (see [`super::q5_0`]).
//! Quantization is ggml's `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`,
//! `q = trunc((x - min) / d + 0.5)` (no clamp, as in ggml). The dot uses Q8_1's
//! `s = d_a * sum(q_a)` for the offset term, as Q4_1's does.

use super::q5_0::{pack5, unpack5};
use super::q8::{hsum8, BlockQ8_1};
use super::{bytes, f16_le, to_f16_le, Block};

/// Elements per Q5_1 block (ggml's `QK5_1`).
pub const QK5_1: usize = 32;

/// A Q5_1 block, same bit layout as ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Offset (the block minimum), f16 little-endian.
    pub m: [u8; 2],
    /// Fifth bits: bit `i` of this little-endian u32 belongs to element `i`.
    pub qh: [u8; 4],
    /// Low nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

impl Block for BlockQ5_1 {
    const SIZE: usize = 24;
    const ELEMS: usize = QK5_1;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            m: [b[2], b[3]],
            qh: bytes(b, 4),
            qs: bytes(b, 8),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        out[2..4].copy_from_slice(&self.m);
        out[4..8].copy_from_slice(&self.qh);
        out[8..Self::SIZE].copy_from_slice(&self.qs);
    }
}

/// Q5_1 blocks to f32 (ggml's `dequantize_row_q5_1`: `q * d + m`, not fused).
pub fn dequantize_row_q5_1(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK5_1, out.len() * BlockQ5_1::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK5_1)
        .zip(src.chunks_exact(BlockQ5_1::SIZE))
    {
        let b = BlockQ5_1::read(b);
        let (d, m) = (f16_le(b.d), f16_le(b.m));
        for (y, &q) in o.iter_mut().zip(&unpack5(b.qh, &b.qs)) {
            *y = f32::from(q) * d + m;
        }
    }
}

/// f32 to Q5_1 blocks (ggml's `quantize_row_q5_1_ref`).
pub fn quantize_row_q5_1(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ5_1::SIZE, out.len() * QK5_1);
    for (x, o) in src
        .chunks_exact(QK5_1)
        .zip(out.chunks_exact_mut(BlockQ5_1::SIZE))
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
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK5_1];
        for (qi, &v) in q.iter_mut().zip(x) {
            // ggml: (uint8_t)((x - min) * id + 0.5f); the cast truncates, at most 31 here.
            *qi = ((v - min) * id + 0.5) as u8;
        }
        let (qh, qs) = pack5(&q);
        BlockQ5_1 {
            d: to_f16_le(d),
            m: to_f16_le(min),
            qh,
            qs,
        }
        .write(o);
    }
}

/// Dot product of `n` Q5_1 weights with `n` Q8_1 activations: per block
/// `fma(sumi_lane, d_w * d_a, acc_lane)` over 8 lanes of 4 consecutive elements, reduced by
/// [`hsum8`], plus the `m_w * s_a` terms in a separate fused f32 sum added last — the order of
/// ggml's AVX2 `ggml_vec_dot_q5_1_q8_1` (as [`super::q4_1::vec_dot_q4_1_q8_1`]).
#[inline(always)]
pub fn vec_dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK5_1, 0);
    let nb = n / QK5_1;
    let (w, a) = (&w[..nb * BlockQ5_1::SIZE], &a[..nb * BlockQ8_1::SIZE]);
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ5_1::SIZE)
        .zip(a.chunks_exact(BlockQ8_1::SIZE))
    {
        let (x, y) = (BlockQ5_1::read(wb), BlockQ8_1::read(ab));
        let q = unpack5(x.qh, &x.qs);
        let d = f16_le(x.d) * f16_le(y.d);
        for (l, acc_l) in acc.iter_mut().enumerate() {
            let mut li = 0i32;
            for (&qi, &ai) in q[4 * l..4 * l + 4].iter().zip(&y.qs[4 * l..4 * l + 4]) {
                li += i32::from(qi) * i32::from(ai);
            }
            *acc_l = (li as f32).mul_add(d, *acc_l);
        }
        summs = f16_le(x.m).mul_add(f16_le(y.s), summs);
    }
    hsum8(&acc) + summs
}
