//! AVX2 Q4_K, Q5_K and Q6_K × Q8_K dots, equal bit for bit to the reference
//! (`reference::q{4,5,6}_k`).
//!
//! Integer sums are exact in any grouping, so the integer work may be arranged freely; only the
//! float steps must be the reference's, in its order. Those differ per type, because the
//! reference copies what llama.cpp runs on x86 for each:
//!
//! - Q4_K (the repacked `gemv` / `gemm_q4_K_8x8_q8_K`): one exact integer sum per super-block
//!   (per 64 elements for the four-row variant) and one scalar fused multiply-add; here the
//!   integer sums come from `maddubs` / `madd` and a horizontal add.
//! - Q6_K (ggml's AVX2 `vec_dot_q6_K_q8_K`, and its tiled matmul for 8+ rows, which only
//!   needs the lanes' total): 8 i32 lanes, lane `l` holding the bytes
//!   `4l..4l+4` of every 32-element chunk, which is exactly what `maddubs` then `madd` with the
//!   group scales leave in i32 lane `l`; one vector fused multiply-add per super-block.
//! - Q5_K (ggml's generic dot, not checked against llama.cpp's AVX2 one): lane `l` of the
//!   integer accumulator `aux32[8]` holds `Σ scale(e) · q[e] · y[e]` over the elements
//!   `e ≡ l (mod 8)`; then `sums[l] += d · aux32[l]` (not fused), and at the end
//!   `sumf += sums[0]; ...; sumf += sums[7]` after the per-block minimum terms. Within each
//!   128-bit half of a 32-element chunk a byte shuffle puts element `l` next to element `l + 8`,
//!   so `maddubs` leaves i16 lane `l` (of each half) holding lane class `l`; two chunks are
//!   interleaved i16-wise and `madd` with their scales gives i32 lanes of classes 0..4 (low
//!   unpack) and 4..8 (high unpack) in both halves.

use std::arch::x86_64::{
    __m128i, __m256, __m256i, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256,
    _mm256_castsi256_si128, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi16, _mm256_cvtepu8_epi16,
    _mm256_extracti128_si256, _mm256_fmadd_ps, _mm256_loadu_si256, _mm256_madd_epi16,
    _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_or_si256, _mm256_permute2x128_si256,
    _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi8, _mm256_set1_ps, _mm256_set_m128i,
    _mm256_setr_epi8, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_shuffle_epi8,
    _mm256_slli_epi16, _mm256_slli_epi32, _mm256_srli_epi16, _mm256_storeu_ps, _mm256_sub_epi32,
    _mm256_unpackhi_epi16, _mm256_unpacklo_epi16, _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32,
    _mm_loadl_epi64, _mm_loadu_si128, _mm_set1_epi16, _mm_unpacklo_epi8,
};

use super::f16c::f16_at;
use crate::reference::q4_k::BlockQ4K;
use crate::reference::q5_k::BlockQ5K;
use crate::reference::q6_k::BlockQ6K;
use crate::reference::q8_k::BlockQ8K;
use crate::reference::view;

/// The f32 scale of a Q8_K block.
#[inline(always)]
pub(super) fn q8k_d(y: &BlockQ8K) -> f32 {
    f32::from_le_bytes(y.d)
}

/// 32 quants of a Q8_K block from `at`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q8k_quants(y: &BlockQ8K, at: usize) -> __m256i {
    let s = &y.qs[at..at + 32];
    // SAFETY: `s` holds exactly 32 bytes; unaligned load.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast::<__m256i>()) }
}

/// The 16 i16 group sums of a Q8_K block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q8k_bsums(y: &BlockQ8K) -> __m256i {
    load32(y.bsums.as_flattened(), 0)
}

/// 32 bytes of `b` from `at`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load32(b: &[u8], at: usize) -> __m256i {
    let s = &b[at..at + 32];
    // SAFETY: `s` holds exactly 32 bytes; unaligned load.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast::<__m256i>()) }
}

/// The byte shuffle (within each 128-bit half) that puts element `l` beside element `l + 8`.
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_shuffle() -> __m256i {
    _mm256_setr_epi8(
        0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, //
        0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,
    )
}

/// Lane-class integer accumulators of one super-block: `lo` holds classes 0..4 and `hi`
/// classes 4..8, each in both 128-bit halves.
#[derive(Clone, Copy)]
struct Classes {
    lo: __m256i,
    hi: __m256i,
}

impl Classes {
    #[target_feature(enable = "avx2,fma,f16c")]
    fn new() -> Self {
        Classes {
            lo: _mm256_setzero_si256(),
            hi: _mm256_setzero_si256(),
        }
    }

    /// Adds `s_A · pa + s_B · pb` per class, where `pa`, `pb` are `maddubs` results of two
    /// shuffled chunks and `scales` holds `[s_A, s_B]` as i16 pairs (per half).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn add(&mut self, pa: __m256i, pb: __m256i, scales: __m256i) {
        self.lo = _mm256_add_epi32(
            self.lo,
            _mm256_madd_epi16(_mm256_unpacklo_epi16(pa, pb), scales),
        );
        self.hi = _mm256_add_epi32(
            self.hi,
            _mm256_madd_epi16(_mm256_unpackhi_epi16(pa, pb), scales),
        );
    }

    /// The reference's `aux32` as f32: lane `l` is class `l` (converted with the rounding of
    /// `as f32`; exact anyway, as |aux32| < 2^24 for every k-quant).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn to_lanes(self) -> __m256 {
        let halves = _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(self.lo, self.hi),
            _mm256_permute2x128_si256::<0x31>(self.lo, self.hi),
        );
        _mm256_cvtepi32_ps(halves)
    }
}

/// `[s_A, s_B]` as an i16 pair repeated over the register.
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pair(a: i16, b: i16) -> __m256i {
    _mm256_set1_epi32(i32::from(a as u16) | (i32::from(b as u16) << 16))
}

/// The eight 6-bit scales and eight 6-bit minimums of Q4_K / Q5_K (the same values as the
/// reference's `scale_min_k4`, unpacked 4 bytes at a time as ggml's AVX2 kernels do).
#[inline(always)]
pub(super) fn scales_mins(p: &[u8]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc_lo = u0 & KMASK1;
    let sc_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let mn_lo = u1 & KMASK1;
    let mn_hi = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let join = |a: u32, b: u32| {
        let mut r = [0u8; 8];
        r[..4].copy_from_slice(&a.to_le_bytes());
        r[4..].copy_from_slice(&b.to_le_bytes());
        r
    };
    (join(sc_lo, sc_hi), join(mn_lo, mn_hi))
}

/// `Σ_j bsums[j] · mins[j / 2]` over the 16 group sums of a Q8_K block (exact).
#[target_feature(enable = "avx2,fma,f16c")]
fn min_sum(y: &BlockQ8K, mins: &[u8; 8]) -> i32 {
    // SAFETY: `mins` holds 8 bytes; unaligned 8-byte load.
    let m8 = unsafe { _mm_loadl_epi64(mins.as_ptr().cast()) };
    // [m0, m0, m1, m1, ..., m7, m7] as i16.
    let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    let p = _mm256_madd_epi16(q8k_bsums(y), m16);
    let s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
    let s = _mm_hadd_epi32(s, s);
    _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
}

/// `sumf + sums[0] + ... + sums[7]`, added in that order (the reference's final loop).
#[target_feature(enable = "avx2,fma,f16c")]
fn add_lanes_in_order(mut sumf: f32, sums: __m256) -> f32 {
    let mut s = [0f32; 8];
    // SAFETY: `s` holds 8 f32; unaligned store.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), sums) };
    for v in s {
        sumf += v;
    }
    sumf
}

/// Sum of the eight i32 lanes (exact: integer).
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_hadd_epi32(s, s);
    _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
}

/// The scaled quant sums of the four 64-element chunks of a Q4_K super-block `x` with the Q8_K
/// block `y`, as i32 lanes (chunk `c`: `sc[2c] · Σ lo-nibble · y + sc[2c+1] · Σ hi-nibble · y`
/// over its lanes; |pairs| ≤ 2 · 15 · 128, no `maddubs` saturation).
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_chunks(x: &BlockQ4K, y: &BlockQ8K, sc: &[u8; 8]) -> [__m256i; 4] {
    let low = _mm256_set1_epi8(0x0f);
    let mut out = [_mm256_setzero_si256(); 4];
    for (c, o) in out.iter_mut().enumerate() {
        let packed = load32(&x.qs, 32 * c);
        let qa = _mm256_and_si256(packed, low);
        let qb = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low);
        let pa = _mm256_maddubs_epi16(qa, q8k_quants(y, 64 * c));
        let pb = _mm256_maddubs_epi16(qb, q8k_quants(y, 64 * c + 32));
        *o = _mm256_add_epi32(
            _mm256_madd_epi16(pa, _mm256_set1_epi16(i16::from(sc[2 * c]))),
            _mm256_madd_epi16(pb, _mm256_set1_epi16(i16::from(sc[2 * c + 1]))),
        );
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_q8_k_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in view::<BlockQ4K>(w, nb).iter().zip(view::<BlockQ8K>(a, nb)) {
        let ya = q8k_d(y);
        let (sc, mn) = scales_mins(&x.scales);
        let [c0, c1, c2, c3] = q4_k_chunks(x, y, &sc);
        let sumi = hsum_i32(_mm256_add_epi32(
            _mm256_add_epi32(c0, c1),
            _mm256_add_epi32(c2, c3),
        ));
        let summ = min_sum(y, &mn);
        acc = (sumi as f32).mul_add(f16_at(&x.d, 0) * ya, acc);
        acc_min = (summ as f32).mul_add(f16_at(&x.dmin, 0) * ya, acc_min);
    }
    acc - acc_min
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_q8_k_x4_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in view::<BlockQ4K>(w, nb).iter().zip(view::<BlockQ8K>(a, nb)) {
        let ya = q8k_d(y);
        let (d, dmin) = (f16_at(&x.d, 0) * ya, f16_at(&x.dmin, 0) * ya);
        let (sc, mn) = scales_mins(&x.scales);
        let bs = |j: usize| i32::from(i16::from_le_bytes(y.bsums[j]));
        for (c, v) in q4_k_chunks(x, y, &sc).into_iter().enumerate() {
            let summ = (bs(4 * c) + bs(4 * c + 1)) * i32::from(mn[2 * c])
                + (bs(4 * c + 2) + bs(4 * c + 3)) * i32::from(mn[2 * c + 1]);
            acc = (hsum_i32(v) as f32).mul_add(d, acc);
            acc_min = (summ as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_q8_k_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let shuf = pair_shuffle();
    let low = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut sums = _mm256_setzero_ps();
    let mut sumf = 0f32;
    for (x, y) in view::<BlockQ5K>(w, nb).iter().zip(view::<BlockQ8K>(a, nb)) {
        let ya = q8k_d(y);
        let (sc, mn) = scales_mins(&x.scales);
        let summ = min_sum(y, &mn);
        // Fifth bits: bit g of byte l is element l of group g. After c shifts by 2, bits 0
        // and 1 of each byte are its own bits 2c and 2c + 1 (what comes in from the next byte
        // lands higher up).
        let mut qh = _mm256_shuffle_epi8(load32(&x.qh, 0), shuf);
        let mut acc = Classes::new();
        for c in 0..4 {
            let packed = _mm256_shuffle_epi8(load32(&x.qs, 32 * c), shuf);
            let ha = _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bit4);
            let hb = _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bit4);
            qh = _mm256_srli_epi16::<2>(qh);
            let qa = _mm256_or_si256(_mm256_and_si256(packed, low), ha);
            let qb = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(packed), low), hb);
            let ya_c = _mm256_shuffle_epi8(q8k_quants(y, 64 * c), shuf);
            let yb_c = _mm256_shuffle_epi8(q8k_quants(y, 64 * c + 32), shuf);
            acc.add(
                _mm256_maddubs_epi16(qa, ya_c),
                _mm256_maddubs_epi16(qb, yb_c),
                scale_pair(i16::from(sc[2 * c]), i16::from(sc[2 * c + 1])),
            );
        }
        let d = f16_at(&x.d, 0) * ya;
        sums = _mm256_add_ps(sums, _mm256_mul_ps(_mm256_set1_ps(d), acc.to_lanes()));
        sumf -= (f16_at(&x.dmin, 0) * ya) * summ as f32;
    }
    add_lanes_in_order(sumf, sums)
}

/// The two scales of 32-element chunk `ci` of a Q6_K block as i16 lanes: `sc[2ci]` for its
/// first 16 elements (low half), `sc[2ci + 1]` for the rest.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_scales(x: &BlockQ6K, ci: usize) -> __m256i {
    let s = |g: usize| i16::from(x.scales[g]);
    _mm256_set_m128i(_mm_set1_epi16(s(2 * ci + 1)), _mm_set1_epi16(s(2 * ci)))
}

/// The 16 group scales of a Q6_K block as i16.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_scales16(x: &BlockQ6K) -> __m256i {
    // SAFETY: `scales` holds 16 bytes; unaligned 16-byte load.
    _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(x.scales.as_ptr().cast::<__m128i>()) })
}

/// The 6-bit quants of a Q6_K super-block `x` as 8 vectors of 32 unsigned bytes (`q + 32`,
/// 0..64): vector `4h + k` holds elements `128h + 32k ..+ 32` in order.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_quants(x: &BlockQ6K) -> [__m256i; 8] {
    let low = _mm256_set1_epi8(0x0f);
    let top2 = _mm256_set1_epi8(0x30);
    let mut q = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let ql0 = load32(&x.ql, 64 * h);
        let ql1 = load32(&x.ql, 64 * h + 32);
        let qh = load32(&x.qh, 32 * h);
        q[4 * h] = _mm256_or_si256(
            _mm256_and_si256(ql0, low),
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), top2),
        );
        q[4 * h + 1] = _mm256_or_si256(
            _mm256_and_si256(ql1, low),
            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), top2),
        );
        q[4 * h + 2] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
            _mm256_and_si256(qh, top2),
        );
        q[4 * h + 3] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), top2),
        );
    }
    q
}

/// `Σ sc[e / 16] · u[e] · y[e]` of a Q6_K super-block into 8 i32 lanes (lane `l`: the bytes
/// `4l..4l+4` of every 32-element chunk), for unsigned `u` (at most 63 for no `maddubs`
/// saturation: |pairs| ≤ 2 · 63 · 128).
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_scaled_sum(x: &BlockQ6K, y: &BlockQ8K, u: &[__m256i; 8]) -> __m256i {
    let mut sumi = _mm256_setzero_si256();
    for (ci, &uc) in u.iter().enumerate() {
        let p = _mm256_maddubs_epi16(uc, q8k_quants(y, 32 * ci));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(q6_scales(x, ci), p));
    }
    sumi
}

/// The 8 integer lanes of one Q6_K super-block `x` with the Q8_K block `y`, as
/// `reference::q6_k::vec_dot_q6_k_q8_k` defines them: the `-32` offset comes from `y`'s group
/// sums, lane `l` taking `32 · (bsums[2l] · sc[2l] + bsums[2l+1] · sc[2l+1])`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_lanes(x: &BlockQ6K, y: &BlockQ8K) -> __m256i {
    let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(q8k_bsums(y), q6_scales16(x)));
    _mm256_sub_epi32(q6_scaled_sum(x, y, &q6_quants(x)), offset)
}

/// The exact `Σ sc · (q - 32) · y` of one Q6_K super-block, the offset taken from `y`'s own
/// quants (as ggml's tiled kernel does), not from its group sums.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_block_sum(x: &BlockQ6K, y: &BlockQ8K) -> i32 {
    let with_offset = q6_scaled_sum(x, y, &q6_quants(x));
    let ones = q6_scaled_sum(x, y, &[_mm256_set1_epi8(1); 8]);
    hsum_i32(with_offset) - 32 * hsum_i32(ones)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_q8_k_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in view::<BlockQ6K>(w, nb).iter().zip(view::<BlockQ8K>(a, nb)) {
        let d = q8k_d(y) * f16_at(&x.d, 0);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q6_lanes(x, y)), acc);
    }
    // ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), the reference's order.
    let mut l = [0f32; 8];
    // SAFETY: `l` holds 8 f32; unaligned store.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_q8_k_tiled_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in view::<BlockQ6K>(w, nb).iter().zip(view::<BlockQ8K>(a, nb)) {
        let sumi = q6_block_sum(x, y);
        acc = (f16_at(&x.d, 0) * sumi as f32).mul_add(q8k_d(y), acc);
    }
    acc
}

/// Runs `kernel` (an AVX2 + FMA function) on the `n / 256` super-blocks of `w` and `a` (the
/// kernel views them as blocks, which checks their lengths).
#[inline(always)]
fn run(n: usize, w: &[u8], a: &[u8], kernel: unsafe fn(usize, &[u8], &[u8]) -> f32) -> f32 {
    // SAFETY: these entries are installed in the dispatch table only after avx2 and fma were
    // detected (and f16c, which the avx2 path requires); block views are length-checked.
    unsafe { kernel(n / 256, w, a) }
}

/// Q4_K × Q8_K with AVX2 (same result as `reference::q4_k::vec_dot_q4_k_q8_k`).
pub(crate) fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, q4_k_q8_k_avx2)
}

/// Q4_K × Q8_K with AVX2 in the four-row order (same result as
/// `reference::q4_k::vec_dot_q4_k_q8_k_x4`).
pub(crate) fn vec_dot_q4_k_q8_k_x4(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, q4_k_q8_k_x4_avx2)
}

/// Q5_K × Q8_K with AVX2 (same result as `reference::q5_k::vec_dot_q5_k_q8_k`).
pub(crate) fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, q5_k_q8_k_avx2)
}

/// Q6_K × Q8_K with AVX2 (same result as `reference::q6_k::vec_dot_q6_k_q8_k`).
pub(crate) fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, q6_k_q8_k_avx2)
}

/// Q6_K × Q8_K with AVX2 in the tiled order (same result as
/// `reference::q6_k::vec_dot_q6_k_q8_k_tiled`).
pub(crate) fn vec_dot_q6_k_q8_k_tiled(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, q6_k_q8_k_tiled_avx2)
}
