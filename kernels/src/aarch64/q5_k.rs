//! Q5_K × Q8_K with NEON, equal to `reference::q5_k::vec_dot_q5_k_q8_k` bit for bit: the quants
//! are unpacked 16 at a time, the lane integer sums (`KAux`) are exact, and the float steps are
//! the reference's. No dotprod variant: the reference's lanes collect elements `≡ l (mod 8)`,
//! which `sdot`'s groups of 4 consecutive bytes do not give without a byte shuffle per vector.
//! (Q4_K and Q6_K, whose reference follows llama.cpp's x86 kernels, are in `kquants`.)

use std::arch::aarch64::{
    int8x16_t, uint8x16_t, vandq_u8, vdupq_n_u8, vorrq_u8, vreinterpretq_s8_u8,
    vreinterpretq_u8_s8, vshrq_n_u8, vtstq_u8,
};

use super::lanes::{f16_at, load_i8, load_s8, KAux, KSums};
use crate::reference::q4_k::{scales_mins_k4, K_SCALE_SIZE};
use crate::reference::q5_k::BlockQ5K;
use crate::reference::q8_k::BlockQ8K;
use crate::reference::view;

#[inline]
#[target_feature(enable = "neon")]
fn load_u8(b: &[u8]) -> uint8x16_t {
    vreinterpretq_u8_s8(load_i8(b))
}

/// The Q8_K block's f32 scale and `Σ bsums[j] × mins[j / 2]` (its 16 group sums times the
/// weight block's minimums).
#[inline]
#[target_feature(enable = "neon")]
fn q8k_parts(y: &BlockQ8K, mins: &[i32; 8]) -> (f32, i32) {
    let mut summ = 0i32;
    for (j, s) in y.bsums.iter().enumerate() {
        summ += i32::from(i16::from_le_bytes(*s)) * mins[j / 2];
    }
    (f32::from_le_bytes(y.d), summ)
}

/// One Q4_K (`qh == None`) or Q5_K super-block into `sums`; returns the block's minimum term
/// `(dmin * d_y) * Σ bsums × mins` that the reference subtracts from its scalar sum.
#[inline]
#[target_feature(enable = "neon")]
fn block(
    d: f32,
    dmin: f32,
    scales: &[u8; K_SCALE_SIZE],
    qh: Option<&[u8]>,
    qs: &[u8],
    y: &BlockQ8K,
    sums: &mut KSums,
) -> f32 {
    let (sc, mn) = scales_mins_k4(scales);
    let (ya, summ) = q8k_parts(y, &mn);
    let yq = |j: usize| load_s8(&y.qs[16 * j..]);
    let low = vdupq_n_u8(0x0f);
    // Fifth bits of elements 0..16 and 16..32 of every group (bit g: group g).
    let qh = qh.map(|h| [load_u8(h), load_u8(&h[16..])]);
    let with_bit = |v: uint8x16_t, half: usize, g: usize| -> int8x16_t {
        let v = match qh {
            Some(h) => vorrq_u8(
                v,
                vandq_u8(vtstq_u8(h[half], vdupq_n_u8(1 << g)), vdupq_n_u8(16)),
            ),
            None => v,
        };
        vreinterpretq_s8_u8(v)
    };
    let mut aux = KAux::zero();
    for c in 0..4 {
        let (p0, p1) = (load_u8(&qs[32 * c..]), load_u8(&qs[32 * c + 16..]));
        let (g0, g1) = (2 * c, 2 * c + 1);
        let lo = [
            with_bit(vandq_u8(p0, low), 0, g0),
            with_bit(vandq_u8(p1, low), 1, g0),
        ];
        let hi = [
            with_bit(vshrq_n_u8::<4>(p0), 0, g1),
            with_bit(vshrq_n_u8::<4>(p1), 1, g1),
        ];
        aux = aux.add(&lo, &[yq(4 * c), yq(4 * c + 1)], sc[g0] as i16);
        aux = aux.add(&hi, &[yq(4 * c + 2), yq(4 * c + 3)], sc[g1] as i16);
    }
    *sums = sums.add(aux, d * ya);
    (dmin * ya) * summ as f32
}

#[target_feature(enable = "neon")]
fn q5_k_neon(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut sums = KSums::zero();
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let m = block(
            f16_at(&x.d, 0),
            f16_at(&x.dmin, 0),
            &x.scales,
            Some(&x.qh),
            &x.qs,
            y,
            &mut sums,
        );
        sumf -= m;
    }
    sums.fold(sumf)
}

/// Q5_K × Q8_K with NEON (same result as the reference).
pub(crate) fn vec_dot_q5_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (w, a) = (view::<BlockQ5K>(w, n / 256), view::<BlockQ8K>(a, n / 256));
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { q5_k_neon(w, a) }
}
