//! Attention on the CPU: causal, paged, one pass with an online softmax per query head (or per
//! group of query heads sharing a KV head), reading each sequence's K/V through its block table.

use crate::compute::WORKSPACE;
use crate::kv::{BlockId, KvArena, KvRows};
use ember_kernels::dispatch::Ops;
use ember_kernels::reference::attention::OnlineSoftmax;
use ember_kernels::reference::attention_tiled::{self, KvTile, MAX_HEAD, MAX_ROWS, TILE};

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

/// The tokens of one call of [`attend_tiled`], all of one sequence: the position and the first
/// visible position (`> 0` on sliding-window layers) of each.
pub(super) struct TiledRun<'a> {
    /// Positions of the tokens, in batch order.
    pub pos: &'a [usize],
    /// First visible position of each token (`> 0` on sliding-window layers).
    pub start: &'a [usize],
    /// Query heads per KV head (rows per token).
    pub group: usize,
}

/// Attention of up to [`MAX_ROWS`] query rows (tokens × the query heads of KV head `kv_head`)
/// of one sequence over tiles of [`TILE`] positions, as ggml computes batches of 64 or more
/// tokens (`attention_tiled`). `ws` is a thread's workspace ([`crate::compute::WORKSPACE`]);
/// `q` holds the step's queries; `out(t, row)` gives token `t`'s output rows of the group.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_tiled<'o>(
    ops: &Ops,
    kv: &KvArena,
    layer: usize,
    kv_head: usize,
    table: &[BlockId],
    run: &TiledRun<'_>,
    q: impl Fn(usize) -> &'o [f32],
    scale: f32,
    ws: &mut [f32],
    mut out: impl FnMut(usize, &[f32]),
) {
    let lay = kv.layout();
    let (bs, d) = (lay.block_size, lay.head_dim);
    let rows = run.pos.len() * run.group;
    assert!(rows <= MAX_ROWS && d <= MAX_HEAD && ws.len() >= WORKSPACE);
    let (qs, ws) = ws.split_at_mut(MAX_ROWS * MAX_HEAD);
    let (os, ws) = ws.split_at_mut(MAX_ROWS * MAX_HEAD);
    let (ps, ws) = ws.split_at_mut(MAX_ROWS * TILE);
    let (kt, ws) = ws.split_at_mut(TILE * MAX_HEAD);
    let vt = &mut ws[..TILE * MAX_HEAD];
    let (qs, os, ps) = (
        &mut qs[..rows * d],
        &mut os[..rows * d],
        &mut ps[..rows * TILE],
    );
    let (kt, vt) = (&mut kt[..TILE * d], &mut vt[..TILE * d]);
    for (t, qr) in qs.chunks_exact_mut(run.group * d).enumerate() {
        qr.copy_from_slice(q(t));
    }
    os.fill(0.0);
    let mut st = [OnlineSoftmax::default(); MAX_ROWS];
    let mut spans = [(0u8, 0u8); MAX_ROWS];
    let lo = run.start.iter().copied().min().unwrap_or(0);
    let hi = run.pos.iter().map(|p| p + 1).max().unwrap_or(0);
    for tile in lo / TILE..hi.div_ceil(TILE) {
        let t0 = tile * TILE;
        // Keys of the tile some row sees: read from the blocks; the rest zero.
        let (g0, g1) = (lo.max(t0), hi.min(t0 + TILE));
        attention_tiled::clear_tile(0..g0 - t0, kt, vt);
        attention_tiled::clear_tile(g1 - t0..TILE, kt, vt);
        let mut p = g0;
        while p < g1 {
            let (block, slot) = (table[p / bs].index(), p % bs);
            let n = (bs - slot).min(g1 - p);
            let k = kv.k_tile(block, layer, kv_head).slice(slot..slot + n, d);
            let v = kv.v_tile(block, layer, kv_head).slice(slot..slot + n, d);
            (ops.load_tile)(k, v, p - t0, kt, vt);
            p += n;
        }
        for (t, (&pos, &start)) in run.pos.iter().zip(run.start).enumerate() {
            let a = start.clamp(t0, t0 + TILE) - t0;
            let b = (pos + 1).clamp(t0, t0 + TILE) - t0;
            spans[t * run.group..(t + 1) * run.group].fill((a as u8, b.max(a) as u8));
        }
        let kv_tile = KvTile { kt, v: vt };
        (ops.attend_tile)(qs, kv_tile, &spans[..rows], scale, &mut st[..rows], os, ps);
    }
    for (t, o) in os.chunks_exact_mut(run.group * d).enumerate() {
        for (st, o) in st[t * run.group..(t + 1) * run.group]
            .iter()
            .zip(o.chunks_exact_mut(d))
        {
            st.finish(o);
        }
        out(t, o);
    }
}
