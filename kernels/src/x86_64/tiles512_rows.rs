//! AVX-512 tile products for a lone token (a decode step's shape), rows two to a register.
//!
//! The pair micro-kernels of [`super::tiles512`] hold two (row, token) pairs of one row in each
//! 512-bit register; with one token both halves would compute the same pair. Here the low half
//! of register `k` holds row `2k` and the high half row `2k + 1` of the one token: each half
//! does exactly what a half of the pair kernel does (same lane sums, conversion, `d_w · d_a`,
//! FMA, block after block, same `hsum8`), so the outputs equal the reference bit for bit. The
//! rows' block scales are converted together (one 4-byte load per row for Q4_1's `d` and `m`),
//! and `d_w · d_a` of both rows is one multiplication spread to the halves by one permute.

use std::arch::x86_64::{
    __m128, __m512, _mm256_loadu_si256, _mm512_and_si512, _mm512_broadcast_i32x4,
    _mm512_broadcast_i64x4, _mm512_castps128_ps512, _mm512_castps512_ps256, _mm512_castsi256_si512,
    _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_extractf32x8_ps, _mm512_fmadd_ps,
    _mm512_inserti64x4, _mm512_mask_broadcast_i32x4, _mm512_mask_srli_epi16, _mm512_permutexvar_ps,
    _mm512_set1_epi8, _mm512_setr_epi32, _mm512_setzero_ps, _mm512_setzero_si512, _mm512_sub_epi32,
    _mm512_xor_si512, _mm_cvtph_ps, _mm_cvtsi32_si128, _mm_fmadd_ps, _mm_insert_epi16,
    _mm_insert_epi32, _mm_loadu_si128, _mm_mul_ps, _mm_set1_ps, _mm_setr_ps, _mm_setzero_ps,
    _mm_storeu_ps,
};

use super::q5_0::q5_0_quants;
use super::tiles::{block, hsum8, prefetch_ahead};
use super::tiles512::{ActBlock, Scales};
use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q5_0::BlockQ5_0;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};

/// `[f16 at p0, f16 at p0 + 2, f16 at p1, f16 at p1 + 2]` as f32 (exact): a Q4_1 block's `d`
/// and `m` of two rows.
///
/// # Safety
/// `p0..p0+4` and `p1..p1+4` readable; the CPU has F16C and SSE4.1.
#[inline(always)]
unsafe fn f16x2_pair(p0: *const u8, p1: *const u8) -> __m128 {
    // SAFETY: forwarded contract (unaligned 4-byte reads).
    unsafe {
        _mm_cvtph_ps(_mm_insert_epi32::<1>(
            _mm_cvtsi32_si128(p0.cast::<i32>().read_unaligned()),
            p1.cast::<i32>().read_unaligned(),
        ))
    }
}

/// `[f16 at p0, f16 at p1, 0, 0]` as f32 (exact): a block's `d` of two rows.
///
/// # Safety
/// `p0..p0+2` and `p1..p1+2` readable; the CPU has F16C and SSE2.
#[inline(always)]
unsafe fn f16x1_pair(p0: *const u8, p1: *const u8) -> __m128 {
    // SAFETY: forwarded contract (unaligned 2-byte reads).
    unsafe {
        _mm_cvtph_ps(_mm_insert_epi16::<1>(
            _mm_cvtsi32_si128(i32::from(p0.cast::<u16>().read_unaligned())),
            i32::from(p1.cast::<u16>().read_unaligned()),
        ))
    }
}

/// Lanes `L0` and `L1` of `x` spread to the low and the high 8 of 16 lanes.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
unsafe fn spread_pair<const L0: i32, const L1: i32>(x: __m128) -> __m512 {
    // SAFETY: AVX-512F (caller).
    unsafe {
        _mm512_permutexvar_ps(
            _mm512_setr_epi32(
                L0, L0, L0, L0, L0, L0, L0, L0, L1, L1, L1, L1, L1, L1, L1, L1,
            ),
            _mm512_castps128_ps512(x),
        )
    }
}

/// Store the two halves of row-pair register `acc` (rows `2k`, `2k + 1` of the one token), plus
/// `extra[0]` and `extra[1]`, where the row exists.
///
/// # Safety
/// `out.add(r)` writable for `r < rr`; the CPU has AVX-512DQ.
#[inline(always)]
unsafe fn store_rows(acc: __m512, extra: [f32; 2], k: usize, rr: usize, out: *mut f32) {
    let r0 = 2 * k;
    // SAFETY: AVX-512DQ (caller's target features); rows `< rr` are writable.
    unsafe {
        *out.add(r0) = hsum8(_mm512_castps512_ps256(acc)) + extra[0];
        if r0 + 1 < rr {
            *out.add(r0 + 1) = hsum8(_mm512_extractf32x8_ps::<1>(acc)) + extra[1];
        }
    }
}

/// The second row of row pair `k` in an `rr`-row micro-tile: row `2k + 1`, or row `2k` again
/// where `2k + 1 == rr` (computed, never stored).
#[inline(always)]
fn second_row(k: usize, rr: usize) -> usize {
    if 2 * k + 1 < rr {
        2 * k + 1
    } else {
        2 * k
    }
}

/// One `rr × 1` micro-tile of Q4_1 × Q8_1 (`rr` in `2K - 1 ..= 2K` rows) for a lone token.
/// The low half of register `k` does for row `2k`, and the high half for row `2k + 1`, exactly
/// what a half of the pair micro-kernel in [`super::tiles512`] does for its (row, token) pair.
/// The `m · s` chains of a row pair run in lanes 1 and 3 of one 128-bit register.
///
/// # Safety
/// As the pair micro-kernel with one token: the CPU has the features enabled here; `w` points
/// at `rr` rows of `nb` blocks, `w_stride` bytes apart; `a` at the token's `nb` blocks; `sc`
/// holds their scales; `out.add(r)` is writable for `r < rr`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn q4_1_rows<const K: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    rr: usize,
    a: *const u8,
    sc: Scales,
    out: *mut f32,
    prefetch: bool,
) {
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); K];
    // Lanes 1 and 3: the `m · s` chains of rows `2k` and `2k + 1` (lanes 0 and 2 stay 0).
    let mut summs = [_mm_setzero_ps(); K];
    for i in 0..nb {
        // SAFETY: the token's block `i` and its scales are in bounds (caller).
        let (qy, da, sa) = unsafe {
            let y = block::<BlockQ8_1>(a, i).qs();
            let (d, s) = (*sc.d.add(i * sc.stride), *sc.s.add(i * sc.stride));
            (
                _mm512_broadcast_i64x4(_mm256_loadu_si256(y.cast())),
                _mm_setr_ps(d, 0.0, d, 0.0),
                _mm_setr_ps(0.0, s, 0.0, s),
            )
        };
        for (k, (acc_k, summs_k)) in acc.iter_mut().zip(&mut summs).enumerate() {
            let (r0, r1) = (2 * k, second_row(k, rr));
            let (row0, row1) = (w.wrapping_add(r0 * w_stride), w.wrapping_add(r1 * w_stride));
            if prefetch {
                // SAFETY: a prefetch of any address is harmless (wrapping arithmetic).
                unsafe {
                    prefetch_ahead::<BlockQ4_1>(row0, i);
                    prefetch_ahead::<BlockQ4_1>(row1, i);
                }
            }
            // SAFETY: block `i` of rows `r0` and `r1` is in bounds (caller).
            let (dm, packed) = unsafe {
                let (x0, x1): (&BlockQ4_1, &BlockQ4_1) = (block(row0, i), block(row1, i));
                (
                    // `d` and `m` are the block's first 4 bytes.
                    f16x2_pair(x0.d.as_ptr(), x1.d.as_ptr()),
                    _mm512_mask_broadcast_i32x4(
                        _mm512_broadcast_i32x4(_mm_loadu_si128(x0.qs.as_ptr().cast())),
                        0xff00,
                        _mm_loadu_si128(x1.qs.as_ptr().cast()),
                    ),
                )
            };
            // Lanes 0 and 1 hold row `r0`'s 32 quants in order, lanes 2 and 3 row `r1`'s.
            let qx = _mm512_and_si512(
                _mm512_mask_srli_epi16::<4>(packed, 0xff00_ff00, packed),
                low,
            );
            *summs_k = _mm_fmadd_ps(dm, sa, *summs_k);
            // `dw · da` of row `r0` in the low 8 lanes, of row `r1` in the high 8.
            // SAFETY: AVX-512F (target_feature).
            let dd = unsafe { spread_pair::<0, 2>(_mm_mul_ps(dm, da)) };
            let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, qy));
            *acc_k = _mm512_fmadd_ps(dd, s, *acc_k);
        }
    }
    for k in 0..K.min(rr.div_ceil(2)) {
        let mut m = [0f32; 4];
        // SAFETY: `m` holds 4 floats.
        unsafe { _mm_storeu_ps(m.as_mut_ptr(), summs[k]) };
        // SAFETY: forwarded `out` contract.
        unsafe { store_rows(acc[k], [m[1], m[3]], k, rr, out) };
    }
}

/// One `rr × 1` micro-tile of Q8_0 × Q8_0 or, with `Q5`, Q5_0 × Q8_0, rows two to a register
/// (as [`q4_1_rows`]; each half does what a half of the Q8_0 pair micro-kernel does).
///
/// # Safety
/// As [`q4_1_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn q8_0_rows<const K: usize, const Q5: bool>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    rr: usize,
    a: *const u8,
    sc: Scales,
    out: *mut f32,
    prefetch: bool,
) {
    let bias = _mm512_set1_epi8(if Q5 { 16 } else { 0x80u8 as i8 });
    let mut acc = [_mm512_setzero_ps(); K];
    for i in 0..nb {
        // SAFETY: the token's block `i` and its scale are in bounds (caller).
        let (qy, da) = unsafe {
            let y = block::<BlockQ8_0>(a, i).qs();
            (
                _mm512_broadcast_i64x4(_mm256_loadu_si256(y.cast())),
                _mm_set1_ps(*sc.d.add(i * sc.stride)),
            )
        };
        // -offset · Σy per lane: the correction for the weights' offset.
        let start = _mm512_sub_epi32(
            _mm512_setzero_si512(),
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, qy),
        );
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let (r0, r1) = (2 * k, second_row(k, rr));
            let (row0, row1) = (w.wrapping_add(r0 * w_stride), w.wrapping_add(r1 * w_stride));
            if prefetch {
                // SAFETY: a prefetch of any address is harmless (wrapping arithmetic).
                unsafe {
                    if Q5 {
                        prefetch_ahead::<BlockQ5_0>(row0, i);
                        prefetch_ahead::<BlockQ5_0>(row1, i);
                    } else {
                        prefetch_ahead::<BlockQ8_0>(row0, i);
                        prefetch_ahead::<BlockQ8_0>(row1, i);
                    }
                }
            }
            // SAFETY: block `i` of rows `r0` and `r1` is in bounds (caller).
            let (dw, qx) = unsafe {
                if Q5 {
                    let (x0, x1): (&BlockQ5_0, &BlockQ5_0) = (block(row0, i), block(row1, i));
                    let q0 = q5_0_quants(std::ptr::from_ref(x0).cast());
                    let q1 = q5_0_quants(std::ptr::from_ref(x1).cast());
                    (
                        f16x1_pair(x0.d.as_ptr(), x1.d.as_ptr()),
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1),
                    )
                } else {
                    let (x0, x1): (&BlockQ8_0, &BlockQ8_0) = (block(row0, i), block(row1, i));
                    let q = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_loadu_si256(x0.qs.as_ptr().cast())),
                        _mm256_loadu_si256(x1.qs.as_ptr().cast()),
                    );
                    (
                        f16x1_pair(x0.d.as_ptr(), x1.d.as_ptr()),
                        _mm512_xor_si512(q, bias),
                    )
                }
            };
            // `dw · da` of row `r0` in the low 8 lanes, of row `r1` in the high 8.
            // SAFETY: AVX-512F (target_feature).
            let dd = unsafe { spread_pair::<0, 1>(_mm_mul_ps(dw, da)) };
            let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, qx, qy));
            *acc_k = _mm512_fmadd_ps(dd, s, *acc_k);
        }
    }
    for (k, &acc_k) in acc.iter().enumerate().take(rr.div_ceil(2)) {
        // SAFETY: forwarded `out` contract.
        unsafe { store_rows(acc_k, [0.0; 2], k, rr, out) };
    }
}

/// A lone token's micro-kernel over `rr` rows (see [`q4_1_rows`]).
pub(super) type RowsMicro =
    unsafe fn(usize, *const u8, usize, usize, *const u8, Scales, *mut f32, bool);

/// Rows per micro-tile of a lone token: four row pairs.
pub(super) const ROWS_MR: usize = 8;
