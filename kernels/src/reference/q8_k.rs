//! Q8_K: the activation type of the k-quants: 256 signed 8-bit quants with an f32 scale and the
//! sums of each group of 16 quants (`bsums`, which let the k-quant dots apply their per-group
//! minimums with 16 multiplies instead of 256).
//!
//! Quantization is ggml's `quantize_row_q8_K_ref`, which differs from Q8_0's in three ways that
//! matter for bit-exactness: the scale is derived from the *signed* value of largest magnitude
//! (`iscale = -127 / max`, so `d = 1 / iscale` is negative when that value is positive), the
//! quants are rounded with `nearest_int` (halfway cases to even, not away from zero) and clamped
//! to at most 127, and `d` stays f32. An all-zero block gets `d = 0` and zero quants; ggml leaves
//! its `bsums` unwritten, we write zeros.

use super::{nearest_int, put_signed, signed_bytes, Block, QK_K};

/// A Q8_K block, same bit layout as ggml's `block_q8_K` (`d` is an f32 there; it is kept as bytes
/// here so the block has alignment 1 and can be read at any offset).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8K {
    /// Scale, f32 little-endian.
    pub d: [u8; 4],
    /// Quants: `x[i] = d * qs[i]`.
    pub qs: [i8; QK_K],
    /// Sums of each group of 16 quants, i16 little-endian.
    pub bsums: [[u8; 2]; QK_K / 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ8K {}

impl Block for BlockQ8K {
    const SIZE: usize = 292;
    const ELEMS: usize = QK_K;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        let mut bsums = [[0u8; 2]; QK_K / 16];
        for (j, s) in bsums.iter_mut().enumerate() {
            *s = [b[4 + QK_K + 2 * j], b[4 + QK_K + 2 * j + 1]];
        }
        Self {
            d: [b[0], b[1], b[2], b[3]],
            qs: signed_bytes(b, 4),
            bsums,
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.d);
        put_signed(out, 4, &self.qs);
        for (j, s) in self.bsums.iter().enumerate() {
            out[4 + QK_K + 2 * j..4 + QK_K + 2 * j + 2].copy_from_slice(s);
        }
    }
}

impl BlockQ8K {
    /// The f32 scale.
    #[inline(always)]
    pub fn scale(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    /// The group sums as integers.
    #[inline(always)]
    pub fn group_sums(&self) -> [i16; QK_K / 16] {
        self.bsums.map(i16::from_le_bytes)
    }
}

/// Q8_K blocks to f32 (`x[i] = qs[i] * d`).
pub fn dequantize_row_q8_k(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK_K, out.len() * BlockQ8K::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK_K)
        .zip(src.chunks_exact(BlockQ8K::SIZE))
    {
        let b = BlockQ8K::read(b);
        let d = b.scale();
        for (y, &q) in o.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// f32 to Q8_K blocks (ggml's `quantize_row_q8_K_ref`).
pub fn quantize_row_q8_k(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ8K::SIZE, out.len() * QK_K);
    for (x, o) in src
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(BlockQ8K::SIZE))
    {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = BlockQ8K {
            d: [0; 4],
            qs: [0; QK_K],
            bsums: [[0; 2]; QK_K / 16],
        };
        if amax != 0.0 {
            let iscale = -127.0 / max;
            for (q, &v) in b.qs.iter_mut().zip(x) {
                *q = nearest_int(iscale * v).min(127) as i8;
            }
            for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                let sum: i32 = g.iter().map(|&q| i32::from(q)).sum();
                *s = (sum as i16).to_le_bytes();
            }
            b.d = (1.0 / iscale).to_le_bytes();
        }
        b.write(o);
    }
}

/// Dot product of two Q8_K rows (not a ggml kernel: Q8_K is activation-only; provided so every
/// table entry has a dot). Per block `(d_w * d_a) * sumi`, summed in f32.
pub fn vec_dot_q8_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK_K, 0);
    let nb = n / QK_K;
    let (w, a) = (&w[..nb * BlockQ8K::SIZE], &a[..nb * BlockQ8K::SIZE]);
    let mut sumf = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ8K::SIZE)
        .zip(a.chunks_exact(BlockQ8K::SIZE))
    {
        let (x, y) = (BlockQ8K::read(wb), BlockQ8K::read(ab));
        let mut sumi = 0i32;
        for j in 0..QK_K {
            sumi += i32::from(x.qs[j]) * i32::from(y.qs[j]);
        }
        sumf += (x.scale() * y.scale()) * sumi as f32;
    }
    sumf
}

/// Accumulates one k-quant super-block into ggml's 8 lanes, the shared tail of the generic
/// `ggml_vec_dot_q{4,5,6}_K_q8_K`: `q` are the weight quants of the block (offset applied),
/// `scales` the integer scale of each group of `256 / scales.len()` elements, `d` the product of
/// the weight and activation super-block scales. Lane `l` collects elements `8k + l`.
#[inline(always)]
pub(crate) fn accumulate_lanes(
    q: &[i8; QK_K],
    y: &BlockQ8K,
    scales: &[i32],
    d: f32,
    sums: &mut [f32; 8],
) {
    let group = QK_K / scales.len();
    let mut aux32 = [0i32; 8];
    for (g, &scale) in scales.iter().enumerate() {
        for k in (g * group..(g + 1) * group).step_by(8) {
            for l in 0..8 {
                aux32[l] += scale * (i32::from(q[k + l]) * i32::from(y.qs[k + l]));
            }
        }
    }
    for l in 0..8 {
        sums[l] += d * aux32[l] as f32;
    }
}
