//! The scalar reference of every kernel: the specification the ISA and CUDA kernels are tested
//! against, and the fallback on machines without them.
//!
//! Every tensor format here has the same bit layout as ggml's (`ggml-common.h`) and follows the
//! semantics of ggml's reference code (`ggml-quants.c` for dequantization and quantization, the
//! generic `ggml_vec_dot_*` of `ggml-cpu` for dot products), so that activation quantization is
//! bit-identical to ggml's and dot products agree with it to float rounding.
//!
//! Invariants of the public functions, all of which work on bytes (GGUF data from an mmap is only
//! byte-aligned within a tensor, so nothing is reinterpreted as a wider type):
//! - `dequantize_row_*(src, out)`: `src` holds exactly `out.len() / block_size` blocks;
//! - `quantize_row_*(src, out)`: `src.len()` is a multiple of the block size and `out` is exactly
//!   the byte length of those blocks;
//! - `vec_dot_*(n, w, a)`: `n` is a multiple of the block size; `w` and `a` hold at least one row
//!   of `n` elements.
//!
//! Length mismatches are caller bugs (shapes are checked when a model loads): they are caught by
//! `debug_assert!` and by slice indexing. Nothing here allocates: these run for every token.

pub mod attention;
pub mod attention_tiled;
pub mod expf;
pub mod float;
pub mod kquant_search;
pub mod ops;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8;
pub mod q8_k;

use half::f16;

/// Elements in a k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// A quantization block: a `#[repr(C)]` struct of byte arrays with ggml's bit layout, read from
/// and written to bytes by copy (so a block may start at any byte offset).
pub trait Block: Copy {
    /// Bytes per block (ggml's type size).
    const SIZE: usize;
    /// Elements per block.
    const ELEMS: usize;
    /// The block stored in `b[..Self::SIZE]`.
    fn read(b: &[u8]) -> Self;
    /// Stores the block into `out[..Self::SIZE]`.
    fn write(&self, out: &mut [u8]);
}

/// A [`Block`] made of byte arrays only: no padding, alignment 1, every byte pattern a valid
/// value. Such blocks are read in place with [`view`] (the ISA kernels' way: no copy).
///
/// # Safety
/// `size_of::<Self>() == Self::SIZE`, `align_of::<Self>() == 1`, and every pattern of
/// `Self::SIZE` bytes is a valid `Self` (all fields `u8` or `i8` arrays).
pub unsafe trait Plain: Block {}

/// The first `n` blocks of `b`, in place. Panics when `b` holds fewer than `n` blocks.
#[inline(always)]
pub fn view<B: Plain>(b: &[u8], n: usize) -> &[B] {
    const { assert!(align_of::<B>() == 1) };
    assert!(size_of::<B>() == B::SIZE, "block size");
    assert!(
        n.checked_mul(B::SIZE).is_some_and(|len| b.len() >= len),
        "{} bytes hold fewer than {n} blocks of {}",
        b.len(),
        B::SIZE
    );
    // SAFETY: `b` holds at least `n * SIZE` bytes (checked); `B` has alignment 1, no padding and
    // no invalid byte patterns (`Plain`), so any `SIZE` bytes are a `B`; the result borrows `b`.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<B>(), n) }
}

/// The first `n` blocks of `b`, in place and writable (as [`view`]). Panics when `b` holds
/// fewer than `n` blocks.
#[inline(always)]
pub fn view_mut<B: Plain>(b: &mut [u8], n: usize) -> &mut [B] {
    const { assert!(align_of::<B>() == 1) };
    assert!(size_of::<B>() == B::SIZE, "block size");
    assert!(
        n.checked_mul(B::SIZE).is_some_and(|len| b.len() >= len),
        "{} bytes hold fewer than {n} blocks of {}",
        b.len(),
        B::SIZE
    );
    // SAFETY: as `view`; the result borrows `b` mutably, and every byte pattern written through
    // it is a valid `B` and valid bytes.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<B>(), n) }
}

/// The bytes of a block, writable (for code that fills a block's bytes, as the reference
/// quantizers do).
#[inline(always)]
pub fn bytes_mut<B: Plain>(b: &mut B) -> &mut [u8] {
    const { assert!(align_of::<B>() == 1) };
    // SAFETY: `B` is `SIZE` bytes without padding (`Plain`; asserted in `view*` too), so its
    // memory is `SIZE` initialized bytes; any bytes written are a valid `B`.
    unsafe { std::slice::from_raw_parts_mut((b as *mut B).cast::<u8>(), B::SIZE) }
}

/// `N` bytes of `b` from `at`, as an array.
#[inline(always)]
pub(crate) fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// `N` bytes of `b` from `at`, as signed bytes.
#[inline(always)]
pub(crate) fn signed_bytes<const N: usize>(b: &[u8], at: usize) -> [i8; N] {
    let mut a = [0i8; N];
    for (d, &s) in a.iter_mut().zip(&b[at..at + N]) {
        *d = s as i8;
    }
    a
}

/// Writes signed bytes `src` into `out` from `at`.
#[inline(always)]
pub(crate) fn put_signed(out: &mut [u8], at: usize, src: &[i8]) {
    for (d, &s) in out[at..at + src.len()].iter_mut().zip(src) {
        *d = s as u8;
    }
}

/// An IEEE half stored little-endian (ggml's `ggml_half`), widened exactly to f32.
#[inline(always)]
pub(crate) fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// f32 to a little-endian IEEE half, rounding to nearest even (ggml's `GGML_FP32_TO_FP16`, which
/// is F16C's `vcvtps2ph` with rounding mode 0 or an equivalent software conversion).
#[inline(always)]
pub(crate) fn to_f16_le(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// C's `roundf`: to nearest, halfway cases away from zero. ggml's `quantize_row_q8_0_ref` and
/// `quantize_row_q8_1_ref` use it.
#[inline(always)]
pub(crate) fn roundf(x: f32) -> f32 {
    x.round()
}

/// ggml's `nearest_int` (k-quants), written as ggml writes it: adds 1.5 * 2^23 and keeps the
/// low mantissa bits, which rounds to nearest with halfway cases to even (the default FPU
/// rounding mode). That is `round_ties_even` for |x| < 2^22, the range ggml asserts; outside
/// it the result is ggml's too (a quantizer clamps it next). Two float instructions, where
/// `round_ties_even` is a libm call on baseline x86_64 (a quarter of a k-quant conversion's time).
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    ((v.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_halves_to_even_in_ggml_range() {
        let mut s = 0x1234_5678u32;
        for i in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // Halves, integers and random values within ggml's asserted range.
            let x = match i % 3 {
                0 => (s % 1000) as f32 / 2.0 - 250.0,
                1 => (s % 100_000) as f32 - 50_000.0,
                _ => f32::from_bits(s) % 4_194_303.0,
            };
            if !x.is_finite() {
                continue;
            }
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "x = {x}");
        }
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(roundf(2.5), 3.0);
        assert_eq!(roundf(-2.5), -3.0);
    }
}
