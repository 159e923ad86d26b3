//! The forward pass's operations as CUDA kernels on the backend's stream.
//!
//! A step stages its batch on the host (embeddings, positions, KV blocks, block-table rows,
//! logit rows), copies it up, then queues one or a few kernels per operation. A lone decode
//! token (one token, one logit row) launches the same kernels at every position with the same
//! number of attention partitions (a power of two covering the position, or all the context
//! can have; those past the position are empty), so its step is captured into a graph per
//! partition count the first time and replayed after: one launch instead of ~12 per layer. Its
//! kernels read positions and block tables from the staged description.
//!
//! Launches are saved where operations share inputs: the products of one activation (Q/K/V,
//! gate/up) run as one launch when their weights have one type, and the RMSNorms and gated
//! activations before products write the products' quantized activations themselves
//! ([`PreQuant`](super::PreQuant)); a product skips its quantization when the buffers already
//! hold its input (`CudaBackend::quantized`).

use super::error::backend_err;
use super::module::{acts_of, Acts};
use super::params::*;
use super::{CudaBackend, DevMat, Formats, GraphKey, Mode, Quantized, ATT_PART_LEN, MAX_GRAPHS};
use crate::error::Result;
use crate::model::config::FfnAct;
use crate::model::scratch::{RowNeed, NO_ARGMAX, NO_TOP};
use crate::model::weights::{Mat, Vector};
use crate::model::{Act, BlockTables, Executor, Limits, Model, Out, RopeTable, Scratch, Step};

/// One step's view of the CUDA backend, with the host logits it fills.
pub(super) struct CudaExecutor<'a> {
    b: &'a mut CudaBackend,
    file: &'a [u8],
    host: &'a mut Scratch,
}

impl<'a> CudaExecutor<'a> {
    pub(super) fn new(b: &'a mut CudaBackend, model: &'a Model, host: &'a mut Scratch) -> Self {
        CudaExecutor {
            b,
            file: model.file.bytes(),
            host,
        }
    }

    /// Whether operations are already in the replayed graph.
    fn replaying(&self) -> bool {
        self.b.mode == Mode::Replay
    }

    fn mat(&self, m: &Mat) -> Result<&DevMat> {
        self.b
            .mats
            .get(&m.range.start)
            .ok_or_else(|| backend_err(format!("tensor {} is not on the device", m.name)))
    }

    fn vec(&self, v: &Vector) -> Result<DevPtr> {
        self.b
            .vecs
            .get(&v.range.start)
            .map(|b| b.ptr)
            .ok_or_else(|| backend_err("a norm or bias vector is not on the device"))
    }

    fn ptr(&self, a: Act) -> DevPtr {
        self.b.s.buf(a).ptr
    }

    /// Quantize `rows` rows of `x` (`cols` wide) to Q8_1 and/or Q8_K (float weights read `x`
    /// itself).
    fn quantize(&self, x: DevPtr, rows: usize, cols: usize, f: Formats) -> Result<()> {
        let (q8_1, q8_k) = (f.q8_1, f.q8_k);
        let b = &*self.b;
        let p = |y| QuantizeParams {
            x,
            y,
            n_rows: rows as i32,
            n_cols: cols as i32,
            x_stride: cols as i32,
            pad: 0,
        };
        if q8_1 {
            b.dev.quantize_q8_1(&p(b.s.acts.ptr))?;
        }
        if q8_k {
            b.dev.quantize_q8_k(&p(b.s.acts_k.ptr))?;
        }
        Ok(())
    }

    /// Describe the batch on the host: positions, KV blocks (in each layer group), table rows
    /// (one per sequence, the rows of each group after the previous group's), logit rows.
    /// Returns (table rows used in each group, largest position).
    fn stage<T: BlockTables + ?Sized>(&mut self, step: &Step<'_, T>) -> (usize, usize) {
        let b = &mut *self.b;
        let bs = b.layout.block_size;
        let (m, t_max, n_groups) = (b.meta, b.max_tokens, b.groups.len());
        let new_row = |t: usize| t == 0 || step.batch[t].seq != step.batch[t - 1].seq;
        let n_rows = (0..step.batch.len()).filter(|&t| new_row(t)).count();
        let (mut row, mut max_pos, mut n_logits) = (0, 0, 0);
        for (t, tok) in step.batch.iter().enumerate() {
            if new_row(t) {
                for g in 0..n_groups {
                    let table = step.table_of(t, g);
                    let at = m.tables + (g * n_rows + row) * b.max_blocks;
                    let dst = &mut b.host_meta[at..at + b.max_blocks];
                    for (d, blk) in dst.iter_mut().zip(table.iter()) {
                        *d = blk.index() as i32;
                    }
                }
                row += 1;
            }
            b.host_meta[m.pos + t] = tok.pos as i32;
            for g in 0..n_groups {
                b.host_meta[m.block + g * t_max + t] =
                    step.table_of(t, g)[tok.pos / bs].index() as i32;
            }
            b.host_meta[m.row + t] = (row - 1) as i32;
            if tok.logits {
                b.host_meta[m.logit_rows + n_logits] = t as i32;
                n_logits += 1;
            }
            max_pos = max_pos.max(tok.pos);
        }
        // The rows that sample from their most likely tokens, where the host scratch can take
        // them (the others come back whole, or as their argmax).
        let (mut n_top, mut top_k) = (0, 0);
        let room = self.host.top_raw.len();
        for (r, need) in self.host.row_need.iter().take(n_logits).enumerate() {
            if let RowNeed::Top(k) = *need {
                b.host_meta[m.top_rows + n_top] = r as i32;
                n_top += 1;
                top_k = top_k.max(k as usize);
            }
        }
        if super::params::topk_out_len(n_top, top_k) > room {
            n_top = 0;
        }
        (b.n_top, b.top_k) = (n_top, top_k);
        (n_rows, max_pos)
    }
}

impl Executor for CudaExecutor<'_> {
    fn limits(&self) -> Limits {
        Limits {
            max_tokens: self.b.max_tokens.min(self.host.max_tokens()),
            max_logits: self.b.max_logits.min(self.host.max_logits()),
            n_ctx: self.b.n_ctx.min(self.host.n_ctx()),
            block_size: self.b.layout.block_size,
            kv_groups: self.b.groups.len(),
        }
    }

    fn begin<T: BlockTables + ?Sized>(&mut self, step: &Step<'_, T>) -> Result<()> {
        let (n_rows, max_pos) = self.stage(step);
        let b = &mut *self.b;
        let n_tok = step.batch.len();
        let n_logits = step.batch.iter().filter(|t| t.logits).count();
        b.n_tok = n_tok;
        b.n_logits = n_logits;
        // A decode step: one token per sequence, each wanting logits (its partition count is
        // rounded to one of few, one graph each).
        let decode = n_logits == n_tok && n_rows == n_tok;
        let parts = (max_pos + 1).div_ceil(ATT_PART_LEN).clamp(1, b.max_parts);
        b.n_parts = if decode {
            parts.next_power_of_two().min(b.max_parts)
        } else {
            parts
        };
        b.graph_key = (decode && b.use_graph).then_some(GraphKey {
            n_tok,
            n_parts: b.n_parts,
        });
        b.quantized = None;
        b.table_rows = n_rows;
        let staged = b.meta.tables + b.groups.len() * n_rows * b.max_blocks;
        b.dev.write(&mut b.s.meta, &b.host_meta[..staged])?;
        b.mode = Mode::Direct;
        Ok(())
    }

    fn embed<T: BlockTables + ?Sized>(
        &mut self,
        step: &Step<'_, T>,
        table: &Mat,
        scale: f32,
    ) -> Result<()> {
        // Looked up on the host (the CPU's own conversion), then copied up.
        let b = &mut *self.b;
        let n = step.batch.len() * table.cols;
        let to_float = ember_kernels::traits::reference_traits(table.ty)
            .expect("weight types are checked at load")
            .to_float;
        crate::backend::embed_rows(self.file, table, to_float, step.batch, scale, &mut b.host_x);
        b.dev.write(&mut b.s.x, &b.host_x[..n])?;
        // Everything after this is kernel launches: a decode step is a graph.
        if let Some(key) = b.graph_key {
            if b.graphs.iter().any(|(k, _)| *k == key) {
                b.mode = Mode::Replay;
            } else if b.graphs.len() < MAX_GRAPHS {
                b.dev.begin_capture()?;
                b.mode = Mode::Capture;
            }
        }
        Ok(())
    }

    fn rms_norm(&mut self, src: Act, dst: Act, w: &Vector, rows: usize) -> Result<()> {
        if self.replaying() {
            return Ok(());
        }
        // Before products: the norm writes their quantized activations too.
        let f = self.b.prequant.of_act(dst);
        let b = &mut *self.b;
        b.dev.rms_norm(&RmsNormParams {
            x: b.s.buf(src).ptr,
            w: b.vecs
                .get(&w.range.start)
                .map(|v| v.ptr)
                .ok_or_else(|| backend_err("a norm or bias vector is not on the device"))?,
            out: b.s.buf(dst).ptr,
            rows: 0,
            q8_1: if f.q8_1 { b.s.acts.ptr } else { 0 },
            q8_k: if f.q8_k { b.s.acts_k.ptr } else { 0 },
            n_rows: rows as i32,
            n_cols: w.len as i32,
            eps: b.dims.rms_eps,
            pad: 0,
        })?;
        b.quantized = f.any().then_some(Quantized {
            act: dst,
            rows,
            formats: f,
        });
        Ok(())
    }

    fn matmul(&mut self, jobs: &[(&Mat, Out)], src: Act, rows: usize) -> Result<()> {
        let Some(&(w0, _)) = jobs.first() else {
            return Ok(());
        };
        if self.replaying() {
            return Ok(());
        }
        // One quantization of `src` per activation type the products take, unless the
        // operation that wrote `src` left it quantized already.
        let x = self.ptr(src);
        let mut need = Formats::default();
        for (w, _) in jobs {
            match acts_of(self.mat(w)?.ty) {
                Acts::F32 => {}
                Acts::Q8_1 => need.q8_1 = true,
                Acts::Q8K => need.q8_k = true,
            }
        }
        let have = self
            .b
            .quantized
            .filter(|q| q.act == src && q.rows == rows && q.formats.covers(need));
        if have.is_none() {
            self.quantize(x, rows, w0.cols, need)?;
            self.b.quantized = need.any().then_some(Quantized {
                act: src,
                rows,
                formats: need,
            });
        }
        // Products of one weight type (and one output mode) in a row run as one launch.
        let mut i = 0;
        while i < jobs.len() {
            let dm = self.mat(jobs[i].0)?;
            let (ty, row_bytes) = (dm.ty, dm.row_bytes);
            let a = match acts_of(ty) {
                Acts::F32 => x,
                Acts::Q8_1 => self.b.s.acts.ptr,
                Acts::Q8K => self.b.s.acts_k.ptr,
            };
            let (dst, accumulate) = out_of(jobs[i].1);
            let mut p = MatmulParams::one(
                dm.ptr,
                a,
                self.ptr(dst),
                dm.rows,
                dm.cols,
                rows,
                row_bytes,
                accumulate,
            );
            i += 1;
            while i < jobs.len() && self.b.fuse {
                let m = self.mat(jobs[i].0)?;
                let (d, acc) = out_of(jobs[i].1);
                if m.ty != ty || m.row_bytes != row_bytes || acc != accumulate {
                    break;
                }
                if !p.push(m.ptr, self.ptr(d), m.rows) {
                    break;
                }
                i += 1;
            }
            self.b.dev.matmul(ty, &p)?;
        }
        // A product that overwrites its own input leaves the quantization stale.
        if jobs.iter().any(|(_, o)| out_of(*o).0 == src) {
            self.b.quantized = None;
        }
        Ok(())
    }

    fn add_bias(&mut self, dst: Act, bias: &Vector, rows: usize) -> Result<()> {
        if self.replaying() {
            return Ok(());
        }
        self.b.quantized = None; // its output may be a product's input
        self.b.dev.add_bias(&BiasParams {
            x: self.ptr(dst),
            b: self.vec(bias)?,
            n_rows: rows as i32,
            n_cols: bias.len as i32,
        })
    }

    fn add(&mut self, dst: Act, src: Act, rows: usize) -> Result<()> {
        if self.replaying() {
            return Ok(());
        }
        self.b.quantized = None; // its output may be a product's input
        self.b.dev.add(&AddParams {
            x: self.ptr(dst),
            y: self.ptr(src),
            n: (rows * self.b.dims.width(dst)) as i32,
            pad: 0,
        })
    }

    fn rope_and_store_kv<T: BlockTables + ?Sized>(
        &mut self,
        _step: &Step<'_, T>,
        layer: usize,
        table: RopeTable,
        q_scale: f32,
    ) -> Result<()> {
        if self.replaying() {
            return Ok(());
        }
        self.b.quantized = None; // its output may be a product's input
        let b = &*self.b;
        let (cos, sin) = match (table, &b.rope_swa) {
            (RopeTable::Local, Some((c, s))) => (c.ptr, s.ptr),
            (RopeTable::Local, None) => {
                return Err(backend_err("no sliding-window RoPE table for this model"))
            }
            (RopeTable::Global, _) => (b.rope_cos.ptr, b.rope_sin.ptr),
        };
        let (m, s, z) = (b.meta, &b.s, b.dims);
        let l = b.layout;
        let (group, slot) = (b.groups.group_of(layer), b.groups.slot_of(layer));
        b.dev.rope_kv_write(&RopeKvParams {
            q: s.q.ptr,
            k: s.k.ptr,
            v: s.v.ptr,
            kc: b.kc.ptr,
            vc: b.vc.ptr,
            cos,
            sin,
            tok_pos: s.meta.at(m.pos),
            tok_block: s.meta.at(m.block + group * b.max_tokens),
            n_tok: b.n_tok as i32,
            n_head: z.n_head as i32,
            n_head_kv: z.n_head_kv as i32,
            head_dim: z.head_dim as i32,
            block_size: b.layout.block_size as i32,
            n_layer: l.block_layers as i32,
            layer: slot as i32,
            neox: i32::from(z.neox),
            q_scale,
            kv_type: l.kv_type.code() as i32,
            row_u16: (l.row_bytes() / 2) as i32,
            rot_k: l.kv_type.key_rotation(l.head_dim).unwrap_or(0) as i32,
            rot_v: l.kv_type.value_rotation(l.head_dim).unwrap_or(0) as i32,
            round_q: i32::from(!ember_kernels::reference::attention_tiled::takes(
                l.kv_type,
                b.n_tok,
                z.head_dim,
                z.n_head / z.n_head_kv,
            )),
        })
    }

    fn attend<T: BlockTables + ?Sized>(
        &mut self,
        _step: &Step<'_, T>,
        layer: usize,
        window: usize,
        scale: f32,
    ) -> Result<()> {
        if self.replaying() {
            return Ok(());
        }
        self.b.quantized = None; // its output may be a product's input
        let b = &*self.b;
        let (m, s, z) = (b.meta, &b.s, b.dims);
        let l = b.layout;
        let (group, slot) = (b.groups.group_of(layer), b.groups.slot_of(layer));
        b.dev.attention(&AttnParams {
            q: s.q.ptr,
            out: s.att.ptr,
            kc: b.kc.ptr,
            vc: b.vc.ptr,
            tables: s.meta.at(m.tables + group * b.table_rows * b.max_blocks),
            tok_pos: s.meta.at(m.pos),
            tok_row: s.meta.at(m.row),
            part_acc: s.part_acc.ptr,
            part_ms: s.part_ms.ptr,
            n_tok: b.n_tok as i32,
            n_head: z.n_head as i32,
            n_head_kv: z.n_head_kv as i32,
            head_dim: z.head_dim as i32,
            block_size: b.layout.block_size as i32,
            n_layer: l.block_layers as i32,
            layer: slot as i32,
            max_blocks: b.max_blocks as i32,
            part_len: ATT_PART_LEN as i32,
            n_parts: b.n_parts as i32,
            scale,
            window: window.min(i32::MAX as usize) as i32,
            kv_type: l.kv_type.code() as i32,
            row_u16: (l.row_bytes() / 2) as i32,
        })?;
        // Values stored turned come out turned: turn each head's output back.
        match l.kv_type.value_rotation(l.head_dim) {
            Some(n) => b.dev.hadamard_rows(&HadamardParams {
                x: s.att.ptr,
                n_rows: (b.n_tok * z.n_head) as i32,
                row_len: z.head_dim as i32,
                n: n as i32,
                pad: 0,
            }),
            None => Ok(()),
        }
    }

    fn gated_act(&mut self, act: FfnAct, rows: usize) -> Result<()> {
        if self.replaying() {
            return Ok(());
        }
        let b = &mut *self.b;
        let n = rows * b.dims.ff;
        // Before the down product: the activation writes its quantized input too (whole
        // 256-element blocks only).
        let f = Some(b.prequant.gate).filter(|f| f.any() && n.is_multiple_of(256));
        let q8_1 = f.filter(|f| f.q8_1).map_or(0, |_| b.s.acts.ptr);
        let q8_k = f.filter(|f| f.q8_k).map_or(0, |_| b.s.acts_k.ptr);
        match act {
            FfnAct::Silu => b.dev.swiglu(&SwigluParams {
                gate: b.s.gate.ptr,
                up: b.s.up.ptr,
                q8_1,
                q8_k,
                n: n as i32,
                n_vec: (n / 8 * 8) as i32,
            })?,
            FfnAct::Gelu => {
                let table = b
                    .gelu
                    .as_ref()
                    .ok_or_else(|| backend_err("no GELU table for this model"))?;
                b.dev.geglu(&GegluParams {
                    gate: b.s.gate.ptr,
                    up: b.s.up.ptr,
                    table: table.ptr,
                    q8_1,
                    q8_k,
                    n: n as i32,
                    pad: 0,
                })?
            }
        }
        b.quantized = f.map(|formats| Quantized {
            act: Act::Gate,
            rows,
            formats,
        });
        Ok(())
    }

    fn keep_rows<T: BlockTables + ?Sized>(&mut self, _step: &Step<'_, T>) -> Result<usize> {
        let b = &mut *self.b;
        b.quantized = None; // rows of x move, through xn's buffer
        let (n_tok, n_logits) = (b.n_tok, b.n_logits);
        // Every row wants logits (decode): they are already in place.
        if n_logits == n_tok || n_logits == 0 || b.mode == Mode::Replay {
            return Ok(n_logits);
        }
        // Gathered into `xn` (free here), then copied back to the front of `x`.
        let e = b.dims.embd;
        b.dev.gather_rows(&GatherParams {
            src: b.s.x.ptr,
            dst: b.s.xn.ptr,
            rows: b.s.meta.at(b.meta.logit_rows),
            n_rows: n_logits as i32,
            n_cols: e as i32,
        })?;
        b.dev.copy_dtod(&b.s.xn, &mut b.s.x, n_logits * e)?;
        Ok(n_logits)
    }

    fn finish(&mut self, n_logits: usize) -> Result<()> {
        let b = &mut *self.b;
        match b.mode {
            Mode::Direct => {}
            Mode::Capture => {
                let graph = b.dev.end_capture()?;
                b.mode = Mode::Replay;
                b.dev.launch_graph(&graph)?;
                let key = b.graph_key.expect("captured a decode step");
                b.graphs.push((key, graph));
            }
            Mode::Replay => {
                let (_, graph) = b
                    .graphs
                    .iter()
                    .find(|(k, _)| Some(*k) == b.graph_key)
                    .expect("replaying a captured graph");
                b.dev.launch_graph(graph)?;
            }
        }
        if n_logits == 0 {
            return b.dev.sync();
        }
        let v = b.dims.vocab;
        let mut logits = self.host.take_logits();
        let r = read_logits(b, self.host, &mut logits, n_logits, v);
        self.host.put_logits(logits);
        r
    }
}

/// Bring the step's `n` logits rows (`v` wide) back to the host, as `host.row_need` asks. Rows
/// read in full are copied; for [`RowNeed::Argmax`] rows only their argmax is, and for
/// [`RowNeed::Top`] rows only their most likely tokens, both computed on the device (a row
/// holding a NaN, or whose candidates tie beyond what the kernel gathers, is copied instead, its
/// entry left [`NO_ARGMAX`] / [`NO_TOP`]). Batched decoding then moves a few bytes per sequence
/// instead of a whole vocabulary row.
fn read_logits(
    b: &CudaBackend,
    host: &mut Scratch,
    logits: &mut [f32],
    n: usize,
    v: usize,
) -> Result<()> {
    let need = &host.row_need[..n];
    if need.iter().all(|&r| r == RowNeed::Full) {
        return b.dev.read(&b.s.logits, &mut logits[..n * v]);
    }
    if need.contains(&RowNeed::Argmax) {
        b.dev.argmax(&ArgmaxParams {
            x: b.s.logits.ptr,
            out: b.s.ids.ptr,
            part: b.s.ids_part.ptr,
            n_rows: n as i32,
            n_cols: v as i32,
        })?;
        let mut ids = [0i32; 64];
        let mut row = 0;
        while row < n {
            let m = (n - row).min(ids.len());
            b.dev.read_at(&b.s.ids, row, &mut ids[..m])?;
            for (i, &id) in ids[..m].iter().enumerate() {
                if need[row + i] == RowNeed::Argmax {
                    host.argmax[row + i] = u32::try_from(id).unwrap_or(NO_ARGMAX);
                }
            }
            row += m;
        }
    }
    let (n_top, k) = (b.n_top, b.top_k);
    if n_top > 0 {
        b.dev.topk(&TopkParams {
            x: b.s.logits.ptr,
            rows: b.s.meta.at(b.meta.top_rows),
            out: b.s.top.ptr,
            n_rows: n_top as i32,
            n_cols: v as i32,
            k: k as i32,
            pad: 0,
        })?;
        // One copy: every listed row's ids, logits and counts.
        let raw = &mut host.top_raw[..super::params::topk_out_len(n_top, k)];
        b.dev.read(&b.s.top, raw)?;
        let (ids, rest) = raw.split_at(n_top * k);
        let (vals, info) = rest.split_at(n_top * k);
        host.top_stride = k;
        let mut j = 0;
        for (row, &r) in need.iter().enumerate() {
            let RowNeed::Top(kr) = r else {
                continue;
            };
            let (written, usable) = (info[2 * j] as i32, info[2 * j + 1] as i32);
            if let Ok(w) = u32::try_from(written) {
                let w = w.min(kr);
                let (from, to) = (j * k, row * k);
                host.top_ids[to..to + w as usize].copy_from_slice(&ids[from..from + w as usize]);
                for (d, &bits) in host.top_vals[to..to + w as usize]
                    .iter_mut()
                    .zip(&vals[from..from + w as usize])
                {
                    *d = f32::from_bits(bits);
                }
                host.top_len[row] = w;
                host.top_complete[row] = usable >= 0 && usable as u32 <= kr;
            }
            j += 1;
        }
    }
    // Copy each run of rows that must come back in one transfer.
    let needed = |i: usize| match need[i] {
        RowNeed::Full => true,
        RowNeed::Argmax => host.argmax[i] == NO_ARGMAX,
        RowNeed::Top(_) => host.top_len[i] == NO_TOP,
    };
    let mut i = 0;
    while i < n {
        if !needed(i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && needed(i) {
            i += 1;
        }
        b.dev
            .read_at(&b.s.logits, start * v, &mut logits[start * v..i * v])?;
    }
    Ok(())
}

/// A product's destination and whether it adds to it.
fn out_of(o: Out) -> (Act, bool) {
    match o {
        Out::Set(a) => (a, false),
        Out::Add(a) => (a, true),
    }
}
