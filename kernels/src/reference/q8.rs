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

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ8_0 {}

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

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ8_1 {}

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

/// How a block's f32 values are rounded to quants.
#[derive(Clone, Copy)]
enum Rounding {
    /// ggml's `quantize_row_q8_*_ref` (what gguf-py reproduces, used for weights in files):
    /// `id = 1/d`, `roundf` (half away from zero).
    Ref,
    /// ggml-cpu's x86 `quantize_row_q8_0` / `q8_1` (what llama.cpp applies to activations inside
    /// every product on x86): `id = 127/amax`, round half to even (`_mm256_round_ps`).
    Act,
}

/// The shared core of Q8_0 and Q8_1 quantization: the f32 scale and the quants of one block.
#[inline(always)]
fn quantize_block(x: &[f32], r: Rounding) -> (f32, [i8; QK8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let mut qs = [0i8; QK8];
    match r {
        Rounding::Ref => {
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in qs.iter_mut().zip(x) {
                *q = roundf(v * id) as i8;
            }
        }
        Rounding::Act => {
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            for (q, &v) in qs.iter_mut().zip(x) {
                *q = (v * id).round_ties_even() as i8;
            }
        }
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
    quantize_q8_0(src, out, Rounding::Ref)
}

/// f32 activations to Q8_0 blocks as ggml-cpu does on x86 before a product (`id = 127/amax`,
/// round half to even; see [`quantize_row_q8_0`] for the file format's reference rounding).
/// The two differ in the last bit of a few quants, which is enough to move llama.cpp's logits.
#[inline(always)]
pub fn quantize_row_q8_0_act(src: &[f32], out: &mut [u8]) {
    quantize_q8_0(src, out, Rounding::Act)
}

#[inline(always)]
fn quantize_q8_0(src: &[f32], out: &mut [u8], r: Rounding) {
    debug_assert_eq!(src.len() * BlockQ8_0::SIZE, out.len() * QK8);
    for (x, o) in src
        .chunks_exact(QK8)
        .zip(out.chunks_exact_mut(BlockQ8_0::SIZE))
    {
        let (d, qs) = quantize_block(x, r);
        BlockQ8_0 {
            d: to_f16_le(d),
            qs,
        }
        .write(o);
    }
}

/// Dot product of `n` Q8_0 weights with `n` Q8_0 activations, summed in the order of ggml's
/// AVX2 `ggml_vec_dot_q8_0_q8_0`: 8 lanes, lane `l` holding the integer sum of elements
/// `4l..4l+4` of each block; per block `acc[l] = fma(d_w * d_a, lane_l, acc[l])`; the lanes
/// reduced by [`hsum8`]. This order is the spec so that logits match llama.cpp's to the bit
/// (activations are re-quantized after every layer, where a last-bit difference can change a
/// quantization level).
#[inline(always)]
pub fn vec_dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK8, 0);
    let nb = n / QK8;
    let (w, a) = (&w[..nb * BlockQ8_0::SIZE], &a[..nb * BlockQ8_0::SIZE]);
    let mut acc = [0f32; 8];
    for (wb, ab) in w
        .chunks_exact(BlockQ8_0::SIZE)
        .zip(a.chunks_exact(BlockQ8_0::SIZE))
    {
        let (x, y) = (BlockQ8_0::read(wb), BlockQ8_0::read(ab));
        let d = f16_le(x.d) * f16_le(y.d);
        for (l, acc_l) in acc.iter_mut().enumerate() {
            let mut li = 0i32;
            for e in 4 * l..4 * l + 4 {
                li += i32::from(x.qs[e]) * i32::from(y.qs[e]);
            }
            *acc_l = d.mul_add(li as f32, *acc_l);
        }
    }
    hsum8(&acc)
}

/// Sum of 8 lanes as ggml's `hsum_float_8`: `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`.
pub fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (r[0] + r[2]) + (r[1] + r[3])
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
    quantize_q8_1(src, out, Rounding::Ref)
}

/// f32 activations to Q8_1 blocks as ggml-cpu does on x86 before a Q4_1 product (see
/// [`quantize_row_q8_0_act`]); `s = f16(d * Σqs)` with the unrounded f32 `d`.
#[inline(always)]
pub fn quantize_row_q8_1_act(src: &[f32], out: &mut [u8]) {
    quantize_q8_1(src, out, Rounding::Act)
}

#[inline(always)]
fn quantize_q8_1(src: &[f32], out: &mut [u8], r: Rounding) {
    debug_assert_eq!(src.len() * BlockQ8_1::SIZE, out.len() * QK8);
    for (x, o) in src
        .chunks_exact(QK8)
        .zip(out.chunks_exact_mut(BlockQ8_1::SIZE))
    {
        let (d, qs) = quantize_block(x, r);
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

#[cfg(test)]
mod act_tests {
    use super::*;

    /// A block whose scaled values land exactly on .5: the reference rounds half away from
    /// zero, the activation quantizer (x86 ggml-cpu) half to even.
    #[test]
    fn activation_rounding_is_half_to_even_with_id_127_over_amax() {
        let mut x = [0f32; QK8];
        x[0] = 127.0; // amax = 127, so d = 1 and x * id = x exactly
        x[1] = 2.5;
        x[2] = -3.5;
        x[3] = 0.5;
        let (mut r, mut a) = ([0u8; 34], [0u8; 34]);
        quantize_row_q8_0(&x, &mut r);
        quantize_row_q8_0_act(&x, &mut a);
        let (r, a) = (BlockQ8_0::read(&r), BlockQ8_0::read(&a));
        assert_eq!(&r.qs[..4], &[127, 3, -4, 1]);
        assert_eq!(&a.qs[..4], &[127, 2, -4, 0]);
        assert_eq!(r.d, a.d);

        let (mut r1, mut a1) = ([0u8; 36], [0u8; 36]);
        quantize_row_q8_1(&x, &mut r1);
        quantize_row_q8_1_act(&x, &mut a1);
        let (r1, a1) = (BlockQ8_1::read(&r1), BlockQ8_1::read(&a1));
        assert_eq!(&a1.qs[..4], &[127, 2, -4, 0]);
        assert_eq!(f16_le(a1.s), 125.0);
        assert_eq!(f16_le(r1.s), 127.0);
    }

    /// `127 / amax` and `1 / (amax / 127)` differ in the last bit for some amax; the activation
    /// quantizer must use the former.
    #[test]
    fn activation_scale_is_127_over_amax() {
        let amax = (1..10_000)
            .map(|i| 0.37 + i as f32 * 1.3e-3)
            .find(|&m| 127.0 / m != 1.0 / (m / 127.0))
            .expect("some amax where the two inverse scales differ");
        let id = 127.0 / amax;
        // Find a value whose scaled form rounds differently under the two inverse scales.
        let alt = 1.0 / (amax / 127.0);
        let v = (1..1_000_000)
            .map(|i| i as f32 * amax / 1_000_000.0)
            .find(|&v| (v * id).round_ties_even() != (v * alt).round_ties_even());
        if let Some(v) = v {
            let mut x = [0f32; QK8];
            x[0] = amax;
            x[1] = v;
            let mut a = [0u8; 34];
            quantize_row_q8_0_act(&x, &mut a);
            assert_eq!(
                i32::from(BlockQ8_0::read(&a).qs[1]),
                (v * id).round_ties_even() as i32
            );
        }
    }
}
