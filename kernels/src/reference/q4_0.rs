//! Q4_0: 32 unsigned 4-bit quants with an f16 scale, `x = d * (q - 8)`; dotted with Q8_0.
//!
//! Nibble order: byte `j` holds element `j` in its low nibble and element `j + 16` in its high
//! nibble (not pairs of neighbours). Quantization is ggml's `quantize_row_q4_0_ref`: `d` is the
//! signed value of largest magnitude divided by -8 (the first such value on ties), and
//! `q = min(15, trunc(x / d + 8.5))`.

use super::q8::{BlockQ8_0, QK8};
use super::{bytes, f16_le, to_f16_le, Block};

/// Elements per Q4_0 block (ggml's `QK4_0`).
pub const QK4_0: usize = 32;

/// A Q4_0 block, same bit layout as ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

// SAFETY: byte arrays only (the size is asserted above); alignment 1; any bytes are a block.
unsafe impl super::Plain for BlockQ4_0 {}

impl Block for BlockQ4_0 {
    const SIZE: usize = 18;
    const ELEMS: usize = QK4_0;
    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        Self {
            d: [b[0], b[1]],
            qs: bytes(b, 2),
        }
    }
    #[inline(always)]
    fn write(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d);
        out[2..Self::SIZE].copy_from_slice(&self.qs);
    }
}

/// Q4_0 blocks to f32 (ggml's `dequantize_row_q4_0`).
pub fn dequantize_row_q4_0(src: &[u8], out: &mut [f32]) {
    debug_assert_eq!(src.len() * QK4_0, out.len() * BlockQ4_0::SIZE);
    for (o, b) in out
        .chunks_exact_mut(QK4_0)
        .zip(src.chunks_exact(BlockQ4_0::SIZE))
    {
        let b = BlockQ4_0::read(b);
        let d = f16_le(b.d);
        let (lo, hi) = o.split_at_mut(QK4_0 / 2);
        for j in 0..QK4_0 / 2 {
            lo[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            hi[j] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// f32 to Q4_0 blocks (ggml's `quantize_row_q4_0_ref`).
pub fn quantize_row_q4_0(src: &[f32], out: &mut [u8]) {
    debug_assert_eq!(src.len() * BlockQ4_0::SIZE, out.len() * QK4_0);
    for (x, o) in src
        .chunks_exact(QK4_0)
        .zip(out.chunks_exact_mut(BlockQ4_0::SIZE))
    {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // ggml: MIN(15, (int8_t)(x * id + 8.5f)); the cast truncates toward zero.
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        let mut qs = [0u8; QK4_0 / 2];
        for j in 0..QK4_0 / 2 {
            qs[j] = q(x[j]) | (q(x[j + QK4_0 / 2]) << 4);
        }
        BlockQ4_0 {
            d: to_f16_le(d),
            qs,
        }
        .write(o);
    }
}

/// Dot product of `n` Q4_0 weights with `n` Q8_0 activations (ggml's generic
/// `ggml_vec_dot_q4_0_q8_0`: per block `sumi * d_w * d_a`, summed in f32).
pub fn vec_dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert_eq!(n % QK4_0, 0);
    let nb = n / QK4_0;
    let (w, a) = (&w[..nb * BlockQ4_0::SIZE], &a[..nb * BlockQ8_0::SIZE]);
    let mut sumf = 0f32;
    for (wb, ab) in w
        .chunks_exact(BlockQ4_0::SIZE)
        .zip(a.chunks_exact(BlockQ8_0::SIZE))
    {
        let (x, y) = (BlockQ4_0::read(wb), BlockQ8_0::read(ab));
        let mut sumi = 0i32;
        for j in 0..QK8 / 2 {
            let v0 = (x.qs[j] & 0x0f) as i32 - 8;
            let v1 = (x.qs[j] >> 4) as i32 - 8;
            sumi += v0 * i32::from(y.qs[j]) + v1 * i32::from(y.qs[j + QK8 / 2]);
        }
        sumf += sumi as f32 * f16_le(x.d) * f16_le(y.d);
    }
    sumf
}
