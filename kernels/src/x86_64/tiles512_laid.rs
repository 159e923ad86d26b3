//! AVX-512 tile products over activations laid out once per group of tokens (prefill and
//! batched steps: two tokens or more): Q8_0 and Q5_0 weights with Q8_0 activations, Q4_1
//! weights with Q8_1 activations.
//!
//! The pair micro-kernels of [`super::tiles512`] rebuild, for every micro-tile and block, what
//! belongs to the tokens alone: the two tokens' quants side by side (an insert), their `d` in
//! the register halves (broadcasts and a shuffle) and, for Q8_0 and Q5_0, the start of the lane
//! sums, minus the weights' offset times `Σy` (a `vpdpbusd` and a subtraction). That is a
//! quarter of the vector work of a 4 × 8 micro-tile, redone for every four weight rows. Here a
//! group's activations are laid out once, pair by pair and block by block (64 bytes of quants,
//! 64 of `d`, and for Q8_0 / Q5_0 64 of starts), and the micro-kernels take them from memory:
//! the loads fold into the instructions that use them. The Q4_1 kernel also takes its weight
//! rows' `d` and `m` as f32 from a buffer converted once per row tile and group (a broadcast
//! from memory instead of a conversion per micro-tile). Lane for lane the float steps are the
//! pair kernels' (same exact i32 lane sums, same conversions, `d_w · d_a`, FMAs, block after
//! block, same `hsum8`): the outputs are the same bits.

use std::arch::x86_64::{
    __m512, __m512i, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_set1_ps,
    _mm256_setzero_ps, _mm256_storeu_ps, _mm512_and_si512, _mm512_broadcast_i32x4,
    _mm512_castsi256_si512, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_fmadd_ps,
    _mm512_inserti64x4, _mm512_load_ps, _mm512_load_si512, _mm512_mask_broadcastss_ps,
    _mm512_mask_srli_epi16, _mm512_mul_ps, _mm512_set1_epi8, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_setzero_si512, _mm512_store_ps, _mm512_store_si512, _mm512_sub_epi32, _mm_loadu_si128,
    _mm_set_ss,
};
use std::mem::MaybeUninit;

use super::tiles::{block, prefetch_ahead, PREFETCH_MAX_TOKENS};
use super::tiles512::{q8_weights, store_pair, ActBlock};
use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q5_0::BlockQ5_0;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};
use crate::reference::Block;

/// Bytes of one (token pair, block) laid out: the quants (64), the lane sums' start (16 × i32),
/// the tokens' `d` (16 × f32, one token per half).
const PAIR_BLOCK: usize = 192;
/// Bytes of laid-out activations per group (a stack buffer, about L1's size).
const LAY_BUF: usize = 32768;
/// Token pairs per micro-tile (8 tokens).
const MP: usize = 4;
/// Weight rows per micro-tile.
const MR: usize = 4;

#[repr(C, align(64))]
struct LayBuf([u8; LAY_BUF]);

/// A Q8_0 / Q5_0 micro-kernel over laid-out pairs: `(nb, w, w_stride, lay, lay_stride, tt,
/// out, out_stride, prefetch)` (see [`q8_micro`]).
type Q8Micro = unsafe fn(usize, *const u8, usize, *const u8, usize, usize, *mut f32, usize, bool);

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

/// Block `i` of tokens `t0` and `t1` as one pair: their quants side by side (`t0`'s in the low
/// half) and their `d` as f32 in the matching halves (exact).
///
/// # Safety
/// Both tokens' block `i` (of type `A`) is readable at `a + t * a_stride`; the CPU has AVX-512F
/// and F16C.
#[inline(always)]
unsafe fn pair_block<A: ActBlock>(
    a: *const u8,
    a_stride: usize,
    t0: usize,
    t1: usize,
    i: usize,
) -> (__m512i, __m512) {
    // SAFETY: forwarded contract (unaligned loads inside the blocks).
    unsafe {
        let y0: &A = block(a.add(t0 * a_stride), i);
        let y1: &A = block(a.add(t1 * a_stride), i);
        let qy = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(y0.qs().cast())),
            _mm256_loadu_si256(y1.qs().cast()),
        );
        let (d0, d1) = (super::f16c::f16_ptr(y0.d()), super::f16c::f16_ptr(y1.d()));
        (
            qy,
            _mm512_mask_broadcastss_ps(_mm512_set1_ps(d0), 0xff00, _mm_set_ss(d1)),
        )
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
unsafe fn lay_out_q8<const Q5: bool>(
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
                let (qy, da) = pair_block::<BlockQ8_0>(a, a_stride, t0, t1, i);
                // -offset · Σy per lane: the correction for the weights' offset.
                let start = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, qy),
                );
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
unsafe fn q8_micro<const R: usize, const P: usize, const Q5: bool>(
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
            // SAFETY: block `i` of weight row `r` is in bounds (caller).
            let (dw, qx) = unsafe { q8_weights::<Q5>(row, i, bias, prefetch) };
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

/// The `[[q8_micro::<r, p, Q5>; MP]; MR]` table.
macro_rules! q8_table {
    ($q5:literal) => {
        [
            [
                q8_micro::<1, 1, $q5> as Q8Micro,
                q8_micro::<1, 2, $q5>,
                q8_micro::<1, 3, $q5>,
                q8_micro::<1, 4, $q5>,
            ],
            [
                q8_micro::<2, 1, $q5>,
                q8_micro::<2, 2, $q5>,
                q8_micro::<2, 3, $q5>,
                q8_micro::<2, 4, $q5>,
            ],
            [
                q8_micro::<3, 1, $q5>,
                q8_micro::<3, 2, $q5>,
                q8_micro::<3, 3, $q5>,
                q8_micro::<3, 4, $q5>,
            ],
            [
                q8_micro::<4, 1, $q5>,
                q8_micro::<4, 2, $q5>,
                q8_micro::<4, 3, $q5>,
                q8_micro::<4, 4, $q5>,
            ],
        ]
    };
}

static Q8_0_MICRO: [[Q8Micro; MP]; MR] = q8_table!(false);
static Q5_0_MICRO: [[Q8Micro; MP]; MR] = q8_table!(true);

/// Run an `nr × nt` product group by group of `group` tokens: `lay(t0, t1)` lays tokens
/// `t0..t1` out; then, for each row tile of up to `MR` rows from row `r`, `rows(r, rr)`
/// prepares it and `micro(r, rr, (t0, t1), t, tt)` runs its micro-tiles of up to `2 MP` tokens
/// from `t`.
#[inline(always)]
fn by_groups(
    nr: usize,
    nt: usize,
    group: usize,
    mut lay: impl FnMut(usize, usize),
    mut rows: impl FnMut(usize, usize),
    mut micro: impl FnMut(usize, usize, (usize, usize), usize, usize),
) {
    let mut t0 = 0;
    while t0 < nt {
        let t1 = (t0 + group).min(nt);
        lay(t0, t1);
        let mut r = 0;
        while r < nr {
            let rr = (nr - r).min(MR);
            rows(r, rr);
            let mut t = t0;
            while t < t1 {
                let tt = (t1 - t).min(2 * MP);
                micro(r, rr, (t0, t1), t, tt);
                t += tt;
            }
            r += rr;
        }
        t0 = t1;
    }
}

/// The tile product of Q8_0 (`Q5` false) or Q5_0 weights with Q8_0 activations over laid-out
/// pairs, for two tokens or more. Returns `false`, computing nothing, where it does not apply
/// (one token, or rows too long for one micro-tile's pairs to fit the buffer); the caller then
/// takes the pair kernel.
///
/// # Safety
/// As [`crate::tile::TileDotFn`] for these formats (operands checked here); the CPU has the
/// features of [`super::tiles512`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn walk_q8<const Q5: bool>(
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
    by_groups(
        nr,
        nt,
        group,
        // SAFETY: tokens `t0..t1` are within the checked operands; `pairs * nb * PAIR_BLOCK
        // <= LAY_BUF` (group ≤ max_group); the buffer is 64-byte aligned; the features were
        // checked before installation.
        |t0, t1| unsafe {
            lay_out_q8::<Q5>(a.as_ptr().add(t0 * a_stride), a_stride, t1 - t0, nb, buf)
        },
        |_, _| {},
        |r, rr, (t0, t1), t, tt| {
            // SAFETY: rows `r..r+rr` are within the checked operands; the micro-tile's pairs
            // (from pair `(t - t0) / 2`, `t - t0` being a multiple of `2 MP`) are laid out in
            // the buffer; the output elements are within the caller's region.
            unsafe {
                micro[rr - 1][tt.div_ceil(2) - 1](
                    nb,
                    w.as_ptr().add(r * w_stride),
                    w_stride,
                    buf.add((t - t0) / 2 * PAIR_BLOCK),
                    (t1 - t0).div_ceil(2) * PAIR_BLOCK,
                    tt,
                    out.add(t * out_stride + r),
                    out_stride,
                    t == 0 && nt <= PREFETCH_MAX_TOKENS,
                )
            }
        },
    );
    true
}

/// Bytes of one (token pair, block) of Q8_1 activations laid out for Q4_1: the quants (64) and
/// the tokens' `d` (16 × f32, one token per half).
const Q4_1_PAIR_BLOCK: usize = 128;
/// Most blocks per row of the Q4_1 path (the weight-scale buffer's size).
const Q4_1_MAX_BLOCKS: usize = 256;

/// Lay out tokens `0..tt` of `a` (Q8_1 rows `a_stride` apart, `nb` blocks) for Q4_1: pair `p`,
/// block `i` at `buf + (i * pairs + p) * Q4_1_PAIR_BLOCK`; then, from `buf + nb * pairs *
/// Q4_1_PAIR_BLOCK`, the tokens' `s` as f32, `s[i * s_stride + t]` (`s_stride = tt + 8`, zeros
/// after token `tt - 1`: a micro-tile loads 8).
///
/// # Safety
/// The tokens' blocks are readable; `buf` holds `nb * pairs * Q4_1_PAIR_BLOCK + 4 * nb *
/// (tt + 8)` bytes, 64-byte aligned; the CPU has the features enabled here.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn lay_out_q4_1(a: *const u8, a_stride: usize, tt: usize, nb: usize, buf: *mut u8) {
    let pairs = tt.div_ceil(2);
    let s = buf.wrapping_add(nb * pairs * Q4_1_PAIR_BLOCK).cast::<f32>();
    let s_stride = tt + 8;
    for p in 0..pairs {
        let (t0, t1) = (2 * p, (2 * p + 1).min(tt - 1));
        for i in 0..nb {
            // SAFETY: both tokens are `< tt` and their block `i` is readable (caller); the
            // destination is within the buffer and 64-byte aligned.
            unsafe {
                let (qy, da) = pair_block::<BlockQ8_1>(a, a_stride, t0, t1, i);
                let dst = buf.add((i * pairs + p) * Q4_1_PAIR_BLOCK);
                _mm512_store_si512(dst.cast(), qy);
                _mm512_store_ps(dst.add(64).cast(), da);
            }
        }
    }
    for i in 0..nb {
        for t in 0..s_stride {
            let v = if t < tt {
                // SAFETY: token `t < tt`, block `i` readable (caller).
                let y: &BlockQ8_1 = unsafe { block(a.add(t * a_stride), i) };
                super::f16c::f16_at(&y.s, 0)
            } else {
                0.0
            };
            // SAFETY: within the `nb * s_stride` floats after the pairs (caller).
            unsafe { s.add(i * s_stride + t).write(v) };
        }
    }
}

/// The `d` and `m` of block `i` of rows `0..rr` of `w` as f32, `dm[2 * (i * MR + r)]` and the
/// next entry.
///
/// # Safety
/// The rows' `nb` Q4_1 blocks are readable; `dm` holds `2 * MR * nb` floats; the CPU has F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn q4_1_scales(w: *const u8, w_stride: usize, rr: usize, nb: usize, dm: *mut f32) {
    for i in 0..nb {
        for r in 0..rr {
            // SAFETY: block `i` of row `r < rr` is readable; the entries are within `dm`.
            unsafe {
                let x: &BlockQ4_1 = block(w.add(r * w_stride), i);
                dm.add(2 * (i * MR + r)).write(super::f16c::f16_at(&x.d, 0));
                dm.add(2 * (i * MR + r) + 1)
                    .write(super::f16c::f16_at(&x.m, 0));
            }
        }
    }
}

/// One `R × tt` micro-tile (`tt` in `2P - 1 ..= 2P` tokens) of Q4_1 weights over laid-out Q8_1
/// pairs (pair `p`, block `i` at `lay + i * lay_stride + p * Q4_1_PAIR_BLOCK`; the tokens' `s`
/// of block `i` from `s + i * s_stride`), the rows' `d` and `m` from `dm` ([`q4_1_scales`]).
///
/// # Safety
/// The CPU has the features enabled here; `w` points at `R` rows of `nb` blocks, `w_stride`
/// bytes apart; `dm` holds their scales; the pairs and 8 `s` per block are laid out;
/// `out.add(t * out_stride + r)` is writable for `t < tt`, `r < R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn q4_1_micro<const R: usize, const P: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    dm: *const f32,
    lay: *const u8,
    lay_stride: usize,
    s: *const f32,
    s_stride: usize,
    tt: usize,
    out: *mut f32,
    out_stride: usize,
    prefetch: bool,
) {
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let mut summs = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let pairs = lay.wrapping_add(i * lay_stride);
        // SAFETY: 8 `s` of block `i` are laid out (caller).
        let sa = unsafe { _mm256_loadu_ps(s.add(i * s_stride)) };
        for (r, (acc_r, summs_r)) in acc.iter_mut().zip(&mut summs).enumerate() {
            let row = w.wrapping_add(r * w_stride);
            if prefetch {
                // SAFETY: a prefetch of any address is harmless (wrapping arithmetic).
                unsafe { prefetch_ahead::<BlockQ4_1>(row, i) };
            }
            // SAFETY: block `i` of weight row `r` and its converted scales are in bounds
            // (caller).
            let (dw, mw, packed) = unsafe {
                let x: &BlockQ4_1 = block(row, i);
                let at = dm.add(2 * (i * MR + r));
                (
                    _mm512_set1_ps(*at),
                    _mm256_set1_ps(*at.add(1)),
                    _mm512_broadcast_i32x4(_mm_loadu_si128(x.qs.as_ptr().cast())),
                )
            };
            // 128-bit lanes 0 and 2 keep the low nibbles (elements 0..16), lanes 1 and 3 take
            // the high ones (16..32): the block's 32 quants in order, once per half.
            let qx = _mm512_and_si512(
                _mm512_mask_srli_epi16::<4>(packed, 0xff00_ff00, packed),
                low,
            );
            *summs_r = _mm256_fmadd_ps(mw, sa, *summs_r);
            for (p, acc_rp) in acc_r.iter_mut().enumerate() {
                // SAFETY: pair `p` of block `i` is laid out, 64-byte aligned (caller).
                let (qy, da) = unsafe {
                    let pb = pairs.add(p * Q4_1_PAIR_BLOCK);
                    (
                        _mm512_load_si512(pb.cast()),
                        _mm512_load_ps(pb.add(64).cast()),
                    )
                };
                let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, qy));
                *acc_rp = _mm512_fmadd_ps(_mm512_mul_ps(dw, da), s, *acc_rp);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let mut m = [0f32; 8];
        // SAFETY: `m` holds 8 floats.
        unsafe { _mm256_storeu_ps(m.as_mut_ptr(), summs[r]) };
        for (p, &acc_rp) in acc_r.iter().enumerate() {
            // SAFETY: forwarded `out` contract.
            unsafe { store_pair(acc_rp, &m, p, tt, r, out, out_stride) };
        }
    }
}

/// A Q4_1 micro-kernel over laid-out pairs (see [`q4_1_micro`]).
type Q4_1Micro = unsafe fn(
    usize,
    *const u8,
    usize,
    *const f32,
    *const u8,
    usize,
    *const f32,
    usize,
    usize,
    *mut f32,
    usize,
    bool,
);

static Q4_1_MICRO: [[Q4_1Micro; MP]; MR] = [
    [
        q4_1_micro::<1, 1> as Q4_1Micro,
        q4_1_micro::<1, 2>,
        q4_1_micro::<1, 3>,
        q4_1_micro::<1, 4>,
    ],
    [
        q4_1_micro::<2, 1>,
        q4_1_micro::<2, 2>,
        q4_1_micro::<2, 3>,
        q4_1_micro::<2, 4>,
    ],
    [
        q4_1_micro::<3, 1>,
        q4_1_micro::<3, 2>,
        q4_1_micro::<3, 3>,
        q4_1_micro::<3, 4>,
    ],
    [
        q4_1_micro::<4, 1>,
        q4_1_micro::<4, 2>,
        q4_1_micro::<4, 3>,
        q4_1_micro::<4, 4>,
    ],
];

/// The Q4_1 × Q8_1 tile product over laid-out pairs, for four tokens or more. Returns `false`,
/// computing nothing, where it does not apply (fewer tokens, rows of more than
/// [`Q4_1_MAX_BLOCKS`] blocks, or too long for one micro-tile's pairs to fit the buffer); the
/// caller then takes the pair kernel.
///
/// # Safety
/// As [`crate::tile::TileDotFn`] for Q4_1 (operands checked here); the CPU has the features of
/// [`super::tiles512`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn walk_q4_1(
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
    // Bytes per token of a group: half a pair block per block, and its `s` (plus the 8
    // entries of padding per block, counted once below).
    let per_token = nb * (Q4_1_PAIR_BLOCK / 2 + 4);
    let room = LAY_BUF.saturating_sub(nb * 4 * 9);
    let max_group = room / per_token.max(1);
    // Two or three tokens: converting the rows' scales once per micro-tile saves nothing.
    if nt < 4 || max_group < mt || nr == 0 || nb > Q4_1_MAX_BLOCKS {
        return false;
    }
    crate::tile::check_operands(
        nb,
        (BlockQ4_1::SIZE, BlockQ8_1::SIZE),
        w,
        w_stride,
        nr,
        a,
        a_stride,
        nt,
    );
    let group = (max_group / mt * mt).min(nt.div_ceil(mt) * mt);
    let mut buf = MaybeUninit::<LayBuf>::uninit();
    let buf = buf.as_mut_ptr().cast::<u8>();
    let mut dm = MaybeUninit::<[f32; 2 * MR * Q4_1_MAX_BLOCKS]>::uninit();
    let dm = dm.as_mut_ptr().cast::<f32>();
    by_groups(
        nr,
        nt,
        group,
        // SAFETY: tokens `t0..t1` are within the checked operands; the pairs and the `s` fit the
        // buffer (`pairs * nb * 128 + 4 * nb * (t1 - t0 + 8) <= LAY_BUF` by `max_group`); it is
        // 64-byte aligned; the features were checked before installation.
        |t0, t1| unsafe { lay_out_q4_1(a.as_ptr().add(t0 * a_stride), a_stride, t1 - t0, nb, buf) },
        // SAFETY: rows `r..r+rr` are within the checked operands; `dm` holds
        // `2 * MR * Q4_1_MAX_BLOCKS >= 2 * MR * nb` floats.
        |r, rr| unsafe { q4_1_scales(w.as_ptr().add(r * w_stride), w_stride, rr, nb, dm) },
        |r, rr, (t0, t1), t, tt| {
            let lay_stride = (t1 - t0).div_ceil(2) * Q4_1_PAIR_BLOCK;
            // SAFETY: rows `r..r+rr` are within the checked operands and their scales in `dm`;
            // the micro-tile's pairs (from pair `(t - t0) / 2`) and the `s` of its tokens (8
            // from `t - t0`, within the group's `t1 - t0 + 8`) are laid out; the output
            // elements are within the caller's region.
            unsafe {
                Q4_1_MICRO[rr - 1][tt.div_ceil(2) - 1](
                    nb,
                    w.as_ptr().add(r * w_stride),
                    w_stride,
                    dm,
                    buf.add((t - t0) / 2 * Q4_1_PAIR_BLOCK),
                    lay_stride,
                    buf.add(nb * lay_stride).cast::<f32>().add(t - t0),
                    t1 - t0 + 8,
                    tt,
                    out.add(t * out_stride + r),
                    out_stride,
                    t == 0 && nt <= PREFETCH_MAX_TOKENS,
                )
            }
        },
    );
    true
}
