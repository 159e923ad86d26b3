//! Q6_K: a 256-element super-block of sixteen 16-element groups; 6-bit quants offset by -32, each
//! group with a signed 8-bit scale, scaled by the f16 `d`: `x = d * sc[g] * (q - 32)`. Dotted
//! with Q8_K.
//!
//! Layout per 128-element half `h` (`ql[64h..64h + 64]`, `qh[32h..32h + 32]`), for `l < 32`:
//! elements `l`, `l + 32`, `l + 64`, `l + 96` take their low 4 bits from the low nibble of
//! `ql[l]`, the low nibble of `ql[l + 32]`, the high nibble of `ql[l]`, the high nibble of
//! `ql[l + 32]`, and their top 2 bits from bits 0-1, 2-3, 4-5, 6-7 of `qh[l]`.
//!
//! Quantization (ggml's `quantize_row_q6_K_ref`, an iterative search) is in `kquant_search`.

use super::q8_k::BlockQ8K;
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

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ6K {}

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

/// Dot product of `n` Q6_K weights with `n` Q8_K activations, in the float order of ggml's AVX2
/// `ggml_vec_dot_q6_K_q8_K` (what llama.cpp runs on x86; Q6_K is not repacked there). Per
/// super-block, lane `l` (of 8) holds the exact integer
/// `Σ sc[e / 16] · (q[e] + 32) · y[e]` over the elements with `(e % 32) / 4 == l`, minus
/// `32 · (bsums[2l] · sc[2l] + bsums[2l + 1] · sc[2l + 1])` (the offset, applied through the
/// group sums of *other* elements: only the lane total over the block is meaningful); then
/// `acc[l] = fma(d_a · d_w, lane, acc[l])`, and the lanes are added at the end as
/// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
pub fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK_K, 0);
    let nb = n / QK_K;
    let (w, a) = (&w[..nb * BlockQ6K::SIZE], &a[..nb * BlockQ8K::SIZE]);
    let mut acc = [0f32; 8];
    for (wb, ab) in w
        .chunks_exact(BlockQ6K::SIZE)
        .zip(a.chunks_exact(BlockQ8K::SIZE))
    {
        let (x, y) = (BlockQ6K::read(wb), BlockQ8K::read(ab));
        let q = unpack(&x);
        let sc = x.scales.map(i32::from);
        let bsums = y.group_sums();
        let mut lanes = [0i32; 8];
        for (e, (&q, &y)) in q.iter().zip(&y.qs).enumerate() {
            lanes[(e % 32) / 4] += sc[e / 16] * ((i32::from(q) + 32) * i32::from(y));
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            let sub =
                i32::from(bsums[2 * l]) * sc[2 * l] + i32::from(bsums[2 * l + 1]) * sc[2 * l + 1];
            *lane -= sub << 5;
        }
        let d = y.scale() * f16_le(x.d);
        for (a, &lane) in acc.iter_mut().zip(&lanes) {
            *a = d.mul_add(lane as f32, *a);
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// [`vec_dot_q6_k_q8_k`] in the float order of ggml's tiled k-quant matmul (AVX2
/// `tiled_run_microtile`), which llama.cpp takes for Q6_K products of 8 or more activation
/// rows: per super-block the exact integer `Σ sc · (q - 32) · y`, scaled by the weight's `d`
/// (rounded), then `acc = fma(that, d_a, acc)`.
pub fn vec_dot_q6_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK_K, 0);
    let nb = n / QK_K;
    let (w, a) = (&w[..nb * BlockQ6K::SIZE], &a[..nb * BlockQ8K::SIZE]);
    let mut acc = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ6K::SIZE)
        .zip(a.chunks_exact(BlockQ8K::SIZE))
    {
        let (x, y) = (BlockQ6K::read(wb), BlockQ8K::read(ab));
        let q = unpack(&x);
        let mut sumi = 0i32;
        for (g, (qg, yg)) in q.chunks_exact(16).zip(y.qs.chunks_exact(16)).enumerate() {
            let s: i32 = qg
                .iter()
                .zip(yg)
                .map(|(&q, &y)| i32::from(q) * i32::from(y))
                .sum();
            sumi += i32::from(x.scales[g]) * s;
        }
        acc = (f16_le(x.d) * sumi as f32).mul_add(y.scale(), acc);
    }
    acc
}
