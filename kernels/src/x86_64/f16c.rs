//! Scalar f16 conversions with F16C, for the scales of quantized blocks.
//!
//! `half` performs the same instructions (`vcvtph2ps`, `vcvtps2ph` rounding to nearest even)
//! when it detects F16C, which every CPU running the AVX2 path has, so these give the
//! reference's bits; but `half` checks for the feature on every call and cannot inline the
//! instruction into a kernel, which costs a few ns per conversion — as much as the integer
//! work of a 32-element block.
//!
//! The f16 is widened by a few lines of assembly rather than an intrinsic: given a 16-bit
//! value LLVM emits `vpinsrw` into whatever register is at hand, often a dot's accumulator,
//! which chained every block's scales to the previous block's sum (Q4_1 × Q8_1 ran at 1/3 of
//! its speed). `movzx` + `vmovd` write whole registers, so no false dependency is possible.

use std::arch::asm;
use std::arch::x86_64::{
    __m128, _mm_cvtps_ph, _mm_cvtsi128_si32, _mm_cvtss_f32, _mm_set_ss, _MM_FROUND_TO_NEAREST_INT,
};

/// The little-endian f16 at `b[at..at + 2]`, widened exactly to f32 (`vcvtph2ps`).
#[inline]
#[target_feature(enable = "avx,f16c")]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    let s = &b[at..at + 2];
    let r: __m128;
    // SAFETY: reads exactly the 2 bytes of `s`; F16C is enabled for this function (its callers
    // are installed only after it was detected); writes only the declared output registers.
    unsafe {
        asm!(
            "movzx {t:e}, word ptr [{p}]",
            "vmovd {r}, {t:e}",
            "vcvtph2ps {r}, {r}",
            p = in(reg) s.as_ptr(),
            t = out(reg) _,
            r = out(xmm_reg) r,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    _mm_cvtss_f32(r)
}

/// [`f16_at`] through a raw pointer, for kernels that walk blocks by pointer.
///
/// # Safety
/// `p..p+2` must be readable.
#[inline]
#[target_feature(enable = "avx,f16c")]
pub(crate) unsafe fn f16_ptr(p: *const u8) -> f32 {
    let r: __m128;
    // SAFETY: reads exactly the 2 bytes at `p` (readable per the caller); F16C is enabled for
    // this function; writes only the declared output registers.
    unsafe {
        asm!(
            "movzx {t:e}, word ptr [{p}]",
            "vmovd {r}, {t:e}",
            "vcvtph2ps {r}, {r}",
            p = in(reg) p,
            t = out(reg) _,
            r = out(xmm_reg) r,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    _mm_cvtss_f32(r)
}

/// `x` rounded to the nearest f16 (ties to even), little-endian.
#[inline]
#[target_feature(enable = "avx,f16c")]
pub(crate) fn to_f16_le(x: f32) -> [u8; 2] {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    (_mm_cvtsi128_si32(h) as u16).to_le_bytes()
}
