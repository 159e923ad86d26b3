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
//! Tile kernels exist for the SIMD paths; [`crate::dispatch::tile`] returns `None` where a type
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
