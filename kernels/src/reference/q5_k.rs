//! Q5_K: Q4_K with a fifth bit per quant: `x = d * sc[g] * q - dmin * m[g]`, `q` in 0..32.
//! Dotted with Q8_K.
//!
//! Scales, minimums and low nibbles are laid out as in Q4_K (see `q4_k`). The fifth bit of the
//! element `l` of group `g` (`l < 32`) is bit `g` of `qh[l]`.

use super::q4_k::{scale_min_k4, scales_mins_k4, K_SCALE_SIZE};
use super::q8_k::{accumulate_lanes, BlockQ8K};
use super::{bytes, f16_le, Block, QK_K};

/// A Q5_K block, same bit layout as ggml's `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5K {
    /// Super-block scale of the group scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the group minimums, f16 little-endian.
    pub dmin: [u8; 2],
    /// Packed 6-bit group scales and minimums, as Q4_K's.
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bits: bit `g` of byte `l` belongs to element `l` of group `g`.
    pub qh: [u8; QK_K / 8],
    /// Low nibbles, as Q4_K's quants.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ5K {}

impl Block for BlockQ5K {
    const SIZE: usize = 176;
    const ELEMS: usize = QK_K;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            dmin: [b[2], b[3]],
            scales: bytes(b, 4),
            qh: bytes(b, 16),
            qs: bytes(b, 48),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        out[2..4].copy_from_slice(&self.dmin);
        out[4..16].copy_from_slice(&self.scales);
        out[16..48].copy_from_slice(&self.qh);
        out[48..Self::SIZE].copy_from_slice(&self.qs);
    }
}

/// The 256 quants of a block, 0..32 each, in element order.
#[inline(always)]
fn unpack(x: &BlockQ5K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for c in 0..QK_K / 64 {
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            let h1 = if x.qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if x.qh[l] & u2 != 0 { 16 } else { 0 };
            q[64 * c + l] = ((x.qs[32 * c + l] & 0x0f) | h1) as i8;
            q[64 * c + 32 + l] = ((x.qs[32 * c + l] >> 4) | h2) as i8;
        }
    }
    q
}

/// Q5_K blocks to f32 (ggml's `dequantize_row_q5_K`: `(d * sc) * q - (dmin * m)`, not fused).
pub fn dequantize_row_q5_k(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK_K, out.len() * BlockQ5K::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK_K)
        .zip(src.chunks_exact(BlockQ5K::SIZE))
    {
        let b = BlockQ5K::read(b);
        let (d, min) = (f16_le(b.d), f16_le(b.dmin));
        let q = unpack(&b);
        for g in 0..QK_K / 32 {
            let (s, m) = scale_min_k4(g, &b.scales);
            let (dg, mg) = (d * f32::from(s), min * f32::from(m));
            for l in 0..32 {
                o[32 * g + l] = dg * f32::from(q[32 * g + l]) - mg;
            }
        }
    }
}

/// Dot product of `n` Q5_K weights with `n` Q8_K activations (ggml's generic
/// `ggml_vec_dot_q5_K_q8_K`, accumulated as Q4_K's).
pub fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK_K, 0);
    let nb = n / QK_K;
    let (w, a) = (&w[..nb * BlockQ5K::SIZE], &a[..nb * BlockQ8K::SIZE]);
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ5K::SIZE)
        .zip(a.chunks_exact(BlockQ8K::SIZE))
    {
        let (x, y) = (BlockQ5K::read(wb), BlockQ8K::read(ab));
        let q = unpack(&x);
        let (sc, mn) = scales_mins_k4(&x.scales);
        let bsums = y.group_sums();
        let mut summ = 0i32;
        for (j, &s) in bsums.iter().enumerate() {
            summ += i32::from(s) * mn[j / 2];
        }
        let ya = y.scale();
        accumulate_lanes(&q, &y, &sc, f16_le(x.d) * ya, &mut sums);
        sumf -= (f16_le(x.dmin) * ya) * summ as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}
