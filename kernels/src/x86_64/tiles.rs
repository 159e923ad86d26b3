//! AVX2 matrix products over a tile of weight rows × activation rows: each weight block is
//! loaded and unpacked once for several activation rows, and each activation block serves
//! several weight rows. Every (row, token) pair keeps its own 8-lane accumulator and follows the
//! single-row dot's order exactly (same per-block FMA, same `hsum8`), so a tile's outputs equal
//! [`super::dots`] and the reference bit for bit; only the amount of loading and unpacking
//! changes.

use super::q5_0::q5_0_quants;
use std::arch::x86_64::{
    __m128i, __m256, __m256i, _mm256_and_si256, _mm256_castps128_ps256, _mm256_castps256_ps128,
    _mm256_cvtepi32_ps, _mm256_cvtph_ps, _mm256_dpbusd_avx_epi32, _mm256_extractf128_ps,
    _mm256_fmadd_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps,
    _mm256_permutevar8x32_ps, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi8,
    _mm256_set1_ps, _mm256_set_m128i, _mm256_setr_ps, _mm256_setzero_ps, _mm256_setzero_si256,
    _mm256_sign_epi8, _mm256_storeu_ps, _mm256_sub_epi32, _mm_add_ps, _mm_add_ss, _mm_cvtph_ps,
    _mm_cvtsi32_si128, _mm_cvtss_f32, _mm_insert_epi16, _mm_insert_epi32, _mm_loadu_si128,
    _mm_movehdup_ps, _mm_movehl_ps, _mm_prefetch, _mm_srli_epi16, _MM_HINT_T0,
};

/// How far ahead (in blocks) a first pass over weight rows prefetches each row.
pub(super) const PREFETCH_BLOCKS: usize = 256;
/// Prefetch only for products of at most this many activation rows: larger ones are
/// compute-bound, and the prefetched lines would push their activations out of L1.
pub(super) const PREFETCH_MAX_TOKENS: usize = 32;

use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q5_0::BlockQ5_0;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};
use crate::reference::{Block, Plain};

/// Block `i` of the row of `B` blocks at `row`, in place.
///
/// # Safety
/// `row` points to at least `i + 1` blocks that outlive `'a` (`B` has alignment 1: any address).
#[inline(always)]
pub(super) unsafe fn block<'a, B: Plain>(row: *const u8, i: usize) -> &'a B {
    // SAFETY: forwarded contract; `Plain` blocks have alignment 1 and no invalid bytes.
    unsafe { &*row.cast::<B>().add(i) }
}

/// f16 at `p` (little-endian) to f32 with F16C (exact, as `half`), without false register
/// dependencies (see [`super::f16c`]).
///
/// # Safety
/// `p..p+2` readable; the CPU has F16C.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: forwarded contract.
    unsafe { super::f16c::f16_ptr(p) }
}

/// `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`, as the reference's `hsum8`.
///
/// # Safety
/// The CPU must have AVX2; called only from kernels that enable it.
#[inline(always)]
pub(super) unsafe fn hsum8(x: __m256) -> f32 {
    // SAFETY: AVX is enabled in every caller (target_feature).
    unsafe {
        let hi = _mm256_extractf128_ps::<1>(x);
        let r = _mm_add_ps(hi, _mm256_castps256_ps128(x));
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        let r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }
}

/// 8 lanes of `Σ u8 × i8` over 4 consecutive bytes each, as f32.
///
/// # Safety
/// The CPU must have AVX2; called only from kernels that enable it.
#[inline(always)]
unsafe fn lane_sums(u: __m256i, s: __m256i) -> __m256 {
    // SAFETY: AVX2 is enabled in every caller (target_feature).
    unsafe {
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

/// [`lane_sums`] with AVX-VNNI.
///
/// # Safety
/// The CPU must have AVX-VNNI; called only from kernels that enable it.
#[inline(always)]
unsafe fn lane_sums_vnni(u: __m256i, s: __m256i) -> __m256 {
    // SAFETY: AVX-VNNI is enabled in every caller (target_feature).
    unsafe { _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)) }
}

/// [`lane_sums`] before the conversion to f32 (exact i32 lanes; no `maddubs` saturation for
/// `u` ≤ 63).
///
/// # Safety
/// The CPU must have AVX2; called only from kernels that enable it.
#[inline(always)]
unsafe fn lane_sums_i(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (target_feature).
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
}

/// [`lane_sums_i`] with AVX-VNNI.
///
/// # Safety
/// The CPU must have AVX-VNNI; called only from kernels that enable it.
#[inline(always)]
unsafe fn lane_sums_vnni_i(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: AVX-VNNI is enabled in every caller (target_feature).
    unsafe { _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s) }
}

/// `Σ u8 × i8` lanes of a weight block and an activation block: plain AVX2 (`maddubs` +
/// `madd`) or AVX-VNNI (whose `vpdpbusd` computes the same exact lane sums — no 16-bit
/// saturation occurs with 4- or 5-bit weights or ±127 activations — in one instruction). The
/// micro-tiles are written once, generic over it.
pub(super) trait LaneSums {
    /// As f32.
    ///
    /// # Safety
    /// The CPU has the instructions the implementation uses (its caller enables them).
    unsafe fn sums(u: __m256i, s: __m256i) -> __m256;
    /// As exact i32.
    ///
    /// # Safety
    /// As [`LaneSums::sums`].
    unsafe fn sums_i(u: __m256i, s: __m256i) -> __m256i;
}

/// AVX2's lane sums.
pub(super) struct Avx2;
/// AVX-VNNI's lane sums.
pub(super) struct AvxVnni;

impl LaneSums for Avx2 {
    #[inline(always)]
    unsafe fn sums(u: __m256i, s: __m256i) -> __m256 {
        // SAFETY: forwarded contract (AVX2).
        unsafe { lane_sums(u, s) }
    }
    #[inline(always)]
    unsafe fn sums_i(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: forwarded contract (AVX2).
        unsafe { lane_sums_i(u, s) }
    }
}

impl LaneSums for AvxVnni {
    #[inline(always)]
    unsafe fn sums(u: __m256i, s: __m256i) -> __m256 {
        // SAFETY: forwarded contract (AVX-VNNI).
        unsafe { lane_sums_vnni(u, s) }
    }
    #[inline(always)]
    unsafe fn sums_i(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: forwarded contract (AVX-VNNI).
        unsafe { lane_sums_vnni_i(u, s) }
    }
}

/// A micro-tile kernel: `R × T` (row, token) pairs over `nb` blocks; `prefetch` asks for
/// software prefetches ahead in each weight row (set on the first pass over the rows, which
/// reads them from memory: hardware prefetching alone left decode at about a third of the
/// machine's read bandwidth).
trait MicroKernel {
    /// # Safety
    /// The CPU has AVX2, FMA, F16C and what `S` uses (the `target_feature` function this is
    /// inlined into enables them); `w` points at `R` rows of `nb` blocks, `w_stride` bytes
    /// apart; `a` at `T` rows of `nb` blocks, `a_stride` apart; `out.add(t * out_stride + r)`
    /// is writable for `t < T`, `r < R`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run<S: LaneSums, const R: usize, const T: usize>(
        nb: usize,
        w: *const u8,
        w_stride: usize,
        a: *const u8,
        a_stride: usize,
        out: *mut f32,
        out_stride: usize,
        prefetch: bool,
    );
}

/// Q4_1 × Q8_1.
struct Q4_1;
/// Q8_0 × Q8_0.
struct Q8_0;
/// Q5_0 × Q8_0.
struct Q5_0;

/// A software prefetch `PREFETCH_BLOCKS` blocks of `size` bytes ahead of block `i` of the row
/// at `row` (of any address: wrapping arithmetic, no access).
///
/// # Safety
/// The CPU has SSE (every x86_64 does).
#[inline(always)]
pub(super) unsafe fn prefetch_ahead<B: Block>(row: *const u8, i: usize) {
    // SAFETY: a prefetch reads nothing architecturally; SSE is baseline.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add((i + PREFETCH_BLOCKS) * B::SIZE).cast())
    };
}

/// The first 4 bytes of block `i` of rows `0..R` (`R` ≤ 4), `w_stride` bytes apart, as the
/// dwords of one register (zeros past row `R`).
///
/// # Safety
/// Block `i` of each of the `R` rows is readable; the CPU has SSE4.1.
#[inline(always)]
unsafe fn head_dwords<B: Block, const R: usize>(
    w: *const u8,
    w_stride: usize,
    i: usize,
) -> __m128i {
    // SAFETY: forwarded contract (unaligned 4-byte reads at the blocks' starts).
    unsafe {
        let at = |r: usize| {
            w.add(r * w_stride + i * B::SIZE)
                .cast::<i32>()
                .read_unaligned()
        };
        let mut v = _mm_cvtsi32_si128(at(0));
        if R > 1 {
            v = _mm_insert_epi32::<1>(v, at(1));
        }
        if R > 2 {
            v = _mm_insert_epi32::<2>(v, at(2));
        }
        if R > 3 {
            v = _mm_insert_epi32::<3>(v, at(3));
        }
        v
    }
}

/// The f16 `d` at the start of block `i` of rows `0..R` (`R` ≤ 4) as f32 in lanes `0..R`
/// (exact).
///
/// # Safety
/// Block `i` of each of the `R` rows is readable; the CPU has F16C.
#[inline(always)]
unsafe fn head_f16s<B: Block, const R: usize>(w: *const u8, w_stride: usize, i: usize) -> __m256 {
    // SAFETY: forwarded contract (unaligned 2-byte reads at the blocks' starts).
    unsafe {
        let at = |r: usize| {
            i32::from(
                w.add(r * w_stride + i * B::SIZE)
                    .cast::<i16>()
                    .read_unaligned(),
            )
        };
        let mut v = _mm_cvtsi32_si128(at(0));
        if R > 1 {
            v = _mm_insert_epi16::<1>(v, at(1));
        }
        if R > 2 {
            v = _mm_insert_epi16::<2>(v, at(2));
        }
        if R > 3 {
            v = _mm_insert_epi16::<3>(v, at(3));
        }
        _mm256_castps128_ps256(_mm_cvtph_ps(v))
    }
}

/// Lane `l` of `x` in all 8 lanes.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn lane(x: __m256, l: usize) -> __m256 {
    // SAFETY: AVX2 (caller).
    unsafe { _mm256_permutevar8x32_ps(x, _mm256_set1_epi32(l as i32)) }
}

/// One token's Q4_1 micro-tile (the decode step's shape): the per-block scalars of all `R` rows
/// at once — their `d` and `m` converted from one register, `d · da` in one multiplication,
/// the `m · s` chains in the odd lanes of one FMA — then each row's lane sums as in
/// [`MicroKernel::run`]. Every float step is the pair kernel's, lane for lane.
///
/// # Safety
/// As [`MicroKernel::run`] with `T = 1` and `R` ≤ 4.
#[inline(always)]
unsafe fn q4_1_one_token<S: LaneSums, const R: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    out: *mut f32,
    prefetch: bool,
) {
    // SAFETY: as in `MicroKernel::run` (the caller's `target_feature` and bounds).
    unsafe {
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); R];
        // Lane 2r + 1: row r's `m · s` chain (the even lanes stay 0).
        let mut summs = _mm256_setzero_ps();
        for i in 0..nb {
            let y: &BlockQ8_1 = block(a, i);
            let (da, sa) = (f16_at(y.d.as_ptr()), f16_at(y.s.as_ptr()));
            let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
            // [d0, m0, d1, m1, ...]: `d` and `m` are each block's first 4 bytes.
            let dm = _mm256_cvtph_ps(head_dwords::<BlockQ4_1, R>(w, w_stride, i));
            summs = _mm256_fmadd_ps(
                dm,
                _mm256_setr_ps(0.0, sa, 0.0, sa, 0.0, sa, 0.0, sa),
                summs,
            );
            let dd = _mm256_mul_ps(dm, _mm256_setr_ps(da, 0.0, da, 0.0, da, 0.0, da, 0.0));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                if prefetch {
                    prefetch_ahead::<BlockQ4_1>(w.add(r * w_stride), i);
                }
                let x: &BlockQ4_1 = block(w.add(r * w_stride), i);
                let packed = _mm_loadu_si128(x.qs.as_ptr().cast());
                let qx =
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), low);
                *acc_r = _mm256_fmadd_ps(lane(dd, 2 * r), S::sums(qx, qy), *acc_r);
            }
        }
        let mut m = [0f32; 8];
        _mm256_storeu_ps(m.as_mut_ptr(), summs);
        for (r, &acc_r) in acc.iter().enumerate() {
            *out.add(r) = hsum8(acc_r) + m[2 * r + 1];
        }
    }
}

/// One token's Q8_0 (`Q5` false) or Q5_0 micro-tile: the rows' `d` converted from one register
/// and multiplied by `da` in one step, then each row's lane sums as in [`MicroKernel::run`]
/// (every float step the pair kernel's, lane for lane).
///
/// # Safety
/// As [`MicroKernel::run`] with `T = 1` and `R` ≤ 4.
#[inline(always)]
unsafe fn q8_0_one_token<S: LaneSums, const R: usize, const Q5: bool>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    out: *mut f32,
    prefetch: bool,
) {
    // SAFETY: as in `MicroKernel::run` (the caller's `target_feature` and bounds).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for i in 0..nb {
            let y: &BlockQ8_0 = block(a, i);
            let da = f16_at(y.d.as_ptr());
            let qy = _mm256_loadu_si256(y.qs.as_ptr().cast());
            let off = if Q5 {
                S::sums_i(_mm256_set1_epi8(16), qy)
            } else {
                _mm256_setzero_si256()
            };
            let dd = if Q5 {
                _mm256_mul_ps(
                    head_f16s::<BlockQ5_0, R>(w, w_stride, i),
                    _mm256_set1_ps(da),
                )
            } else {
                _mm256_mul_ps(
                    head_f16s::<BlockQ8_0, R>(w, w_stride, i),
                    _mm256_set1_ps(da),
                )
            };
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let row = w.add(r * w_stride);
                let s = if Q5 {
                    if prefetch {
                        prefetch_ahead::<BlockQ5_0>(row, i);
                    }
                    let x: &BlockQ5_0 = block(row, i);
                    let qx = q5_0_quants(std::ptr::from_ref(x).cast());
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(S::sums_i(qx, qy), off))
                } else {
                    if prefetch {
                        prefetch_ahead::<BlockQ8_0>(row, i);
                    }
                    let x: &BlockQ8_0 = block(row, i);
                    let qx = _mm256_loadu_si256(x.qs.as_ptr().cast());
                    S::sums(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx))
                };
                *acc_r = _mm256_fmadd_ps(lane(dd, r), s, *acc_r);
            }
        }
        for (r, &acc_r) in acc.iter().enumerate() {
            *out.add(r) = hsum8(acc_r);
        }
    }
}

impl MicroKernel for Q4_1 {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn run<S: LaneSums, const R: usize, const T: usize>(
        nb: usize,
        w: *const u8,
        w_stride: usize,
        a: *const u8,
        a_stride: usize,
        out: *mut f32,
        out_stride: usize,
        prefetch: bool,
    ) {
        if T == 1 && R <= 4 {
            // SAFETY: forwarded contract.
            return unsafe { q4_1_one_token::<S, R>(nb, w, w_stride, a, out, prefetch) };
        }
        // SAFETY: the intrinsics need what the caller's `target_feature` enables; every block
        // read is within the rows the caller vouches for (contract).
        unsafe {
            let low = _mm256_set1_epi8(0x0f);
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut summs = [[0f32; T]; R];
            for i in 0..nb {
                let mut qy = [_mm256_set1_epi8(0); T];
                let mut da = [_mm256_setzero_ps(); T];
                let mut sa = [0f32; T];
                for t in 0..T {
                    let y: &BlockQ8_1 = block(a.add(t * a_stride), i);
                    da[t] = _mm256_set1_ps(f16_at(y.d.as_ptr()));
                    sa[t] = f16_at(y.s.as_ptr());
                    qy[t] = _mm256_loadu_si256(y.qs.as_ptr().cast());
                }
                for r in 0..R {
                    if prefetch {
                        // The first pass over these weight rows reads them from memory: fetch
                        // ahead in each row (decode is bound by this).
                        prefetch_ahead::<BlockQ4_1>(w.add(r * w_stride), i);
                    }
                    let x: &BlockQ4_1 = block(w.add(r * w_stride), i);
                    let (dw, mw) = (_mm256_set1_ps(f16_at(x.d.as_ptr())), f16_at(x.m.as_ptr()));
                    let packed = _mm_loadu_si128(x.qs.as_ptr().cast());
                    // Low nibbles are elements 0..16, high nibbles 16..32.
                    let qx = _mm256_and_si256(
                        _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed),
                        low,
                    );
                    for t in 0..T {
                        summs[r][t] = mw.mul_add(sa[t], summs[r][t]);
                        let s = S::sums(qx, qy[t]);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da[t]), s, acc[r][t]);
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    *out.add(t * out_stride + r) = hsum8(acc[r][t]) + summs[r][t];
                }
            }
        }
    }
}

impl MicroKernel for Q8_0 {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn run<S: LaneSums, const R: usize, const T: usize>(
        nb: usize,
        w: *const u8,
        w_stride: usize,
        a: *const u8,
        a_stride: usize,
        out: *mut f32,
        out_stride: usize,
        prefetch: bool,
    ) {
        if T == 1 && R <= 4 {
            // SAFETY: forwarded contract.
            return unsafe { q8_0_one_token::<S, R, false>(nb, w, w_stride, a, out, prefetch) };
        }
        // SAFETY: as in the Q4_1 kernel.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for i in 0..nb {
                let mut qy = [_mm256_set1_epi8(0); T];
                let mut da = [_mm256_setzero_ps(); T];
                for t in 0..T {
                    let y: &BlockQ8_0 = block(a.add(t * a_stride), i);
                    da[t] = _mm256_set1_ps(f16_at(y.d.as_ptr()));
                    qy[t] = _mm256_loadu_si256(y.qs.as_ptr().cast());
                }
                for r in 0..R {
                    if prefetch {
                        prefetch_ahead::<BlockQ8_0>(w.add(r * w_stride), i);
                    }
                    let x: &BlockQ8_0 = block(w.add(r * w_stride), i);
                    let (dw, qx) = (
                        _mm256_set1_ps(f16_at(x.d.as_ptr())),
                        _mm256_loadu_si256(x.qs.as_ptr().cast()),
                    );
                    // |x| as unsigned times y with x's sign: exact while y != -128 (activation
                    // quantizers clamp to ±127).
                    let ux = _mm256_sign_epi8(qx, qx);
                    for t in 0..T {
                        let s = S::sums(ux, _mm256_sign_epi8(qy[t], qx));
                        acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da[t]), s, acc[r][t]);
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    *out.add(t * out_stride + r) = hsum8(acc[r][t]);
                }
            }
        }
    }
}

/// `(q - 16) · y` as `q · y` minus `16 · y` (exact for every i8 activation), the second part
/// once per activation block.
impl MicroKernel for Q5_0 {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn run<S: LaneSums, const R: usize, const T: usize>(
        nb: usize,
        w: *const u8,
        w_stride: usize,
        a: *const u8,
        a_stride: usize,
        out: *mut f32,
        out_stride: usize,
        prefetch: bool,
    ) {
        if T == 1 && R <= 4 {
            // SAFETY: forwarded contract.
            return unsafe { q8_0_one_token::<S, R, true>(nb, w, w_stride, a, out, prefetch) };
        }
        // SAFETY: as in the Q4_1 kernel.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for i in 0..nb {
                let mut qy = [_mm256_set1_epi8(0); T];
                let mut da = [_mm256_setzero_ps(); T];
                let mut off = [_mm256_setzero_si256(); T];
                for t in 0..T {
                    let y: &BlockQ8_0 = block(a.add(t * a_stride), i);
                    da[t] = _mm256_set1_ps(f16_at(y.d.as_ptr()));
                    qy[t] = _mm256_loadu_si256(y.qs.as_ptr().cast());
                    off[t] = S::sums_i(_mm256_set1_epi8(16), qy[t]);
                }
                for r in 0..R {
                    if prefetch {
                        prefetch_ahead::<BlockQ5_0>(w.add(r * w_stride), i);
                    }
                    let x: &BlockQ5_0 = block(w.add(r * w_stride), i);
                    let (dw, qx) = (
                        _mm256_set1_ps(f16_at(x.d.as_ptr())),
                        q5_0_quants(std::ptr::from_ref(x).cast()),
                    );
                    for t in 0..T {
                        let s = _mm256_sub_epi32(S::sums_i(qx, qy[t]), off[t]);
                        acc[r][t] = _mm256_fmadd_ps(
                            _mm256_mul_ps(dw, da[t]),
                            _mm256_cvtepi32_ps(s),
                            acc[r][t],
                        );
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    *out.add(t * out_stride + r) = hsum8(acc[r][t]);
                }
            }
        }
    }
}

/// Micro-kernel `K` with AVX2's lane sums, compiled for AVX2, FMA and F16C.
///
/// # Safety
/// As [`MicroKernel::run`]; the CPU has those features.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2<K: MicroKernel, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    a_stride: usize,
    out: *mut f32,
    out_stride: usize,
    prefetch: bool,
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { K::run::<Avx2, R, T>(nb, w, w_stride, a, a_stride, out, out_stride, prefetch) }
}

/// Micro-kernel `K` with AVX-VNNI's lane sums.
///
/// # Safety
/// As [`avx2`]; the CPU also has AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn vnni<K: MicroKernel, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    a_stride: usize,
    out: *mut f32,
    out_stride: usize,
    prefetch: bool,
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { K::run::<AvxVnni, R, T>(nb, w, w_stride, a, a_stride, out, out_stride, prefetch) }
}

use crate::tile::{walk, Micro, TileDotFn};

/// The `[[isa::<K, r, t>; MT]; MR]` table of micro-kernel instances, for `MR = 4` and `MT` 2
/// or 3.
macro_rules! micro_table {
    ($isa:ident, $k:ty, 4, 2) => {
        [
            [$isa::<$k, 1, 1> as Micro, $isa::<$k, 1, 2>],
            [$isa::<$k, 2, 1>, $isa::<$k, 2, 2>],
            [$isa::<$k, 3, 1>, $isa::<$k, 3, 2>],
            [$isa::<$k, 4, 1>, $isa::<$k, 4, 2>],
        ]
    };
    ($isa:ident, $k:ty, 4, 3) => {
        [
            [
                $isa::<$k, 1, 1> as Micro,
                $isa::<$k, 1, 2>,
                $isa::<$k, 1, 3>,
            ],
            [$isa::<$k, 2, 1>, $isa::<$k, 2, 2>, $isa::<$k, 2, 3>],
            [$isa::<$k, 3, 1>, $isa::<$k, 3, 2>, $isa::<$k, 3, 3>],
            [$isa::<$k, 4, 1>, $isa::<$k, 4, 2>, $isa::<$k, 4, 3>],
        ]
    };
}

/// A tile product of the AVX2 tiles: its micro-kernels (with their ISA's features) in
/// `4 × MT` tiles (shapes measured with `examples/tile_bench.rs`: the best that avoids register
/// spills in 16 AVX2 registers), its block sizes, and the [`super::tiles_unpacked`] tile that
/// serves the products it takes (several tokens over rows of up to 4096 elements; the same bits
/// either way).
pub(crate) trait Entry<const MT: usize> {
    /// The `r × t` micro-kernel at `[r - 1][t - 1]`.
    const MICRO: [[Micro; MT]; 4];
    /// Bytes per block of a weight row and of an activation row.
    const BLOCKS: (usize, usize);
    /// The unpacked tile of the same format and features, where there is one.
    const UNPACKED: Option<TileDotFn>;
}

/// The tile product of `E` (see [`TileDotFn`]).
///
/// # Safety
/// As [`TileDotFn`]; installed only after the CPU features of `E`'s micro-kernels were
/// detected.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<const MT: usize, E: Entry<MT>>(
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nt: usize,
    out: *mut f32,
    out_stride: usize,
) {
    if let Some(unpacked) = E::UNPACKED {
        if super::tiles_unpacked::takes(n / 32, nt) {
            // SAFETY: forwarded contract; the unpacked tile needs the same features.
            return unsafe { unpacked(n, w, w_stride, nr, a, a_stride, nt, out, out_stride) };
        }
    }
    // SAFETY: forwarded contract.
    unsafe {
        walk(
            &E::MICRO,
            E::BLOCKS,
            PREFETCH_MAX_TOKENS,
            n,
            w,
            w_stride,
            nr,
            a,
            a_stride,
            nt,
            out,
            out_stride,
        )
    }
}

/// The AVX2 tile kernels: Q4_1 × Q8_1, Q8_0 × Q8_0 and Q5_0 × Q8_0, with AVX2's lane sums
/// (`Avx2*`) or AVX-VNNI's (`Vnni*`).
pub(crate) struct Avx2Q4_1;
pub(crate) struct Avx2Q8_0;
pub(crate) struct Avx2Q5_0;
pub(crate) struct VnniQ4_1;
pub(crate) struct VnniQ8_0;
pub(crate) struct VnniQ5_0;

use super::tiles_unpacked as unpacked;
impl Entry<3> for Avx2Q4_1 {
    const MICRO: [[Micro; 3]; 4] = micro_table!(avx2, Q4_1, 4, 3);
    const BLOCKS: (usize, usize) = (BlockQ4_1::SIZE, BlockQ8_1::SIZE);
    const UNPACKED: Option<TileDotFn> = Some(unpacked::avx2::<unpacked::Q4_1>);
}
impl Entry<2> for Avx2Q8_0 {
    const MICRO: [[Micro; 2]; 4] = micro_table!(avx2, Q8_0, 4, 2);
    const BLOCKS: (usize, usize) = (BlockQ8_0::SIZE, BlockQ8_0::SIZE);
    const UNPACKED: Option<TileDotFn> = None;
}
impl Entry<2> for Avx2Q5_0 {
    const MICRO: [[Micro; 2]; 4] = micro_table!(avx2, Q5_0, 4, 2);
    const BLOCKS: (usize, usize) = (BlockQ5_0::SIZE, BlockQ8_0::SIZE);
    const UNPACKED: Option<TileDotFn> = Some(unpacked::avx2::<unpacked::Q5_0>);
}
impl Entry<3> for VnniQ4_1 {
    const MICRO: [[Micro; 3]; 4] = micro_table!(vnni, Q4_1, 4, 3);
    const BLOCKS: (usize, usize) = (BlockQ4_1::SIZE, BlockQ8_1::SIZE);
    const UNPACKED: Option<TileDotFn> = Some(unpacked::vnni::<unpacked::Q4_1>);
}
impl Entry<2> for VnniQ8_0 {
    const MICRO: [[Micro; 2]; 4] = micro_table!(vnni, Q8_0, 4, 2);
    const BLOCKS: (usize, usize) = (BlockQ8_0::SIZE, BlockQ8_0::SIZE);
    const UNPACKED: Option<TileDotFn> = None;
}
impl Entry<2> for VnniQ5_0 {
    const MICRO: [[Micro; 2]; 4] = micro_table!(vnni, Q5_0, 4, 2);
    const BLOCKS: (usize, usize) = (BlockQ5_0::SIZE, BlockQ8_0::SIZE);
    const UNPACKED: Option<TileDotFn> = Some(unpacked::vnni::<unpacked::Q5_0>);
}
