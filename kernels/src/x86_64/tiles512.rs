//! AVX-512 tile products (F, BW, VL and VNNI): the AVX2 tiles of [`super::tiles`] with two
//! (row, token) pairs in each 512-bit register.
//!
//! The 256-bit tiles keep one 8-lane accumulator per pair and spend about ten instructions per
//! pair and block: the AVX2 path is bound by instruction count, not by the arithmetic units.
//! Here the low half of a register holds pair (r, t) and the high half pair (r, t + 1): the
//! weight block is unpacked once into both halves, the two tokens' quants are loaded side by
//! side, and one `vpdpbusd` / convert / scale / FMA sequence serves both pairs. Every lane does
//! exactly what the same lane of the 8-lane kernel does — the same exact integer lane sums,
//! conversion, scale product `dw · da` and FMA, block after block — and each half is reduced by
//! the same `hsum8`, so the outputs equal the AVX2 tiles and the reference bit for bit.
//!
//! Two further savings, also exact:
//! - the activation scales of a group of tokens are converted from f16 once per group into a
//!   block-major f32 buffer on the stack (instead of once per row tile);
//! - Q4_1's `m · s` term, a sequential FMA chain per pair in the reference, runs for 8 tokens at
//!   once in a 256-bit register (one lane per token, the same chain in each lane).
//!
//! Q8_0 weights are signed, and `vpdpbusd` multiplies unsigned by signed bytes: the weight is
//! offset to `x + 128` (an XOR with 0x80) and the accumulation starts from `-128 · Σy` of the
//! lane, which gives `Σ x·y` exactly in i32.

use std::arch::x86_64::{
    __m256, __m512, __m512i, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256,
    _mm256_set1_epi16, _mm256_setzero_ps, _mm256_storeu_ps, _mm512_and_si512,
    _mm512_broadcast_i32x4, _mm512_broadcast_i64x4, _mm512_castps512_ps256, _mm512_castsi256_si512,
    _mm512_cvtepi32_ps, _mm512_cvtph_ps, _mm512_dpbusd_epi32, _mm512_extractf32x8_ps,
    _mm512_fmadd_ps, _mm512_inserti64x4, _mm512_mask_broadcastss_ps, _mm512_mask_srli_epi16,
    _mm512_mul_ps, _mm512_set1_epi8, _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512,
    _mm512_sub_epi32, _mm512_xor_si512, _mm_load_ss, _mm_loadu_si128, _mm_set1_epi16,
};
use std::mem::MaybeUninit;

use super::q5_0::q5_0_quants;
use super::tiles::{block, hsum8, prefetch_ahead, PREFETCH_MAX_TOKENS};
use super::tiles512_rows::{q4_1_rows, q8_0_rows, RowsMicro, ROWS_MR};
use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q5_0::BlockQ5_0;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};
use crate::reference::{Block, Plain};
use crate::tile::TileDotFn;

/// An activation block type of these tiles: its 32 quants at `qs`, its f16 `d` at `d`.
pub(super) trait ActBlock: Plain {
    fn qs(&self) -> *const u8;
    fn d(&self) -> *const u8;
}
impl ActBlock for BlockQ8_0 {
    #[inline(always)]
    fn qs(&self) -> *const u8 {
        self.qs.as_ptr().cast()
    }
    #[inline(always)]
    fn d(&self) -> *const u8 {
        self.d.as_ptr()
    }
}
impl ActBlock for BlockQ8_1 {
    #[inline(always)]
    fn qs(&self) -> *const u8 {
        self.qs.as_ptr().cast()
    }
    #[inline(always)]
    fn d(&self) -> *const u8 {
        self.d.as_ptr()
    }
}

/// Capacity of the per-group scale buffer, in f32 (32 KiB on the stack).
const SCALES_CAP: usize = 8192;
/// Padding after the scale buffer's last block: a micro-tile loads 8 tokens' scales of a block
/// whatever its token count.
const SCALES_PAD: usize = 8;

/// Whether this CPU runs the kernels of this file (the features in their `target_feature`).
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// The f16 at `p` broadcast to 16 f32 lanes (exact).
///
/// # Safety
/// `p..p+2` readable; the CPU has AVX-512F.
#[inline(always)]
pub(super) unsafe fn f16x16_at(p: *const u8) -> __m512 {
    // SAFETY: forwarded contract (an unaligned 2-byte read).
    unsafe { _mm512_cvtph_ps(_mm256_set1_epi16(p.cast::<i16>().read_unaligned())) }
}

/// The f16 at `p` broadcast to 8 f32 lanes (exact).
///
/// # Safety
/// `p..p+2` readable; the CPU has F16C.
#[inline(always)]
unsafe fn f16x8_at(p: *const u8) -> __m256 {
    // SAFETY: forwarded contract (an unaligned 2-byte read).
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned())) }
}

/// Where a micro-tile finds its tokens' converted scales: `d[i * stride + t]` is the f32 `d` of
/// block `i` of the tile's token `t`, `s` likewise (Q8_1's `s`; unused for Q8_0).
#[derive(Clone, Copy)]
pub(crate) struct Scales {
    pub(super) d: *const f32,
    pub(super) s: *const f32,
    pub(super) stride: usize,
}

/// The quants of tokens `2p` and `2p + 1` of block `i` side by side (the second is token `2p`
/// again where `2p + 1 == tt`), and their `d` in the matching halves.
///
/// # Safety
/// Tokens `< tt` have block `i` (of type `A`) readable in their row at `a + t * a_stride`, and
/// their scales in `sc`; the CPU has AVX-512F.
#[inline(always)]
unsafe fn token_pair<A: ActBlock>(
    a: *const u8,
    a_stride: usize,
    sc: Scales,
    i: usize,
    p: usize,
    tt: usize,
) -> (__m512i, __m512) {
    let t0 = 2 * p;
    let t1 = if t0 + 1 < tt { t0 + 1 } else { t0 };
    // SAFETY: both tokens are `< tt` (caller's bounds); unaligned loads.
    unsafe {
        let y0 = block::<A>(a.add(t0 * a_stride), i).qs();
        let y1 = block::<A>(a.add(t1 * a_stride), i).qs();
        let q = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(y0.cast())),
            _mm256_loadu_si256(y1.cast()),
        );
        let d = sc.d.add(i * sc.stride);
        let da =
            _mm512_mask_broadcastss_ps(_mm512_set1_ps(*d.add(t0)), 0xff00, _mm_load_ss(d.add(t1)));
        (q, da)
    }
}

/// Store the two halves of pair register `acc` (tokens `2p`, `2p + 1` of row `r`), plus
/// `extra[t]`, where the token exists.
///
/// # Safety
/// As the micro-kernels' `out` contract.
#[inline(always)]
pub(super) unsafe fn store_pair(
    acc: __m512,
    extra: &[f32; 8],
    p: usize,
    tt: usize,
    r: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let t0 = 2 * p;
    // SAFETY: AVX-512DQ (caller's target features); `(t, r)` with `t < tt` is writable.
    unsafe {
        *out.add(t0 * out_stride + r) = hsum8(_mm512_castps512_ps256(acc)) + extra[t0];
        if t0 + 1 < tt {
            *out.add((t0 + 1) * out_stride + r) =
                hsum8(_mm512_extractf32x8_ps::<1>(acc)) + extra[t0 + 1];
        }
    }
}

/// One `R × tt` micro-tile of Q4_1 × Q8_1 (`tt` in `2P - 1 ..= 2P` tokens) over `nb` blocks.
///
/// # Safety
/// The CPU has the features of this file; `w` points at `R` rows of `nb` blocks, `w_stride`
/// bytes apart; `a` at `tt` rows of `nb` blocks, `a_stride` apart; `sc` holds the scales of
/// those blocks and tokens, with 8 readable entries from every `i * stride`;
/// `out.add(t * out_stride + r)` is writable for `t < tt`, `r < R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn q4_1_micro<const R: usize, const P: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    a_stride: usize,
    tt: usize,
    sc: Scales,
    out: *mut f32,
    out_stride: usize,
    prefetch: bool,
) {
    let low = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let mut summs = [_mm256_setzero_ps(); R];
    for i in 0..nb {
        let mut qy = [_mm512_setzero_si512(); P];
        let mut da = [_mm512_setzero_ps(); P];
        for p in 0..P {
            // SAFETY: the tokens and block are in bounds (caller).
            (qy[p], da[p]) = unsafe { token_pair::<BlockQ8_1>(a, a_stride, sc, i, p, tt) };
        }
        // SAFETY: 8 entries are readable from `i * stride` (caller).
        let sa = unsafe { _mm256_loadu_ps(sc.s.add(i * sc.stride)) };
        for (r, acc_r) in acc.iter_mut().enumerate() {
            if prefetch {
                // As in the AVX2 tiles: the first pass over the weight rows reads them from
                // memory.
                // SAFETY: a prefetch of any address is harmless (wrapping arithmetic).
                unsafe { prefetch_ahead::<BlockQ4_1>(w.wrapping_add(r * w_stride), i) };
            }
            // SAFETY: block `i` of weight row `r` is in bounds (caller).
            let (dw, mw, packed) = unsafe {
                let x: &BlockQ4_1 = block(w.add(r * w_stride), i);
                (
                    f16x16_at(x.d.as_ptr()),
                    f16x8_at(x.m.as_ptr()),
                    _mm512_broadcast_i32x4(_mm_loadu_si128(x.qs.as_ptr().cast())),
                )
            };
            // 128-bit lanes 0 and 2 keep the low nibbles (elements 0..16), lanes 1 and 3 take
            // the high ones (16..32): the block's 32 quants in order, once per half.
            let qx = _mm512_and_si512(
                _mm512_mask_srli_epi16::<4>(packed, 0xff00_ff00, packed),
                low,
            );
            summs[r] = _mm256_fmadd_ps(mw, sa, summs[r]);
            for p in 0..P {
                let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, qy[p]));
                acc_r[p] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da[p]), s, acc_r[p]);
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

/// Block `i` of the Q8_0 (`Q5` false) or Q5_0 weight row at `row` for the pair kernels: its `d`
/// in 16 lanes, and its 32 quants made unsigned (Q8_0's `x + 128`, an XOR with `bias`; Q5_0's
/// stored `q + 16`) in both register halves. With `prefetch`, a software prefetch ahead in the
/// row first (the first pass over the rows reads them from memory).
///
/// # Safety
/// Block `i` of the row is readable; the CPU has AVX-512F and BW, AVX2 and F16C.
#[inline(always)]
pub(super) unsafe fn q8_weights<const Q5: bool>(
    row: *const u8,
    i: usize,
    bias: __m512i,
    prefetch: bool,
) -> (__m512, __m512i) {
    // SAFETY: a prefetch of any address is harmless; block `i` is readable (caller).
    unsafe {
        if Q5 {
            if prefetch {
                prefetch_ahead::<BlockQ5_0>(row, i);
            }
            let x: &BlockQ5_0 = block(row, i);
            let qx = q5_0_quants(std::ptr::from_ref(x).cast());
            (f16x16_at(x.d.as_ptr()), _mm512_broadcast_i64x4(qx))
        } else {
            if prefetch {
                prefetch_ahead::<BlockQ8_0>(row, i);
            }
            let x: &BlockQ8_0 = block(row, i);
            let qx = _mm256_loadu_si256(x.qs.as_ptr().cast());
            (
                f16x16_at(x.d.as_ptr()),
                _mm512_xor_si512(_mm512_broadcast_i64x4(qx), bias),
            )
        }
    }
}

/// One `R × tt` micro-tile of Q8_0 × Q8_0 or, with `Q5`, Q5_0 × Q8_0 (contract as
/// [`q4_1_micro`]; `sc.s` unused). Both make the weight quants unsigned — Q8_0's `x + 128` (an
/// XOR), Q5_0's stored `q + 16` (0..32, the AVX2 tile's unpacking) — and start each lane's
/// `vpdpbusd` from minus that offset times the lane's `Σy`: `Σ x·y` exactly in i32.
///
/// # Safety
/// As [`q4_1_micro`]'s: the CPU has the AVX-512 features enabled here, and every pointer is
/// valid for the `R` weight rows, the activation rows and the `R × tt` outputs it addresses.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn q8_0_micro<const R: usize, const P: usize, const Q5: bool>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    a_stride: usize,
    tt: usize,
    sc: Scales,
    out: *mut f32,
    out_stride: usize,
    prefetch: bool,
) {
    let bias = _mm512_set1_epi8(if Q5 { 16 } else { 0x80u8 as i8 });
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for i in 0..nb {
        let mut qy = [_mm512_setzero_si512(); P];
        let mut da = [_mm512_setzero_ps(); P];
        let mut start = [_mm512_setzero_si512(); P];
        for p in 0..P {
            // SAFETY: the tokens and block are in bounds (caller).
            (qy[p], da[p]) = unsafe { token_pair::<BlockQ8_0>(a, a_stride, sc, i, p, tt) };
            // -offset · Σy per lane: the correction for the weights' offset.
            start[p] = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, qy[p]),
            );
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let row = w.wrapping_add(r * w_stride);
            // SAFETY: block `i` of weight row `r` is in bounds (caller).
            let (dw, qx) = unsafe { q8_weights::<Q5>(row, i, bias, prefetch) };
            for p in 0..P {
                let s = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start[p], qx, qy[p]));
                acc_r[p] = _mm512_fmadd_ps(_mm512_mul_ps(dw, da[p]), s, acc_r[p]);
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

type Micro =
    unsafe fn(usize, *const u8, usize, *const u8, usize, usize, Scales, *mut f32, usize, bool);

/// The shape of one weight format's blocks and activation blocks.
pub(crate) struct Format {
    block_w: usize,
    block_a: usize,
    /// Whether the activation blocks carry an `s` (Q8_1) after `d`.
    has_s: bool,
}

/// Convert the scales of one token's `nb` activation blocks (`row`) to `d[i * stride]` and,
/// for Q8_1, `s[i * stride]`.
///
/// # Safety
/// `d` (and `s` when `fmt.has_s`) writable at every `i * stride`, `i < nb`; the CPU has F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn token_scales(
    row: &[u8],
    nb: usize,
    fmt: &Format,
    d: *mut f32,
    s: *mut f32,
    stride: usize,
) {
    for i in 0..nb {
        let blk = &row[i * fmt.block_a..i * fmt.block_a + 4];
        // SAFETY: in bounds (caller); `f16_at` needs F16C (enabled here).
        unsafe {
            d.add(i * stride).write(super::f16c::f16_at(blk, 0));
            if fmt.has_s {
                s.add(i * stride).write(super::f16c::f16_at(blk, 2));
            }
        }
    }
}

/// Walk an `nr × nt` product in `MR × 2·MP` micro-tiles (smaller ones at the edges), tokens in
/// groups whose scales are converted once. Returns `false`, computing nothing, when a group of
/// `2·MP` tokens' scales would not fit the stack buffer (rows of more than 16 384 elements);
/// the caller then uses a 256-bit tile.
///
/// # Safety
/// As [`TileDotFn`]; `micro[r - 1][p - 1]` is the `r × 2p` micro-kernel; the CPU has the
/// features of this file.
#[allow(clippy::too_many_arguments)]
unsafe fn walk<const MR: usize, const MP: usize>(
    micro: &[[Micro; MP]; MR],
    rows: &[RowsMicro; ROWS_MR / 2],
    fmt: &Format,
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
    let lanes = if fmt.has_s { 2 } else { 1 };
    let max_group = (SCALES_CAP - lanes * SCALES_PAD) / (lanes * nb.max(1));
    if max_group < mt {
        return false;
    }
    if nr == 0 || nt == 0 {
        return true;
    }
    crate::tile::check_operands(
        nb,
        (fmt.block_w, fmt.block_a),
        w,
        w_stride,
        nr,
        a,
        a_stride,
        nt,
    );
    // Tokens in groups whose activation rows fit in L1 (about 16 KiB), as the AVX2 tiles, and
    // whose scales fit the buffer.
    let group = ((16384 / a_stride.max(1)).max(mt) / mt * mt)
        .min(max_group / mt * mt)
        .min(nt.div_ceil(mt) * mt);
    let mut buf = MaybeUninit::<[f32; SCALES_CAP]>::uninit();
    let buf = buf.as_mut_ptr().cast::<f32>();
    let mut t0 = 0;
    while t0 < nt {
        let t1 = (t0 + group).min(nt);
        // Scales of tokens t0..t1, block-major, zeros after the group's last token and in the
        // padding (loaded, never used).
        let (d, s) = (buf, buf.wrapping_add(nb * group + SCALES_PAD));
        let used = lanes * (nb * group + SCALES_PAD);
        for k in 0..used {
            // SAFETY: `used <= SCALES_CAP` (group ≤ max_group); writes initialize the buffer.
            unsafe { buf.add(k).write(0.0) };
        }
        for t in t0..t1 {
            // SAFETY: `d`, `s` hold `nb * group` entries (`used <= SCALES_CAP`); F16C was
            // checked before installation.
            unsafe {
                token_scales(
                    &a[t * a_stride..],
                    nb,
                    fmt,
                    d.add(t - t0),
                    s.add(t - t0),
                    group,
                )
            };
        }
        let prefetch = t0 == 0 && nt <= PREFETCH_MAX_TOKENS;
        if t1 - t0 == 1 {
            // A lone token (a decode step's shape): rows two to a register.
            let sc = Scales {
                d,
                s,
                stride: group,
            };
            let mut r = 0;
            while r < nr {
                let rr = (nr - r).min(ROWS_MR);
                // SAFETY: rows `r..r+rr` and token `t0` are within the checked operands; its
                // scales are in the initialized buffer; the output elements are within the
                // caller's region; the CPU's features were checked before installation.
                unsafe {
                    rows[rr.div_ceil(2) - 1](
                        nb,
                        w.as_ptr().add(r * w_stride),
                        w_stride,
                        rr,
                        a.as_ptr().add(t0 * a_stride),
                        sc,
                        out.add(t0 * out_stride + r),
                        prefetch,
                    )
                };
                r += rr;
            }
            t0 = t1;
            continue;
        }
        let mut r = 0;
        while r < nr {
            let rr = (nr - r).min(MR);
            let mut t = t0;
            while t < t1 {
                let tt = (t1 - t).min(mt);
                let sc = Scales {
                    d: d.wrapping_add(t - t0),
                    s: s.wrapping_add(t - t0),
                    stride: group,
                };
                // SAFETY: rows `r..r+rr` and tokens `t..t+tt` are within the checked operands;
                // their scales are in the initialized buffer, with 8 entries from each block's
                // start (`t - t0 + 8 <= group + SCALES_PAD`); the output elements are within
                // the caller's region; the CPU's features were checked before installation.
                unsafe {
                    micro[rr - 1][tt.div_ceil(2) - 1](
                        nb,
                        w.as_ptr().add(r * w_stride),
                        w_stride,
                        a.as_ptr().add(t * a_stride),
                        a_stride,
                        tt,
                        sc,
                        out.add(t * out_stride + r),
                        out_stride,
                        prefetch && t == t0,
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

/// The `[[f::<r, p>; MP]; MR]` table of micro-kernel instances for `MR = 4`, `MP = 4`.
macro_rules! micro_table {
    ($f:ident $(, $extra:tt)?) => {
        [
            [$f::<1, 1 $(, $extra)?> as Micro, $f::<1, 2 $(, $extra)?>, $f::<1, 3 $(, $extra)?>, $f::<1, 4 $(, $extra)?>],
            [$f::<2, 1 $(, $extra)?>, $f::<2, 2 $(, $extra)?>, $f::<2, 3 $(, $extra)?>, $f::<2, 4 $(, $extra)?>],
            [$f::<3, 1 $(, $extra)?>, $f::<3, 2 $(, $extra)?>, $f::<3, 3 $(, $extra)?>, $f::<3, 4 $(, $extra)?>],
            [$f::<4, 1 $(, $extra)?>, $f::<4, 2 $(, $extra)?>, $f::<4, 3 $(, $extra)?>, $f::<4, 4 $(, $extra)?>],
        ]
    };
}

/// A laid-out walk ([`super::tiles512_laid`]): a [`TileDotFn`] that returns `false`, having
/// done nothing, for the products it does not take.
type LaidFn = unsafe fn(usize, &[u8], usize, usize, &[u8], usize, usize, *mut f32, usize) -> bool;

/// A tile product of these kernels: its micro-kernels for several tokens and for one, its block
/// format, the laid-out walk that takes the products it can, and the AVX2 tile for rows too long
/// for the scale buffer.
pub(crate) trait Entry {
    /// The `r × p` (rows × token pairs) micro-kernel at `[r - 1][p - 1]`.
    const MICRO: [[Micro; 4]; 4];
    /// The one-token kernels of 2, 4, 6 and 8 rows.
    const ROWS: [RowsMicro; ROWS_MR / 2];
    /// Block sizes and whether the activations carry `s`.
    const FMT: Format;
    /// Tried first.
    const LAID: LaidFn;
    /// Rows too long for the scale buffer.
    const FALLBACK: TileDotFn;
}

/// The tile product of `E` (see [`TileDotFn`]): its laid-out walk where that takes the product,
/// else [`walk`] over its micro-kernels, else (rows too long for the scale buffer) the AVX2 tile.
///
/// # Safety
/// As [`TileDotFn`]; installed only after [`available`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<E: Entry>(
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nt: usize,
    out: *mut f32,
    out_stride: usize,
) {
    // SAFETY: forwarded contract; the laid-out walk needs the same features.
    if unsafe { (E::LAID)(n, w, w_stride, nr, a, a_stride, nt, out, out_stride) } {
        return;
    }
    // SAFETY: forwarded contract.
    unsafe {
        if !walk(
            &E::MICRO,
            &E::ROWS,
            &E::FMT,
            n,
            w,
            w_stride,
            nr,
            a,
            a_stride,
            nt,
            out,
            out_stride,
        ) {
            (E::FALLBACK)(n, w, w_stride, nr, a, a_stride, nt, out, out_stride);
        }
    }
}

/// Q4_1 weights, Q8_1 activations (with their `s`).
const Q4_1_FMT: Format = Format {
    block_w: BlockQ4_1::SIZE,
    block_a: BlockQ8_1::SIZE,
    has_s: true,
};
/// Q8_0 weights and activations.
const Q8_0_FMT: Format = Format {
    block_w: BlockQ8_0::SIZE,
    block_a: BlockQ8_0::SIZE,
    has_s: false,
};
/// Q5_0 weights, Q8_0 activations.
const Q5_0_FMT: Format = Format {
    block_w: BlockQ5_0::SIZE,
    block_a: BlockQ8_0::SIZE,
    has_s: false,
};

/// Q4_1 × Q8_1.
pub(crate) struct Q4_1;
/// Q8_0 × Q8_0.
pub(crate) struct Q8_0;
/// Q5_0 × Q8_0.
pub(crate) struct Q5_0;

impl Entry for Q4_1 {
    const MICRO: [[Micro; 4]; 4] = micro_table!(q4_1_micro);
    const ROWS: [RowsMicro; ROWS_MR / 2] = [
        q4_1_rows::<1>,
        q4_1_rows::<2>,
        q4_1_rows::<3>,
        q4_1_rows::<4>,
    ];
    const FMT: Format = Q4_1_FMT;
    const LAID: LaidFn = super::tiles512_laid::walk_q4_1;
    const FALLBACK: TileDotFn = super::tiles::tile::<3, super::tiles::Avx2Q4_1>;
}
impl Entry for Q8_0 {
    const MICRO: [[Micro; 4]; 4] = micro_table!(q8_0_micro, false);
    const ROWS: [RowsMicro; ROWS_MR / 2] = [
        q8_0_rows::<1, false>,
        q8_0_rows::<2, false>,
        q8_0_rows::<3, false>,
        q8_0_rows::<4, false>,
    ];
    const FMT: Format = Q8_0_FMT;
    const LAID: LaidFn = super::tiles512_laid::walk_q8::<false>;
    const FALLBACK: TileDotFn = super::tiles::tile::<2, super::tiles::Avx2Q8_0>;
}
impl Entry for Q5_0 {
    const MICRO: [[Micro; 4]; 4] = micro_table!(q8_0_micro, true);
    const ROWS: [RowsMicro; ROWS_MR / 2] = [
        q8_0_rows::<1, true>,
        q8_0_rows::<2, true>,
        q8_0_rows::<3, true>,
        q8_0_rows::<4, true>,
    ];
    const FMT: Format = Q5_0_FMT;
    const LAID: LaidFn = super::tiles512_laid::walk_q8::<true>;
    const FALLBACK: TileDotFn = super::tiles::tile::<2, super::tiles::Avx2Q5_0>;
}
