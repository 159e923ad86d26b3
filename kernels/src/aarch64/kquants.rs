//! Q4_K and Q6_K × Q8_K with NEON, equal to the reference bit for bit in each of its float
//! orders (which follow llama.cpp's x86 kernels, see `reference::q4_k` and `reference::q6_k`):
//! the integer sums of a super-block are exact in any grouping, so they are formed with `sdot`
//! (or `vmull_s8` + pairwise adds without dotprod) and the few float steps per super-block are
//! the reference's, in its order.
//!
//! - Q4_K, one row (`vec_dot_q4_k_q8_k`): the block's scaled quant sum and minimum sum, one FMA
//!   each into two scalar accumulators; four rows (`_x4`): the same per 64 elements.
//! - Q6_K, one row (`vec_dot_q6_k_q8_k`): 8 integer lanes (lane `l` = elements with
//!   `(e % 32) / 4 == l`, exactly the lanes of a 16-byte `sdot` over each 16-element group), one
//!   FMA per lane and block, reduced as `hsum8`; from 8 rows (`_tiled`): one exact sum per block.

use std::arch::aarch64::{
    int32x4_t, int8x16_t, uint8x16_t, vaddq_s32, vaddvq_s32, vandq_u8, vdupq_n_s32, vdupq_n_u8,
    vld1q_s32, vld1q_u8, vmlaq_n_s32, vorrq_u8, vreinterpretq_s8_u8, vshlq_n_u8, vshrq_n_u8,
    vsubq_s32, vsubq_u8,
};

use super::lanes::{f16_at, load_s8, with_mull, with_sdot, Acc8, Dot, LaneSums};
use crate::reference::q4_k::{scales_mins_k4, BlockQ4K};
use crate::reference::q6_k::BlockQ6K;
use crate::reference::q8_k::BlockQ8K;
use crate::reference::view;

/// 16 unsigned bytes from the start of `b` (which holds at least 16).
#[inline]
#[target_feature(enable = "neon")]
fn load_u8(b: &[u8]) -> uint8x16_t {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes (bounds-checked above); NEON byte loads have no alignment
    // requirement.
    unsafe { vld1q_u8(b.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

/// The Q8_K block's f32 scale and its 16 group sums.
#[inline]
fn q8k_head(y: &BlockQ8K) -> (f32, [i32; 16]) {
    let mut b = [0i32; 16];
    for (bj, s) in b.iter_mut().zip(&y.bsums) {
        *bj = i32::from(i16::from_le_bytes(*s));
    }
    (f32::from_le_bytes(y.d), b)
}

// The k-quant dots, each written once, generic over how the 4-byte lane sums are formed
// (`LaneSums`: `sdot` or plain NEON), and inlined whole into `with_sdot` and `with_mull`, which
// are compiled for exactly the features of their variant (NEON itself is baseline on aarch64).

/// `[Σ lo nibbles × y, Σ hi nibbles × y]` of each 64-element chunk `c` of one Q4_K ×
/// Q8_K super-block (low nibbles of `qs[32c..32c+32]` are elements `64c..64c+32`, high
/// nibbles `64c+32..64c+64`).
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn q4k_chunk_sums<S: LaneSums>(x: &BlockQ4K, y: &BlockQ8K) -> [[i32; 2]; 4] {
    // SAFETY: NEON is baseline on aarch64 and what `S` needs is this function's contract;
    // every load is of a bounds-checked slice.
    unsafe {
        let dot4 = |a: int8x16_t, b: int8x16_t| S::sums(a, b);
        let low = vdupq_n_u8(0x0f);
        let mut r = [[0i32; 2]; 4];
        for (c, rc) in r.iter_mut().enumerate() {
            let (q0, q1) = (load_u8(&x.qs[32 * c..]), load_u8(&x.qs[16 + 32 * c..]));
            let yq = &y.qs[64 * c..];
            let lo = vaddq_s32(
                dot4(s8(vandq_u8(q0, low)), load_s8(yq)),
                dot4(s8(vandq_u8(q1, low)), load_s8(&yq[16..])),
            );
            let hi = vaddq_s32(
                dot4(s8(vshrq_n_u8::<4>(q0)), load_s8(&yq[32..])),
                dot4(s8(vshrq_n_u8::<4>(q1)), load_s8(&yq[48..])),
            );
            *rc = [vaddvq_s32(lo), vaddvq_s32(hi)];
        }
        r
    }
}

/// Q4_K × Q8_K, one row: per block, the scaled quant sum and the minimum sum, one FMA each.
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn q4k<S: LaneSums>(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: NEON is baseline on aarch64 and what `S` needs is this function's contract;
    // every load is of a bounds-checked slice.
    unsafe {
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for (x, y) in w.iter().zip(a) {
            let (sc, mn) = scales_mins_k4(&x.scales);
            let (ya, bsums) = q8k_head(y);
            let parts = q4k_chunk_sums::<S>(x, y);
            let mut sumi = 0i32;
            for (c, p) in parts.iter().enumerate() {
                sumi += sc[2 * c] * p[0] + sc[2 * c + 1] * p[1];
            }
            let mut summ = 0i32;
            for (j, &s) in bsums.iter().enumerate() {
                summ += s * mn[j / 2];
            }
            acc = (sumi as f32).mul_add(f16_at(&x.d, 0) * ya, acc);
            acc_min = (summ as f32).mul_add(f16_at(&x.dmin, 0) * ya, acc_min);
        }
        acc - acc_min
    }
}

/// Q4_K × Q8_K in llama.cpp's four-row order: the same per 64 elements.
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn q4k_x4<S: LaneSums>(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: NEON is baseline on aarch64 and what `S` needs is this function's contract;
    // every load is of a bounds-checked slice.
    unsafe {
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for (x, y) in w.iter().zip(a) {
            let (sc, mn) = scales_mins_k4(&x.scales);
            let (ya, b) = q8k_head(y);
            let (d, dmin) = (f16_at(&x.d, 0) * ya, f16_at(&x.dmin, 0) * ya);
            let parts = q4k_chunk_sums::<S>(x, y);
            for (c, p) in parts.iter().enumerate() {
                let sumi = sc[2 * c] * p[0] + sc[2 * c + 1] * p[1];
                let summ = (b[4 * c] + b[4 * c + 1]) * mn[2 * c]
                    + (b[4 * c + 2] + b[4 * c + 3]) * mn[2 * c + 1];
                acc = (sumi as f32).mul_add(d, acc);
                acc_min = (summ as f32).mul_add(dmin, acc_min);
            }
        }
        acc - acc_min
    }
}

/// The 8 integer lanes of one Q6_K × Q8_K super-block: lane `4 * (g % 2) + j` gets
/// `sc[g] · Σ (q + 32) · y` (`sc[g] · Σ q · y` when `CENTERED`) over bytes `4j..4j+4` of each
/// 16-element group `g` (returned as lanes 0..4 and 4..8).
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn q6k_lanes<S: LaneSums, const CENTERED: bool>(
    x: &BlockQ6K,
    y: &BlockQ8K,
) -> [int32x4_t; 2] {
    // SAFETY: NEON is baseline on aarch64 and what `S` needs is this function's contract;
    // every load is of a bounds-checked slice.
    unsafe {
        let dot4 = |a: int8x16_t, b: int8x16_t| S::sums(a, b);
        let (low, two) = (vdupq_n_u8(0x0f), vdupq_n_u8(0x03));
        let mut lanes = [vdupq_n_s32(0); 2];
        for h in 0..2 {
            let (ql, qh) = (&x.ql[64 * h..], &x.qh[32 * h..]);
            for lc in [0, 16] {
                let (l0, l1, hb) = (
                    load_u8(&ql[lc..]),
                    load_u8(&ql[32 + lc..]),
                    load_u8(&qh[lc..]),
                );
                // Elements l, l + 32, l + 64, l + 96 (l = lc..lc + 16) of this half, 0..64.
                let quads = [
                    vorrq_u8(vandq_u8(l0, low), vshlq_n_u8::<4>(vandq_u8(hb, two))),
                    vorrq_u8(
                        vandq_u8(l1, low),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(hb), two)),
                    ),
                    vorrq_u8(
                        vshrq_n_u8::<4>(l0),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(hb), two)),
                    ),
                    vorrq_u8(vshrq_n_u8::<4>(l1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(hb))),
                ];
                for (k, &u) in quads.iter().enumerate() {
                    let e = 128 * h + 32 * k + lc;
                    let g = e / 16;
                    let sc = i32::from(x.scales[g]);
                    let q = if CENTERED {
                        s8(vsubq_u8(u, vdupq_n_u8(32)))
                    } else {
                        s8(u)
                    };
                    let s = dot4(q, load_s8(&y.qs[e..]));
                    lanes[g % 2] = vmlaq_n_s32(lanes[g % 2], s, sc);
                }
            }
        }
        lanes
    }
}

/// Q6_K × Q8_K, one row: 8 integer lanes, one FMA per lane and block, reduced as `hsum8`.
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn q6k<S: LaneSums>(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: NEON is baseline on aarch64 and what `S` needs is this function's contract;
    // every load is of a bounds-checked slice.
    unsafe {
        let mut acc = Acc8::zero();
        for (x, y) in w.iter().zip(a) {
            let (ya, b) = q8k_head(y);
            let [mut lo, mut hi] = q6k_lanes::<S, false>(x, y);
            // Lane l loses 32 · (bsums[2l] · sc[2l] + bsums[2l + 1] · sc[2l + 1]).
            let mut sub = [0i32; 8];
            for (l, s) in sub.iter_mut().enumerate() {
                let sc = |g: usize| i32::from(x.scales[g]);
                *s = (b[2 * l] * sc(2 * l) + b[2 * l + 1] * sc(2 * l + 1)) << 5;
            }
            // `sub` holds 8 i32; NEON loads have no alignment requirement.
            lo = vsubq_s32(lo, vld1q_s32(sub.as_ptr()));
            hi = vsubq_s32(hi, vld1q_s32(sub[4..].as_ptr()));
            acc = acc.fma(lo, hi, ya * f16_at(&x.d, 0));
        }
        acc.hsum()
    }
}

/// Q6_K × Q8_K from 8 rows: one exact sum per block.
///
/// # Safety
/// The CPU has the features of `S`.
#[inline(always)]
unsafe fn q6k_tiled<S: LaneSums>(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: NEON is baseline on aarch64 and what `S` needs is this function's contract;
    // every load is of a bounds-checked slice.
    unsafe {
        let mut acc = 0f32;
        for (x, y) in w.iter().zip(a) {
            let ya = f32::from_le_bytes(y.d);
            // The quants with their offset (-32..32): the exact `Σ sc · (q - 32) · y`, as the
            // reference forms it (from the quants, not the group sums).
            let [lo, hi] = q6k_lanes::<S, true>(x, y);
            let sumi = vaddvq_s32(vaddq_s32(lo, hi));
            acc = (f16_at(&x.d, 0) * sumi as f32).mul_add(ya, acc);
        }
        acc
    }
}

/// Q4_K, one row.
struct Q4K;
/// Q4_K, rows by four.
struct Q4KX4;
/// Q6_K, one row.
struct Q6K;
/// Q6_K, from 8 rows.
struct Q6KTiled;

impl Dot for Q4K {
    type W = BlockQ4K;
    type A = BlockQ8K;
    #[inline(always)]
    unsafe fn run<S: LaneSums>(w: &[Self::W], a: &[BlockQ8K]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { q4k::<S>(w, a) }
    }
}

impl Dot for Q4KX4 {
    type W = BlockQ4K;
    type A = BlockQ8K;
    #[inline(always)]
    unsafe fn run<S: LaneSums>(w: &[Self::W], a: &[BlockQ8K]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { q4k_x4::<S>(w, a) }
    }
}

impl Dot for Q6K {
    type W = BlockQ6K;
    type A = BlockQ8K;
    #[inline(always)]
    unsafe fn run<S: LaneSums>(w: &[Self::W], a: &[BlockQ8K]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { q6k::<S>(w, a) }
    }
}

impl Dot for Q6KTiled {
    type W = BlockQ6K;
    type A = BlockQ8K;
    #[inline(always)]
    unsafe fn run<S: LaneSums>(w: &[Self::W], a: &[BlockQ8K]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { q6k_tiled::<S>(w, a) }
    }
}

/// One public entry per kernel: `$name(n, w, a)` runs dot `$k` with `$with` on the row's
/// `n / 256` super-blocks (a short row is a caller bug, as in the reference: `view` panics).
macro_rules! entries {
    ($($name:ident = $with:ident::<$k:ty>, $what:literal;)*) => {$(
        #[doc = concat!($what, " (same result as the reference).")]
        pub(crate) fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let (w, a) = (view::<<$k as Dot>::W>(w, n / 256), view::<BlockQ8K>(a, n / 256));
            // SAFETY: installed in the dispatch table only after the CPU features of `$with`
            // (neon, plus dotprod for `with_sdot`) were detected.
            unsafe { $with::<$k>(w, a) }
        }
    )*};
}

entries! {
    vec_dot_q4_k_q8k_dotprod = with_sdot::<Q4K>, "Q4_K × Q8_K, one row, `sdot`";
    vec_dot_q4_k_q8k = with_mull::<Q4K>, "Q4_K × Q8_K, one row, plain NEON";
    vec_dot_q4_k_q8k_x4_dotprod = with_sdot::<Q4KX4>, "Q4_K × Q8_K, rows by four, `sdot`";
    vec_dot_q4_k_q8k_x4 = with_mull::<Q4KX4>, "Q4_K × Q8_K, rows by four, plain NEON";
    vec_dot_q6_k_q8k_dotprod = with_sdot::<Q6K>, "Q6_K × Q8_K, one row, `sdot`";
    vec_dot_q6_k_q8k = with_mull::<Q6K>, "Q6_K × Q8_K, one row, plain NEON";
    vec_dot_q6_k_q8k_tiled_dotprod = with_sdot::<Q6KTiled>, "Q6_K × Q8_K, from 8 rows, `sdot`";
    vec_dot_q6_k_q8k_tiled = with_mull::<Q6KTiled>, "Q6_K × Q8_K, from 8 rows, plain NEON";
}
