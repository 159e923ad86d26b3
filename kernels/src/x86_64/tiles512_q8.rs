//! AVX-512 tile products of Q8_0 and Q5_0 weights over activations laid out once per group of
//! tokens (prefill and batched steps: two tokens or more).
//!
//! The pair micro-kernel of [`super::tiles512`] rebuilds, for every micro-tile and block, what
//! belongs to the tokens alone: the two tokens' quants side by side (an insert), their `d` in
//! the register halves (broadcasts and a shuffle) and the start of the lane sums, minus the
//! weights' offset times `Σy` (a `vpdpbusd` and a subtraction). That is a quarter of the vector
//! work of a 4 × 8 micro-tile, redone for every four weight rows. Here a group's activations are
//! laid out once, pair by pair and block by block (64 bytes of quants, 64 of starts, 64 of `d`),
//! and the micro-kernel takes them from memory: the loads fold into the instructions that use
//! them. Lane for lane the float steps are the pair kernel's (same exact i32 lane sums, same
//! conversion, `d_w · d_a`, FMA, block after block, same `hsum8`): the outputs are the same bits.

use std::arch::x86_64::{
    _mm256_loadu_si256, _mm512_broadcast_i64x4, _mm512_castsi256_si512, _mm512_cvtepi32_ps,
    _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_inserti64x4, _mm512_load_ps, _mm512_load_si512,
    _mm512_mask_broadcastss_ps, _mm512_mul_ps, _mm512_set1_epi8, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_setzero_si512, _mm512_store_ps, _mm512_store_si512, _mm512_sub_epi32, _mm512_xor_si512,
    _mm_set_ss,
};
use std::mem::MaybeUninit;

use super::q5_0::q5_0_quants;
use super::tiles::{block, prefetch_ahead, PREFETCH_MAX_TOKENS};
use super::tiles512::{f16x16_at, store_pair};
use crate::reference::q5_0::BlockQ5_0;
use crate::reference::q8::BlockQ8_0;
use crate::reference::Block;

/// Bytes of one (token pair, block) laid out: the quants (64), the lane sums' start (16 × i32),
/// the tokens' `d` (16 × f32, one token per half).
const PAIR_BLOCK: usize = 192;
/// Bytes of laid-out activations per group (a stack buffer, about L1's size).
const LAY_BUF: usize = 32768;
/// Token pairs per micro-tile (8 tokens) and rows per micro-tile.
const MP: usize = 4;
const MR: usize = 4;

#[repr(C, align(64))]
struct LayBuf([u8; LAY_BUF]);

/// A micro-kernel over laid-out pairs: `(nb, w, w_stride, lay, lay_stride, tt, out,
/// out_stride, prefetch)`.
type LaidMicro = unsafe fn(usize, *const u8, usize, *const u8, usize, usize, *mut f32, usize, bool);

/// The weights' offset that makes their quants unsigned for `vpdpbusd`: Q8_0's `x + 128` (an
/// XOR with 0x80), Q5_0's stored `q + 16`.
#[inline(always)]
fn bias<const Q5: bool>() -> i8 {
    if Q5 {
        16
    } else {
        0x80u8 as i8
    }
}

/// Lay out tokens `0..tt` of `a` (Q8_0 rows `a_stride` apart, `nb` blocks) pair by pair: pair
/// `p`, block `i` at `buf + (i * tt.div_ceil(2) + p) * PAIR_BLOCK` (its second token is the
/// first again where `2p + 1 == tt`).
///
/// # Safety
/// The tokens' blocks are readable; `buf` holds `nb * tt.div_ceil(2) * PAIR_BLOCK` bytes,
/// 64-byte aligned; the CPU has the features enabled here.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn lay_out<const Q5: bool>(
    a: *const u8,
    a_stride: usize,
    tt: usize,
    nb: usize,
    buf: *mut u8,
) {
    let bias = _mm512_set1_epi8(bias::<Q5>());
    let pairs = tt.div_ceil(2);
    for p in 0..pairs {
        let (t0, t1) = (2 * p, (2 * p + 1).min(tt - 1));
        for i in 0..nb {
            // SAFETY: both tokens are `< tt` and their block `i` is readable (caller); the
            // destination is within the buffer and 64-byte aligned (`PAIR_BLOCK` is a multiple
            // of 64).
            unsafe {
                let y0: &BlockQ8_0 = block(a.add(t0 * a_stride), i);
                let y1: &BlockQ8_0 = block(a.add(t1 * a_stride), i);
                let qy = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(y0.qs.as_ptr().cast())),
                    _mm256_loadu_si256(y1.qs.as_ptr().cast()),
                );
                // -offset · Σy per lane: the correction for the weights' offset.
                let start = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, qy),
                );
                let d0 = super::f16c::f16_at(&y0.d, 0);
                let d1 = super::f16c::f16_at(&y1.d, 0);
                let da = _mm512_mask_broadcastss_ps(_mm512_set1_ps(d0), 0xff00, _mm_set_ss(d1));
                let dst = buf.add((i * pairs + p) * PAIR_BLOCK);
                _mm512_store_si512(dst.cast(), qy);
                _mm512_store_si512(dst.add(64).cast(), start);
                _mm512_store_ps(dst.add(128).cast(), da);
            }
        }
    }
}

/// One `R × tt` micro-tile (`tt` in `2P - 1 ..= 2P` tokens) of Q8_0 (`Q5` false) or Q5_0
/// weights over laid-out pairs: pair `p`, block `i` at `lay + i * lay_stride + p *
/// PAIR_BLOCK`.
///
/// # Safety
/// The CPU has the features enabled here; `w` points at `R` rows of `nb` blocks, `w_stride`
/// bytes apart; the pairs are laid out (64-byte aligned) for all `nb` blocks;
/// `out.add(t * out_stride + r)` is writable for `t < tt`, `r < R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const R: usize, const P: usize, const Q5: bool>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    lay: *const u8,
    lay_stride: usize,
    tt: usize,
    out: *mut f32,
    out_stride: usize,
    prefetch: bool,
) {
    let bias = _mm512_set1_epi8(bias::<Q5>());
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for i in 0..nb {
        let pairs = lay.wrapping_add(i * lay_stride);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let row = w.wrapping_add(r * w_stride);
            if prefetch {
                // SAFETY: a prefetch of any address is harmless (wrapping arithmetic).
                unsafe {
                    if Q5 {
                        prefetch_ahead::<BlockQ5_0>(row, i);
                    } else {
                        prefetch_ahead::<BlockQ8_0>(row, i);
                    }
                }
            }
            // SAFETY: block `i` of weight row `r` is in bounds (caller).
            let (dw, qx) = unsafe {
                if Q5 {
                    let x: &BlockQ5_0 = block(row, i);
                    let qx = q5_0_quants(std::ptr::from_ref(x).cast());
                    (f16x16_at(x.d.as_ptr()), _mm512_broadcast_i64x4(qx))
                } else {
                    let x: &BlockQ8_0 = block(row, i);
                    let qx = _mm256_loadu_si256(x.qs.as_ptr().cast());
                    (
                        f16x16_at(x.d.as_ptr()),
                        _mm512_xor_si512(_mm512_broadcast_i64x4(qx), bias),
                    )
                }
            };
            for (p, acc_rp) in acc_r.iter_mut().enumerate() {
                // SAFETY: pair `p` of block `i` is laid out, 64-byte aligned (caller).
                let (qy, start, da) = unsafe {
                    let pb = pairs.add(p * PAIR_BLOCK);
                    (
                        _mm512_load_si512(pb.cast()),
                        _mm512_load_si512(pb.add(64).cast()),
                        _mm512_load_ps(pb.add(128).cast()),
                    )
                };
                let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, qx, qy));
                *acc_rp = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), s, *acc_rp);
            }
        }
    }
    let zero = [0f32; 8];
    for (r, acc_r) in acc.iter().enumerate() {
        for (p, &acc_rp) in acc_r.iter().enumerate() {
            // SAFETY: forwarded `out` contract.
            unsafe { store_pair(acc_rp, &zero, p, tt, r, out, out_stride) };
        }
    }
}

/// The `[[micro::<r, p, Q5>; MP]; MR]` table.
macro_rules! laid_table {
    ($q5:literal) => {
        [
            [
                micro::<1, 1, $q5> as LaidMicro,
                micro::<1, 2, $q5>,
                micro::<1, 3, $q5>,
                micro::<1, 4, $q5>,
            ],
            [
                micro::<2, 1, $q5>,
                micro::<2, 2, $q5>,
                micro::<2, 3, $q5>,
                micro::<2, 4, $q5>,
            ],
            [
                micro::<3, 1, $q5>,
                micro::<3, 2, $q5>,
                micro::<3, 3, $q5>,
                micro::<3, 4, $q5>,
            ],
            [
                micro::<4, 1, $q5>,
                micro::<4, 2, $q5>,
                micro::<4, 3, $q5>,
                micro::<4, 4, $q5>,
            ],
        ]
    };
}

static Q8_0_MICRO: [[LaidMicro; MP]; MR] = laid_table!(false);
static Q5_0_MICRO: [[LaidMicro; MP]; MR] = laid_table!(true);

/// The tile product of Q8_0 (`Q5` false) or Q5_0 weights with Q8_0 activations over laid-out
/// pairs, for two tokens or more. Returns `false`, computing nothing, where it does not apply
/// (one token, or rows too long for one micro-tile's pairs to fit the buffer); the caller then
/// takes the pair kernel.
///
/// # Safety
/// As [`crate::tile::TileDotFn`] for these formats (operands checked here); the CPU has the
/// features of [`super::tiles512`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn walk<const Q5: bool>(
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nt: usize,
    out: *mut f32,
    out_stride: usize,
) -> bool {
    let nb = n / 32;
    let mt = 2 * MP;
    let max_group = LAY_BUF / (PAIR_BLOCK * nb.max(1)) * 2;
    if nt < 2 || max_group < mt || nr == 0 {
        return false;
    }
    let block_w = if Q5 { BlockQ5_0::SIZE } else { BlockQ8_0::SIZE };
    crate::tile::check_operands(
        nb,
        (block_w, BlockQ8_0::SIZE),
        w,
        w_stride,
        nr,
        a,
        a_stride,
        nt,
    );
    let micro = if Q5 { &Q5_0_MICRO } else { &Q8_0_MICRO };
    let group = (max_group / mt * mt).min(nt.div_ceil(mt) * mt);
    let mut buf = MaybeUninit::<LayBuf>::uninit();
    let buf = buf.as_mut_ptr().cast::<u8>();
    let mut t0 = 0;
    while t0 < nt {
        let t1 = (t0 + group).min(nt);
        let pairs = (t1 - t0).div_ceil(2);
        // SAFETY: tokens `t0..t1` are within the checked operands; `pairs * nb * PAIR_BLOCK
        // <= LAY_BUF` (group ≤ max_group); the buffer is 64-byte aligned; the features were
        // checked before installation.
        unsafe { lay_out::<Q5>(a.as_ptr().add(t0 * a_stride), a_stride, t1 - t0, nb, buf) };
        let lay_stride = pairs * PAIR_BLOCK;
        let mut r = 0;
        while r < nr {
            let rr = (nr - r).min(MR);
            let mut t = t0;
            while t < t1 {
                let tt = (t1 - t).min(mt);
                // SAFETY: rows `r..r+rr` are within the checked operands; the micro-tile's pairs
                // (from pair `(t - t0) / 2`, `t - t0` being a multiple of `mt`) are laid out in
                // the buffer written above; the output elements are within the caller's region.
                unsafe {
                    micro[rr - 1][tt.div_ceil(2) - 1](
                        nb,
                        w.as_ptr().add(r * w_stride),
                        w_stride,
                        buf.add((t - t0) / 2 * PAIR_BLOCK),
                        lay_stride,
                        tt,
                        out.add(t * out_stride + r),
                        out_stride,
                        t == 0 && nt <= PREFETCH_MAX_TOKENS,
                    )
                };
                t += tt;
            }
            r += rr;
        }
        t0 = t1;
    }
    true
}
