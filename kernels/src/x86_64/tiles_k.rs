//! AVX2 tile products of Q4_K and Q6_K weights with Q8_K activations, in the float orders
//! llama.cpp gives the tokens of a batch (as [`super::tiles512_k`]), so each output equals
//! `dot_for_row(t, nt)` of its pair bit for bit. Tokens go by fours: a weight super-block is
//! unpacked once for the four (nibbles or 6-bit quants, scales, minimums); each token's exact
//! integer sums are formed against it, transposed so that one 4-lane register holds a chunk's
//! sums of the four tokens, and the float steps run for the four lanes at once in the
//! reference's order. Every integer is exact, so only the float order matters.
//! - Q4_K, tokens `0 .. nt - nt % 4`: the four-row order (`vec_dot_q4_k_q8_k_x4`: per 64-element
//!   chunk one FMA into the quant sum and one into the minimum sum);
//! - Q6_K, from 8 tokens: the tiled order (`vec_dot_q6_k_q8_k_tiled`: one exact sum per
//!   super-block, times `d_w`, then one FMA by `d_a`).
//!
//! The other tokens take the per-pair dot of their order.

use std::arch::x86_64::{
    __m128, __m128i, __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_castsi256_si128,
    _mm256_cvtepu8_epi16, _mm256_extracti128_si256, _mm256_hadd_epi32, _mm256_madd_epi16,
    _mm256_maddubs_epi16, _mm256_permute4x64_epi64, _mm256_set1_epi16, _mm256_set1_epi8,
    _mm256_slli_epi32, _mm256_srli_epi16, _mm256_sub_epi32, _mm_add_epi32, _mm_cvtepi32_ps,
    _mm_fmadd_ps, _mm_loadl_epi64, _mm_loadu_ps, _mm_mul_ps, _mm_set1_ps, _mm_setzero_ps,
    _mm_storeu_ps, _mm_sub_ps, _mm_unpackhi_epi32, _mm_unpackhi_epi64, _mm_unpacklo_epi32,
    _mm_unpacklo_epi64, _mm_unpacklo_epi8,
};

use super::f16c::f16_at;
use super::kquants::{
    load32, q6_quants, q6_scales, q6_scales16, q8k_bsums, q8k_d, q8k_quants, scales_mins,
};
use crate::reference::q4_k::BlockQ4K;
use crate::reference::q6_k::BlockQ6K;
use crate::reference::q8_k::BlockQ8K;
use crate::reference::{view, Block};
use crate::traits::{BatchRows, VecDotFn};

/// `[Σ a, Σ b, Σ c, Σ d]` of four vectors of 8 i32 lanes (exact).
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// The 4 × 4 transpose of `r` (row `t` holds token `t`'s four values): `out[c]` holds value
/// `c` of the four tokens.
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose4(r: [__m128i; 4]) -> [__m128i; 4] {
    let (t0, t1) = (
        _mm_unpacklo_epi32(r[0], r[1]),
        _mm_unpacklo_epi32(r[2], r[3]),
    );
    let (t2, t3) = (
        _mm_unpackhi_epi32(r[0], r[1]),
        _mm_unpackhi_epi32(r[2], r[3]),
    );
    [
        _mm_unpacklo_epi64(t0, t1),
        _mm_unpackhi_epi64(t0, t1),
        _mm_unpacklo_epi64(t2, t3),
        _mm_unpackhi_epi64(t2, t3),
    ]
}

/// The Q8_K blocks of tokens `t0..t0 + 4` (`nb` each, rows `a_stride` bytes apart).
#[inline(always)]
fn quad_acts(a: &[u8], a_stride: usize, t0: usize, nb: usize) -> [&[BlockQ8K]; 4] {
    std::array::from_fn(|t| view::<BlockQ8K>(&a[(t0 + t) * a_stride..], nb))
}

/// Row `w` (`nb` super-blocks) with tokens `t0..t0 + 4` of `a` in the four-row order.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_quad(nb: usize, w: &[u8], a: &[u8], a_stride: usize, t0: usize) -> __m128 {
    let low = _mm256_set1_epi8(0x0f);
    let (mut acc, mut acc_min) = (_mm_setzero_ps(), _mm_setzero_ps());
    let ys = quad_acts(a, a_stride, t0, nb);
    for (i, x) in view::<BlockQ4K>(w, nb).iter().enumerate() {
        let (sc, mn) = scales_mins(&x.scales);
        let mut q = [low; 8];
        for c in 0..4 {
            let packed = load32(&x.qs, 32 * c);
            q[2 * c] = _mm256_and_si256(packed, low);
            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low);
        }
        let s = sc.map(|v| _mm256_set1_epi16(i16::from(v)));
        // SAFETY: `mn` holds 8 bytes; unaligned 8-byte load.
        let m8 = unsafe { _mm_loadl_epi64(mn.as_ptr().cast()) };
        // [m0, m0, m1, m1, ..., m7, m7] as i16.
        let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        let (mut sums, mut mins, mut ya) = ([m8; 4], [m8; 4], [0f32; 4]);
        for t in 0..4 {
            let y = &ys[t][i];
            ya[t] = q8k_d(y);
            let mut v = [low; 4];
            for (c, v) in v.iter_mut().enumerate() {
                let pa = _mm256_maddubs_epi16(q[2 * c], q8k_quants(y, 64 * c));
                let pb = _mm256_maddubs_epi16(q[2 * c + 1], q8k_quants(y, 64 * c + 32));
                *v = _mm256_add_epi32(
                    _mm256_madd_epi16(pa, s[2 * c]),
                    _mm256_madd_epi16(pb, s[2 * c + 1]),
                );
            }
            sums[t] = hsum4(v[0], v[1], v[2], v[3]);
            // Lane j: (bsums[2j] + bsums[2j+1]) · mn[j]; chunk c is lanes 2c and 2c + 1.
            let p = _mm256_madd_epi16(q8k_bsums(y), m16);
            let h = _mm256_hadd_epi32(p, p);
            mins[t] = _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b00_00_10_00>(h));
        }
        // SAFETY: `ya` holds 4 f32; unaligned load.
        let ya = unsafe { _mm_loadu_ps(ya.as_ptr()) };
        let d = _mm_mul_ps(_mm_set1_ps(f16_at(&x.d, 0)), ya);
        let dmin = _mm_mul_ps(_mm_set1_ps(f16_at(&x.dmin, 0)), ya);
        for (sc, mn) in transpose4(sums).into_iter().zip(transpose4(mins)) {
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sc), d, acc);
            acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(mn), dmin, acc_min);
        }
    }
    _mm_sub_ps(acc, acc_min)
}

/// Row `w` (`nb` super-blocks) with tokens `t0..t0 + 4` of `a` in the tiled order.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_quad(nb: usize, w: &[u8], a: &[u8], a_stride: usize, t0: usize) -> __m128 {
    let mut acc = _mm_setzero_ps();
    let ys = quad_acts(a, a_stride, t0, nb);
    for (i, x) in view::<BlockQ6K>(w, nb).iter().enumerate() {
        let u = q6_quants(x);
        let sc: [__m256i; 8] = std::array::from_fn(|ci| q6_scales(x, ci));
        let sc16 = q6_scales16(x);
        let (mut lanes, mut ya) = ([u[0]; 4], [0f32; 4]);
        for (t, lanes) in lanes.iter_mut().enumerate() {
            let y = &ys[t][i];
            ya[t] = q8k_d(y);
            let mut sumi = _mm256_sub_epi32(u[0], u[0]);
            for ci in 0..8 {
                let p = _mm256_maddubs_epi16(u[ci], q8k_quants(y, 32 * ci));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc[ci], p));
            }
            // The `- 32` of the quants: 32 · Σ sc[g] · (group sum g of y).
            let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(q8k_bsums(y), sc16));
            *lanes = _mm256_sub_epi32(sumi, offset);
        }
        let sums = _mm_cvtepi32_ps(hsum4(lanes[0], lanes[1], lanes[2], lanes[3]));
        // SAFETY: `ya` holds 4 f32; unaligned load.
        let ya = unsafe { _mm_loadu_ps(ya.as_ptr()) };
        acc = _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(f16_at(&x.d, 0)), sums), ya, acc);
    }
    acc
}

/// A k-quant format of this file: its block size, which tokens take its batched order, its
/// per-pair dots (batched, single) and its four-token kernel.
pub(crate) trait KQuad {
    const BLOCK: usize;
    const RULE: BatchRows;
    const DOTS: (VecDotFn, VecDotFn);
    /// One weight row (`nb` super-blocks) with tokens `t0..t0 + 4` of `a`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    unsafe fn quad(nb: usize, w: &[u8], a: &[u8], a_stride: usize, t0: usize) -> __m128;
}

/// Q4_K weights, tokens by fours in the four-row order.
pub(crate) struct Q4K;
/// Q6_K weights, tokens by fours in the tiled order (from 8 tokens).
pub(crate) struct Q6K;

impl KQuad for Q4K {
    const BLOCK: usize = BlockQ4K::SIZE;
    const RULE: BatchRows = BatchRows::FullQuads;
    const DOTS: (VecDotFn, VecDotFn) = (
        super::kquants::vec_dot_q4_k_q8_k_x4,
        super::kquants::vec_dot_q4_k_q8_k,
    );
    unsafe fn quad(nb: usize, w: &[u8], a: &[u8], a_stride: usize, t0: usize) -> __m128 {
        // SAFETY: forwarded contract (the CPU's features).
        unsafe { q4_k_quad(nb, w, a, a_stride, t0) }
    }
}

impl KQuad for Q6K {
    const BLOCK: usize = BlockQ6K::SIZE;
    const RULE: BatchRows = BatchRows::AllFrom(8);
    const DOTS: (VecDotFn, VecDotFn) = (
        super::kquants::vec_dot_q6_k_q8_k_tiled,
        super::kquants::vec_dot_q6_k_q8_k,
    );
    unsafe fn quad(nb: usize, w: &[u8], a: &[u8], a_stride: usize, t0: usize) -> __m128 {
        // SAFETY: forwarded contract (the CPU's features).
        unsafe { q6_k_quad(nb, w, a, a_stride, t0) }
    }
}

/// Quads of tokens per pass over the weight rows (their activations stay in L1/L2).
const QUADS: usize = 4;

/// `F` × Q8_K tile product (see [`crate::tile::TileDotFn`]): the tokens of `F`'s batched order
/// by quads through `F::quad`, the others through the per-pair dot of their order; each output
/// equals the reference's `dot_for_row(t, nt)` of its pair.
///
/// # Safety
/// As [`crate::tile::TileDotFn`]; installed only on CPUs with AVX2, FMA and F16C.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<F: KQuad>(
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
    let nb = n / 256;
    let blocks = (F::BLOCK, BlockQ8K::SIZE);
    crate::tile::check_operands(nb, blocks, w, w_stride, nr, a, a_stride, nt);
    if nr == 0 || nt == 0 {
        return;
    }
    // SAFETY: forwarded contract; operands checked above.
    let quads = unsafe {
        crate::tile::k_pairs(
            F::RULE,
            F::DOTS,
            true,
            n,
            (w, w_stride, nr),
            (a, a_stride, nt),
            out,
            out_stride,
        )
    };
    let mut lanes = [0f32; 4];
    for g0 in (0..quads).step_by(QUADS) {
        for r in 0..nr {
            let row = &w[r * w_stride..r * w_stride + nb * F::BLOCK];
            for q in g0..(g0 + QUADS).min(quads) {
                // SAFETY: the CPU's features were checked before installation; tokens
                // `4q..4q + 4 <= nt` and row `r` are in bounds (checked above; slices).
                let v = unsafe { F::quad(nb, row, a, a_stride, 4 * q) };
                // SAFETY: `lanes` holds 4 f32; unaligned store (SSE, baseline x86_64).
                unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), v) };
                for (t, &y) in lanes.iter().enumerate() {
                    // SAFETY: `(4q + t, r)` is in the caller's output region.
                    unsafe { *out.add((4 * q + t) * out_stride + r) = y };
                }
            }
        }
    }
}
