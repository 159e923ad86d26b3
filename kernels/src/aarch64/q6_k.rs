//! Q6_K × Q8_K with NEON, equal to `reference::q6_k::vec_dot_q6_k_q8_k` bit for bit: the 6-bit
//! quants are rebuilt 16 at a time from `ql` / `qh` (layout in `reference::q6_k`), each group of
//! 16 added to the exact integer lanes with its signed scale, the float steps the reference's.

use std::arch::aarch64::{
    uint8x16_t, vandq_u8, vdupq_n_s8, vdupq_n_u8, vorrq_u8, vreinterpretq_s8_u8,
    vreinterpretq_u8_s8, vshlq_n_u8, vshrq_n_u8, vsubq_s8,
};

use super::lanes::{f16_at, load_i8, KAux, KSums};

const Q6_K_SIZE: usize = 210;
const Q8_K_SIZE: usize = 292;

#[inline]
#[target_feature(enable = "neon")]
fn load_u8(b: &[u8]) -> uint8x16_t {
    vreinterpretq_u8_s8(load_i8(b))
}

#[target_feature(enable = "neon")]
fn q6_k_neon(w: &[u8], a: &[u8]) -> f32 {
    let mut sums = KSums::zero();
    let (low, top) = (vdupq_n_u8(0x0f), vdupq_n_u8(0x30));
    let q = |bits: uint8x16_t| vsubq_s8(vreinterpretq_s8_u8(bits), vdupq_n_s8(32));
    for (x, y) in w.chunks_exact(Q6_K_SIZE).zip(a.chunks_exact(Q8_K_SIZE)) {
        let sc = |g: usize| i16::from(x[192 + g] as i8);
        let yq = |e: usize| load_i8(&y[4 + e..]);
        let mut aux = KAux::zero();
        for h in 0..2 {
            let (ql, qh) = (&x[64 * h..64 * h + 64], &x[128 + 32 * h..128 + 32 * h + 32]);
            for lb in [0, 16] {
                let (a0, a1, hb) = (
                    load_u8(&ql[lb..]),
                    load_u8(&ql[32 + lb..]),
                    load_u8(&qh[lb..]),
                );
                // Elements 128h + lb + {0, 32, 64, 96} .. + 16: low 4 bits from nibbles of
                // ql[l] / ql[l + 32], top 2 from bits 0-1, 2-3, 4-5, 6-7 of qh[l].
                let e = [
                    q(vorrq_u8(
                        vandq_u8(a0, low),
                        vshlq_n_u8::<4>(vandq_u8(hb, vdupq_n_u8(3))),
                    )),
                    q(vorrq_u8(
                        vandq_u8(a1, low),
                        vandq_u8(vshlq_n_u8::<2>(hb), top),
                    )),
                    q(vorrq_u8(vshrq_n_u8::<4>(a0), vandq_u8(hb, top))),
                    q(vorrq_u8(
                        vshrq_n_u8::<4>(a1),
                        vandq_u8(vshrq_n_u8::<2>(hb), top),
                    )),
                ];
                for (k, ek) in e.iter().enumerate() {
                    let first = 128 * h + 32 * k + lb;
                    aux = aux.add(&[*ek], &[yq(first)], sc(first / 16));
                }
            }
        }
        sums = sums.add(
            aux,
            f16_at(x, 208) * f32::from_le_bytes([y[0], y[1], y[2], y[3]]),
        );
    }
    sums.fold(0.0)
}

/// Q6_K × Q8_K with NEON (same result as the reference).
pub(crate) fn vec_dot_q6_k_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 256;
    let (w, a) = (&w[..nb * Q6_K_SIZE], &a[..nb * Q8_K_SIZE]);
    // SAFETY: installed in the dispatch table only after neon was detected.
    unsafe { q6_k_neon(w, a) }
}
