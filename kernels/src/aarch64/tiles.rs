//! NEON matrix products over a tile of weight rows × activation rows (see [`crate::tile`]):
//! each weight block is loaded and unpacked once for several activation rows, and each
//! activation block (quants, scale, and Q8_1's sum) serves several weight rows.
//!
//! Invariant: every (row, token) pair keeps its own 8-lane accumulator ([`Acc8`]) and follows
//! the single-row dot of its type ([`super::q4_1`], [`super::q8_0`]) step for step — the same
//! per-block integer lane sums, the same `d_w * d_a` product and fused multiply-add, the same
//! `hsum8` reduction, and for Q4_1 the same fused `m_w * s_a` chain added last — so each output
//! equals that dot, and the reference, bit for bit. Only how often operands are loaded changes.
//!
//! Each product comes in two variants, as the dots: `sdot` (the dotprod extension) and plain
//! NEON (`vmull_s8` + pairwise adds, for Cortex-A53-class cores). Both share one micro-kernel
//! body per type, generic over how the lane sums are formed ([`LaneSums`]) and inlined into
//! entry points compiled for exactly the features of their variant, so the plain variant never
//! contains a dotprod instruction.
//!
//! The tile shape (4 weight rows × 2 activation rows) keeps a micro-tile's 16 accumulator
//! vectors, the activation quants and the unpacked weight block within the 32 NEON registers.
//! It was chosen by register count, not measured: no ARM hardware was at hand.

use std::arch::aarch64::{
    float32x4_t, int8x16_t, vandq_u8, vdupq_n_f32, vdupq_n_s8, vdupq_n_u8, vfmaq_f32, vld1q_f32,
    vld1q_s8, vld1q_u8, vreinterpretq_s8_u8, vshrq_n_u8, vst1q_f32,
};
use std::arch::asm;

use super::lanes::{Acc8, LaneSums, Mull, Sdot};
use crate::reference::q4_1::BlockQ4_1;
use crate::reference::q8::{BlockQ8_0, BlockQ8_1};
use crate::reference::{Block, Plain};
use crate::tile::{walk, Micro, TileDotFn};
use crate::GgmlType;

/// Weight rows per micro-tile.
const MR: usize = 4;
/// Activation rows (tokens) per micro-tile.
const MT: usize = 2;

/// Block `i` of the row of `B` blocks at `row`, in place.
///
/// # Safety
/// `row` points to at least `i + 1` blocks that outlive `'a` (`B` has alignment 1: any address).
#[inline(always)]
unsafe fn block<'a, B: Plain>(row: *const u8, i: usize) -> &'a B {
    // SAFETY: forwarded contract; `Plain` blocks have alignment 1 and no invalid bytes.
    unsafe { &*row.cast::<B>().add(i) }
}

/// The little-endian f16 at `p`, widened (exactly) to f32 with one `fcvt`. Equal to
/// [`super::lanes::f16_at`] (the `half` crate) for every bit pattern (a unit test checks all
/// 65536), but inlined: `half` calls out of line to a conversion behind a run-time check for the
/// `fp16` extension, and each call spills the live accumulators (no 128-bit register survives a
/// call: AAPCS64 preserves only the low halves of v8-v15). Converting precision is base ARMv8 floating point (`fp16` adds f16
/// arithmetic), so this needs no extension.
///
/// # Safety
/// `p..p + 2` is readable.
#[inline(always)]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    // SAFETY: two readable bytes (caller); unaligned reads are allowed here.
    let bits = u16::from_le_bytes(unsafe { p.cast::<[u8; 2]>().read() });
    f16_bits_to_f32(bits)
}

/// The f16 with bits `bits`, widened (exactly) to f32 (see [`f16_ptr`]).
#[inline(always)]
fn f16_bits_to_f32(bits: u16) -> f32 {
    let out: f32;
    // SAFETY: `fcvt` reads and writes only the two registers named here (it takes the low 16
    // bits of `bits`' register as the half-precision input); base ARMv8 FP, present on every
    // aarch64 CPU Linux runs on. With the default FPCR (no flush-to-zero, no default NaN, as
    // Rust code assumes) it is exact and keeps NaN payloads, quieted, as `half` does.
    unsafe {
        asm!(
            "fcvt {out:s}, {bits:h}",
            out = lateout(vreg) out,
            bits = in(vreg) bits as i16,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// 16 signed bytes at `p`.
///
/// # Safety
/// `p..p + 16` is readable.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_i8(p: *const u8) -> int8x16_t {
    // SAFETY: 16 readable bytes (caller); NEON byte loads have no alignment requirement.
    unsafe { vld1q_s8(p.cast()) }
}

/// One `R × T` micro-tile of Q4_1 × Q8_1 over `nb` blocks: per pair and block, as
/// `q4_1::dot_*`, `acc.fma(sums(lo nibbles, y[0..16]), sums(hi nibbles, y[16..32]), d_w * d_a)`
/// and `summs = fma(m_w, s_a, summs)`; then `hsum8(acc) + summs`. The `summs` of the `R` rows of
/// one token share a vector (lane `r`): a per-lane fused multiply-add is the scalar `mul_add`.
///
/// # Safety
/// The CPU has the features of `S` (`R <= 4`, or it panics); `w` points at `R` rows of `nb` blocks, `w_stride`
/// bytes apart; `a` at `T` rows of `nb` blocks, `a_stride` apart; `out.add(t * out_stride + r)`
/// is writable for `t < T`, `r < R`.
#[inline]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn q4_1_body<S: LaneSums, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    a_stride: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let low = vdupq_n_u8(0x0f);
    let mut acc = [[Acc8::zero(); T]; R];
    let mut summs = [vdupq_n_f32(0.0); T];
    for i in 0..nb {
        let mut qy = [[vdupq_n_s8(0); 2]; T];
        let mut da = [0f32; T];
        let mut sa = [0f32; T];
        for t in 0..T {
            // SAFETY: block `i` of activation row `t` is in bounds (caller).
            unsafe {
                let y: &BlockQ8_1 = block(a.add(t * a_stride), i);
                da[t] = f16_ptr(y.d.as_ptr());
                sa[t] = f16_ptr(y.s.as_ptr());
                let q = y.qs.as_ptr().cast::<u8>();
                qy[t] = [load_i8(q), load_i8(q.add(16))];
            }
        }
        let mut mw = [0f32; 4];
        for r in 0..R {
            // SAFETY: block `i` of weight row `r` is in bounds (caller).
            let (dw, packed) = unsafe {
                let x: &BlockQ4_1 = block(w.add(r * w_stride), i);
                mw[r] = f16_ptr(x.m.as_ptr());
                (f16_ptr(x.d.as_ptr()), vld1q_u8(x.qs.as_ptr()))
            };
            // Low nibbles are elements 0..16, high nibbles 16..32 (ggml's block_q4_1).
            let x0 = vreinterpretq_s8_u8(vandq_u8(packed, low));
            let x1 = vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed));
            for t in 0..T {
                // SAFETY: the CPU has the features of `S` (caller).
                let (lo, hi) = unsafe { (S::sums(x0, qy[t][0]), S::sums(x1, qy[t][1])) };
                acc[r][t] = acc[r][t].fma(lo, hi, dw * da[t]);
            }
        }
        // SAFETY: `mw` holds 4 f32.
        let mw = unsafe { vld1q_f32(mw.as_ptr()) };
        for t in 0..T {
            summs[t] = vfmaq_f32(summs[t], mw, vdupq_n_f32(sa[t]));
        }
    }
    for t in 0..T {
        let s = lanes(summs[t]);
        for r in 0..R {
            // SAFETY: the element is writable (caller).
            unsafe { *out.add(t * out_stride + r) = acc[r][t].hsum() + s[r] };
        }
    }
}

/// The 4 lanes of `v`.
#[inline]
#[target_feature(enable = "neon")]
fn lanes(v: float32x4_t) -> [f32; 4] {
    let mut l = [0f32; 4];
    // SAFETY: `l` has room for the 4 f32 stored.
    unsafe { vst1q_f32(l.as_mut_ptr(), v) };
    l
}

/// One `R × T` micro-tile of Q8_0 × Q8_0 over `nb` blocks: per pair and block, as
/// `q8_0::dot_*`, `acc.fma(sums(x[0..16], y[0..16]), sums(x[16..32], y[16..32]), d_w * d_a)`;
/// then `hsum8(acc)`. Exact for every pair of signed bytes.
///
/// # Safety
/// As [`q4_1_body`] (with Q8_0 rows on both sides).
#[inline]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn q8_0_body<S: LaneSums, const R: usize, const T: usize>(
    nb: usize,
    w: *const u8,
    w_stride: usize,
    a: *const u8,
    a_stride: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let mut acc = [[Acc8::zero(); T]; R];
    for i in 0..nb {
        let mut qy = [[vdupq_n_s8(0); 2]; T];
        let mut da = [0f32; T];
        for t in 0..T {
            // SAFETY: block `i` of activation row `t` is in bounds (caller).
            unsafe {
                let y: &BlockQ8_0 = block(a.add(t * a_stride), i);
                da[t] = f16_ptr(y.d.as_ptr());
                let q = y.qs.as_ptr().cast::<u8>();
                qy[t] = [load_i8(q), load_i8(q.add(16))];
            }
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: block `i` of weight row `r` is in bounds (caller).
            let (dw, x0, x1) = unsafe {
                let x: &BlockQ8_0 = block(w.add(r * w_stride), i);
                let q = x.qs.as_ptr().cast::<u8>();
                (f16_ptr(x.d.as_ptr()), load_i8(q), load_i8(q.add(16)))
            };
            for (t, pair) in row.iter_mut().enumerate() {
                // SAFETY: the CPU has the features of `S` (caller).
                let (lo, hi) = unsafe { (S::sums(x0, qy[t][0]), S::sums(x1, qy[t][1])) };
                *pair = pair.fma(lo, hi, dw * da[t]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (t, pair) in row.iter().enumerate() {
            // SAFETY: the element is writable (caller).
            unsafe { *out.add(t * out_stride + r) = pair.hsum() };
        }
    }
}

/// A micro-kernel (`crate::tile::Micro`'s signature; the prefetch flag is unused: no software
/// prefetch on NEON yet): `$body` with the lane sums of `$sums`, compiled for `$feat`.
macro_rules! micro {
    ($name:ident, $body:ident, $sums:ty, $feat:literal, $what:literal) => {
        #[doc = concat!("[`", stringify!($body), "`] with ", $what, ".")]
        ///
        /// # Safety
        #[doc = concat!("As [`", stringify!($body), "`]; the CPU has ", $feat, ".")]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            w_stride: usize,
            a: *const u8,
            a_stride: usize,
            out: *mut f32,
            out_stride: usize,
            _prefetch: bool,
        ) {
            // SAFETY: forwarded contract; the lane sums need no feature beyond `$feat`.
            unsafe { $body::<$sums, R, T>(nb, w, w_stride, a, a_stride, out, out_stride) }
        }
    };
}

micro!(q4_1_dotprod, q4_1_body, Sdot, "neon,dotprod", "`sdot`");
micro!(q4_1_neon, q4_1_body, Mull, "neon", "plain NEON");
micro!(q8_0_dotprod, q8_0_body, Sdot, "neon,dotprod", "`sdot`");
micro!(q8_0_neon, q8_0_body, Mull, "neon", "plain NEON");

/// `[[f::<r, t>; MT]; MR]`: the `r × t` instance of micro-kernel `f` at `[r - 1][t - 1]`.
macro_rules! micro_table {
    ($f:ident) => {
        [
            [$f::<1, 1> as Micro, $f::<1, 2>],
            [$f::<2, 1>, $f::<2, 2>],
            [$f::<3, 1>, $f::<3, 2>],
            [$f::<4, 1>, $f::<4, 2>],
        ]
    };
}

/// A tile product: its micro-kernels and block sizes.
trait Kernels {
    /// The `r × t` micro-kernel at `[r - 1][t - 1]`.
    const MICRO: [[Micro; MT]; MR];
    /// Bytes per block of a weight row and of an activation row.
    const BLOCKS: (usize, usize);
}

/// Q4_1 × Q8_1 with `sdot`.
struct Q4_1Dotprod;
/// Q4_1 × Q8_1 with plain NEON.
struct Q4_1Neon;
/// Q8_0 × Q8_0 with `sdot`.
struct Q8_0Dotprod;
/// Q8_0 × Q8_0 with plain NEON.
struct Q8_0Neon;

impl Kernels for Q4_1Dotprod {
    const MICRO: [[Micro; MT]; MR] = micro_table!(q4_1_dotprod);
    const BLOCKS: (usize, usize) = (BlockQ4_1::SIZE, BlockQ8_1::SIZE);
}

impl Kernels for Q4_1Neon {
    const MICRO: [[Micro; MT]; MR] = micro_table!(q4_1_neon);
    const BLOCKS: (usize, usize) = (BlockQ4_1::SIZE, BlockQ8_1::SIZE);
}

impl Kernels for Q8_0Dotprod {
    const MICRO: [[Micro; MT]; MR] = micro_table!(q8_0_dotprod);
    const BLOCKS: (usize, usize) = (BlockQ8_0::SIZE, BlockQ8_0::SIZE);
}

impl Kernels for Q8_0Neon {
    const MICRO: [[Micro; MT]; MR] = micro_table!(q8_0_neon);
    const BLOCKS: (usize, usize) = (BlockQ8_0::SIZE, BlockQ8_0::SIZE);
}

/// The tile product of `K` (see [`crate::tile::TileDotFn`]): [`crate::tile::walk`] over its
/// micro-kernels (no software prefetch on NEON; Cortex-A53 class cores are built with 8 to 64
/// KiB of L1 data cache, the 16 KiB token groups of the walk not measured on one).
///
/// # Safety
/// As [`crate::tile::TileDotFn`]; the CPU has the features of `K`'s micro-kernels.
#[allow(clippy::too_many_arguments)]
unsafe fn tile<K: Kernels>(
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
        walk(
            &K::MICRO,
            K::BLOCKS,
            0,
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

/// Every NEON tile kernel: weight type, whether it needs dotprod, name, kernel; for each type
/// the dotprod variant (the better one where it runs) first.
static TILES: [(GgmlType, bool, &str, TileDotFn); 4] = [
    (GgmlType::Q4_1, true, "neon-dotprod", tile::<Q4_1Dotprod>),
    (GgmlType::Q4_1, false, "neon", tile::<Q4_1Neon>),
    (GgmlType::Q8_0, true, "neon-dotprod", tile::<Q8_0Dotprod>),
    (GgmlType::Q8_0, false, "neon", tile::<Q8_0Neon>),
];

/// The tile kernels of `ty` a CPU with neon (and `dotprod` if set) can run, best first, named.
pub(crate) fn variants(ty: GgmlType, dotprod: bool) -> Vec<(&'static str, TileDotFn)> {
    TILES
        .iter()
        .filter(|e| e.0 == ty && (dotprod || !e.1))
        .map(|e| (e.2, e.3))
        .collect()
}

/// The first of [`variants`], without allocating (the matmul asks for it per call).
pub(crate) fn best(ty: GgmlType, dotprod: bool) -> Option<TileDotFn> {
    TILES
        .iter()
        .find(|e| e.0 == ty && (dotprod || !e.1))
        .map(|e| e.3)
}

#[cfg(test)]
mod tests {
    use super::f16_bits_to_f32;

    #[test]
    fn fcvt_widens_every_f16_as_half_does() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            assert_eq!(
                f16_bits_to_f32(bits).to_bits(),
                want.to_bits(),
                "f16 bits {bits:#06x}"
            );
        }
    }
}
