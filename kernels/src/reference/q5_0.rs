//! Q5_0: 32 5-bit quants with an f16 scale, `x = d * (q - 16)`; dotted with Q8_0.
//!
//! Same bit layout as ggml's `block_q5_0`: the low four bits of each quant are packed as in Q4_0
//! (byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble); the
//! fifth bit of element `i` is bit `i` of the little-endian `u32` `qh`. Quantization is ggml's
//! `quantize_row_q5_0_ref`: `d` is the signed value of largest magnitude divided by -16 (the
//! first such value on ties), and `q = min(31, trunc(x / d + 16.5))`.
//!
//! llama.cpp falls back to Q5_0 for rows that are not a multiple of 256 in K-quant files (e.g.
//! Gemma 3 270M's 640-wide Q/K/gate/up projections), so a "Q4_K_M" small model needs it.

use super::q8::{hsum8, BlockQ8_0};
use super::{bytes, f16_le, to_f16_le, Block};

/// Elements per Q5_0 block (ggml's `QK5_0`).
pub const QK5_0: usize = 32;

/// A Q5_0 block, same bit layout as ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Fifth bits: bit `i` of this little-endian u32 belongs to element `i`.
    pub qh: [u8; 4],
    /// Low nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ5_0 {}

impl Block for BlockQ5_0 {
    const SIZE: usize = 22;
    const ELEMS: usize = QK5_0;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            qh: bytes(b, 2),
            qs: bytes(b, 6),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        out[2..6].copy_from_slice(&self.qh);
        out[6..Self::SIZE].copy_from_slice(&self.qs);
    }
}

/// The 5-bit quants of a Q5_0 or Q5_1 block (`0..=31`), in element order.
#[inline(always)]
pub(crate) fn unpack5(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let h = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) | ((((h >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((h >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Packs 32 quants (`0..=31`) into Q5's `qh` and `qs`.
#[inline(always)]
pub(crate) fn pack5(q: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut h = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
        h |= u32::from(q[j] >> 4 & 1) << j;
        h |= u32::from(q[j + 16] >> 4 & 1) << (j + 16);
    }
    (h.to_le_bytes(), qs)
}

/// Q5_0 blocks to f32 (ggml's `dequantize_row_q5_0`: `(q - 16) * d`).
pub fn dequantize_row_q5_0(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK5_0, out.len() * BlockQ5_0::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK5_0)
        .zip(src.chunks_exact(BlockQ5_0::SIZE))
    {
        let b = BlockQ5_0::read(b);
        let d = f16_le(b.d);
        for (y, &q) in o.iter_mut().zip(&unpack5(b.qh, &b.qs)) {
            *y = f32::from(q as i8 - 16) * d;
        }
    }
}

/// f32 to Q5_0 blocks (ggml's `quantize_row_q5_0_ref`).
pub fn quantize_row_q5_0(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ5_0::SIZE, out.len() * QK5_0);
    for (x, o) in src
        .chunks_exact(QK5_0)
        .zip(out.chunks_exact_mut(BlockQ5_0::SIZE))
    {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; QK5_0];
        for (qi, &v) in q.iter_mut().zip(x) {
            // ggml: MIN(31, (int8_t)(x * id + 16.5f)); the cast truncates toward zero.
            *qi = ((v * id + 16.5) as i8).min(31) as u8;
        }
        let (qh, qs) = pack5(&q);
        BlockQ5_0 {
            d: to_f16_le(d),
            qh,
            qs,
        }
        .write(o);
    }
}

/// Dot product of `n` Q5_0 weights with `n` Q8_0 activations: per block
/// `fma(d_w * d_a, sumi_lane, acc_lane)` over 8 lanes of 4 consecutive elements, reduced by
/// [`hsum8`], in the order of ggml's AVX2 `ggml_vec_dot_q5_0_q8_0`. See
/// [`vec_dot_q8_0_q8_0`](crate::reference::q8::vec_dot_q8_0_q8_0) for why the order is part of
/// the spec.
#[inline(always)]
pub fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK5_0, 0);
    let nb = n / QK5_0;
    let (w, a) = (&w[..nb * BlockQ5_0::SIZE], &a[..nb * BlockQ8_0::SIZE]);
    let mut acc = [0f32; 8];
    for (wb, ab) in w
        .chunks_exact(BlockQ5_0::SIZE)
        .zip(a.chunks_exact(BlockQ8_0::SIZE))
    {
        let (x, y) = (BlockQ5_0::read(wb), BlockQ8_0::read(ab));
        let q = unpack5(x.qh, &x.qs);
        let d = f16_le(x.d) * f16_le(y.d);
        for (l, acc_l) in acc.iter_mut().enumerate() {
            let mut li = 0i32;
            for (&qi, &ai) in q[4 * l..4 * l + 4].iter().zip(&y.qs[4 * l..4 * l + 4]) {
                li += (i32::from(qi) - 16) * i32::from(ai);
            }
            *acc_l = d.mul_add(li as f32, *acc_l);
        }
    }
    hsum8(&acc)
}
