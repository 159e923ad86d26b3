//! The f16 attention helpers of `reference::attention` with NEON, equal to them bit for bit:
//! the key dot in ggml's AVX2 `ggml_vec_dot_f16` order (four 8-lane accumulators, held here as
//! eight `float32x4_t`), and the f16-rounded accumulator updates, rounding with the base
//! ARMv8 `fcvtn`/`fcvtl` pair (round to nearest even, as `half` and F16C do; `vcvt_f16_f32`
//! needs the unstable `float16x4_t`, so this goes through inline assembly); and the fused
//! attention loop over f16 K/V rows (`attend_rows_group`), as the x86 kernels: same operations
//! in the same order as `reference::attention::attend_rows`, so the same bits.

use std::arch::aarch64::{
    float32x4_t, vaddq_f32, vdupq_n_f32, vfmaq_f32, vgetq_lane_f32, vld1q_f32, vld1q_u16,
    vmulq_n_f32, vpaddq_f32, vst1q_f32,
};
use std::arch::asm;

use half::f16;

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
unsafe fn load8_f16(p: *const f16) -> (float32x4_t, float32x4_t) {
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

/// The fused loop of `reference::attention::attend_rows_group` for `d = 32 * D32`: each key and
/// value row is widened once for all the group's queries, the score follows `dot_f16_order`
/// (the accumulators of [`dot_neon`]), the online softmax is the reference's scalar code, and
/// the f16 accumulators (in `out`, L1) are rounded after every key.
///
/// # Safety
/// `q.len() == out.len() == st.len() * 32 * D32`; `k.len() == v.len()`, a multiple of
/// `32 * D32`; the CPU has NEON.
#[target_feature(enable = "neon")]
unsafe fn attend_group_d<const D32: usize>(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let d = 32 * D32;
    let n = k.len() / d;
    let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
    // One key or value row: 8 · D32 vectors of 4.
    let mut row = [[vdupq_n_f32(0.0); 8]; D32];
    let mut w = [0f32; MAX_GROUP];
    for j in 0..n {
        for (c, rc) in row.iter_mut().enumerate() {
            for h in 0..4 {
                // SAFETY: row `j < n` of `k` holds `d` elements (caller).
                (rc[2 * h], rc[2 * h + 1]) =
                    unsafe { load8_f16(k.as_ptr().add(j * d + 32 * c + 8 * h)) };
            }
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
            for h in 0..4 {
                // SAFETY: row `j < n` of `v` holds `d` elements (caller).
                (rc[2 * h], rc[2 * h + 1]) =
                    unsafe { load8_f16(v.as_ptr().add(j * d + 32 * c + 8 * h)) };
            }
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
    k: &[f16],
    v: &[f16],
    scale: f32,
    st: &mut [OnlineSoftmax],
    out: &mut [f32],
) {
    let (g, d) = attention::group_shape(q, k, v, st, out);
    // SAFETY: installed only after neon was detected; lengths checked above.
    unsafe {
        match (d, g <= MAX_GROUP) {
            (32, true) => attend_group_d::<1>(q, k, v, scale, st, out),
            (64, true) => attend_group_d::<2>(q, k, v, scale, st, out),
            (128, true) => attend_group_d::<4>(q, k, v, scale, st, out),
            (256, true) => attend_group_d::<8>(q, k, v, scale, st, out),
            _ => attention::attend_rows_group(q, k, v, scale, st, out),
        }
    }
}

/// `reference::attention::attend_rows` with NEON (one query).
pub(crate) fn attend_rows(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    scale: f32,
    st: &mut OnlineSoftmax,
    out: &mut [f32],
) {
    attend_rows_group(q, k, v, scale, std::slice::from_mut(st), out)
}
