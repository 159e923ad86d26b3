//! The f16 attention helpers of `reference::attention` with NEON, equal to them bit for bit:
//! the key dot in ggml's AVX2 `ggml_vec_dot_f16` order (four 8-lane accumulators, held here as
//! eight `float32x4_t`), and the f16-rounded accumulator updates, rounding with the base
//! ARMv8 `fcvtn`/`fcvtl` pair (round to nearest even, as `half` and F16C do; `vcvt_f16_f32`
//! needs the unstable `float16x4_t`, so this goes through inline assembly); and the fused
//! attention loop over f16 or quantized (Q8_0, Q4_0) K/V rows (`attend_rows_group`), as the x86
//! kernels: same operations in the same order as `reference::attention::attend_rows`, so the
//! same bits.

use std::arch::aarch64::{
    float32x4_t, int16x8_t, vaddq_f32, vandq_u8, vcvtq_f32_s32, vdupq_n_f32, vdupq_n_s16,
    vdupq_n_u8, vfmaq_f32, vget_high_s16, vget_high_s8, vget_high_u8, vget_low_s16, vget_low_s8,
    vget_low_u8, vgetq_lane_f32, vld1q_f32, vld1q_s8, vld1q_u16, vld1q_u8, vmovl_s16, vmovl_s8,
    vmovl_u8, vmulq_n_f32, vpaddq_f32, vreinterpretq_s16_u16, vshrq_n_u8, vst1q_f32, vsubq_s16,
};
use std::arch::asm;

use half::f16;

use crate::kv::{KvRows, KvType};
use crate::reference::attention::{self, OnlineSoftmax};

/// Four f32 rounded to f16 (nearest, ties to even) and widened back.
#[inline]
#[target_feature(enable = "neon")]
fn round_f16(mut x: float32x4_t) -> float32x4_t {
    // SAFETY: `fcvtn` / `fcvtl` (ARMv8.0 Advanced SIMD, present wherever neon is) touch only the
    // two vector registers named here; no memory, stack or flags.
    unsafe {
        asm!(
            "fcvtn {h:v}.4h, {x:v}.4s",
            "fcvtl {x:v}.4s, {h:v}.4h",
            x = inout(vreg) x,
            h = out(vreg) _,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    x
}

#[target_feature(enable = "neon")]
fn dot_neon(k: &[f32], q: &[f32]) -> f32 {
    let n = k.len().min(q.len());
    let n32 = n / 32 * 32;
    // acc[2a] and acc[2a + 1]: lanes 0..4 and 4..8 of the reference's accumulator `a`.
    let mut acc = [vdupq_n_f32(0.0); 8];
    for (kc, qc) in k[..n32].chunks_exact(32).zip(q[..n32].chunks_exact(32)) {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `kc` and `qc` hold 32 f32; the loads read 4 from `4 * j < 32`.
            let (kv, qv) = unsafe {
                (
                    vld1q_f32(kc[4 * j..].as_ptr()),
                    vld1q_f32(qc[4 * j..].as_ptr()),
                )
            };
            *a = vfmaq_f32(*a, kv, qv);
        }
    }
    // r = (a0 + a2) + (a1 + a3) per lane; t = r[0..4] + r[4..8]; (t0 + t1) + (t2 + t3).
    let r_lo = vaddq_f32(vaddq_f32(acc[0], acc[4]), vaddq_f32(acc[2], acc[6]));
    let r_hi = vaddq_f32(vaddq_f32(acc[1], acc[5]), vaddq_f32(acc[3], acc[7]));
    let t = vaddq_f32(r_lo, r_hi);
    let p = vpaddq_f32(t, t);
    let mut sum = f64::from(vgetq_lane_f32::<0>(p) + vgetq_lane_f32::<1>(p));
    for e in n32..n {
        sum += f64::from(k[e] * q[e]);
    }
    sum as f32
}

/// See `reference::attention::dot_f16_order`.
pub(crate) fn dot_f16_order(k: &[f32], q: &[f32]) -> f32 {
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { dot_neon(k, q) }
}

#[target_feature(enable = "neon")]
fn scale_neon(acc: &mut [f32], s: f32) {
    let n4 = acc.len() / 4 * 4;
    for c in acc[..n4].chunks_exact_mut(4) {
        // SAFETY: `c` holds exactly 4 f32; unaligned load and store.
        unsafe {
            let v = vmulq_n_f32(vld1q_f32(c.as_ptr()), s);
            vst1q_f32(c.as_mut_ptr(), round_f16(v));
        }
    }
    attention::scale_f16(&mut acc[n4..], s);
}

/// `acc = f16(acc * s)`; see `reference::attention::scale_f16`.
pub(crate) fn scale_f16(acc: &mut [f32], s: f32) {
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { scale_neon(acc, s) }
}

#[target_feature(enable = "neon")]
fn mad_neon(acc: &mut [f32], v: &[f32], w: f32) {
    let n = acc.len().min(v.len());
    let n4 = n / 4 * 4;
    let vw = vdupq_n_f32(w);
    for (c, x) in acc[..n4].chunks_exact_mut(4).zip(v[..n4].chunks_exact(4)) {
        // SAFETY: `c` and `x` hold exactly 4 f32 each; unaligned loads and store.
        unsafe {
            let r = vfmaq_f32(vld1q_f32(c.as_ptr()), vld1q_f32(x.as_ptr()), vw);
            vst1q_f32(c.as_mut_ptr(), round_f16(r));
        }
    }
    attention::mad_f16(&mut acc[n4..n], &v[n4..n], w);
}

/// `acc = f16(fma(v, w, acc))`; see `reference::attention::mad_f16`.
pub(crate) fn mad_f16(acc: &mut [f32], v: &[f32], w: f32) {
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { mad_neon(acc, v, w) }
}

/// 8 f16 at `p` widened (exactly) to two vectors of 4 f32 (`fcvtl` / `fcvtl2`, base ARMv8).
///
/// # Safety
/// `p..p+8` readable.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn load8_f16(p: *const f16) -> (float32x4_t, float32x4_t) {
    // SAFETY: 16 readable bytes (caller); NEON loads have no alignment requirement.
    let h = unsafe { vld1q_u16(p.cast()) };
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: `fcvtl` / `fcvtl2` touch only the three vector registers named here (outputs
    // distinct from the input); no memory, stack or flags.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    (lo, hi)
}

/// How a kernel reads a stored K/V row: 32 elements at a time as eight vectors of 4 f32, exactly
/// the values of [`crate::kv::KvType::load_row`].
trait Rows32 {
    /// Elements `32c..32c+32` of the row at `p`.
    ///
    /// # Safety
    /// The row at `p` holds at least `32c + 32` elements; the CPU has NEON.
    unsafe fn load32(p: *const u8, c: usize) -> [float32x4_t; 8];
}

/// f16 rows.
struct F16Rows;
/// Q8_0 rows: blocks of 32 (an f16 scale, 32 signed bytes).
struct Q8Rows;
/// Q4_0 rows: blocks of 32 (an f16 scale; byte `i` holds elements `i` and `i + 16`).
struct Q4Rows;

/// Eight signed 16-bit integers times `d`, as two vectors of 4 f32 (`d * q` is exact in f32).
#[inline]
#[target_feature(enable = "neon")]
fn scaled(x: int16x8_t, d: f32) -> (float32x4_t, float32x4_t) {
    (
        vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(x))), d),
        vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(x))), d),
    )
}

/// The f16 scale of the quantization block at `p`.
///
/// # Safety
/// `p..p+2` readable.
#[inline(always)]
unsafe fn scale_at(p: *const u8) -> f32 {
    // SAFETY: two readable bytes (caller).
    unsafe { f16::from_le_bytes([*p, *p.add(1)]).to_f32() }
}

impl Rows32 for F16Rows {
    #[inline(always)]
    unsafe fn load32(p: *const u8, c: usize) -> [float32x4_t; 8] {
        // SAFETY: NEON (caller).
        let mut r = [unsafe { vdupq_n_f32(0.0) }; 8];
        for h in 0..4 {
            // SAFETY: elements `32c + 8h..+8` are in the row (caller); NEON (caller).
            (r[2 * h], r[2 * h + 1]) = unsafe { load8_f16(p.add(64 * c + 16 * h).cast()) };
        }
        r
    }
}

impl Rows32 for Q8Rows {
    #[inline(always)]
    unsafe fn load32(p: *const u8, c: usize) -> [float32x4_t; 8] {
        // SAFETY: NEON (caller).
        let mut r = [unsafe { vdupq_n_f32(0.0) }; 8];
        // SAFETY: block `c` (34 bytes: scale, then 32 quants) is in the row (caller); NEON.
        unsafe {
            let b = p.add(34 * c);
            let d = scale_at(b);
            for half in 0..2 {
                let x = vld1q_s8(b.add(2 + 16 * half).cast());
                (r[4 * half], r[4 * half + 1]) = scaled(vmovl_s8(vget_low_s8(x)), d);
                (r[4 * half + 2], r[4 * half + 3]) = scaled(vmovl_s8(vget_high_s8(x)), d);
            }
        }
        r
    }
}

impl Rows32 for Q4Rows {
    #[inline(always)]
    unsafe fn load32(p: *const u8, c: usize) -> [float32x4_t; 8] {
        // SAFETY: NEON (caller).
        let mut r = [unsafe { vdupq_n_f32(0.0) }; 8];
        // SAFETY: block `c` (18 bytes: scale, then 16 bytes of two nibbles) is in the row
        // (caller); NEON. Elements 0..16 are the low nibbles, 16..32 the high ones.
        unsafe {
            let b = p.add(18 * c);
            let d = scale_at(b);
            let x = vld1q_u8(b.add(2));
            let nibbles = [vandq_u8(x, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(x)];
            for (half, n) in nibbles.into_iter().enumerate() {
                let eight = vdupq_n_s16(8);
                let lo = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(n))), eight);
                let hi = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(n))), eight);
                (r[4 * half], r[4 * half + 1]) = scaled(lo, d);
                (r[4 * half + 2], r[4 * half + 3]) = scaled(hi, d);
            }
        }
        r
    }
}

/// The fused loop of `reference::attention::attend_rows_group` for `d = 32 * D32`: each key and
/// value row is widened once for all the group's queries, the score follows `dot_f16_order`
/// (the accumulators of [`dot_neon`]), the online softmax is the reference's scalar code, and
/// the f16 accumulators (in `out`, L1) are rounded after every key.
///
/// # Safety
/// `q.len() == out.len() == st.len() * 32 * D32`; `k` and `v` hold `n` rows of `rb` bytes,
/// each `32 * D32` elements stored as `R` reads them; the CPU has NEON.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_d<const D32: usize, R: Rows32>(
    q: &[f32],
    k: *const u8,
    v: *const u8,
    rb: usize,
    n: usize,
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let d = 32 * D32;
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    // One key or value row: 8 · D32 vectors of 4.
    let mut row = [[vdupq_n_f32(0.0); 8]; D32];
    let mut w = [0f32; MAX_GROUP];
    for j in 0..n {
        for (c, rc) in row.iter_mut().enumerate() {
            // SAFETY: row `j < n` of `k` holds `d` elements (caller).
            *rc = unsafe { R::load32(k.add(j * rb), c) };
        }
        for (g, s) in st.iter_mut().enumerate() {
            let mut acc = [vdupq_n_f32(0.0); 8];
            for (c, rc) in row.iter().enumerate() {
                for (i, a) in acc.iter_mut().enumerate() {
                    // SAFETY: query `g` holds `d` elements at `g * d` (caller).
                    let qv = unsafe { vld1q_f32(qp.add(g * d + 32 * c + 4 * i)) };
                    *a = vfmaq_f32(*a, rc[i], qv);
                }
            }
            let r_lo = vaddq_f32(vaddq_f32(acc[0], acc[4]), vaddq_f32(acc[2], acc[6]));
            let r_hi = vaddq_f32(vaddq_f32(acc[1], acc[5]), vaddq_f32(acc[3], acc[7]));
            let t = vaddq_f32(r_lo, r_hi);
            let p = vpaddq_f32(t, t);
            let (rescale, vs) = s.push((vgetq_lane_f32::<0>(p) + vgetq_lane_f32::<1>(p)) * scale);
            if let Some(ms) = rescale {
                for i in 0..d / 4 {
                    // SAFETY: output row `g` holds `d` elements at `g * d` (caller).
                    unsafe {
                        let p = op.add(g * d + 4 * i);
                        vst1q_f32(p, round_f16(vmulq_n_f32(vld1q_f32(p), ms)));
                    }
                }
            }
            w[g] = vs;
        }
        for (c, rc) in row.iter_mut().enumerate() {
            // SAFETY: row `j < n` of `v` holds `d` elements (caller).
            *rc = unsafe { R::load32(v.add(j * rb), c) };
        }
        for (g, &wg) in w[..st.len()].iter().enumerate() {
            let wv = vdupq_n_f32(wg);
            for (c, rc) in row.iter().enumerate() {
                for (i, &vc) in rc.iter().enumerate() {
                    // SAFETY: output row `g` holds `d` elements at `g * d` (caller).
                    unsafe {
                        let p = op.add(g * d + 32 * c + 4 * i);
                        vst1q_f32(p, round_f16(vfmaq_f32(vld1q_f32(p), vc, wv)));
                    }
                }
            }
        }
    }
}

/// Most queries per call of the fused group kernel (larger groups use the reference).
const MAX_GROUP: usize = 16;

/// `reference::attention::attend_rows_group` with NEON (the reference for head sizes other than
/// 32, 64, 128, 256 or groups over [`MAX_GROUP`]).
pub(crate) fn attend_rows_group(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let (g, d) = attention::group_shape(q, &k, &v, st, out);
    if g > MAX_GROUP {
        return attention::attend_rows_group(q, k, v, scale, st, out);
    }
    let (kp, vp) = (k.bytes.as_ptr(), v.bytes.as_ptr());
    let (rb, n) = (k.ty.row_bytes(d).unwrap_or(0), k.n_rows(d));
    macro_rules! by_d {
        ($r:ty) => {
            match d {
                32 => attend_group_d::<1, $r>(q, kp, vp, rb, n, scale, st, out),
                64 => attend_group_d::<2, $r>(q, kp, vp, rb, n, scale, st, out),
                128 => attend_group_d::<4, $r>(q, kp, vp, rb, n, scale, st, out),
                256 => attend_group_d::<8, $r>(q, kp, vp, rb, n, scale, st, out),
                _ => attention::attend_rows_group(q, k, v, scale, st, out),
            }
        };
    }
    // SAFETY: installed only after neon was detected; shapes checked above: `k` and `v` hold
    // `n` rows of `rb` bytes of the type matched.
    unsafe {
        match k.ty {
            KvType::F16 => by_d!(F16Rows),
            KvType::Q8_0 => by_d!(Q8Rows),
            KvType::Q4_0 => by_d!(Q4Rows),
        }
    }
}

/// `reference::attention::attend_rows` with NEON (one query).
pub(crate) fn attend_rows(
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    attend_rows_group(q, k, v, scale, std::slice::from_mut(st), out)
}
