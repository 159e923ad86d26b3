//! AVX2 tiles of many tokens (prefill, batched decode) over unpacked weights, for Q4_1 × Q8_1
//! and Q5_0 × Q8_0: each group of weight rows is unpacked once — the 4- or 5-bit quants to one
//! byte each, the f16 scale (and Q4_1's minimum) to f32 — into a buffer on the stack, and each
//! group of tokens has its activation scales converted once; the micro-tiles then read both
//! ready to use.
//!
//! [`super::tiles`]'s micro-tiles unpack a weight block and convert its f16 values for every
//! tile of 3 (or 2) tokens they serve: for Q4_1, 5 of the 12 instructions spent per (row,
//! token, block) on a CPU without VNNI; Q5_0's fifth bits cost more. Here that is paid once per
//! row group and token group. The float operations, and their order, are the single-row dot's
//! (same per-block FMA, same `hsum8`), so the outputs equal [`super::dots`] and the reference
//! bit for bit.
//!
//! Stack use: at most 24 KiB (rows of up to [`MAX_BLOCKS`] blocks; longer rows, and products of
//! fewer than [`MIN_TOKENS`] tokens, which would not reuse the buffer, take the plain tiles).

use std::arch::x86_64::{
    __m256i, _mm256_and_si256, _mm256_cvtepi32_ps, _mm256_fmadd_ps, _mm256_loadu_si256,
    _mm256_mul_ps, _mm256_set1_epi8, _mm256_set1_ps, _mm256_set_m128i, _mm256_setzero_ps,
    _mm256_setzero_si256, _mm256_storeu_si256, _mm256_sub_epi32, _mm_fmadd_ps, _mm_loadu_ps,
    _mm_loadu_si128, _mm_set1_ps, _mm_setzero_ps, _mm_srli_epi16, _mm_storeu_ps,
};
use std::mem::MaybeUninit;

use super::f16c::f16_ptr;
use super::q5_0::q5_0_quants;
use super::tiles::{hsum8, Avx2, AvxVnni, LaneSums};

use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q5_0::BlockQ5_0;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};
use crate::reference::{Block, Plain};
/// Weight rows per micro-tile.
const MR: usize = 4;
/// Tokens per micro-tile: with [`MR`] rows, 8 accumulators, a weight block, the tokens'
/// blocks and scales and the temporaries fill the 16 AVX2 registers. Three tokens spilled
/// accumulators on every block (`examples/tile_bench.rs`, Q4_1 × 16 tokens with AVX-VNNI: 0.94
/// ns per block pair with 3, 0.84 with 2).
const MT: usize = 2;
/// Longest row unpacked (4096 elements).
pub(super) const MAX_BLOCKS: usize = 128;
/// Fewest tokens for which unpacking pays: the buffer then serves at least two micro-tiles.
pub(super) const MIN_TOKENS: usize = 4;
/// Activation scales per token group buffered (a group is about 16 KiB of activations).
const MAX_GROUP_BLOCKS: usize = 512;

/// A weight format this file unpacks, with its activation format.
pub(super) trait Format {
    /// The weight and activation blocks.
    type W: Plain;
    type A: Plain;
    /// The 32 quants of the weight block at `x` as bytes in element order, its scale and its
    /// minimum (0 for formats without one).
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C (the caller enables them).
    unsafe fn unpack(x: &Self::W) -> (__m256i, f32, f32);
    /// The activation block at `y`: its scale and, for Q8_1, its `s` (else 0).
    ///
    /// # Safety
    /// The CPU has F16C.
    unsafe fn act(y: &Self::A) -> (f32, f32);
    /// The `R × T` micro-tile over the buffers.
    ///
    /// # Safety
    /// As [`Micro::run`].
    unsafe fn micro<S: LaneSums, const R: usize, const T: usize>(m: &Micro<'_>);
}

/// Q4_1 weights (4-bit quants, scale, minimum) × Q8_1 activations.
pub(super) struct Q4_1;
/// Q5_0 weights (5-bit quants offset by 16, scale) × Q8_0 activations.
pub(super) struct Q5_0;

impl Format for Q4_1 {
    type W = BlockQ4_1;
    type A = BlockQ8_1;
    #[inline(always)]
    unsafe fn unpack(x: &BlockQ4_1) -> (__m256i, f32, f32) {
        // SAFETY: forwarded contract; `x.qs` holds 16 bytes (unaligned load).
        unsafe {
            let packed = _mm_loadu_si128(x.qs.as_ptr().cast());
            // Low nibbles are elements 0..16, high nibbles 16..32.
            let q = _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed),
                _mm256_set1_epi8(0x0f),
            );
            (q, f16_ptr(x.d.as_ptr()), f16_ptr(x.m.as_ptr()))
        }
    }
    #[inline(always)]
    unsafe fn act(y: &BlockQ8_1) -> (f32, f32) {
        // SAFETY: forwarded contract.
        unsafe { (f16_ptr(y.d.as_ptr()), f16_ptr(y.s.as_ptr())) }
    }
    #[inline(always)]
    unsafe fn micro<S: LaneSums, const R: usize, const T: usize>(m: &Micro<'_>) {
        // SAFETY: forwarded contract.
        unsafe { m.run_q4_1::<S, R, T>() }
    }
}

impl Format for Q5_0 {
    type W = BlockQ5_0;
    type A = BlockQ8_0;
    #[inline(always)]
    unsafe fn unpack(x: &BlockQ5_0) -> (__m256i, f32, f32) {
        // SAFETY: forwarded contract; `x` is a whole block.
        unsafe {
            (
                q5_0_quants(std::ptr::from_ref(x).cast()),
                f16_ptr(x.d.as_ptr()),
                0.0,
            )
        }
    }
    #[inline(always)]
    unsafe fn act(y: &BlockQ8_0) -> (f32, f32) {
        // SAFETY: forwarded contract.
        unsafe { (f16_ptr(y.d.as_ptr()), 0.0) }
    }
    #[inline(always)]
    unsafe fn micro<S: LaneSums, const R: usize, const T: usize>(m: &Micro<'_>) {
        // SAFETY: forwarded contract.
        unsafe { m.run_q5_0::<S, R, T>() }
    }
}

/// One row group's weights, unpacked: `q[r * MAX_BLOCKS + i]` is block `i` of row `r` as 32
/// bytes 0..=15 (elements in order), `d[r * MAX_BLOCKS + i]` its scale and `m[i * MR + r]` its
/// minimum (the group's rows side by side, for one 4-lane load per block).
struct Rows {
    q: MaybeUninit<[[u8; 32]; MR * MAX_BLOCKS]>,
    d: [f32; MR * MAX_BLOCKS],
    m: [f32; MR * MAX_BLOCKS],
}

/// One token group's activation scales: `d[k * nb + i]`, `s[k * nb + i]` for the group's
/// token `k` and block `i`.
struct Acts {
    d: [f32; MAX_GROUP_BLOCKS],
    s: [f32; MAX_GROUP_BLOCKS],
}

/// Whether [`tile`] takes a product of `nt` tokens over `nb` blocks (else the plain tile does).
pub(super) fn takes(nb: usize, nt: usize) -> bool {
    nt >= MIN_TOKENS && nb <= MAX_BLOCKS && nb * MT <= MAX_GROUP_BLOCKS
}

/// The tile product of format `F` through the buffers (see the module docs), on AVX2.
///
/// # Safety
/// As [`crate::tile::TileDotFn`] for `F`'s blocks, with `takes(n / 32, nt)`; the CPU has AVX2,
/// FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn avx2<F: Format>(
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
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { tile::<F, Avx2>(n, w, w_stride, nr, a, a_stride, nt, out, out_stride) }
}

/// [`avx2`] with AVX-VNNI's one-instruction lane sums.
///
/// # Safety
/// As [`avx2`]; the CPU also has AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn vnni<F: Format>(
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
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { tile::<F, AvxVnni>(n, w, w_stride, nr, a, a_stride, nt, out, out_stride) }
}

/// The walk: token groups of about 16 KiB of activations (as [`crate::tile::walk`]), in each
/// the row groups of [`MR`] rows, in each the micro-tiles of up to [`MT`] tokens.
///
/// # Safety
/// As [`avx2`]; inlined only into the `target_feature` functions above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<F: Format, S: LaneSums>(
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
    let nb = n / 32;
    let sizes = (<F::W as Block>::SIZE, <F::A as Block>::SIZE);
    crate::tile::check_operands(nb, sizes, w, w_stride, nr, a, a_stride, nt);
    assert!(takes(nb, nt), "tile buffers hold {nb} blocks × {nt} tokens");
    let group = ((16384 / a_stride.max(1)).max(MT) / MT * MT).min(MAX_GROUP_BLOCKS / nb.max(1));
    let group = group / MT * MT;
    let mut rows = Rows {
        q: MaybeUninit::uninit(),
        d: [0.0; MR * MAX_BLOCKS],
        m: [0.0; MR * MAX_BLOCKS],
    };
    let mut acts = Acts {
        d: [0.0; MAX_GROUP_BLOCKS],
        s: [0.0; MAX_GROUP_BLOCKS],
    };
    let q: *mut [u8; 32] = rows.q.as_mut_ptr().cast();
    let mut t0 = 0;
    while t0 < nt {
        let t1 = (t0 + group).min(nt);
        for k in 0..t1 - t0 {
            for i in 0..nb {
                // SAFETY: block `i` of activation row `t0 + k` is within `a` (checked above);
                // F16C is enabled by the caller.
                unsafe {
                    let y = &*a.as_ptr().add((t0 + k) * a_stride).cast::<F::A>().add(i);
                    (acts.d[k * nb + i], acts.s[k * nb + i]) = F::act(y);
                }
            }
        }
        let mut r = 0;
        while r < nr {
            let rr = (nr - r).min(MR);
            for j in 0..rr {
                for i in 0..nb {
                    // SAFETY: block `i` of weight row `r + j` is within `w` (checked above);
                    // slot `j * MAX_BLOCKS + i` is within the buffer (`nb <= MAX_BLOCKS`); the
                    // caller enables AVX2 and F16C.
                    unsafe {
                        let x = &*w.as_ptr().add((r + j) * w_stride).cast::<F::W>().add(i);
                        let (qx, d, m) = F::unpack(x);
                        rows.d[j * MAX_BLOCKS + i] = d;
                        rows.m[i * MR + j] = m;
                        _mm256_storeu_si256(q.add(j * MAX_BLOCKS + i).cast(), qx);
                    }
                }
            }
            let mut t = t0;
            while t < t1 {
                let tt = (t1 - t).min(MT);
                let at = Micro {
                    nb,
                    q,
                    rows: &rows,
                    acts: &acts,
                    k0: t - t0,
                    a: a.as_ptr().wrapping_add(t * a_stride),
                    a_stride,
                    // Element `(t, r)`: within the caller's output region.
                    out: out.wrapping_add(t * out_stride + r),
                    out_stride,
                };
                // SAFETY: rows `r..r + rr` were unpacked above; tokens `t..t + tt` are in the
                // group whose scales are in `acts` and within `a`; the outputs are the
                // caller's.
                unsafe {
                    match (rr, tt) {
                        (4, 2) => F::micro::<S, 4, 2>(&at),
                        (4, 1) => F::micro::<S, 4, 1>(&at),
                        (3, 2) => F::micro::<S, 3, 2>(&at),
                        (3, 1) => F::micro::<S, 3, 1>(&at),
                        (2, 2) => F::micro::<S, 2, 2>(&at),
                        (2, 1) => F::micro::<S, 2, 1>(&at),
                        (1, 2) => F::micro::<S, 1, 2>(&at),
                        _ => F::micro::<S, 1, 1>(&at),
                    }
                }
                t += tt;
            }
            r += rr;
        }
        t0 = t1;
    }
}

/// One micro-tile's operands: the unpacked rows, the token group's scales from token `k0`,
/// the tokens' activation rows from `a` and the output corner `out`.
pub(super) struct Micro<'b> {
    nb: usize,
    q: *const [u8; 32],
    rows: &'b Rows,
    acts: &'b Acts,
    k0: usize,
    a: *const u8,
    a_stride: usize,
    out: *mut f32,
    out_stride: usize,
}

impl Micro<'_> {
    /// The Q4_1 `R × T` micro-tile: per block, each (row, token) pair adds
    /// `(d_w · d_a) · Σ q_w q_a` to its 8 lanes and `m · s` to its scalar sum, as the single-row
    /// dot does. The scalar sums take a second pass, four rows to a vector: the first then
    /// keeps only its `R × T` accumulators, a weight block and the tokens' blocks and scales in
    /// registers (with the `R × T` scalar sums beside them, accumulators spilled on every
    /// block).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA, F16C (and what `S` uses); rows `0..R` of the buffer and tokens
    /// `k0..k0 + T` of the group are filled; `a` holds `T` rows of `nb` blocks, `a_stride`
    /// apart; `out.add(t * out_stride + r)` is writable for `t < T`, `r < R`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn run_q4_1<S: LaneSums, const R: usize, const T: usize>(&self) {
        let nb = self.nb;
        // SAFETY: the intrinsics need AVX2, FMA and F16C, which the `target_feature` function
        // this is inlined into enables (contract); the pointers are in bounds (contract).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for i in 0..nb {
                let mut qy = [_mm256_set1_epi8(0); T];
                let mut da = [_mm256_setzero_ps(); T];
                for t in 0..T {
                    da[t] = _mm256_set1_ps(self.acts.d[(self.k0 + t) * nb + i]);
                    let y = &*self.a.add(t * self.a_stride).cast::<BlockQ8_1>().add(i);
                    qy[t] = _mm256_loadu_si256(y.qs.as_ptr().cast());
                }
                for r in 0..R {
                    let slot = r * MAX_BLOCKS + i;
                    let dw = _mm256_set1_ps(self.rows.d[slot]);
                    let qx = _mm256_loadu_si256(self.q.add(slot).cast());
                    for t in 0..T {
                        let s = S::sums(qx, qy[t]);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da[t]), s, acc[r][t]);
                    }
                }
            }
            // Lane `r` of `summs[t]`: the pair's `Σ_i fma(m, s, ·)`, in block order.
            let mut summs = [_mm_setzero_ps(); T];
            for i in 0..nb {
                let m = _mm_loadu_ps(self.rows.m.as_ptr().add(i * MR));
                for t in 0..T {
                    let s = _mm_set1_ps(self.acts.s[(self.k0 + t) * nb + i]);
                    summs[t] = _mm_fmadd_ps(m, s, summs[t]);
                }
            }
            for t in 0..T {
                let mut lanes = [0f32; MR];
                _mm_storeu_ps(lanes.as_mut_ptr(), summs[t]);
                for r in 0..R {
                    *self.out.add(t * self.out_stride + r) = hsum8(acc[r][t]) + lanes[r];
                }
            }
        }
    }

    /// The Q5_0 `R × T` micro-tile: per block, each (row, token) pair adds
    /// `(d_w · d_a) · Σ (q_w - 16) q_a` to its 8 lanes, the sum taken as `Σ q_w q_a - 16 Σ q_a`
    /// (exact in i32), as the single-row dot does.
    ///
    /// # Safety
    /// As [`Micro::run_q4_1`].
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn run_q5_0<S: LaneSums, const R: usize, const T: usize>(&self) {
        let nb = self.nb;
        // SAFETY: the intrinsics need AVX2, FMA and F16C, which the `target_feature` function
        // this is inlined into enables (contract); the pointers are in bounds (contract).
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for i in 0..nb {
                let mut qy = [_mm256_set1_epi8(0); T];
                let mut da = [_mm256_setzero_ps(); T];
                let mut off = [_mm256_setzero_si256(); T];
                for t in 0..T {
                    da[t] = _mm256_set1_ps(self.acts.d[(self.k0 + t) * nb + i]);
                    let y = &*self.a.add(t * self.a_stride).cast::<BlockQ8_0>().add(i);
                    qy[t] = _mm256_loadu_si256(y.qs.as_ptr().cast());
                    off[t] = S::sums_i(_mm256_set1_epi8(16), qy[t]);
                }
                for r in 0..R {
                    let slot = r * MAX_BLOCKS + i;
                    let dw = _mm256_set1_ps(self.rows.d[slot]);
                    let qx = _mm256_loadu_si256(self.q.add(slot).cast());
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
                    *self.out.add(t * self.out_stride + r) = hsum8(acc[r][t]);
                }
            }
        }
    }
}
