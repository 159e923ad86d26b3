//! Attention on the CPU: causal, paged, one pass with an online softmax per query head (or per
//! group of query heads sharing a KV head), reading each sequence's K/V through its block table.

use crate::kv::{BlockId, KvArena, KvRows};
use ember_kernels::dispatch::Ops;
use ember_kernels::reference::attention::OnlineSoftmax;

/// Causal attention of one query head over positions `start .. n_pos` of a sequence (`start` > 0
/// on sliding-window layers: blocks wholly before it are not read, positions before it in its
/// block are skipped, exactly as ggml skips keys whose mask is -inf): one pass with an
/// online softmax, as ggml's CPU flash attention (`flash_attn_ext_f16_one_chunk`) computes it,
/// which is what llama.cpp runs by default. The query arrives rounded to f16; the weighted sum
/// of values is kept in f16 (rounded after every position, as ggml's `VKQ16`), the running
/// denominator in f32.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend(
    ops: &Ops,
    kv: &KvArena,
    layer: usize,
    kv_head: usize,
    table: &[BlockId],
    start: usize,
    n_pos: usize,
    q: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let attend_rows = ops.attend_rows;
    out.fill(0.0);
    let mut st = OnlineSoftmax::default();
    for_each_kv_run(kv, layer, kv_head, table, start, n_pos, |k, v| {
        attend_rows(q, k, v, scale, &mut st, out)
    });
    st.finish(out);
}

/// Calls `f(k, v)` with the K and V rows of positions `start..n_pos` of a sequence, one run per
/// KV block in position order (a sliding window starts late, inside a block).
fn for_each_kv_run(
    kv: &KvArena,
    layer: usize,
    kv_head: usize,
    table: &[BlockId],
    start: usize,
    n_pos: usize,
    mut f: impl FnMut(KvRows<'_>, KvRows<'_>),
) {
    let lay = kv.layout();
    let (bs, d) = (lay.block_size, lay.head_dim);
    for (bi, block) in table.iter().enumerate().skip(start / bs) {
        let block_start = bi * bs;
        if block_start >= n_pos {
            break;
        }
        let n = (n_pos - block_start).min(bs);
        let j0 = start.saturating_sub(block_start).min(n);
        let kt = kv.k_tile(block.index(), layer, kv_head);
        let vt = kv.v_tile(block.index(), layer, kv_head);
        f(kt.slice(j0..n, d), vt.slice(j0..n, d));
    }
}

/// Most query heads per KV head that [`attend_group`] takes at once.
pub(super) const MAX_GROUP: usize = 16;

/// [`attend`] for the `group` query heads that share KV head `kv_head` (`q` and `out`: `group`
/// rows of the head size): each K/V row is read once for all of them; every head's result is
/// exactly its own [`attend`].
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_group(
    ops: &Ops,
    kv: &KvArena,
    layer: usize,
    kv_head: usize,
    table: &[BlockId],
    start: usize,
    n_pos: usize,
    q: &[f32],
    scale: f32,
    out: &mut [f32],
) {
    let attend_rows_group = ops.attend_rows_group;
    let d = kv.layout().head_dim;
    let g = q.len() / d;
    out.fill(0.0);
    let mut st = [OnlineSoftmax::default(); MAX_GROUP];
    for_each_kv_run(kv, layer, kv_head, table, start, n_pos, |k, v| {
        attend_rows_group(q, k, v, scale, &mut st[..g], out)
    });
    for (st, o) in st[..g].iter().zip(out.chunks_exact_mut(d)) {
        st.finish(o);
    }
}
