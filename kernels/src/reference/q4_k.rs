//! Q4_K: a 256-element super-block of eight 32-element groups; 4-bit quants, each group with a
//! 6-bit scale and a 6-bit minimum, themselves scaled by the f16 `d` and `dmin`:
//! `x = d * sc[g] * q - dmin * m[g]`. Dotted with Q8_K.
//!
//! Layout of the 12 scale bytes (ggml's `get_scale_min_k4`): groups 0..4 keep their scale in the
//! low 6 bits of bytes 0..4 and their minimum in the low 6 bits of bytes 4..8; groups 4..8 keep the
//! low 4 bits of scale and minimum in the low and high nibbles of bytes 8..12 and their top 2 bits
//! in the top 2 bits of bytes 0..4 (scale) and 4..8 (minimum). Quants: each 32-byte chunk `c` of
//! `qs` holds group `2c` in its low nibbles and group `2c + 1` in its high nibbles.
//!
//! Quantization (ggml's `quantize_row_q4_K_ref`, an iterative search) is in `kquant_search`.

use super::q8_k::BlockQ8K;
use super::{bytes, f16_le, Block, QK_K};

/// Bytes of packed 6-bit scales and minimums in Q4_K and Q5_K (ggml's `K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// A Q4_K block, same bit layout as ggml's `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4K {
    /// Super-block scale of the group scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the group minimums, f16 little-endian.
    pub dmin: [u8; 2],
    /// Packed 6-bit group scales and minimums (see [`scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// Nibbles: chunk `c` of 32 bytes holds group `2c` low, group `2c + 1` high.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ4K {}

impl Block for BlockQ4K {
    const SIZE: usize = 144;
    const ELEMS: usize = QK_K;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            dmin: [b[2], b[3]],
            scales: bytes(b, 4),
            qs: bytes(b, 16),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        out[2..4].copy_from_slice(&self.dmin);
        out[4..16].copy_from_slice(&self.scales);
        out[16..Self::SIZE].copy_from_slice(&self.qs);
    }
}

/// The 6-bit (scale, minimum) of group `j < 8` from the packed bytes `q` (ggml's
/// `get_scale_min_k4`; shared by Q4_K and Q5_K).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scales, minimums) as integers.
#[inline(always)]
pub(crate) fn scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> ([i32; 8], [i32; 8]) {
    let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, q);
        sc[j] = i32::from(s);
        mn[j] = i32::from(m);
    }
    (sc, mn)
}

/// Q4_K blocks to f32 (ggml's `dequantize_row_q4_K`: `(d * sc) * q - (dmin * m)`, not fused).
pub fn dequantize_row_q4_k(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK_K, out.len() * BlockQ4K::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK_K)
        .zip(src.chunks_exact(BlockQ4K::SIZE))
    {
        let b = BlockQ4K::read(b);
        let (d, min) = (f16_le(b.d), f16_le(b.dmin));
        for c in 0..QK_K / 64 {
            let (s1, m1) = scale_min_k4(2 * c, &b.scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
            let q = &b.qs[32 * c..32 * c + 32];
            let (lo, hi) = o[64 * c..64 * c + 64].split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * f32::from(q[l] & 0x0f) - m1;
                hi[l] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

/// The exact scaled quant sum of each 64-element chunk `c` of a Q4_K × Q8_K super-block:
/// `sc[2c] · Σ lo nibbles · y + sc[2c + 1] · Σ hi nibbles · y` (the low nibbles of
/// `qs[32c..32c + 32]` are elements `64c..64c + 32`, the high ones the next 32).
#[inline(always)]
fn chunk_sums(x: &BlockQ4K, y: &BlockQ8K, sc: &[i32; 8]) -> [i32; QK_K / 64] {
    std::array::from_fn(|c| {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            lo += i32::from(x.qs[32 * c + l] & 0x0f) * i32::from(y.qs[64 * c + l]);
            hi += i32::from(x.qs[32 * c + l] >> 4) * i32::from(y.qs[64 * c + 32 + l]);
        }
        sc[2 * c] * lo + sc[2 * c + 1] * hi
    })
}

/// Dot product of `n` Q4_K weights with `n` Q8_K activations, in the float order of the kernel
/// llama.cpp runs for one activation row on x86 (AVX2): its CPU backend repacks every Q4_K
/// matrix with a multiple of 8 rows into `block_q4_Kx8` and multiplies a single row (decode,
/// or the last `n % 4` rows of a batch) with `ggml_gemv_q4_K_8x8_q8_K`. Per super-block the
/// scaled quant sum and the minimum sum are exact integers; each goes into its own f32
/// accumulator with one fused multiply-add by `d_w * d_a` (resp. `dmin_w * d_a`), and the result
/// is the difference of the two accumulators. Rows taken four at a time round differently:
/// [`vec_dot_q4_k_q8_k_x4`]. (ggml's generic dot rounds in yet another order; the last bits
/// differ and, through the next activation quantization, Gemma 3's top logits move by up to
/// ~0.5.)
pub fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK_K, 0);
    let nb = n / QK_K;
    let (w, a) = (&w[..nb * BlockQ4K::SIZE], &a[..nb * BlockQ8K::SIZE]);
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (wb, ab) in w
        .chunks_exact(BlockQ4K::SIZE)
        .zip(a.chunks_exact(BlockQ8K::SIZE))
    {
        let (x, y) = (BlockQ4K::read(wb), BlockQ8K::read(ab));
        let (sc, mn) = scales_mins_k4(&x.scales);
        let sumi: i32 = chunk_sums(&x, &y, &sc).iter().sum();
        let mut summ = 0i32;
        for (j, &s) in y.group_sums().iter().enumerate() {
            summ += i32::from(s) * mn[j / 2];
        }
        let ya = y.scale();
        acc = (sumi as f32).mul_add(f16_le(x.d) * ya, acc);
        acc_min = (summ as f32).mul_add(f16_le(x.dmin) * ya, acc_min);
    }
    acc - acc_min
}

/// [`vec_dot_q4_k_q8_k`] in the float order of `ggml_gemm_q4_K_8x8_q8_K` (AVX2), which llama.cpp
/// uses for the activation rows of a batch it takes four at a time: the fused multiply-adds go
/// per 64 elements (a pair of sub-blocks) instead of per super-block.
pub fn vec_dot_q4_k_q8_k_x4(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK_K, 0);
    let nb = n / QK_K;
    let (w, a) = (&w[..nb * BlockQ4K::SIZE], &a[..nb * BlockQ8K::SIZE]);
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (wb, ab) in w
        .chunks_exact(BlockQ4K::SIZE)
        .zip(a.chunks_exact(BlockQ8K::SIZE))
    {
        let (x, y) = (BlockQ4K::read(wb), BlockQ8K::read(ab));
        let (sc, mn) = scales_mins_k4(&x.scales);
        let bsums = y.group_sums();
        let ya = y.scale();
        let (d, dmin) = (f16_le(x.d) * ya, f16_le(x.dmin) * ya);
        for (c, &sumi) in chunk_sums(&x, &y, &sc).iter().enumerate() {
            let summ = (i32::from(bsums[4 * c]) + i32::from(bsums[4 * c + 1])) * mn[2 * c]
                + (i32::from(bsums[4 * c + 2]) + i32::from(bsums[4 * c + 3])) * mn[2 * c + 1];
            acc = (sumi as f32).mul_add(d, acc);
            acc_min = (summ as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}
