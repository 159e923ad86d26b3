//! Q6_K: a 256-element super-block of sixteen 16-element groups; 6-bit quants offset by -32, each
//! group with a signed 8-bit scale, scaled by the f16 `d`: `x = d * sc[g] * (q - 32)`. Dotted
//! with Q8_K.
//!
//! Layout per 128-element half `h` (`ql[64h..64h + 64]`, `qh[32h..32h + 32]`), for `l < 32`:
//! elements `l`, `l + 32`, `l + 64`, `l + 96` take their low 4 bits from the low nibble of
//! `ql[l]`, the low nibble of `ql[l + 32]`, the high nibble of `ql[l]`, the high nibble of
//! `ql[l + 32]`, and their top 2 bits from bits 0-1, 2-3, 4-5, 6-7 of `qh[l]`.
//!
//! No quantization here (ggml's `quantize_row_q6_K_ref` is an iterative search).

use super::q8_k::{accumulate_lanes, BlockQ8K};
use super::{bytes, f16_le, signed_bytes, Block, QK_K};

/// A Q6_K block, same bit layout as ggml's `block_q6_K` (the scale `d` comes last).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Signed scale of each group of 16.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

impl Block for BlockQ6K {
    const SIZE: usize = 210;
    const ELEMS: usize = QK_K;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            ql: bytes(b, 0),
            qh: bytes(b, 128),
            scales: signed_bytes(b, 192),
            d: [b[208], b[209]],
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..128].copy_from_slice(&self.ql);
        out[128..192].copy_from_slice(&self.qh);
        super::put_signed(out, 192, &self.scales);
        out[208..Self::SIZE].copy_from_slice(&self.d);
    }
}

/// The 256 quants of a block, offset applied (-32..32), in element order.
#[inline(always)]
fn unpack(x: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..QK_K / 128 {
        let (ql, qh) = (&x.ql[64 * h..64 * h + 64], &x.qh[32 * h..32 * h + 32]);
        let o = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            o[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

/// Q6_K blocks to f32 (ggml's `dequantize_row_q6_K`: `(d * sc) * q`).
pub fn dequantize_row_q6_k(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK_K, out.len() * BlockQ6K::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK_K)
        .zip(src.chunks_exact(BlockQ6K::SIZE))
    {
        let b = BlockQ6K::read(b);
        let d = f16_le(b.d);
        let q = unpack(&b);
        for g in 0..QK_K / 16 {
            let dg = d * f32::from(b.scales[g]);
            for l in 0..16 {
                o[16 * g + l] = dg * f32::from(q[16 * g + l]);
            }
        }
    }
}

/// Dot product of `n` Q6_K weights with `n` Q8_K activations (ggml's generic
/// `ggml_vec_dot_q6_K_q8_K`: integer group sums, the scale terms in 8 f32 lanes added last).
pub fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK_K, 0);
    let nb = n / QK_K;
    let (w, a) = (&w[..nb * BlockQ6K::SIZE], &a[..nb * BlockQ8K::SIZE]);
    let mut sums = [0f32; 8];
    for (wb, ab) in w
        .chunks_exact(BlockQ6K::SIZE)
        .zip(a.chunks_exact(BlockQ8K::SIZE))
    {
        let (x, y) = (BlockQ6K::read(wb), BlockQ8K::read(ab));
        let q = unpack(&x);
        let sc = x.scales.map(i32::from);
        accumulate_lanes(&q, &y, &sc, f16_le(x.d) * y.scale(), &mut sums);
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}
