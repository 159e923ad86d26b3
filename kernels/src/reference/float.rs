//! Plain float formats: F32, F16 (IEEE half) and BF16 (bfloat16), all little-endian.
//!
//! Conversions follow ggml: f32 -> f16 rounds to nearest even (F16C, `ggml_cpu_fp32_to_fp16`),
//! f32 -> bf16 rounds to nearest even and quiets NaNs (`ggml_compute_fp32_to_bf16`); widening is
//! exact (bf16 by a plain shift, so NaN payloads are kept as ggml keeps them). ggml's F16 and BF16 dot products take activations in the *same* format as the weights
//! (`vec_dot_type` F16 / BF16), so activations are rounded to f16 / bf16 before the dot: calling
//! these dots with f32 activations is not an option, and skipping that rounding gives results
//! that differ from ggml's.
//!
//! Dot products: each product is formed in f32 (exact for f16 and bf16 operands, whose mantissas
//! multiply into at most 22 bits) and accumulated in f64, as ggml's scalar `ggml_vec_dot_f16` /
//! `_bf16` / `_f32` do with `ggml_float`. The accumulation runs over [`LANES`] interleaved partial
//! sums, added in lane order at the end, so LLVM can vectorize it; the order is fixed, so results
//! are deterministic.

use half::{bf16, f16};

/// Interleaved partial sums of the float dot products.
pub const LANES: usize = 8;

/// Sum over `i < n` of `prod(w_i, a_i)` in f64, where `w_i` and `a_i` are the `E`-byte elements
/// of `w` and `a`.
#[inline(always)]
fn dot_lanes<const E: usize>(
    n: usize,
    w: &[u8],
    a: &[u8],
    prod: impl Fn(&[u8], &[u8]) -> f32,
) -> f32 {
    let (w, a) = (&w[..n * E], &a[..n * E]);
    let mut lanes = [0f64; LANES];
    let mut wc = w.chunks_exact(E * LANES);
    let mut ac = a.chunks_exact(E * LANES);
    for (wb, ab) in (&mut wc).zip(&mut ac) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            let r = l * E..l * E + E;
            *lane += f64::from(prod(&wb[r.clone()], &ab[r]));
        }
    }
    for (i, (we, ae)) in wc
        .remainder()
        .chunks_exact(E)
        .zip(ac.remainder().chunks_exact(E))
        .enumerate()
    {
        lanes[i] += f64::from(prod(we, ae));
    }
    lanes.iter().sum::<f64>() as f32
}

#[inline(always)]
fn f32_at(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// bf16 to f32 by a 16-bit shift, as ggml's `GGML_BF16_TO_FP32` (`half`'s conversion would set
/// the quiet bit of signaling NaNs, which ggml keeps).
#[inline(always)]
fn bf16_at(b: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
}

/// F32 bytes to f32 (`src.len() == 4 * out.len()`).
pub fn dequantize_row_f32(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len(), 4 * out.len());
    for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32_at(b);
    }
}

/// f32 to F32 bytes (`out.len() == 4 * src.len()`).
pub fn quantize_row_f32(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 4 * src.len());
    for (b, &x) in out.chunks_exact_mut(4).zip(src) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

/// Dot product of `n` F32 weights with `n` F32 activations: f32 products summed in f64.
pub fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<4>(n, w, a, |x, y| f32_at(x) * f32_at(y))
}

/// F16 bytes to f32, exactly (`src.len() == 2 * out.len()`).
pub fn dequantize_row_f16(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len(), 2 * out.len());
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16_at(b);
    }
}

/// f32 to F16 bytes, rounding to nearest even; overflow gives ±inf (`out.len() == 2 * src.len()`).
pub fn quantize_row_f16(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * src.len());
    for (b, &x) in out.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&f16::from_f32(x).to_le_bytes());
    }
}

/// Dot product of `n` F16 weights with `n` F16 activations (ggml's `ggml_vec_dot_f16`).
pub fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<2>(n, w, a, |x, y| f16_at(x) * f16_at(y))
}

/// BF16 bytes to f32, exactly (`src.len() == 2 * out.len()`).
pub fn dequantize_row_bf16(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len(), 2 * out.len());
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16_at(b);
    }
}

/// f32 to BF16 bytes, rounding to nearest even, NaNs quieted (`out.len() == 2 * src.len()`).
pub fn quantize_row_bf16(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * src.len());
    for (b, &x) in out.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&bf16::from_f32(x).to_le_bytes());
    }
}

/// Dot product of `n` BF16 weights with `n` BF16 activations (ggml's `ggml_vec_dot_bf16`).
pub fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lanes::<2>(n, w, a, |x, y| bf16_at(x) * bf16_at(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `ggml_compute_fp32_to_bf16`, written out, to check `half`'s conversion against.
    fn ggml_bf16(x: f32) -> u16 {
        let u = x.to_bits();
        if (u & 0x7fff_ffff) > 0x7f80_0000 {
            return ((u >> 16) | 64) as u16;
        }
        ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
    }

    #[test]
    fn bf16_rounding_matches_ggml() {
        let mut s = 0x9e37_79b9u32;
        let specials = [
            0u32,
            0x8000_0000,
            0x7f7f_ffff,
            0x7f80_0000,
            0x7fc0_0001,
            0xff80_0001,
            0x0000_8000,
            0x0001_8000,
        ];
        for i in 0..300_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let bits = if i < specials.len() { specials[i] } else { s };
            let x = f32::from_bits(bits);
            let mut b = [0u8; 2];
            quantize_row_bf16(&[x], &mut b);
            assert_eq!(u16::from_le_bytes(b), ggml_bf16(x), "bits {bits:#010x}");
        }
    }

    #[test]
    fn float_dots_on_tails() {
        for n in [0usize, 1, 7, 8, 9, 17, 33] {
            let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let want: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let mut b32 = vec![0u8; 4 * n];
            let mut b16 = vec![0u8; 2 * n];
            let mut bb = vec![0u8; 2 * n];
            quantize_row_f32(&x, &mut b32);
            quantize_row_f16(&x, &mut b16);
            quantize_row_bf16(&x, &mut bb);
            assert_eq!(vec_dot_f32(n, &b32, &b32), want as f32);
            assert_eq!(vec_dot_f16(n, &b16, &b16), want as f32);
            assert_eq!(vec_dot_bf16(n, &bb, &bb), want as f32);
        }
    }
}
