//! Matrix products over a tile of weight rows × activation rows.
//!
//! A [`TileDotFn`] computes `out[t][r] = dot(w row r, a row t)` for a block of rows of one
//! weight matrix and a block of activation rows, loading each weight block once for several
//! activation rows. This is what makes prefill and batched decode fast; at one activation row it
//! is a plain matrix-vector product. Each output equals, bit for bit, the dot the type's table
//! gives that pair — `vec_dot`, or for a k-quant whose batched rows llama.cpp rounds in another
//! order, `TypeTraits::dot_for_row(t, nt)` — (the tile only changes how often operands are
//! loaded), so callers may use either.
//!
//! Tile kernels exist for the SIMD paths; [`crate::dispatch::KernelSet::tile`] returns `None` where a type
//! has none, and the caller falls back to `vec_dot` per pair.

/// `out[t * out_stride + r] = dot_for_row(t, nt)(n, w[r * w_stride..], a[t * a_stride..])`
/// (`vec_dot` for every type without a batched order) for `r < nr`,
/// `t < nt`. `w` holds `nr` rows of `n` elements in the weight type, `w_stride` bytes apart; `a`
/// holds `nt` rows in the type's `vec_dot_type`, `a_stride` bytes apart (both checked: too short
/// operands panic).
///
/// # Safety
/// `out.add(t * out_stride + r)` must be valid for writes for every `t < nt`, `r < nr`, and no
/// other thread may read or write those elements during the call.
pub type TileDotFn = unsafe fn(
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nt: usize,
    out: *mut f32,
    out_stride: usize,
);

/// `nb = n / 32` after checking that `w` holds `nr` rows of `nb` `block_w`-byte blocks
/// (`w_stride` apart) and `a` holds `nt` rows of `block_a`-byte blocks (`a_stride` apart): the
/// bounds every tile driver relies on (too short operands panic, as [`TileDotFn`] says).
#[cfg_attr(
    not(all(feature = "simd", any(target_arch = "x86_64", target_arch = "aarch64"))),
    allow(dead_code)
)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_operands(
    nb: usize,
    (block_w, block_a): (usize, usize),
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nt: usize,
) {
    assert!(
        (nr == 0 || w.len() >= (nr - 1) * w_stride + nb * block_w)
            && (nt == 0 || a.len() >= (nt - 1) * a_stride + nb * block_a),
        "tile operands too short"
    );
}

/// The per-pair part of a k-quant tile product. The tokens of an `nt`-token product that take
/// the batched order come first (`FullQuads`) or are all of them (`AllFrom`); the first
/// `4 * quads` of them are left to the caller's four-token kernels (none unless `quads_ok`),
/// every other token is computed here with the per-pair dot of its order (`dots`: batched,
/// single). Returns `quads`.
///
/// # Safety
/// As [`TileDotFn`], the operands checked with [`check_operands`].
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn k_pairs(
    rule: crate::traits::BatchRows,
    dots: (crate::traits::VecDotFn, crate::traits::VecDotFn),
    quads_ok: bool,
    n: usize,
    (w, w_stride, nr): (&[u8], usize, usize),
    (a, a_stride, nt): (&[u8], usize, usize),
    out: *mut f32,
    out_stride: usize,
) -> usize {
    use crate::traits::BatchRows;
    let batched = |t: usize| match rule {
        BatchRows::FullQuads => t < nt - nt % 4,
        BatchRows::AllFrom(m) => nt >= m,
    };
    let n_batched = (0..nt).filter(|&t| batched(t)).count();
    let quads = if quads_ok { n_batched / 4 } else { 0 };
    for t in 4 * quads..nt {
        let dot = if batched(t) { dots.0 } else { dots.1 };
        for r in 0..nr {
            let y = dot(n, &w[r * w_stride..], &a[t * a_stride..]);
            // SAFETY: `(t, r)` is in the caller's output region (contract).
            unsafe { *out.add(t * out_stride + r) = y };
        }
    }
    quads
}

/// A micro-kernel of [`walk`]: its `R × T` outputs `out[t * out_stride + r]` over `nb` blocks of
/// the weight rows at `w` (`w_stride` apart) and activation rows at `a` (`a_stride` apart); the
/// flag asks for software prefetches ahead in the weight rows (the first pass over them).
#[cfg(all(feature = "simd", any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) type Micro = unsafe fn(usize, *const u8, usize, *const u8, usize, *mut f32, usize, bool);

/// The tile driver of the 32-element block formats: walks an `nr × nt` product in `MR × MT`
/// micro-tiles (`micro[r - 1][t - 1]` is the `r × t` kernel, used at the edges), tokens in
/// groups whose activation rows fit in about 16 KiB of L1, so that every row tile reads them
/// from L1 while the weight rows of the call stream from L2 once per group. Prefetching is asked
/// for on the first pass over the rows when `nt <= prefetch_max_tokens`.
///
/// # Safety
/// As [`TileDotFn`]; the CPU has the features of the micro-kernels; `blocks` are the bytes per
/// block of a weight row and of an activation row.
#[cfg(all(feature = "simd", any(target_arch = "x86_64", target_arch = "aarch64")))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn walk<const MR: usize, const MT: usize>(
    micro: &[[Micro; MT]; MR],
    blocks: (usize, usize),
    prefetch_max_tokens: usize,
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
    let nb = n / 32;
    check_operands(nb, blocks, w, w_stride, nr, a, a_stride, nt);
    let group = (16384 / a_stride.max(1)).max(MT) / MT * MT;
    let mut t0 = 0;
    while t0 < nt {
        let t1 = (t0 + group).min(nt);
        let mut r = 0;
        while r < nr {
            let rr = (nr - r).min(MR);
            let mut t = t0;
            while t < t1 {
                let tt = (t1 - t).min(MT);
                // SAFETY: rows `r..r+rr` and `t..t+tt` are within the checked operands; the
                // output elements are within the caller's region; the CPU has the
                // micro-kernels' features (caller).
                unsafe {
                    micro[rr - 1][tt - 1](
                        nb,
                        w.as_ptr().add(r * w_stride),
                        w_stride,
                        a.as_ptr().add(t * a_stride),
                        a_stride,
                        out.add(t * out_stride + r),
                        out_stride,
                        t == 0 && nt <= prefetch_max_tokens,
                    )
                };
                t += tt;
            }
            r += rr;
        }
        t0 = t1;
    }
}
