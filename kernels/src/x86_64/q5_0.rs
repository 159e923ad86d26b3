//! AVX2 Q5_0 × Q8_0 dot, equal bit for bit to `reference::q5_0::vec_dot_q5_0_q8_0` (ggml's AVX2
//! order: per block eight i32 lanes of four consecutive elements, `acc = fma(d_w · d_a, lane,
//! acc)` lane-wise, the lanes reduced at the end as the reference's `hsum8`).
//!
//! The quants are rebuilt as unsigned bytes `0..32` in element order (the low nibbles are
//! elements 0..16, the high nibbles 16..32, bit `j` of `qh` the fifth bit of element `j`), so
//! `maddubs` with the activations minus `maddubs` of 16 with them gives `(q - 16) · y` per
//! pair of elements (|pairs| ≤ 2 · 31 · 128, no saturation, exact for every i8 activation), and
//! `madd` with ones the reference's four-element lanes.

use std::arch::x86_64::{
    __m256i, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_cvtepi32_ps, _mm256_fmadd_ps,
    _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_or_si256,
    _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi64x, _mm256_set1_epi8, _mm256_set1_ps,
    _mm256_set_m128i, _mm256_setr_epi8, _mm256_setzero_ps, _mm256_shuffle_epi8, _mm256_sub_epi16,
    _mm_loadu_si128, _mm_srli_epi16,
};

use super::f16c::f16_at;
use crate::reference::q5_0::BlockQ5_0;
use crate::reference::q8::BlockQ8_0;
use crate::reference::view;

/// The 32 quants of the Q5_0 block at `x` as unsigned bytes `0..32` in element order (low
/// nibbles are elements 0..16, high nibbles 16..32, bit `j` of `qh` the fifth bit of element
/// `j`; same bit layout as ggml's `block_q5_0`).
///
/// # Safety
/// `x..x+22` readable; the CPU has AVX2.
#[inline(always)]
pub(super) unsafe fn q5_0_quants(x: *const u8) -> __m256i {
    // SAFETY: forwarded contract (reads bytes 2..22 of the block; unaligned loads).
    unsafe {
        let qh = x.add(2).cast::<u32>().read_unaligned();
        let packed = _mm_loadu_si128(x.add(6).cast());
        let nibbles = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed),
            _mm256_set1_epi8(0x0f),
        );
        // Byte j takes byte j / 8 of qh, keeps its bit j % 8, and becomes 0x10 where it is set.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let fifth = _mm256_and_si256(
            _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit),
            _mm256_set1_epi8(0x10),
        );
        _mm256_or_si256(nibbles, fifth)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0_q8_0_avx2(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let d = f16_at(&x.d, 0) * f16_at(&y.d, 0);
        // SAFETY: `x` is a whole 22-byte block and `y.qs` holds 32 bytes; AVX2
        // (target_feature); unaligned loads.
        let (qx, qy) = unsafe {
            (
                q5_0_quants(std::ptr::from_ref(x).cast()),
                _mm256_loadu_si256(y.qs.as_ptr().cast::<__m256i>()),
            )
        };
        let pairs = _mm256_sub_epi16(
            _mm256_maddubs_epi16(qx, qy),
            _mm256_maddubs_epi16(_mm256_set1_epi8(16), qy),
        );
        let lanes = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
    }
    // SAFETY: AVX (target_feature).
    unsafe { super::tiles::hsum8(acc) }
}

/// Q5_0 × Q8_0 with AVX2 (same result as `reference::q5_0::vec_dot_q5_0_q8_0`).
pub(crate) fn vec_dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let (w, a) = (view::<BlockQ5_0>(w, nb), view::<BlockQ8_0>(a, nb));
    // SAFETY: installed in the dispatch table only after avx2, fma and f16c were detected.
    unsafe { q5_0_q8_0_avx2(w, a) }
}
