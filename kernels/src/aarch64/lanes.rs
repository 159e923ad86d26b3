//! What the NEON dots share: the 8-lane f32 accumulator of the reference's Q4_1 / Q8_0 dots and
//! the two ways of forming its per-lane integer sums from 16 + 16 signed bytes (lane `i` of the
//! result is `Σ a[4i..4i+4] × b[4i..4i+4]`): `sdot` (the dotprod extension, through inline
//! assembly since `vdotq_s32` is not stable Rust) and `vmull_s8` + pairwise widening adds (plain
//! NEON); and the lanes of the k-quant dots, where lane `l` collects the elements `≡ l (mod 8)`
//! (ggml's generic `ggml_vec_dot_q*_K_q8_K`, see `reference::q8_k::accumulate_lanes`).

use std::arch::aarch64::{
    float32x4_t, int32x4_t, int8x16_t, vadd_f32, vaddq_f32, vcvtq_f32_s32, vdupq_n_f32,
    vdupq_n_s16, vdupq_n_s32, vfmaq_f32, vget_high_f32, vget_lane_f32, vget_low_f32, vget_low_s16,
    vget_low_s8, vld1q_s8, vmlal_high_n_s16, vmlal_high_s8, vmlal_n_s16, vmlal_s8, vmull_high_s8,
    vmull_s8, vmulq_n_f32, vpaddlq_s16, vpaddq_s32, vst1q_f32,
};
use std::arch::asm;

use half::f16;

/// The little-endian f16 at `b[at..at + 2]`, widened (exactly) to f32.
#[inline(always)]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Four lanes of `Σ a × b` over 4 consecutive signed bytes each, with `sdot`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(super) fn sdot4(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = vdupq_n_s32(0);
    // SAFETY: `sdot` reads and writes only the three vector registers named here; this function
    // is compiled with the dotprod extension, so it is only reachable where the CPU has it.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Four lanes of `Σ a × b` over 4 consecutive signed bytes each, without dotprod: exact 16-bit
/// products (`|a × b| <= 2^14`), widened pairwise to 32 bits, then added pairwise again.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn sums4(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

/// How the 4 integer lane sums of 16 × 16 signed bytes are formed (lane `i` is
/// `Σ a[4i..4i+4] × b[4i..4i+4]`, exact either way). The dots and tiles are written once,
/// generic over it, and inlined into entry points compiled for exactly the features of their
/// variant, so the plain variant never contains a dotprod instruction.
pub(super) trait LaneSums {
    /// The lane sums of `a × b`.
    ///
    /// # Safety
    /// The CPU has the features of the implementation.
    unsafe fn sums(a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// `sdot` (needs dotprod).
pub(super) struct Sdot;

/// `vmull_s8` + pairwise widening adds (plain NEON).
pub(super) struct Mull;

impl LaneSums for Sdot {
    #[inline(always)]
    unsafe fn sums(a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: the CPU has neon and dotprod (this method's contract).
        unsafe { sdot4(a, b) }
    }
}

impl LaneSums for Mull {
    #[inline(always)]
    unsafe fn sums(a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: the CPU has neon (this method's contract).
        unsafe { sums4(a, b) }
    }
}

/// A dot over whole blocks (`W` weight blocks with `A` activation blocks: typed blocks, or the
/// bytes of a row), written once generic over its lane sums.
pub(super) trait Dot {
    /// Weight blocks.
    type W;
    /// Activation blocks.
    type A;
    /// The dot of the blocks of `w` and `a`.
    ///
    /// # Safety
    /// The CPU has the features of `S`.
    unsafe fn run<S: LaneSums>(w: &[Self::W], a: &[Self::A]) -> f32;
}

/// Dot `K` with `sdot`, compiled with the dotprod extension.
///
/// # Safety
/// The CPU has neon and dotprod.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn with_sdot<K: Dot>(w: &[K::W], a: &[K::A]) -> f32 {
    // SAFETY: the features `Sdot` needs are this function's contract.
    unsafe { K::run::<Sdot>(w, a) }
}

/// Dot `K` with plain NEON.
///
/// # Safety
/// The CPU has neon.
#[target_feature(enable = "neon")]
pub(super) unsafe fn with_mull<K: Dot>(w: &[K::W], a: &[K::A]) -> f32 {
    // SAFETY: the features `Mull` needs are this function's contract.
    unsafe { K::run::<Mull>(w, a) }
}

/// The reference's 8 f32 lane accumulators (`acc[0..4]` in `lo`, `acc[4..8]` in `hi`).
#[derive(Clone, Copy)]
pub(super) struct Acc8 {
    lo: float32x4_t,
    hi: float32x4_t,
}

impl Acc8 {
    /// All lanes zero.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn zero() -> Self {
        Self {
            lo: vdupq_n_f32(0.0),
            hi: vdupq_n_f32(0.0),
        }
    }

    /// `acc[l] = fma(d, lane_l, acc[l])` for the lane sums of elements `0..16` (`lo`) and
    /// `16..32` (`hi`) of one block (the reference's per-block step; the sums are exact in f32).
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn fma(self, lo: int32x4_t, hi: int32x4_t, d: f32) -> Self {
        let d = vdupq_n_f32(d);
        Self {
            lo: vfmaq_f32(self.lo, vcvtq_f32_s32(lo), d),
            hi: vfmaq_f32(self.hi, vcvtq_f32_s32(hi), d),
        }
    }

    /// `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))`, as the reference's `hsum8`.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn hsum(self) -> f32 {
        let r = vaddq_f32(self.lo, self.hi);
        // [r0 + r2, r1 + r3]
        let p = vadd_f32(vget_low_f32(r), vget_high_f32(r));
        vget_lane_f32::<0>(p) + vget_lane_f32::<1>(p)
    }
}

/// 16 signed bytes from the start of `b` (which holds at least 16).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn load_s8(b: &[i8]) -> int8x16_t {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes (bounds-checked above); NEON byte loads have no alignment
    // requirement.
    unsafe { vld1q_s8(b.as_ptr()) }
}

/// 16 signed bytes from the start of `b` (which holds at least 16).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn load_i8(b: &[u8]) -> int8x16_t {
    let b = &b[..16];
    // SAFETY: `b` holds 16 bytes (bounds-checked above); NEON byte loads have no alignment
    // requirement.
    unsafe { vld1q_s8(b.as_ptr().cast()) }
}

/// The integer lanes of one k-quant super-block (the reference's `aux32`): lane `l` holds
/// `Σ scale(g) × q_i × y_i` over the elements `i ≡ l (mod 8)`.
#[derive(Clone, Copy)]
pub(super) struct KAux {
    lo: int32x4_t,
    hi: int32x4_t,
}

impl KAux {
    /// All lanes zero.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn zero() -> Self {
        Self {
            lo: vdupq_n_s32(0),
            hi: vdupq_n_s32(0),
        }
    }

    /// Adds one group: the weights `q` and activations `y` (16 elements per vector, starting at
    /// a multiple of 8, so element `j` of a vector is in lane `j % 8`) times the group's scale.
    /// The 16-bit partial sums are exact: k-quant weights are in -32..32 and Q8_K activations
    /// in -128..128, so at most 2 × 2 products of magnitude <= 2^12 meet in a lane.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn add(self, q: &[int8x16_t], y: &[int8x16_t], scale: i16) -> Self {
        debug_assert!(q.len() <= 2 && q.len() == y.len());
        let mut s = vdupq_n_s16(0);
        for (&qv, &yv) in q.iter().zip(y) {
            s = vmlal_s8(s, vget_low_s8(qv), vget_low_s8(yv));
            s = vmlal_high_s8(s, qv, yv);
        }
        Self {
            lo: vmlal_n_s16(self.lo, vget_low_s16(s), scale),
            hi: vmlal_high_n_s16(self.hi, s, scale),
        }
    }
}

/// The f32 lanes of a k-quant dot (the reference's `sums`).
#[derive(Clone, Copy)]
pub(super) struct KSums {
    lo: float32x4_t,
    hi: float32x4_t,
}

impl KSums {
    /// All lanes zero.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn zero() -> Self {
        Self {
            lo: vdupq_n_f32(0.0),
            hi: vdupq_n_f32(0.0),
        }
    }

    /// `sums[l] += d * aux[l]` (multiply, then add: not fused, as the reference).
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn add(self, aux: KAux, d: f32) -> Self {
        Self {
            lo: vaddq_f32(self.lo, vmulq_n_f32(vcvtq_f32_s32(aux.lo), d)),
            hi: vaddq_f32(self.hi, vmulq_n_f32(vcvtq_f32_s32(aux.hi), d)),
        }
    }

    /// `sumf + l0 + l1 + ... + l7`, added in lane order.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn fold(self, mut sumf: f32) -> f32 {
        let mut l = [0f32; 8];
        // SAFETY: `l` has room for the 4 + 4 f32 stored.
        unsafe {
            vst1q_f32(l.as_mut_ptr(), self.lo);
            vst1q_f32(l[4..].as_mut_ptr(), self.hi);
        }
        for v in l {
            sumf += v;
        }
        sumf
    }
}
