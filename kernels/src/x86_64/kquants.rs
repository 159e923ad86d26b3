//! AVX2 Q4_K, Q5_K and Q6_K × Q8_K dots, equal bit for bit to the reference
//! (`reference::q{4,5,6}_k`).
//!
//! The reference follows ggml's generic k-quant dots: per super-block, lane `l` of the integer
//! accumulator `aux32[8]` holds `Σ scale(e) · q[e] · y[e]` over the elements `e ≡ l (mod 8)`; then
//! `sums[l] += d · aux32[l]` (a multiply and an add, not fused), and at the end
//! `sumf += sums[0]; ...; sumf += sums[7]` after the per-block minimum terms. Integer sums are
//! exact in any grouping, so the integer work may be arranged freely as long as every element
//! lands in its lane; the float steps are the reference's, in its order.
//!
//! The arrangement: within each 128-bit half of a 32-element chunk a byte shuffle puts element
//! `l` next to element `l + 8`, so `maddubs` leaves i16 lane `l` (of each half) holding lane
//! class `l`. Two chunks A and B are interleaved i16-wise (`unpacklo` / `unpackhi`) and `madd`
//! with their scales `[s_A, s_B, ...]` gives i32 lanes of classes 0..4 (low unpack) and 4..8
//! (high unpack) in both halves; the halves are added once per super-block. Per super-block
//! this costs a few shuffles more than ggml's AVX2 kernel (which sums pairs of neighbours and
//! so rounds in another order), and nothing per element.

use std::arch::x86_64::{
    __m256, __m256i, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256, _mm256_castsi256_si128,
    _mm256_cvtepi32_ps, _mm256_cvtepu8_epi16, _mm256_extracti128_si256, _mm256_loadu_si256,
    _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_or_si256,
    _mm256_permute2x128_si256, _mm256_set1_epi32, _mm256_set1_epi8, _mm256_set1_ps,
    _mm256_set_m128i, _mm256_setr_epi8, _mm256_setzero_ps, _mm256_setzero_si256,
    _mm256_shuffle_epi8, _mm256_slli_epi16, _mm256_srli_epi16, _mm256_storeu_ps, _mm256_sub_epi16,
    _mm256_unpackhi_epi16, _mm256_unpacklo_epi16, _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32,
    _mm_loadl_epi64, _mm_set1_epi32, _mm_unpacklo_epi8,
};

use super::f16c::f16_at;

const Q4_K_SIZE: usize = 144;
const Q5_K_SIZE: usize = 176;
const Q6_K_SIZE: usize = 210;
const Q8_K_SIZE: usize = 292;
/// Offset of the quants in a Q8_K block (after the f32 `d`).
const Q8_K_QS: usize = 4;
/// Offset of the 16 i16 group sums in a Q8_K block.
const Q8_K_BSUMS: usize = 4 + 256;

#[inline(always)]
fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// 32 bytes of `b` from `at`.
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: &[u8], at: usize) -> __m256i {
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

/// `[a_lo, b_lo]` repeated over the low half, `[a_hi, b_hi]` over the high half.
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pairs(a_lo: i16, b_lo: i16, a_hi: i16, b_hi: i16) -> __m256i {
    let pair = |a: i16, b: i16| i32::from(a as u16) | (i32::from(b as u16) << 16);
    _mm256_set_m128i(
        _mm_set1_epi32(pair(a_hi, b_hi)),
        _mm_set1_epi32(pair(a_lo, b_lo)),
    )
}

/// The eight 6-bit scales and eight 6-bit minimums of Q4_K / Q5_K (the same values as the
/// reference's `scale_min_k4`, unpacked 4 bytes at a time as ggml's AVX2 kernels do).
#[inline(always)]
fn scales_mins(p: &[u8]) -> ([u8; 8], [u8; 8]) {
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
fn min_sum(y: &[u8], mins: &[u8; 8]) -> i32 {
    // SAFETY: `mins` holds 8 bytes; unaligned 8-byte load.
    let m8 = unsafe { _mm_loadl_epi64(mins.as_ptr().cast()) };
    // [m0, m0, m1, m1, ..., m7, m7] as i16.
    let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    let p = _mm256_madd_epi16(load32(y, Q8_K_BSUMS), m16);
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

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k_q8_k_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let shuf = pair_shuffle();
    let low = _mm256_set1_epi8(0x0f);
    let mut sums = _mm256_setzero_ps();
    let mut sumf = 0f32;
    for i in 0..nb {
        let x = &w[i * Q4_K_SIZE..(i + 1) * Q4_K_SIZE];
        let y = &a[i * Q8_K_SIZE..(i + 1) * Q8_K_SIZE];
        let ya = f32_at(y, 0);
        let (sc, mn) = scales_mins(&x[4..16]);
        let summ = min_sum(y, &mn);
        let mut acc = Classes::new();
        for c in 0..4 {
            // Chunk c of 32 bytes: group 2c in the low nibbles, group 2c + 1 in the high.
            let packed = _mm256_shuffle_epi8(load32(x, 16 + 32 * c), shuf);
            let qa = _mm256_and_si256(packed, low);
            let qb = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low);
            let ya_c = _mm256_shuffle_epi8(load32(y, Q8_K_QS + 64 * c), shuf);
            let yb_c = _mm256_shuffle_epi8(load32(y, Q8_K_QS + 64 * c + 32), shuf);
            acc.add(
                _mm256_maddubs_epi16(qa, ya_c),
                _mm256_maddubs_epi16(qb, yb_c),
                scale_pair(i16::from(sc[2 * c]), i16::from(sc[2 * c + 1])),
            );
        }
        let d = f16_at(x, 0) * ya;
        sums = _mm256_add_ps(sums, _mm256_mul_ps(_mm256_set1_ps(d), acc.to_lanes()));
        sumf -= (f16_at(x, 2) * ya) * summ as f32;
    }
    add_lanes_in_order(sumf, sums)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k_q8_k_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let shuf = pair_shuffle();
    let low = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut sums = _mm256_setzero_ps();
    let mut sumf = 0f32;
    for i in 0..nb {
        let x = &w[i * Q5_K_SIZE..(i + 1) * Q5_K_SIZE];
        let y = &a[i * Q8_K_SIZE..(i + 1) * Q8_K_SIZE];
        let ya = f32_at(y, 0);
        let (sc, mn) = scales_mins(&x[4..16]);
        let summ = min_sum(y, &mn);
        // Fifth bits: bit g of byte l is element l of group g. After c shifts by 2, bits 0
        // and 1 of each byte are its own bits 2c and 2c + 1 (what comes in from the next byte
        // lands higher up).
        let mut qh = _mm256_shuffle_epi8(load32(x, 16), shuf);
        let mut acc = Classes::new();
        for c in 0..4 {
            let packed = _mm256_shuffle_epi8(load32(x, 48 + 32 * c), shuf);
            let ha = _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bit4);
            let hb = _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bit4);
            qh = _mm256_srli_epi16::<2>(qh);
            let qa = _mm256_or_si256(_mm256_and_si256(packed, low), ha);
            let qb = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(packed), low), hb);
            let ya_c = _mm256_shuffle_epi8(load32(y, Q8_K_QS + 64 * c), shuf);
            let yb_c = _mm256_shuffle_epi8(load32(y, Q8_K_QS + 64 * c + 32), shuf);
            acc.add(
                _mm256_maddubs_epi16(qa, ya_c),
                _mm256_maddubs_epi16(qb, yb_c),
                scale_pair(i16::from(sc[2 * c]), i16::from(sc[2 * c + 1])),
            );
        }
        let d = f16_at(x, 0) * ya;
        sums = _mm256_add_ps(sums, _mm256_mul_ps(_mm256_set1_ps(d), acc.to_lanes()));
        sumf -= (f16_at(x, 2) * ya) * summ as f32;
    }
    add_lanes_in_order(sumf, sums)
}

/// `(q + 32) · y - 32 · y` per shuffled pair: the products of the signed Q6_K quants, exact
/// for every i8 activation (|pairs| ≤ 16128, no saturation).
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_pairs(q: __m256i, y: __m256i, m32: __m256i) -> __m256i {
    _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(m32, y))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_q8_k_avx2(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let shuf = pair_shuffle();
    let low = _mm256_set1_epi8(0x0f);
    let top2 = _mm256_set1_epi8(0x30);
    let m32 = _mm256_set1_epi8(32);
    let mut sums = _mm256_setzero_ps();
    for i in 0..nb {
        let x = &w[i * Q6_K_SIZE..(i + 1) * Q6_K_SIZE];
        let y = &a[i * Q8_K_SIZE..(i + 1) * Q8_K_SIZE];
        let s = |g: usize| i16::from(x[192 + g] as i8);
        let mut acc = Classes::new();
        for h in 0..2 {
            let ql0 = _mm256_shuffle_epi8(load32(x, 64 * h), shuf);
            let ql1 = _mm256_shuffle_epi8(load32(x, 64 * h + 32), shuf);
            let qh = _mm256_shuffle_epi8(load32(x, 128 + 32 * h), shuf);
            // Elements l, l + 32, l + 64, l + 96 of this half, offset by +32 (0..64).
            let q0 = _mm256_or_si256(
                _mm256_and_si256(ql0, low),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), top2),
            );
            let q1 = _mm256_or_si256(
                _mm256_and_si256(ql1, low),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), top2),
            );
            let q2 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low),
                _mm256_and_si256(qh, top2),
            );
            let q3 = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), top2),
            );
            let yq = |j: usize| _mm256_shuffle_epi8(load32(y, Q8_K_QS + 128 * h + 32 * j), shuf);
            let p = [
                q6_pairs(q0, yq(0), m32),
                q6_pairs(q1, yq(1), m32),
                q6_pairs(q2, yq(2), m32),
                q6_pairs(q3, yq(3), m32),
            ];
            // Chunk j covers groups 8h + 2j (its low half) and 8h + 2j + 1 (its high half).
            let g = 8 * h;
            acc.add(p[0], p[1], scale_pairs(s(g), s(g + 2), s(g + 1), s(g + 3)));
            acc.add(
                p[2],
                p[3],
                scale_pairs(s(g + 4), s(g + 6), s(g + 5), s(g + 7)),
            );
        }
        let d = f16_at(x, 208) * f32_at(y, 0);
        sums = _mm256_add_ps(sums, _mm256_mul_ps(_mm256_set1_ps(d), acc.to_lanes()));
    }
    add_lanes_in_order(0.0, sums)
}

/// Checks the row lengths and runs `kernel` (an AVX2 + FMA function) on `nb` super-blocks.
#[inline(always)]
fn run(
    n: usize,
    w: &[u8],
    a: &[u8],
    w_size: usize,
    kernel: unsafe fn(usize, &[u8], &[u8]) -> f32,
) -> f32 {
    let nb = n / 256;
    assert!(
        w.len() >= nb * w_size && a.len() >= nb * Q8_K_SIZE,
        "row lengths"
    );
    // SAFETY: these entries are installed in the dispatch table only after avx2 and fma were
    // detected (and f16c, which the
    // avx2 path requires); every slice access inside is bounds-checked.
    unsafe { kernel(nb, w, a) }
}

/// Q4_K × Q8_K with AVX2 (same result as `reference::q4_k::vec_dot_q4_k_q8_k`).
pub(crate) fn vec_dot_q4_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, Q4_K_SIZE, q4_k_q8_k_avx2)
}

/// Q5_K × Q8_K with AVX2 (same result as `reference::q5_k::vec_dot_q5_k_q8_k`).
pub(crate) fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, Q5_K_SIZE, q5_k_q8_k_avx2)
}

/// Q6_K × Q8_K with AVX2 (same result as `reference::q6_k::vec_dot_q6_k_q8_k`).
pub(crate) fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    run(n, w, a, Q6_K_SIZE, q6_k_q8_k_avx2)
}
