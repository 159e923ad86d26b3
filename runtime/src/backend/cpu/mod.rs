//! The CPU executor: the forward pass's operations on worker threads over the kernel tables of
//! `ember-kernels`, in host buffers ([`Scratch`]) and a host KV arena.
//!
//! Products quantize their activations once per input (one parallel region) and then run every
//! product of that input in one more region ([`Compute::matmuls`]); norms, RoPE and the small
//! element-wise steps run on the calling thread; attention spreads (token, head) pairs — or
//! (token, KV head) groups when there are enough of them — over the threads.

mod attention;

use ember_kernels::kv::hadamard;
use ember_kernels::reference::attention_tiled;
use half::f16;

use super::gelu;
use crate::compute::{Compute, MatJob, SharedOut, MAX_JOBS, WORKSPACE};
use crate::error::Result;
use crate::kv::{KvArena, KvGroups};
use crate::model::config::{FfnAct, RopePairing};
use crate::model::executor::{Act, BlockTables, Executor, Limits, Out, RopeTable, Step};
use crate::model::weights::{f32_slice, Mat, Vector};
use crate::model::{Model, Scratch};

/// Rows of `n` elements per work item of a row-wise operation spread over the threads: about
/// 8 K elements, so a one-token step stays on the calling thread.
fn rows_per_item(n: usize) -> usize {
    (8192 / n.max(1)).max(1)
}

/// One step's view of the CPU backend: worker threads, KV arena, scratch, and the model file
/// the weights are read from.
pub struct CpuExecutor<'a> {
    cx: &'a Compute,
    kv: &'a mut KvArena,
    /// Which block table and which slot of its blocks each layer's K/V use.
    groups: &'a KvGroups,
    s: &'a mut Scratch,
    /// The mapped model file (weight matrices and vectors are byte ranges of it).
    file: &'a [u8],
    n_head: usize,
    rms_eps: f32,
    pairing: RopePairing,
}

impl<'a> CpuExecutor<'a> {
    /// An executor for `model` over these threads, arena (of these layer groups) and scratch
    /// (all sized for it).
    pub fn new(
        model: &'a Model,
        cx: &'a Compute,
        kv: &'a mut KvArena,
        groups: &'a KvGroups,
        s: &'a mut Scratch,
    ) -> CpuExecutor<'a> {
        let c = &model.config;
        CpuExecutor {
            cx,
            kv,
            groups,
            s,
            file: model.file.bytes(),
            n_head: c.n_head,
            rms_eps: c.rms_eps,
            pairing: c.rope_pairing,
        }
    }

    /// Whether a step of `n_tok` tokens takes the tiled attention path: batches of 64 or more
    /// tokens over f16 K/V, as ggml's CPU flash attention decides (`attention_tiled`).
    fn tiled(&self, n_tok: usize) -> bool {
        let lay = self.kv.layout();
        attention_tiled::takes(
            lay.kv_type,
            n_tok,
            lay.head_dim,
            self.n_head / lay.n_kv_head,
        )
    }

    fn vec(&self, v: &Vector) -> &'a [f32] {
        f32_slice(self.file, v).expect("alignment checked at load")
    }

    /// Quantize `rows` rows of `src` to the activation type `w` expects, spread over the
    /// threads, into `Scratch::acts`; returns the bytes per row.
    fn quantize_acts(&mut self, w: &Mat, src: Act, rows: usize) -> usize {
        let at = self
            .cx
            .kernels()
            .traits(w.act_type)
            .expect("every supported weight type has a supported activation type");
        let from_float = at
            .quantize_act
            .expect("activation types have an activation quantizer");
        let rb = w
            .act_type
            .row_bytes(w.cols as u64)
            .expect("row length checked at load") as usize;
        let cols = w.cols;
        let mut acts = std::mem::take(&mut self.s.acts);
        let x = self.s.buf(src);
        assert!(x.len() >= rows * cols && acts.len() >= rows * rb);
        let acts_ptr = SharedOut(acts.as_mut_ptr());
        self.cx.parallel_for(rows, |t| {
            // SAFETY: token `t` owns bytes `t*rb .. (t+1)*rb` of `acts` (asserted in bounds);
            // no other token writes them, and `acts` is borrowed mutably for the whole region.
            let out = unsafe { std::slice::from_raw_parts_mut(acts_ptr.ptr().add(t * rb), rb) };
            from_float(&x[t * cols..(t + 1) * cols], out);
        });
        self.s.acts = acts;
        rb
    }

    /// `N` products of `src` in one parallel region after one quantization (they share the
    /// activation type), else one region each.
    fn matmul_n<const N: usize>(&mut self, jobs: [(&Mat, Out); N], src: Act, rows: usize) {
        let w0 = jobs[0].0;
        let shared = jobs
            .iter()
            .all(|(w, _)| w.cols == w0.cols && w.act_type == w0.act_type);
        if !shared || N > MAX_JOBS {
            for job in jobs {
                self.matmul_n([job], src, rows);
            }
            return;
        }
        let rb = self.quantize_acts(w0, src, rows);
        // A residual add (`Out::Add`) is computed into `Proj` first, then added: the same f32
        // operations as a product followed by an add.
        let target = |o: Out| match o {
            Out::Set(a) => a,
            Out::Add(_) => Act::Proj,
        };
        let mut outs = jobs.map(|(_, o)| {
            assert!(target(o) != src, "a product never writes its own input");
            self.s.take(target(o))
        });
        {
            let file = self.file;
            let mut list = std::array::from_fn::<_, N, _>(|_| None);
            for ((slot, (w, _)), out) in list.iter_mut().zip(&jobs).zip(outs.iter_mut()) {
                *slot = Some(MatJob {
                    w,
                    weights: &file[w.range.clone()],
                    out: &mut out[..rows * w.rows],
                });
            }
            let mut list = list.map(|j| j.expect("filled above"));
            self.cx.matmuls(&mut list, &self.s.acts, rb, rows);
        }
        for ((_, o), out) in jobs.iter().zip(outs) {
            self.s.put(target(*o), out);
            if let Out::Add(dst) = *o {
                self.add(dst, Act::Proj, rows)
                    .expect("the CPU add cannot fail");
            }
        }
    }
}

impl Executor for CpuExecutor<'_> {
    fn limits(&self) -> Limits {
        Limits {
            max_tokens: self.s.max_tokens(),
            max_logits: self.s.max_logits(),
            n_ctx: self.s.n_ctx(),
            block_size: self.kv.layout().block_size,
            kv_groups: self.groups.len(),
        }
    }

    fn begin<T: BlockTables + ?Sized>(&mut self, _step: &Step<'_, T>) -> Result<()> {
        Ok(())
    }

    fn embed<T: BlockTables + ?Sized>(
        &mut self,
        step: &Step<'_, T>,
        table: &Mat,
        scale: f32,
    ) -> Result<()> {
        let to_float = self
            .cx
            .kernels()
            .traits(table.ty)
            .expect("weight types are checked at load")
            .to_float;
        super::embed_rows(self.file, table, to_float, step.batch, scale, &mut self.s.x);
        Ok(())
    }

    fn rms_norm(&mut self, src: Act, dst: Act, w: &Vector, rows: usize) -> Result<()> {
        let (norm, n, eps) = (self.vec(w), w.len, self.rms_eps);
        let rms_norm = self.cx.kernels().ops().rms_norm;
        let mut out = self.s.take(dst);
        assert!(out.len() >= rows * n && n <= WORKSPACE);
        let x = (src != dst).then(|| self.s.buf(src));
        let out_ptr = SharedOut(out.as_mut_ptr());
        let per = rows_per_item(n);
        self.cx.parallel_for_ws(rows.div_ceil(per), |ws, i| {
            for t in i * per..((i + 1) * per).min(rows) {
                // SAFETY: item `i` owns rows `i*per .. (i+1)*per` of `out` (checked to hold
                // `rows` rows of `n`); no other item touches them, and `out` is not otherwise
                // borrowed during the region.
                let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(t * n), n) };
                match x {
                    Some(x) => rms_norm(&x[t * n..(t + 1) * n], norm, eps, row),
                    None => {
                        ws[..n].copy_from_slice(row);
                        rms_norm(&ws[..n], norm, eps, row);
                    }
                }
            }
        });
        self.s.put(dst, out);
        Ok(())
    }

    fn matmul(&mut self, jobs: &[(&Mat, Out)], src: Act, rows: usize) -> Result<()> {
        match *jobs {
            [a] => self.matmul_n([a], src, rows),
            [a, b] => self.matmul_n([a, b], src, rows),
            [a, b, c] => self.matmul_n([a, b, c], src, rows),
            _ => {
                for &job in jobs {
                    self.matmul_n([job], src, rows);
                }
            }
        }
        Ok(())
    }

    fn add_bias(&mut self, dst: Act, b: &Vector, rows: usize) -> Result<()> {
        let bias = self.vec(b);
        let n = b.len;
        for row in self.s.buf_mut(dst)[..rows * n].chunks_exact_mut(n) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
        Ok(())
    }

    fn add(&mut self, dst: Act, src: Act, rows: usize) -> Result<()> {
        let n = rows * self.s.width(dst);
        let mut out = self.s.take(dst);
        out[..n]
            .iter_mut()
            .zip(&self.s.buf(src)[..n])
            .for_each(|(x, p)| *x += p);
        self.s.put(dst, out);
        Ok(())
    }

    fn rope_and_store_kv<T: BlockTables + ?Sized>(
        &mut self,
        step: &Step<'_, T>,
        layer: usize,
        table: RopeTable,
        q_scale: f32,
    ) -> Result<()> {
        let k = self.cx.kernels().ops();
        let tiled = self.tiled(step.batch.len());
        let s = &mut *self.s;
        let (qd, kvd) = (s.width(Act::Q), s.width(Act::K));
        let d = qd / self.n_head;
        let half = d / 2;
        let (rope_cos, rope_sin) = match table {
            RopeTable::Global => (&s.rope_cos, &s.rope_sin),
            RopeTable::Local => (&s.rope_cos_swa, &s.rope_sin_swa),
        };
        let kv_type = self.kv.layout().kv_type;
        let (rot_k, rot_v) = (kv_type.key_rotation(d), kv_type.value_rotation(d));
        for (t, b) in step.batch.iter().enumerate() {
            let cos = &rope_cos[b.pos * half..(b.pos + 1) * half];
            let sin = &rope_sin[b.pos * half..(b.pos + 1) * half];
            let q = &mut s.q[t * qd..(t + 1) * qd];
            let heads = q
                .chunks_exact_mut(d)
                .chain(s.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(d));
            for head in heads {
                match self.pairing {
                    RopePairing::Norm => (k.rope_norm)(head, cos, sin),
                    RopePairing::Neox => (k.rope_neox)(head, cos, sin),
                }
            }
            // Quantized K/V are stored rotated (ember_kernels::kv): queries and keys by the
            // keys' rotation, values by theirs (attention's output is rotated back).
            if let Some(n) = rot_k {
                hadamard(&mut s.q[t * qd..(t + 1) * qd], n);
                hadamard(&mut s.k[t * kvd..(t + 1) * kvd], n);
            }
            if let Some(n) = rot_v {
                hadamard(&mut s.v[t * kvd..(t + 1) * kvd], n);
            }
            // ggml's one-query attention converts Q to f16 to multiply it with the f16 K cache;
            // its tiled path keeps Q in f32.
            for q in &mut s.q[t * qd..(t + 1) * qd] {
                *q = match tiled {
                    true => *q * q_scale,
                    false => f16::from_f32(*q * q_scale).to_f32(),
                };
            }
        }
        // Store the new keys and values in their slots (of the layer's group's blocks).
        let bs = self.kv.layout().block_size;
        let (group, slot) = (self.groups.group_of(layer), self.groups.slot_of(layer));
        for (t, b) in step.batch.iter().enumerate() {
            let block = step.table_of(t, group)[b.pos / bs];
            self.kv.write(
                block.index(),
                b.pos % bs,
                slot,
                &s.k[t * kvd..(t + 1) * kvd],
                &s.v[t * kvd..(t + 1) * kvd],
            );
        }
        Ok(())
    }

    fn attend<T: BlockTables + ?Sized>(
        &mut self,
        step: &Step<'_, T>,
        layer: usize,
        window: usize,
        scale: f32,
    ) -> Result<()> {
        let tiled = self.tiled(step.batch.len());
        let s = &mut *self.s;
        let kv: &KvArena = self.kv;
        let (kv_group, slot) = (self.groups.group_of(layer), self.groups.slot_of(layer));
        let (hq, hkv, d) = (self.n_head, kv.layout().n_kv_head, kv.layout().head_dim);
        let qd = hq * d;
        let n_tok = step.batch.len();
        let group = hq / hkv;
        let q_all = &s.q;
        // att[t, h] = softmax(q[t,h] . K[seq_t, start..=pos_t, h/group] * scale) V[...]
        let start = |pos: usize| {
            if window > 0 {
                (pos + 1).saturating_sub(window)
            } else {
                0
            }
        };
        let att_ptr = SharedOut(s.att.as_mut_ptr());
        let ops = self.cx.kernels().ops();
        // Values stored rotated come out rotated: rotate each head's output back.
        let rot_v = kv.layout().kv_type.value_rotation(d);
        let unrotate = |out: &mut [f32]| {
            if let Some(n) = rot_v {
                hadamard(out, n);
            }
        };
        if tiled {
            // A batch of 64+ tokens over f16 K/V: ggml's tiled path. Work items are (KV head,
            // chunk of consecutive batch tokens whose query rows fill a tile call), the chunks
            // nearest the end of the batch (most keys) first.
            let per = attention_tiled::MAX_ROWS / group;
            let n_items = n_tok.div_ceil(per) * hkv;
            self.cx.parallel_for_ws(n_items, |ws, i| {
                let i = n_items - 1 - i;
                let (c, kh) = (i / hkv, i % hkv);
                let (h0, h1) = (kh * group, (kh + 1) * group);
                let mut pos = [0usize; attention_tiled::MAX_ROWS];
                let mut first = [0usize; attention_tiled::MAX_ROWS];
                let mut a = c * per;
                let end = (a + per).min(n_tok);
                // Runs of tokens of one sequence.
                while a < end {
                    let seq = step.batch[a].seq;
                    let b = (a..end).find(|&t| step.batch[t].seq != seq).unwrap_or(end);
                    for (j, tok) in step.batch[a..b].iter().enumerate() {
                        (pos[j], first[j]) = (tok.pos, start(tok.pos));
                    }
                    let run = attention::TiledRun {
                        pos: &pos[..b - a],
                        start: &first[..b - a],
                        group,
                    };
                    let q = |j: usize| {
                        let t = a + j;
                        &q_all[t * qd + h0 * d..t * qd + h1 * d]
                    };
                    let out = |j: usize, o: &[f32]| {
                        let t = a + j;
                        // SAFETY: item `i` owns heads h0..h1 of its tokens: `att[(t*hq + h0)*d
                        // .. (t*hq + h1)*d]` for `t` in its chunk, inside `att` (max_tokens*hq*d
                        // elements, the batch checked against max_tokens); no other item
                        // touches them, and `s.att` is not otherwise borrowed in the region.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                att_ptr.ptr().add((t * hq + h0) * d),
                                group * d,
                            )
                        };
                        dst.copy_from_slice(o);
                    };
                    let table = step.table_of(a, kv_group);
                    attention::attend_tiled(ops, kv, slot, kh, table, &run, q, scale, ws, out);
                    a = b;
                }
            });
        } else if n_tok * hkv >= 2 * self.cx.n_threads() && group <= attention::MAX_GROUP {
            // Enough work per KV head: the query heads of a group share each K/V row read.
            self.cx.parallel_for(n_tok * hkv, |i| {
                let (t, kh) = (i / hkv, i % hkv);
                let b = &step.batch[t];
                let (h0, h1) = (kh * group, (kh + 1) * group);
                let q = &q_all[t * qd + h0 * d..t * qd + h1 * d];
                // SAFETY: item `i` owns `att[(t*hq + h0)*d .. (t*hq + h1)*d]` (heads h0..h1 of
                // token t), inside `att` (max_tokens*hq*d elements, the batch checked against
                // max_tokens); no other item touches it, and `s.att` is not otherwise borrowed
                // during the region.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(att_ptr.ptr().add((t * hq + h0) * d), group * d)
                };
                let table = step.table_of(t, kv_group);
                attention::attend_group(
                    ops,
                    kv,
                    slot,
                    kh,
                    table,
                    start(b.pos),
                    b.pos + 1,
                    q,
                    scale,
                    out,
                );
                unrotate(out);
            });
        } else {
            self.cx.parallel_for(n_tok * hq, |i| {
                let (t, h) = (i / hq, i % hq);
                let b = &step.batch[t];
                let q = &q_all[t * qd + h * d..t * qd + (h + 1) * d];
                // SAFETY: pair `i` owns `att[i*d .. (i+1)*d]`, inside `att` (max_tokens*hq*d
                // elements, the batch checked against max_tokens); no other pair touches it,
                // and `s.att` is not otherwise borrowed during the region.
                let out = unsafe { std::slice::from_raw_parts_mut(att_ptr.ptr().add(i * d), d) };
                let table = step.table_of(t, kv_group);
                attention::attend(
                    ops,
                    kv,
                    slot,
                    h / group,
                    table,
                    start(b.pos),
                    b.pos + 1,
                    q,
                    scale,
                    out,
                );
                unrotate(out);
            });
        }
        Ok(())
    }

    fn gated_act(&mut self, act: FfnAct, rows: usize) -> Result<()> {
        let w = self.s.width(Act::Gate);
        let (silu_mul, geglu) = (
            self.cx.kernels().ops().silu_mul,
            self.cx.kernels().ops().geglu,
        );
        let gelu_table = gelu::table();
        let (gate, up) = (&mut self.s.gate[..rows * w], &self.s.up[..rows * w]);
        let gate_ptr = SharedOut(gate.as_mut_ptr());
        let per = rows_per_item(w);
        self.cx.parallel_for(rows.div_ceil(per), |i| {
            let (t0, t1) = (i * per, ((i + 1) * per).min(rows));
            // SAFETY: item `i` owns rows `t0..t1` of `gate` (`rows` rows of `w`); no other item
            // touches them, and `gate` is not otherwise borrowed during the region.
            let g = unsafe {
                std::slice::from_raw_parts_mut(gate_ptr.ptr().add(t0 * w), (t1 - t0) * w)
            };
            // Row by row, as ggml applies it (a row's tail of fewer than 8 elements takes libm).
            for (g, u) in g
                .chunks_exact_mut(w)
                .zip(up[t0 * w..t1 * w].chunks_exact(w))
            {
                match act {
                    FfnAct::Silu => silu_mul(g, u),
                    FfnAct::Gelu => geglu(g, u, gelu_table),
                }
            }
        });
        Ok(())
    }

    fn keep_rows<T: BlockTables + ?Sized>(&mut self, step: &Step<'_, T>) -> Result<usize> {
        let e = self.s.width(Act::X);
        let mut i = 0;
        for (t, _) in step.batch.iter().enumerate().filter(|(_, b)| b.logits) {
            self.s.x.copy_within(t * e..(t + 1) * e, i * e);
            i += 1;
        }
        Ok(i)
    }

    fn finish(&mut self, _n_logits: usize) -> Result<()> {
        Ok(())
    }
}
