//! The CUDA backend: the llama forward pass on a GPU, mirroring `model/forward.rs` step for step
//! (same activation quantization, same RoPE tables, same f16 KV arena layout), over batches of
//! tokens of many sequences through their block tables.
//!
//! Memory is taken once, at start-up: the weight matrices are uploaded as they are in the GGUF
//! file (ggml block layouts), the KV arena is one `cuMemAlloc` of the same budget the CPU arena
//! would have (not managed memory: it is uncached on Jetson), and the scratch buffers are sized
//! for `max_batch_tokens`. A step copies token embeddings (looked up on the CPU, `[T, n_embd]`
//! f32) and the batch's positions and block tables up, runs every layer on one stream, and copies
//! the requested logit rows back into the CPU [`Scratch`], where the sampler reads them.
//!
//! Per step and layer: rms_norm → quantize_q8_1 → matmul q, k, v (+ biases) → rope_kv_write →
//! paged_attention → quantize → matmul o (+= into x) → rms_norm → quantize → matmul gate, up →
//! swiglu → quantize → matmul down (+= into x). "Quantize" makes the activations the weights
//! take: Q8_1 (Q4_0 .. Q8_0), Q8_K (K-quants), or nothing (F32, F16, BF16 read the f32 rows).

pub mod device;
pub mod params;
#[doc(hidden)]
pub mod testing;

use ember_kernels::GgmlType;

use device::{acts_of, backend_err, Acts, SUPPORTED_WEIGHTS};
pub use device::{driver_present, CompileInfo, CudaDevice, DevBuf, HostMapping, ATT_PART_LEN};
use params::*;

use super::{validate_batch, BackendSizes, CudaWeights};
use crate::error::Result;
use crate::kv::KvLayout;
use crate::model::config::RopePairing;
use crate::model::weights::{f32_slice, Mat, Vector};
use crate::model::{BatchToken, BlockTables, Model, Scratch};

/// A weight matrix the device reads, in its file layout: an uploaded copy, or the file's own
/// bytes through a [`HostMapping`] (`CudaWeights::Mapped`).
struct DevMat {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// Device address of the first row.
    ptr: DevPtr,
    /// Bytes (`rows * row_bytes`).
    bytes: usize,
    /// The device copy, when uploaded (None when mapped).
    _buf: Option<DevBuf<u8>>,
}

struct DevLayer {
    attn_norm: DevBuf<f32>,
    wq: DevMat,
    wk: DevMat,
    wv: DevMat,
    wo: DevMat,
    bq: Option<DevBuf<f32>>,
    bk: Option<DevBuf<f32>>,
    bv: Option<DevBuf<f32>>,
    ffn_norm: DevBuf<f32>,
    w_gate: DevMat,
    w_up: DevMat,
    w_down: DevMat,
}

/// Device scratch for one batch of up to `max_tokens` tokens.
struct DevScratch {
    /// Residual stream `[T, E]`.
    x: DevBuf<f32>,
    /// Normed input `[T, E]`.
    xn: DevBuf<f32>,
    /// Queries `[T, Hq*D]`.
    q: DevBuf<f32>,
    /// New keys / values `[T, Hkv*D]`.
    k: DevBuf<f32>,
    v: DevBuf<f32>,
    /// Attention output `[T, Hq*D]`.
    att: DevBuf<f32>,
    /// FFN gate and up `[T, F]`.
    gate: DevBuf<f32>,
    up: DevBuf<f32>,
    /// Q8_1 activations `[T, widest / 32 * 36]`.
    acts: DevBuf<u8>,
    /// Q8_K activations `[T, widest / 256 * 292]` (K-quant weights only).
    acts_k: DevBuf<u8>,
    /// Normed rows that want logits `[L, E]`.
    out_x: DevBuf<f32>,
    /// Logits `[L, n_vocab]`.
    logits: DevBuf<f32>,
    /// Attention partitions `[T*Hq, parts, D]` and `[T*Hq, parts, 2]`.
    part_acc: DevBuf<f32>,
    part_ms: DevBuf<f32>,
    /// Batch description (see [`Meta`]).
    meta: DevBuf<i32>,
}

/// Offsets of the batch description in `meta` (i32 elements).
#[derive(Clone, Copy)]
struct Meta {
    pos: usize,
    block: usize,
    row: usize,
    logit_rows: usize,
    tables: usize,
}

/// The CUDA backend of one model.
pub struct CudaBackend {
    dev: CudaDevice,
    layers: Vec<DevLayer>,
    output_norm: DevBuf<f32>,
    output: DevMat,
    rope_cos: DevBuf<f32>,
    rope_sin: DevBuf<f32>,
    kc: DevBuf<u16>,
    vc: DevBuf<u16>,
    layout: KvLayout,
    n_blocks: usize,
    s: DevScratch,
    meta: Meta,
    host_x: Vec<f32>,
    host_meta: Vec<i32>,
    max_tokens: usize,
    max_logits: usize,
    n_ctx: usize,
    max_blocks: usize,
    max_parts: usize,
    weight_bytes: usize,
    /// Whether a lone decode token's step runs as a graph (`EMBER_CUDA_GRAPH=off` disables it).
    use_graph: bool,
    /// That step's graph, captured at its first use.
    graph: Option<device::Graph>,
    /// The model file mapped into the device (`CudaWeights::Mapped`); declared last so that it
    /// is unregistered after every buffer (and after the stream is synchronized, see `Drop`).
    mapping: Option<HostMapping>,
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // No kernel may still read the weights (or any buffer) once they are released.
        let _ = self.dev.sync();
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.dev)
            .field("n_blocks", &self.n_blocks)
            .finish()
    }
}

/// The device's view of matrix `m`: a copy (`mapped` None), or its bytes inside the mapping.
fn upload_mat(
    dev: &CudaDevice,
    model: &Model,
    m: &Mat,
    mapped: Option<&HostMapping>,
) -> Result<DevMat> {
    if !SUPPORTED_WEIGHTS.contains(&m.ty) {
        let names: Vec<String> = SUPPORTED_WEIGHTS.iter().map(|t| t.to_string()).collect();
        return Err(backend_err(format!(
            "tensor {}: type {} is not supported by the CUDA backend yet (supported: {}); \
             use --backend cpu",
            m.name,
            m.ty,
            names.join(", ")
        )));
    }
    if m.rows > i32::MAX as usize || m.row_bytes > i32::MAX as usize {
        return Err(backend_err(format!("tensor {}: too large", m.name)));
    }
    let bytes = &model.file.bytes()[m.range.clone()];
    let (ptr, buf) = match mapped {
        Some(map) => {
            let ptr = map.device_ptr(bytes.as_ptr()).ok_or_else(|| {
                backend_err(format!("tensor {}: outside the mapped file", m.name))
            })?;
            (ptr, None)
        }
        None => {
            let buf = dev.upload(bytes, &m.name)?;
            (buf.ptr, Some(buf))
        }
    };
    Ok(DevMat {
        ty: m.ty,
        rows: m.rows,
        cols: m.cols,
        row_bytes: m.row_bytes,
        ptr,
        bytes: bytes.len(),
        _buf: buf,
    })
}

fn upload_vec(dev: &CudaDevice, model: &Model, v: &Vector, what: &str) -> Result<DevBuf<f32>> {
    let s = f32_slice(model.file.bytes(), v)
        .ok_or_else(|| backend_err(format!("{what}: misaligned f32 vector")))?;
    dev.upload(s, what)
}

impl CudaBackend {
    /// Open the device, upload the weights, allocate the KV arena and the scratch.
    pub(crate) fn new(model: &Model, z: BackendSizes) -> Result<CudaBackend> {
        let c = &model.config;
        if c.arch == crate::model::config::Arch::Gemma3 {
            return Err(backend_err(
                "the gemma3 architecture runs on the CPU backend only (no CUDA kernels for its \
                 per-head norms, GELU and sliding window yet)",
            ));
        }
        let dev = CudaDevice::open()?;
        let w = &model.weights;
        if !c.n_head.is_multiple_of(c.n_head_kv) {
            return Err(backend_err("n_head must be a multiple of n_head_kv"));
        }
        // Arena and weights must fit next to each other: say so before allocating.
        let arena_bytes = z.layout.block_bytes() * z.n_blocks;
        let (free, total) = dev.mem_info()?;
        let mapped = z.cuda_weights == CudaWeights::Mapped;
        let weights: usize = if mapped { 0 } else { model.weight_bytes() };
        if arena_bytes + weights > free {
            return Err(backend_err(format!(
                "the KV arena ({arena_bytes} bytes) and the weights ({weights} bytes) do not fit \
                 in the device's free memory ({free} of {total} bytes): lower the KV budget"
            )));
        }
        // Mapped: the whole file once (its tensors lie at arbitrary offsets inside it).
        let mapping = if mapped {
            Some(dev.map_host(model.file.bytes(), "the model file")?)
        } else {
            None
        };
        let mut weight_bytes = 0;
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, l) in w.layers.iter().enumerate() {
            let m = |x: &Mat| upload_mat(&dev, model, x, mapping.as_ref());
            let v = |x: &Vector, n: &str| upload_vec(&dev, model, x, &format!("blk.{i}.{n}"));
            let ov = |x: &Option<Vector>, n: &str| x.as_ref().map(|x| v(x, n)).transpose();
            let layer = DevLayer {
                attn_norm: v(&l.attn_norm, "attn_norm")?,
                wq: m(&l.wq)?,
                wk: m(&l.wk)?,
                wv: m(&l.wv)?,
                wo: m(&l.wo)?,
                bq: ov(&l.bq, "attn_q.bias")?,
                bk: ov(&l.bk, "attn_k.bias")?,
                bv: ov(&l.bv, "attn_v.bias")?,
                ffn_norm: v(&l.ffn_norm, "ffn_norm")?,
                w_gate: m(&l.w_gate)?,
                w_up: m(&l.w_up)?,
                w_down: m(&l.w_down)?,
            };
            for x in [
                &layer.wq,
                &layer.wk,
                &layer.wv,
                &layer.wo,
                &layer.w_gate,
                &layer.w_up,
                &layer.w_down,
            ] {
                weight_bytes += x.bytes;
            }
            layers.push(layer);
        }
        let output = upload_mat(&dev, model, &w.output, mapping.as_ref())?;
        let any_k = acts_of(output.ty) == Acts::Q8K
            || layers.iter().any(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .any(|m| acts_of(m.ty) == Acts::Q8K)
            });
        weight_bytes += output.bytes;
        let output_norm = upload_vec(&dev, model, &w.output_norm, "output_norm")?;
        let (cos, sin) =
            crate::model::forward::rope_tables(c, c.rope_base, model.rope_freqs(), z.n_ctx.max(1))?;
        let rope_cos = dev.upload(&cos, "RoPE cos table")?;
        let rope_sin = dev.upload(&sin, "RoPE sin table")?;

        let kv_len = z.layout.block_len() * z.n_blocks;
        let kc = dev.alloc::<u16>(kv_len, "the KV arena (keys)")?;
        let vc = dev.alloc::<u16>(kv_len, "the KV arena (values)")?;

        let t = z.max_tokens;
        let (e, qd, kvd, f) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let widest = e.max(qd).max(f);
        let max_blocks = z.n_ctx.div_ceil(z.layout.block_size);
        let max_parts = z.n_ctx.div_ceil(ATT_PART_LEN).max(1);
        let meta = Meta {
            pos: 0,
            block: t,
            row: 2 * t,
            logit_rows: 3 * t,
            tables: 3 * t + z.max_logits,
        };
        let meta_len = meta.tables + t * max_blocks;
        let parts = if max_parts > 1 { max_parts } else { 0 };
        let s = DevScratch {
            x: dev.alloc(t * e, "scratch x")?,
            xn: dev.alloc(t * e, "scratch xn")?,
            q: dev.alloc(t * qd, "scratch q")?,
            k: dev.alloc(t * kvd, "scratch k")?,
            v: dev.alloc(t * kvd, "scratch v")?,
            att: dev.alloc(t * qd, "scratch att")?,
            gate: dev.alloc(t * f, "scratch gate")?,
            up: dev.alloc(t * f, "scratch up")?,
            acts: dev.alloc(t * (widest / 32) * 36, "scratch activations")?,
            acts_k: dev.alloc(
                if any_k { t * (widest / 256) * 292 } else { 0 },
                "scratch activations (Q8_K)",
            )?,
            out_x: dev.alloc(z.max_logits * e, "scratch out_x")?,
            logits: dev.alloc(z.max_logits * c.n_vocab, "scratch logits")?,
            part_acc: dev.alloc(t * c.n_head * parts * c.head_dim, "attention partitions")?,
            part_ms: dev.alloc(t * c.n_head * parts * 2, "attention partitions")?,
            meta: dev.alloc(meta_len, "batch description")?,
        };
        dev.sync()?;
        Ok(CudaBackend {
            dev,
            layers,
            output_norm,
            output,
            rope_cos,
            rope_sin,
            kc,
            vc,
            layout: z.layout,
            n_blocks: z.n_blocks,
            s,
            meta,
            host_x: vec![0.0; t * e],
            host_meta: vec![0; meta_len],
            max_tokens: t,
            max_logits: z.max_logits,
            n_ctx: z.n_ctx,
            max_blocks,
            max_parts,
            weight_bytes,
            use_graph: std::env::var_os("EMBER_CUDA_GRAPH").is_none_or(|v| v != "off"),
            graph: None,
            mapping,
        })
    }

    /// The device.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    pub(crate) fn describe(&self) -> String {
        let ci = &self.dev.compile;
        format!(
            "cuda: {} (sm_{}{}), kernels {} in {:.1} ms, weights {:.1} MiB {}",
            self.dev.name,
            self.dev.cc.0,
            self.dev.cc.1,
            if ci.cache_hit {
                "loaded from the cache"
            } else {
                "compiled"
            },
            ci.ms,
            self.weight_bytes as f64 / (1 << 20) as f64,
            if self.mapping.is_some() {
                "mapped from host memory"
            } else {
                "on the device"
            }
        )
    }

    pub(crate) fn arena_bytes(&self) -> usize {
        (self.kc.len() + self.vc.len()) * 2
    }

    pub(crate) fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub(crate) fn layout(&self) -> KvLayout {
        self.layout
    }

    pub(crate) fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graph = None;
        }
    }

    pub(crate) fn copy_slots(&mut self, src: usize, dst: usize, n_slots: usize) -> Result<()> {
        let l = self.layout;
        if src >= self.n_blocks || dst >= self.n_blocks {
            return Err(backend_err("copy_slots: block out of range"));
        }
        self.dev.copy_slots(&CopySlotsParams {
            kc: self.kc.ptr,
            vc: self.vc.ptr,
            src: src as i32,
            dst: dst as i32,
            n_elems: (n_slots.min(l.block_size) * l.head_dim) as i32,
            tile: l.tile_len() as i32,
            n_tiles: (l.n_layer * l.n_kv_head) as i32,
            pad: 0,
        })
    }

    /// Quantize `n_rows` rows of `x` (`n_cols` wide) to the activation types the weights in
    /// `mats` take (Q8_1 and/or Q8_K; nothing for float weights, which read `x` itself).
    fn quantize(&self, x: u64, n_rows: usize, n_cols: usize, mats: &[&DevMat]) -> Result<()> {
        let p = |y| QuantizeParams {
            x,
            y,
            n_rows: n_rows as i32,
            n_cols: n_cols as i32,
            x_stride: n_cols as i32,
            pad: 0,
        };
        if mats.iter().any(|m| acts_of(m.ty) == Acts::Q8_1) {
            self.dev.quantize_q8_1(&p(self.s.acts.ptr))?;
        }
        if mats.iter().any(|m| acts_of(m.ty) == Acts::Q8K) {
            self.dev.quantize_q8_k(&p(self.s.acts_k.ptr))?;
        }
        Ok(())
    }

    /// `out (+)= x W^T` for `n_tok` rows of `x` (f32, `w.cols` wide), already quantized by
    /// [`CudaBackend::quantize`] where `w` takes quantized activations.
    fn matmul(&self, w: &DevMat, x: u64, out: u64, n_tok: usize, accumulate: bool) -> Result<()> {
        self.dev.matmul(
            w.ty,
            &MatmulParams {
                w: w.ptr,
                a: match acts_of(w.ty) {
                    Acts::F32 => x,
                    Acts::Q8_1 => self.s.acts.ptr,
                    Acts::Q8K => self.s.acts_k.ptr,
                },
                out,
                rows: w.rows as i32,
                cols: w.cols as i32,
                n_tok: n_tok as i32,
                row_bytes: w.row_bytes as i32,
                accumulate: i32::from(accumulate),
                pad: 0,
            },
        )
    }

    fn rms_norm(
        &self,
        x: u64,
        w: &DevBuf<f32>,
        out: u64,
        rows: u64,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        self.dev.rms_norm(&RmsNormParams {
            x,
            w: w.ptr,
            out,
            rows,
            n_rows: n as i32,
            n_cols: w.len() as i32,
            eps,
            pad: 0,
        })
    }

    fn bias(&self, x: u64, b: &Option<DevBuf<f32>>, n_tok: usize) -> Result<()> {
        match b {
            None => Ok(()),
            Some(b) => self.dev.add_bias(&BiasParams {
                x,
                b: b.ptr,
                n_rows: n_tok as i32,
                n_cols: b.len() as i32,
            }),
        }
    }

    /// Describe the batch on the host: embeddings, positions, KV blocks, table rows, logit rows.
    /// Returns (table rows used, largest position).
    fn stage_batch(
        &mut self,
        model: &Model,
        batch: &[BatchToken],
        tables: &(impl BlockTables + ?Sized),
    ) -> (usize, usize) {
        let e = model.config.n_embd;
        let emb = &model.weights.token_embd;
        let emb_bytes = &model.file.bytes()[emb.range.clone()];
        let bs = self.layout.block_size;
        let m = self.meta;
        let mut n_rows = 0;
        let mut max_pos = 0;
        let mut n_logits = 0;
        for (t, b) in batch.iter().enumerate() {
            let row = &emb_bytes[b.token as usize * emb.row_bytes..][..emb.row_bytes];
            (emb.kernels.to_float)(row, &mut self.host_x[t * e..(t + 1) * e]);
            let table = tables.table(b.seq).expect("validated");
            if t == 0 || b.seq != batch[t - 1].seq {
                let dst = &mut self.host_meta[m.tables + n_rows * self.max_blocks..];
                for (d, blk) in dst.iter_mut().zip(table.iter().take(self.max_blocks)) {
                    *d = blk.index() as i32;
                }
                n_rows += 1;
            }
            self.host_meta[m.pos + t] = b.pos as i32;
            self.host_meta[m.block + t] = table[b.pos / bs].index() as i32;
            self.host_meta[m.row + t] = (n_rows - 1) as i32;
            if b.logits {
                self.host_meta[m.logit_rows + n_logits] = t as i32;
                n_logits += 1;
            }
            max_pos = max_pos.max(b.pos);
        }
        (n_rows, max_pos)
    }

    /// Run `model` over `batch` on the device; see [`Model::forward`].
    pub(crate) fn forward(
        &mut self,
        model: &Model,
        batch: &[BatchToken],
        tables: &(impl BlockTables + ?Sized),
        scratch: &mut Scratch,
    ) -> Result<usize> {
        let c = &model.config;
        let bs = self.layout.block_size;
        let n_logits = validate_batch(
            model,
            batch,
            tables,
            bs,
            self.max_tokens.min(scratch.max_tokens()),
            self.max_logits.min(scratch.max_logits()),
            self.n_ctx,
        )?;
        let n_tok = batch.len();
        let e = c.n_embd;
        let (n_rows, max_pos) = self.stage_batch(model, batch, tables);
        let m = self.meta;
        let staged = m.tables + n_rows * self.max_blocks;
        self.dev.write(&mut self.s.x, &self.host_x[..n_tok * e])?;
        self.dev
            .write(&mut self.s.meta, &self.host_meta[..staged])?;

        // A lone decode token (one logit row) always launches every partition the context can
        // have (those past its position are empty and change nothing), so that its launches do
        // not depend on the position and replay from one graph.
        let decode1 = n_tok == 1 && n_logits == 1;
        let part_len = ATT_PART_LEN;
        let n_parts = if decode1 {
            self.max_parts
        } else {
            (max_pos + 1).div_ceil(part_len).clamp(1, self.max_parts)
        };
        if decode1 && self.use_graph {
            // Captured at the first such step, replayed after: one launch instead of ~15 per
            // layer. Its kernels read positions and block tables from `meta`, written above.
            if self.graph.is_none() {
                self.dev.begin_capture()?;
                let recorded = self.launch_step(c, 1, 1, part_len, n_parts);
                let graph = self.dev.end_capture();
                recorded?;
                self.graph = Some(graph?);
            }
            if let Some(g) = &self.graph {
                self.dev.launch_graph(g)?;
            }
        } else {
            self.launch_step(c, n_tok, n_logits, part_len, n_parts)?;
        }
        if n_logits == 0 {
            self.dev.sync()?;
            return Ok(0);
        }
        let mut logits = scratch.take_logits();
        let r = self
            .dev
            .read(&self.s.logits, &mut logits[..n_logits * c.n_vocab]);
        scratch.put_logits(logits);
        r?;
        Ok(n_logits)
    }

    /// Queue every kernel of one step over `n_tok` staged tokens (`meta`, `x`), the logits of
    /// `n_logits` rows included; the attention split is `n_parts` × `part_len` positions.
    fn launch_step(
        &self,
        c: &crate::model::config::Config,
        n_tok: usize,
        n_logits: usize,
        part_len: usize,
        n_parts: usize,
    ) -> Result<()> {
        let (e, d, hq, hkv) = (c.n_embd, c.head_dim, c.n_head, c.n_head_kv);
        let (qd, f) = (c.q_dim(), c.n_ff);
        let bs = self.layout.block_size;
        let m = self.meta;
        let s = &self.s;
        for (l, lw) in self.layers.iter().enumerate() {
            // ---- attention ----
            self.rms_norm(s.x.ptr, &lw.attn_norm, s.xn.ptr, 0, n_tok, c.rms_eps)?;
            self.quantize(s.xn.ptr, n_tok, e, &[&lw.wq, &lw.wk, &lw.wv])?;
            self.matmul(&lw.wq, s.xn.ptr, s.q.ptr, n_tok, false)?;
            self.matmul(&lw.wk, s.xn.ptr, s.k.ptr, n_tok, false)?;
            self.matmul(&lw.wv, s.xn.ptr, s.v.ptr, n_tok, false)?;
            self.bias(s.q.ptr, &lw.bq, n_tok)?;
            self.bias(s.k.ptr, &lw.bk, n_tok)?;
            self.bias(s.v.ptr, &lw.bv, n_tok)?;
            self.dev.rope_kv_write(&RopeKvParams {
                q: s.q.ptr,
                k: s.k.ptr,
                v: s.v.ptr,
                kc: self.kc.ptr,
                vc: self.vc.ptr,
                cos: self.rope_cos.ptr,
                sin: self.rope_sin.ptr,
                tok_pos: s.meta.at(m.pos),
                tok_block: s.meta.at(m.block),
                n_tok: n_tok as i32,
                n_head: hq as i32,
                n_head_kv: hkv as i32,
                head_dim: d as i32,
                block_size: bs as i32,
                n_layer: c.n_layer as i32,
                layer: l as i32,
                neox: i32::from(c.rope_pairing == RopePairing::Neox),
            })?;
            self.dev.attention(&AttnParams {
                q: s.q.ptr,
                out: s.att.ptr,
                kc: self.kc.ptr,
                vc: self.vc.ptr,
                tables: s.meta.at(m.tables),
                tok_pos: s.meta.at(m.pos),
                tok_row: s.meta.at(m.row),
                part_acc: s.part_acc.ptr,
                part_ms: s.part_ms.ptr,
                n_tok: n_tok as i32,
                n_head: hq as i32,
                n_head_kv: hkv as i32,
                head_dim: d as i32,
                block_size: bs as i32,
                n_layer: c.n_layer as i32,
                layer: l as i32,
                max_blocks: self.max_blocks as i32,
                part_len: part_len as i32,
                n_parts: n_parts as i32,
                scale: 1.0 / (d as f32).sqrt(),
                pad: 0,
            })?;
            self.quantize(s.att.ptr, n_tok, qd, &[&lw.wo])?;
            self.matmul(&lw.wo, s.att.ptr, s.x.ptr, n_tok, true)?;

            // ---- feed-forward (SwiGLU) ----
            self.rms_norm(s.x.ptr, &lw.ffn_norm, s.xn.ptr, 0, n_tok, c.rms_eps)?;
            self.quantize(s.xn.ptr, n_tok, e, &[&lw.w_gate, &lw.w_up])?;
            self.matmul(&lw.w_gate, s.xn.ptr, s.gate.ptr, n_tok, false)?;
            self.matmul(&lw.w_up, s.xn.ptr, s.up.ptr, n_tok, false)?;
            let n = n_tok * f;
            self.dev.swiglu(&SwigluParams {
                gate: s.gate.ptr,
                up: s.up.ptr,
                n: n as i32,
                n_vec: (n / 8 * 8) as i32,
            })?;
            self.quantize(s.gate.ptr, n_tok, f, &[&lw.w_down])?;
            self.matmul(&lw.w_down, s.gate.ptr, s.x.ptr, n_tok, true)?;
        }

        if n_logits == 0 {
            return Ok(());
        }
        self.rms_norm(
            s.x.ptr,
            &self.output_norm,
            s.out_x.ptr,
            s.meta.at(m.logit_rows),
            n_logits,
            c.rms_eps,
        )?;
        self.quantize(s.out_x.ptr, n_logits, e, &[&self.output])?;
        self.matmul(&self.output, s.out_x.ptr, s.logits.ptr, n_logits, false)?;
        Ok(())
    }
}
