//! AVX-512 tile products of Q4_K and Q6_K weights with Q8_K activations, in the float orders
//! llama.cpp gives the tokens of a batch, so each output equals `dot_for_row(t, nt)` of its
//! pair, bit for bit:
//! - Q4_K: tokens `0 .. nt - nt % 4` take the order of its repacked four-row gemm
//!   (`reference::q4_k::vec_dot_q4_k_q8_k_x4`: one FMA per 64 elements into the quant sum, one
//!   into the minimum sum), the last `nt % 4` tokens the single-row order (the AVX2 dot, per
//!   pair);
//! - Q6_K: from 8 tokens, every token takes the tiled order
//!   (`reference::q6_k::vec_dot_q6_k_q8_k_tiled`: one exact sum per super-block, scaled by `d_w`,
//!   then one FMA by `d_a`), the last `nt % 4` per pair; below 8 tokens, the single-row dot.
//!
//! Tokens go by fours ("quads"). For a group of quads the activation quants are laid out once,
//! 16 elements of each of the four tokens side by side in one 64-byte row, so one `vpdpbusd`
//! of a weight row's 16 quants (broadcast to the four 128-bit lanes) with that row forms four
//! lanes of partial sums for each of the four tokens. Per 64-element chunk the two 32-element
//! sub-blocks' sums are scaled by their 6-bit scales (`vpmulld`), the four lanes of each token
//! are reduced, and the chunk sums of a 4-row × 4-token micro-tile are transposed so that one
//! 16-lane register holds chunk `c` of all 16 pairs: the float steps (convert, FMA by `d_w ·
//! d_a`; the minimum term likewise) then run for 16 pairs at once, in the reference's order.
//! Every integer is exact (at most 15 · 128 · 64 · 63 in magnitude), so only the float order
//! matters, and it is the reference's lane by lane.
//!
//! Q6_K's 16-element groups each have their own scale, so each 16-element step is scaled as it
//! is summed: the activations are laid out as `y + 128` (unsigned) and the weights as `q - 32`
//! (signed), `vpmaddubsw` forms exact 16-bit pair sums (at most 2 · 255 · 32) and `vpdpwssd`
//! multiplies them by the group scale into the 32-bit lanes; the `128 · Σ sc · (q - 32)` this
//! adds is a property of the weight row, formed once per row and block and subtracted.

use std::arch::x86_64::{
    __m512, __m512i, _mm256_cvtph_ps, _mm512_add_epi32, _mm512_and_si512, _mm512_broadcast_f32x4,
    _mm512_broadcast_i32x4, _mm512_castps256_ps512, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32,
    _mm512_dpwssd_epi32, _mm512_fmadd_ps, _mm512_loadu_si512, _mm512_madd_epi16,
    _mm512_maddubs_epi16, _mm512_mul_ps, _mm512_or_si512, _mm512_permutexvar_epi32,
    _mm512_permutexvar_ps, _mm512_set1_epi16, _mm512_set1_epi32, _mm512_set1_epi8,
    _mm512_setr_epi32, _mm512_setzero_ps, _mm512_setzero_si512, _mm512_shuffle_i32x4,
    _mm512_slli_epi16, _mm512_srli_epi16, _mm512_storeu_ps, _mm512_storeu_si512, _mm512_sub_epi32,
    _mm512_sub_epi8, _mm512_sub_ps, _mm512_unpackhi_epi32, _mm512_unpackhi_epi64,
    _mm512_unpacklo_epi32, _mm512_unpacklo_epi64, _mm_cvtph_ps, _mm_loadu_ps, _mm_loadu_si128,
    _mm_set1_epi8, _mm_set_epi32, _mm_storeu_si128, _mm_xor_si128,
};
use std::mem::MaybeUninit;

use super::tiles::block;
use crate::reference::q4_k::{scales_mins_k4, BlockQ4K};
use crate::reference::q6_k::BlockQ6K;
use crate::reference::q8_k::BlockQ8K;
use crate::reference::Block;
use crate::traits::BatchRows;

/// Bytes of the laid-out activations per quad and super-block: 16 rows of 64 quant bytes, the
/// four tokens' f32 scales, and 8 × 4 i32 pair sums of their group sums.
const QUAD_BLOCK: usize = 16 * 64 + 16 + 128;
/// Stack buffer for one group of quads (32 KiB, as the other AVX-512 tiles).
const BUF: usize = 32768;

#[repr(C, align(64))]
struct Buf([u8; BUF]);

/// Where the laid-out quad `q`, block `b` lives in the buffer of a group of `nb`-block rows.
#[inline(always)]
fn quad_block(buf: *mut u8, nb: usize, q: usize, b: usize) -> *mut u8 {
    buf.wrapping_add((q * nb + b) * QUAD_BLOCK)
}

/// Lay out tokens `t..t + 4` of `a` (rows `a_stride` apart, `nb` Q8_K blocks) as quad `q`;
/// with `FLIP` the quants become `y + 128` (unsigned) and the pair sums are left out.
///
/// # Safety
/// The quad's `nb` blocks fit in `buf`; the CPU has AVX-512F.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn lay_out_quad<const FLIP: bool>(
    a: &[u8],
    a_stride: usize,
    t: usize,
    nb: usize,
    buf: *mut u8,
    q: usize,
) {
    let flip = _mm_set1_epi8(0x80u8 as i8);
    for b in 0..nb {
        let dst = quad_block(buf, nb, q, b);
        for k in 0..4 {
            let row = &a[(t + k) * a_stride..];
            let y = &crate::reference::view::<BlockQ8K>(row, b + 1)[b];
            // SAFETY: `y` is a whole Q8_K block (a bounds-checked view); `dst` holds
            // QUAD_BLOCK bytes inside the buffer (caller); unaligned 16-byte moves.
            unsafe {
                for s in 0..16 {
                    let v = _mm_loadu_si128(y.qs.as_ptr().add(16 * s).cast());
                    let v = if FLIP { _mm_xor_si128(v, flip) } else { v };
                    _mm_storeu_si128(dst.add(64 * s + 16 * k).cast(), v);
                }
                dst.add(1024 + 4 * k).cast::<[u8; 4]>().write_unaligned(y.d);
                if FLIP {
                    continue;
                }
                for j in 0..8 {
                    let bs = |g: usize| i32::from(i16::from_le_bytes(y.bsums[g]));
                    dst.add(1040 + 16 * j + 4 * k)
                        .cast::<i32>()
                        .write_unaligned(bs(2 * j) + bs(2 * j + 1));
                }
            }
        }
    }
}

/// Exact sums of the four 32-bit lanes of each 128-bit lane of `v[c]`, as lane `4t + c` (`t`
/// the 128-bit lane).
///
/// # Safety
/// The CPU must have AVX-512 F/BW; called only from kernels that enable them.
#[inline(always)]
unsafe fn reduce4(v: [__m512i; 4]) -> __m512i {
    // SAFETY: AVX-512F is enabled in every caller (target_feature).
    unsafe {
        let u0 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[0], v[1]),
            _mm512_unpackhi_epi32(v[0], v[1]),
        );
        let u1 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[2], v[3]),
            _mm512_unpackhi_epi32(v[2], v[3]),
        );
        _mm512_add_epi32(_mm512_unpacklo_epi64(u0, u1), _mm512_unpackhi_epi64(u0, u1))
    }
}

/// One micro-tile: 4 weight row slots (`rows`; slots past the tile repeat its first row and are
/// not stored) × `Q` quads over `nb` super-blocks; `out_rows` rows are stored, token `4q + t`
/// of the tile at `out + (4q + t) * out_stride + r`.
///
/// # Safety
/// The CPU has the features below; every slot has `nb` readable blocks; quads `q0..q0 + Q` of
/// `buf` are laid out; the output elements are writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn q4_k_micro<const Q: usize>(
    nb: usize,
    rows: [*const u8; 4],
    out_rows: usize,
    buf: *mut u8,
    q0: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let low = _mm512_set1_epi8(0x0f);
    // Lane 4t + c -> lane 4c + t.
    let to_chunk_major = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    // [d0, dmin0, d1, dmin1, ..] -> d_r (resp. dmin_r) in 128-bit lane r.
    let d_idx = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    let dmin_idx = _mm512_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7);
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = [_mm512_setzero_ps(); Q];
    let mut acc_min = [_mm512_setzero_ps(); Q];
    for b in 0..nb {
        // Integer chunk sums, lane 4t + c, per quad and row slot.
        let mut sums = [[_mm512_setzero_si512(); 4]; Q];
        let mut mins = [[0i32; 4]; 8];
        let mut dd = [0i32; 4];
        for (r, &row) in rows.iter().enumerate() {
            // SAFETY: block `b` of each slot is readable (caller).
            let x: &BlockQ4K = unsafe { block(row, b) };
            let (sc, mn) = scales_mins_k4(&x.scales);
            for (j, m) in mn.iter().enumerate() {
                mins[j][r] = *m;
            }
            // `d` and `dmin` as the two halves of one i32 (converted together below).
            dd[r] = i32::from_le_bytes([x.d[0], x.d[1], x.dmin[0], x.dmin[1]]);
            let mut v = [[_mm512_setzero_si512(); 4]; Q];
            for c in 0..4 {
                // SAFETY: 16-byte loads inside the block.
                let (p0, p1) = unsafe {
                    (
                        _mm512_broadcast_i32x4(_mm_loadu_si128(x.qs.as_ptr().add(32 * c).cast())),
                        _mm512_broadcast_i32x4(_mm_loadu_si128(
                            x.qs.as_ptr().add(16 + 32 * c).cast(),
                        )),
                    )
                };
                // Elements 64c + 16j .. + 16, j = 0..4.
                let qj = [
                    _mm512_and_si512(p0, low),
                    _mm512_and_si512(p1, low),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(p0), low),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(p1), low),
                ];
                let (s_lo, s_hi) = (
                    _mm512_set1_epi32(sc[2 * c]),
                    _mm512_set1_epi32(sc[2 * c + 1]),
                );
                for (q, vq) in v.iter_mut().enumerate() {
                    let y = quad_block(buf, nb, q0 + q, b);
                    // SAFETY: the quad's laid-out rows are in the buffer (caller).
                    let ys =
                        |j: usize| unsafe { _mm512_loadu_si512(y.add(64 * (4 * c + j)).cast()) };
                    let z = _mm512_setzero_si512();
                    let lo =
                        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, qj[0], ys(0)), qj[1], ys(1));
                    let hi =
                        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, qj[2], ys(2)), qj[3], ys(3));
                    // `lo` and `hi` sum 8 products of a 4-bit quant and an 8-bit activation
                    // (|sum| <= 8 * 15 * 128 < 2^15), so each 32-bit lane is its low 16-bit
                    // half sign-extended, and the scales (< 64) have a zero high half: the
                    // 16-bit pair products give `lo * s_lo + hi * s_hi` exactly, in two uops
                    // where `vpmulld` takes four.
                    vq[c] = _mm512_dpwssd_epi32(_mm512_madd_epi16(lo, s_lo), hi, s_hi);
                }
            }
            for q in 0..Q {
                // SAFETY: AVX-512F (target_feature).
                sums[q][r] = unsafe { reduce4(v[q]) };
            }
        }
        // Row scales: d_r and dmin_r in 128-bit lane r.
        let dpair = _mm256_cvtph_ps(_mm_set_epi32(dd[3], dd[2], dd[1], dd[0]));
        let dw = _mm512_permutexvar_ps(d_idx, _mm512_castps256_ps512(dpair));
        let dminw = _mm512_permutexvar_ps(dmin_idx, _mm512_castps256_ps512(dpair));
        // Minimum j of row r in 128-bit lane r.
        let mut mn = [_mm512_setzero_si512(); 8];
        for (j, m) in mn.iter_mut().enumerate() {
            let col = _mm_set_epi32(mins[j][3], mins[j][2], mins[j][1], mins[j][0]);
            *m = _mm512_permutexvar_epi32(spread, _mm512_broadcast_i32x4(col));
        }
        for q in 0..Q {
            let y = quad_block(buf, nb, q0 + q, b);
            // Lane 4c + t per row, then chunk c of every pair (lane 4r + t) in x[c].
            let p = sums[q].map(|s| _mm512_permutexvar_epi32(to_chunk_major, s));
            let a01 = _mm512_shuffle_i32x4::<0b01_00_01_00>(p[0], p[1]);
            let a23 = _mm512_shuffle_i32x4::<0b01_00_01_00>(p[2], p[3]);
            let c01 = _mm512_shuffle_i32x4::<0b11_10_11_10>(p[0], p[1]);
            let c23 = _mm512_shuffle_i32x4::<0b11_10_11_10>(p[2], p[3]);
            let x = [
                _mm512_shuffle_i32x4::<0b10_00_10_00>(a01, a23),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(a01, a23),
                _mm512_shuffle_i32x4::<0b10_00_10_00>(c01, c23),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(c01, c23),
            ];
            // SAFETY: the quad's scales and pair sums follow its quants in the buffer.
            let (ya, bv) = unsafe {
                let ya = _mm512_broadcast_f32x4(_mm_loadu_ps(y.add(1024).cast()));
                let bv: [__m512i; 8] = std::array::from_fn(|j| {
                    _mm512_broadcast_i32x4(_mm_loadu_si128(y.add(1040 + 16 * j).cast()))
                });
                (ya, bv)
            };
            let (d, dmin) = (_mm512_mul_ps(dw, ya), _mm512_mul_ps(dminw, ya));
            for (c, &xc) in x.iter().enumerate() {
                // The pair sums (32 activations, |sum| <= 4096) and the mins (< 64) fit 16
                // bits as above.
                let summ = _mm512_dpwssd_epi32(
                    _mm512_madd_epi16(bv[2 * c], mn[2 * c]),
                    bv[2 * c + 1],
                    mn[2 * c + 1],
                );
                acc[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(xc), d, acc[q]);
                acc_min[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(summ), dmin, acc_min[q]);
            }
        }
    }
    for q in 0..Q {
        // SAFETY: forwarded `out` contract.
        unsafe {
            store_quad(
                _mm512_sub_ps(acc[q], acc_min[q]),
                false,
                q,
                out_rows,
                out,
                out_stride,
            )
        };
    }
}

/// Store quad `q`'s 16 pair results (lane `4r + t`, or `4t + r` when `token_major`) for the
/// first `out_rows` rows: token `4q + t` of the tile at `out + (4q + t) * out_stride + r`.
///
/// # Safety
/// The output elements are writable; the CPU has AVX-512F.
#[inline(always)]
unsafe fn store_quad(
    res: __m512,
    token_major: bool,
    q: usize,
    out_rows: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 floats; AVX-512F (caller).
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), res) };
    for r in 0..out_rows {
        for t in 0..4 {
            let lane = if token_major { 4 * t + r } else { 4 * r + t };
            // SAFETY: the caller's output region holds these elements.
            unsafe { *out.add((4 * q + t) * out_stride + r) = lanes[lane] };
        }
    }
}

/// One Q6_K micro-tile (tiled order): 4 weight row slots × `Q` quads over `nb` super-blocks
/// (contract as [`q4_k_micro`]; quads laid out by `lay_out_quad::<true>`). Lanes here are
/// `4t + r` (token `t` in 128-bit lane `t`).
///
/// # Safety
/// As [`q4_k_micro`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn q6_k_micro<const Q: usize>(
    nb: usize,
    rows: [*const u8; 4],
    out_rows: usize,
    buf: *mut u8,
    q0: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let (low, top) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    let (ones, off) = (_mm512_set1_epi8(1), _mm512_set1_epi8(32));
    // Token t's scale over 128-bit lane t.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = [_mm512_setzero_ps(); Q];
    for b in 0..nb {
        // Per quad and row slot: 4 lanes of partial sums per token (128-bit lane t).
        let mut part = [[_mm512_setzero_si512(); 4]; Q];
        let mut corr = [0i32; 4];
        let mut dw16 = [0i32; 4];
        for (r, &row) in rows.iter().enumerate() {
            // SAFETY: block `b` of each slot is readable (caller).
            let x: &BlockQ6K = unsafe { block(row, b) };
            dw16[r] = i32::from(u16::from_le_bytes(x.d));
            let mut c = _mm512_setzero_si512();
            for h in 0..2 {
                for lc in [0, 16] {
                    // SAFETY: 16-byte loads inside the block.
                    let (l0, l1, hb) = unsafe {
                        let b16 = |p: *const u8| _mm512_broadcast_i32x4(_mm_loadu_si128(p.cast()));
                        (
                            b16(x.ql.as_ptr().add(64 * h + lc)),
                            b16(x.ql.as_ptr().add(64 * h + 32 + lc)),
                            b16(x.qh.as_ptr().add(32 * h + lc)),
                        )
                    };
                    // Elements 128h + 32k + lc .. + 16 (low 4 bits, then the 2 high bits).
                    let quads = [
                        (_mm512_and_si512(l0, low), _mm512_slli_epi16::<4>(hb)),
                        (_mm512_and_si512(l1, low), _mm512_slli_epi16::<2>(hb)),
                        (_mm512_and_si512(_mm512_srli_epi16::<4>(l0), low), hb),
                        (
                            _mm512_and_si512(_mm512_srli_epi16::<4>(l1), low),
                            _mm512_srli_epi16::<2>(hb),
                        ),
                    ];
                    for (k, &(lo4, hi2)) in quads.iter().enumerate() {
                        let u = _mm512_or_si512(lo4, _mm512_and_si512(hi2, top));
                        let qk = _mm512_sub_epi8(u, off);
                        let group = (128 * h + 32 * k + lc) / 16;
                        let sc = _mm512_set1_epi16(i16::from(x.scales[group]));
                        // The row's Σ sc · (q - 32), one 16-element group at a time.
                        c = _mm512_dpwssd_epi32(c, _mm512_maddubs_epi16(ones, qk), sc);
                        for (q, pq) in part.iter_mut().enumerate() {
                            let y = quad_block(buf, nb, q0 + q, b);
                            // SAFETY: the quad's laid-out rows are in the buffer (caller).
                            let ys = unsafe { _mm512_loadu_si512(y.add(64 * group).cast()) };
                            pq[r] = _mm512_dpwssd_epi32(pq[r], _mm512_maddubs_epi16(ys, qk), sc);
                        }
                    }
                }
            }
            // Every 128-bit lane of `c` holds the same sums (broadcast weights): lane 0's four.
            let mut lanes = [0i32; 16];
            // SAFETY: `lanes` holds 16 i32.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), c) };
            corr[r] = (lanes[0] + lanes[1] + lanes[2] + lanes[3]) << 7;
        }
        // d_r and the correction at position r of every 128-bit lane.
        let dw = _mm512_broadcast_f32x4(_mm_cvtph_ps(_mm_set_epi32(
            0,
            0,
            (dw16[3] << 16) | dw16[2],
            (dw16[1] << 16) | dw16[0],
        )));
        let corr = _mm512_broadcast_i32x4(_mm_set_epi32(corr[3], corr[2], corr[1], corr[0]));
        for (q, accq) in acc.iter_mut().enumerate() {
            let y = quad_block(buf, nb, q0 + q, b);
            // Lane 4t + r: the pair's exact Σ sc · (q - 32) · y.
            // SAFETY: AVX-512F (target_feature).
            let sumi = _mm512_sub_epi32(unsafe { reduce4(part[q]) }, corr);
            // SAFETY: the quad's scales follow its quants in the buffer.
            let ya = unsafe {
                _mm512_permutexvar_ps(
                    spread,
                    _mm512_broadcast_f32x4(_mm_loadu_ps(y.add(1024).cast())),
                )
            };
            *accq = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_cvtepi32_ps(sumi)), ya, *accq);
        }
    }
    for (q, &accq) in acc.iter().enumerate() {
        // SAFETY: forwarded `out` contract.
        unsafe { store_quad(accq, true, q, out_rows, out, out_stride) };
    }
}

/// A micro-kernel of [`drive`]: `(nb, row slots, rows stored, buffer, first quad, out,
/// out_stride)`, as [`q4_k_micro`].
type KMicro = unsafe fn(usize, [*const u8; 4], usize, *mut u8, usize, *mut f32, usize);
/// A per-pair dot (`n`, weight row, activation row).
type Dot = fn(usize, &[u8], &[u8]) -> f32;
/// A quad layout: `(a, a_stride, first token, nb, buffer, quad)`.
type LayOut = unsafe fn(&[u8], usize, usize, usize, *mut u8, usize);

/// What the driver needs of a k-quant format.
pub(crate) struct KFormat {
    /// Bytes per weight super-block.
    block_w: usize,
    /// Which tokens take the batched order (llama.cpp's rule, as `TypeTraits::vec_dot_batched`).
    rule: BatchRows,
    /// The per-pair dots in the batched and the single-row order.
    batched: Dot,
    single: Dot,
    /// Lays out a quad of tokens for the micro-kernels.
    lay_out: LayOut,
    /// The micro-kernels for one and for two quads.
    micro: [KMicro; 2],
}

/// The tile driver of the k-quants: the tokens that take the batched order go by quads through
/// `f.micro` (in groups whose laid-out activations fit the stack buffer), every other token —
/// and every token when a laid-out quad would not fit — through the per-pair dot of its order.
///
/// # Safety
/// As [`crate::tile::TileDotFn`]; the CPU has the features of this file.
#[allow(clippy::too_many_arguments)]
unsafe fn drive(
    f: &KFormat,
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
    let nb = n / 256;
    crate::tile::check_operands(
        nb,
        (f.block_w, BlockQ8K::SIZE),
        w,
        w_stride,
        nr,
        a,
        a_stride,
        nt,
    );
    if nr == 0 || nt == 0 {
        return;
    }
    let max_quads = BUF / (QUAD_BLOCK * nb.max(1));
    // SAFETY: forwarded contract; operands checked above.
    let quads = unsafe {
        crate::tile::k_pairs(
            f.rule,
            (f.batched, f.single),
            max_quads > 0,
            n,
            (w, w_stride, nr),
            (a, a_stride, nt),
            out,
            out_stride,
        )
    };
    let mut buf = MaybeUninit::<Buf>::uninit();
    let buf = buf.as_mut_ptr().cast::<u8>();
    let mut g0 = 0;
    while g0 < quads {
        let g1 = (g0 + max_quads).min(quads);
        for q in g0..g1 {
            // SAFETY: quad `q - g0 < max_quads` fits the buffer; features checked at
            // installation; tokens `4q..4q + 4 <= nt` are in `a` (checked).
            unsafe { (f.lay_out)(a, a_stride, 4 * q, nb, buf, q - g0) };
        }
        let mut r = 0;
        while r < nr {
            let rr = (nr - r).min(4);
            let slot = |k: usize| {
                w.as_ptr()
                    .wrapping_add((r + if k < rr { k } else { 0 }) * w_stride)
            };
            let rows = [slot(0), slot(1), slot(2), slot(3)];
            let mut q = g0;
            while q < g1 {
                let take = (g1 - q).min(2);
                // SAFETY: row slots are rows of `w` with `nb` blocks (checked); quads
                // `q - g0 ..` are laid out; outputs `(4q + t, r + k)` are in the caller's
                // region; the CPU's features were checked before installation.
                unsafe {
                    (f.micro[take - 1])(
                        nb,
                        rows,
                        rr,
                        buf,
                        q - g0,
                        out.add(4 * q * out_stride + r),
                        out_stride,
                    )
                };
                q += take;
            }
            r += rr;
        }
        g0 = g1;
    }
}

/// A k-quant tile product of [`drive`]: its format.
pub(crate) trait KEntry {
    const FORMAT: KFormat;
}

/// The k-quant × Q8_K tile product of `E` (see [`crate::tile::TileDotFn`]); each output equals
/// the reference's `dot_for_row(t, nt)` of its pair. Rows of more than 28 super-blocks (7 168
/// elements), whose laid-out quad would not fit the stack buffer, take the per-pair dots.
///
/// # Safety
/// As [`crate::tile::TileDotFn`]; installed only after `tiles512::available()`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<E: KEntry>(
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
    // SAFETY: forwarded contract.
    unsafe {
        drive(
            &E::FORMAT,
            n,
            w,
            w_stride,
            nr,
            a,
            a_stride,
            nt,
            out,
            out_stride,
        )
    }
}

/// Q4_K × Q8_K.
pub(crate) struct Q4K;
/// Q6_K × Q8_K.
pub(crate) struct Q6K;

impl KEntry for Q4K {
    const FORMAT: KFormat = KFormat {
        block_w: BlockQ4K::SIZE,
        rule: BatchRows::FullQuads,
        batched: super::kquants::vec_dot_q4_k_q8_k_x4,
        single: super::kquants::vec_dot_q4_k_q8_k,
        lay_out: lay_out_quad::<false>,
        micro: [q4_k_micro::<1>, q4_k_micro::<2>],
    };
}
impl KEntry for Q6K {
    const FORMAT: KFormat = KFormat {
        block_w: BlockQ6K::SIZE,
        rule: BatchRows::AllFrom(8),
        batched: super::kquants::vec_dot_q6_k_q8_k_tiled,
        single: super::kquants::vec_dot_q6_k_q8_k,
        lay_out: lay_out_quad::<true>,
        micro: [q6_k_micro::<1>, q6_k_micro::<2>],
    };
}
