//! The CUDA backend: the forward pass's operations ([`Executor`](crate::model::Executor)) as
//! kernels on one stream, over a KV arena in device memory. It knows no architecture: the model
//! code drives it exactly as it drives the CPU (same activation quantization, same RoPE tables,
//! same f16 KV arena layout, same GELU table), so outputs agree with the CPU reference to
//! rounding (runtime/tests/cuda/).
//!
//! Memory is taken once, at start-up: the weight matrices are uploaded as they are in the GGUF
//! file (ggml block layouts), or read in place from the mapped file (`CudaWeights::Mapped`); the
//! KV arena is one `cuMemAlloc` of the same budget the CPU arena would have (not managed memory:
//! it is uncached on Jetson), and the scratch buffers are sized for `max_batch_tokens`. A step
//! looks the token embeddings up on the CPU (`[T, n_embd]` f32) and copies them, the positions
//! and the block tables up, queues every operation, and copies the requested logit rows back
//! into the CPU [`Scratch`], where the sampler reads them. A decode step (one token per sequence,
//! each wanting logits) is captured into a graph the first time its shape (tokens, attention
//! partitions) comes, and replayed after (see `executor.rs`).
//!
//! Layout: `device.rs` (context, buffers, copies, graphs), `compile.rs` (NVRTC and its cache),
//! `module.rs` (the kernels it holds), `launch.rs` (one launcher per kernel), `error.rs`, `params.rs` (the kernels' parameter structs),
//! `executor.rs` (the operations), `kernels/` (the CUDA C sources, compiled at start-up).

mod compile;
pub mod device;
mod error;
mod executor;
mod launch;
pub mod module;
pub mod params;
#[doc(hidden)]
pub mod testing;

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use ember_kernels::GgmlType;

pub use compile::{kernel_source, CompileInfo};
pub use device::{driver_present, CudaDevice, DevBuf, HostMapping, MMV1_ROWS};
use error::backend_err;
pub use launch::{
    MmqTiles, ARGMAX_PARTS, ATT_PART_LEN, MMQ_DIRECT_TOKENS, MMQ_DIRECT_TOKENS_Q4K, MMQ_MAX_SPLIT,
    MMQ_MIN_TOKENS, MMQ_MIN_TOKENS_KQUANT, MMQ_NARROW_MAX_TOKENS_Q4K, MMQ_SPLIT_BLOCKS_PER_SM,
    MMQ_SPLIT_FLOATS, MMQ_SPLIT_MIN_STEPS, MMQ_SPLIT_TILES,
};
pub use module::SUPPORTED_WEIGHTS;
use module::{acts_of, Acts};
use params::*;

use super::{BackendSizes, CudaWeights};
use crate::error::Result;
use crate::kv::{KvGroups, KvLayout};
use crate::model::config::FfnAct;
use crate::model::executor::Widths;
use crate::model::weights::{f32_slice, Mat, Vector};
use crate::model::{Act, BatchToken, BlockTables, Model, Scratch};
use crate::sampler::MAX_DEVICE_TOP;

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
    /// A projection before its residual add `[T, E]`.
    proj: DevBuf<f32>,
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
    /// Greedy argmax of each logits row `[L]` (-1: the row holds a NaN).
    ids: DevBuf<i32>,
    /// The argmax's per-part bests `[L, ARGMAX_PARTS, 2]`.
    ids_part: DevBuf<i32>,
    /// The most likely tokens of the rows that sample from candidates, in one buffer the host
    /// reads in one copy (`params::TopkParams::out`): up to `[L, MAX_DEVICE_TOP]` ids and raw
    /// logits, and `[L, 2]` counts.
    top: DevBuf<u32>,
    /// Attention partitions `[T*Hq, parts, D]` and `[T*Hq, parts, 2]`.
    part_acc: DevBuf<f32>,
    part_ms: DevBuf<f32>,
    /// Batch description (see [`Meta`]).
    meta: DevBuf<i32>,
}

impl DevScratch {
    fn buf(&self, a: Act) -> &DevBuf<f32> {
        match a {
            Act::X => &self.x,
            Act::Xn => &self.xn,
            Act::Q => &self.q,
            Act::K => &self.k,
            Act::V => &self.v,
            Act::Att => &self.att,
            Act::Proj => &self.proj,
            Act::Gate => &self.gate,
            Act::Up => &self.up,
            Act::OutX => &self.out_x,
            Act::Logits => &self.logits,
        }
    }
}

/// What a decode step's graph depends on: its tokens (one per sequence) and its attention
/// partitions (rounded up to a power of two, or `max_parts`, so that few shapes come).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GraphKey {
    n_tok: usize,
    n_parts: usize,
}

/// Most decode-step graphs kept (each a few hundred nodes; a server whose batch sizes wander
/// captures one per size and partition count it meets).
const MAX_GRAPHS: usize = 64;

/// Offsets of the batch description in `meta` (i32 elements).
#[derive(Clone, Copy)]
struct Meta {
    pos: usize,
    block: usize,
    row: usize,
    logit_rows: usize,
    /// The logits rows whose most likely tokens the step selects (`topk.cu`).
    top_rows: usize,
    tables: usize,
}

/// Row widths of the activation buffers, and the model's hyper-parameters the kernels take.
#[derive(Clone, Copy, Debug)]
struct Dims {
    widths: Widths,
    embd: usize,
    ff: usize,
    vocab: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    rms_eps: f32,
    neox: bool,
}

impl Dims {
    fn width(&self, a: Act) -> usize {
        self.widths.of_act(a)
    }
}

/// How the current step's operations reach the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Launched as they come.
    Direct,
    /// Recorded into the lone-decode graph (launched at `finish`).
    Capture,
    /// Already in the graph: operations queue nothing, `finish` replays it.
    Replay,
}

/// Activation formats (Q8_1, Q8_K) that the products reading an operation's output take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Formats {
    q8_1: bool,
    q8_k: bool,
}

impl Formats {
    fn of<'m>(mats: &HashMap<usize, DevMat>, ws: impl IntoIterator<Item = &'m Mat>) -> Formats {
        let mut f = Formats::default();
        for w in ws {
            match mats.get(&w.range.start).map(|m| acts_of(m.ty)) {
                Some(Acts::Q8_1) => f.q8_1 = true,
                Some(Acts::Q8K) => f.q8_k = true,
                Some(Acts::F32) | None => {}
            }
        }
        f
    }

    fn any(self) -> bool {
        self.q8_1 || self.q8_k
    }

    /// Whether these formats include every one of `need`.
    fn covers(self, need: Formats) -> bool {
        (self.q8_1 || !need.q8_1) && (self.q8_k || !need.q8_k)
    }
}

/// The operations that quantize their own output for the products after them (one launch
/// instead of two; the same bits): the RMSNorms before Q/K/V, gate/up and the logits, and the
/// gated activation before the down product. Each entry names the formats its readers take over
/// every layer.
#[derive(Clone, Copy, Debug, Default)]
struct PreQuant {
    /// `Act::Xn` (read by Q/K/V and gate/up).
    xn: Formats,
    /// `Act::OutX` (read by the output matrix).
    out_x: Formats,
    /// `Act::Gate` after the gated activation (read by the down product).
    gate: Formats,
}

impl PreQuant {
    fn of(model: &Model, mats: &HashMap<usize, DevMat>) -> PreQuant {
        let ls = &model.weights.layers;
        PreQuant {
            xn: Formats::of(
                mats,
                ls.iter()
                    .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.w_gate, &l.w_up]),
            ),
            out_x: Formats::of(mats, [&model.weights.output]),
            gate: Formats::of(mats, ls.iter().map(|l| &l.w_down)),
        }
    }

    fn of_act(&self, a: Act) -> Formats {
        match a {
            Act::Xn => self.xn,
            Act::OutX => self.out_x,
            Act::Gate => self.gate,
            _ => Formats::default(),
        }
    }
}

/// What the quantized-activation buffers (`acts`, `acts_k`) hold: the first `rows` rows of
/// `act` in `formats`, as the last operation that wrote them left them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quantized {
    act: Act,
    rows: usize,
    formats: Formats,
}

/// The CUDA backend of one model.
pub struct CudaBackend {
    dev: CudaDevice,
    /// Weight matrices by their byte offset in the file (a tied output is the embedding's).
    mats: HashMap<usize, DevMat>,
    /// f32 vectors (norm weights, biases) by their byte offset in the file.
    vecs: HashMap<usize, DevBuf<f32>>,
    rope_cos: DevBuf<f32>,
    rope_sin: DevBuf<f32>,
    /// RoPE tables of the sliding-window layers' base (None without such layers).
    rope_swa: Option<(DevBuf<f32>, DevBuf<f32>)>,
    /// The f16 GELU table (GELU-gated models only).
    gelu: Option<DevBuf<u16>>,
    kc: DevBuf<u16>,
    vc: DevBuf<u16>,
    layout: KvLayout,
    /// The arena's layer groups: each layer's block table and slot.
    groups: KvGroups,
    /// Table rows staged for the current step (one per sequence, in each group).
    table_rows: usize,
    n_blocks: usize,
    dims: Dims,
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
    /// The current step: tokens, logit rows, attention partitions, launch mode.
    n_tok: usize,
    n_logits: usize,
    /// Logits rows listed at `meta.top_rows`, and the most candidates one of them asks for.
    n_top: usize,
    top_k: usize,
    n_parts: usize,
    mode: Mode,
    /// Whether decode steps run as graphs (`EMBER_CUDA_GRAPH=off` disables it).
    use_graph: bool,
    /// The current step's graph shape, where it is a decode step (one token per sequence, each
    /// wanting logits).
    graph_key: Option<GraphKey>,
    /// Decode steps' graphs, one per shape, each captured at its first use (at most
    /// [`MAX_GRAPHS`]; steps of other shapes then launch directly).
    graphs: Vec<(GraphKey, device::Graph)>,
    /// Which outputs are quantized by the operation that writes them.
    prequant: PreQuant,
    /// Whether products of one input run as one launch (`EMBER_CUDA_FUSE=off`: neither that
    /// nor [`PreQuant`], for comparisons).
    fuse: bool,
    /// What the quantized-activation buffers hold now (None: nothing known).
    quantized: Option<Quantized>,
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

/// Every matrix and vector the forward pass reads, on the device (or mapped), by file offset;
/// and the bytes of matrices uploaded.
#[allow(clippy::type_complexity)]
fn upload_weights(
    dev: &CudaDevice,
    model: &Model,
    mapping: Option<&HostMapping>,
) -> Result<(HashMap<usize, DevMat>, HashMap<usize, DevBuf<f32>>, usize)> {
    let mut mats = HashMap::new();
    let mut weight_bytes = 0;
    for m in model.weights.matrices() {
        if let Entry::Vacant(slot) = mats.entry(m.range.start) {
            let dm = upload_mat(dev, model, m, mapping)?;
            weight_bytes += dm.bytes;
            slot.insert(dm);
        }
    }
    let mut vecs = HashMap::new();
    for v in model.weights.vectors() {
        if let Entry::Vacant(slot) = vecs.entry(v.range.start) {
            slot.insert(upload_vec(dev, model, v, "a norm or bias")?);
        }
    }
    Ok((mats, vecs, weight_bytes))
}

impl DevScratch {
    /// Scratch for batches of `z.max_tokens` tokens and `z.max_logits` logit rows.
    fn new(
        dev: &CudaDevice,
        c: &crate::model::Config,
        z: BackendSizes,
        any_k: bool,
        max_parts: usize,
        meta_len: usize,
    ) -> Result<DevScratch> {
        let t = z.max_tokens;
        let (e, qd, kvd, f) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let widest = e.max(qd).max(f);
        let parts = if max_parts > 1 { max_parts } else { 0 };
        Ok(DevScratch {
            x: dev.alloc(t * e, "scratch x")?,
            xn: dev.alloc(t * e, "scratch xn")?,
            q: dev.alloc(t * qd, "scratch q")?,
            k: dev.alloc(t * kvd, "scratch k")?,
            v: dev.alloc(t * kvd, "scratch v")?,
            att: dev.alloc(t * qd, "scratch att")?,
            proj: dev.alloc(t * e, "scratch proj")?,
            gate: dev.alloc(t * f, "scratch gate")?,
            up: dev.alloc(t * f, "scratch up")?,
            acts: dev.alloc(t * (widest / 32) * 36, "scratch activations")?,
            acts_k: dev.alloc(
                if any_k { t * (widest / 256) * 292 } else { 0 },
                "scratch activations (Q8_K)",
            )?,
            out_x: dev.alloc(z.max_logits * e, "scratch out_x")?,
            logits: dev.alloc(z.max_logits * c.n_vocab, "scratch logits")?,
            ids: dev.alloc(z.max_logits, "scratch argmax")?,
            ids_part: dev.alloc(z.max_logits * 2 * ARGMAX_PARTS, "scratch argmax parts")?,
            top: dev.alloc(
                params::topk_out_len(z.max_logits, MAX_DEVICE_TOP),
                "scratch top candidates",
            )?,
            part_acc: dev.alloc(t * c.n_head * parts * c.head_dim, "attention partitions")?,
            part_ms: dev.alloc(t * c.n_head * parts * 2, "attention partitions")?,
            meta: dev.alloc(meta_len, "batch description")?,
        })
    }
}

impl CudaBackend {
    /// Open the device, upload the weights, allocate the KV arena and the scratch.
    pub(crate) fn new(model: &Model, z: BackendSizes, groups: &KvGroups) -> Result<CudaBackend> {
        let c = &model.config;
        let dev = CudaDevice::open()?;
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
        let (mats, vecs, weight_bytes) = upload_weights(&dev, model, mapping.as_ref())?;
        let any_k = mats.values().any(|m| acts_of(m.ty) == Acts::Q8K);
        let fuse = std::env::var_os("EMBER_CUDA_FUSE").is_none_or(|v| v != "off");
        let prequant = if fuse {
            PreQuant::of(model, &mats)
        } else {
            PreQuant::default()
        };
        let n_ctx = z.n_ctx.max(1);
        let rope = crate::model::scratch::rope_tables;
        let (cos, sin) = rope(c, c.rope_base, model.rope_freqs(), n_ctx)?;
        let rope_cos = dev.upload(&cos, "RoPE cos table")?;
        let rope_sin = dev.upload(&sin, "RoPE sin table")?;
        let rope_swa = if c.swa_layers.contains(&true) {
            let (cos, sin) = rope(c, c.rope_base_swa, model.rope_freqs(), n_ctx)?;
            Some((
                dev.upload(&cos, "RoPE cos table (sliding window)")?,
                dev.upload(&sin, "RoPE sin table (sliding window)")?,
            ))
        } else {
            None
        };
        let gelu = match c.ffn_act {
            FfnAct::Gelu => Some(dev.upload(super::gelu::table(), "the GELU table")?),
            FfnAct::Silu => None,
        };

        let kv_len = z.layout.keys_bytes() / 2 * z.n_blocks;
        let kc = dev.alloc::<u16>(kv_len, "the KV arena (keys)")?;
        let vc = dev.alloc::<u16>(kv_len, "the KV arena (values)")?;

        let t = z.max_tokens;
        let (e, f) = (c.n_embd, c.n_ff);
        let max_blocks = z.n_ctx.div_ceil(z.layout.block_size);
        let max_parts = z.n_ctx.div_ceil(ATT_PART_LEN).max(1);
        // Per token its block in each layer group, and the block tables of every group.
        let n_groups = groups.len();
        let meta = Meta {
            pos: 0,
            block: t,
            row: (1 + n_groups) * t,
            logit_rows: (2 + n_groups) * t,
            top_rows: (2 + n_groups) * t + z.max_logits,
            tables: (2 + n_groups) * t + 2 * z.max_logits,
        };
        let meta_len = meta.tables + n_groups * t * max_blocks;
        let s = DevScratch::new(&dev, c, z, any_k, max_parts, meta_len)?;
        dev.sync()?;
        Ok(CudaBackend {
            dev,
            mats,
            vecs,
            rope_cos,
            rope_sin,
            rope_swa,
            gelu,
            kc,
            vc,
            layout: z.layout,
            groups: groups.clone(),
            table_rows: 0,
            n_blocks: z.n_blocks,
            dims: Dims {
                widths: Widths::of(c),
                embd: e,
                ff: f,
                vocab: c.n_vocab,
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: c.head_dim,
                rms_eps: c.rms_eps,
                neox: c.rope_pairing == crate::model::RopePairing::Neox,
            },
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
            n_tok: 0,
            n_logits: 0,
            n_top: 0,
            top_k: 0,
            n_parts: 1,
            mode: Mode::Direct,
            use_graph: std::env::var_os("EMBER_CUDA_GRAPH").is_none_or(|v| v != "off"),
            graph_key: None,
            graphs: Vec::new(),
            prequant,
            fuse,
            quantized: None,
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

    /// Decode-step graphs captured so far.
    pub(crate) fn graph_count(&self) -> usize {
        self.graphs.len()
    }

    pub(crate) fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graphs.clear();
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
            n_elems: (n_slots.min(l.block_size) * l.row_bytes() / 2) as i32,
            tile: (l.tile_bytes() / 2) as i32,
            n_tiles: (l.block_layers * l.n_kv_head) as i32,
            pad: 0,
        })
    }

    /// Rotate the keys of `block` back by `delta` positions, every layer slot (see
    /// [`Backend::shift_keys`](super::Backend::shift_keys)).
    pub(crate) fn shift_keys(&mut self, block: usize, delta: usize, swa: &[bool]) -> Result<()> {
        let l = self.layout;
        if block >= self.n_blocks
            || delta == 0
            || delta >= self.n_ctx
            || swa.len() != l.block_layers
        {
            return Err(backend_err("shift_keys: block or delta out of range"));
        }
        for (layer, &sliding) in swa.iter().enumerate() {
            let (cos, sin) = match (&self.rope_swa, sliding) {
                (Some((c, s)), true) => (c.ptr, s.ptr),
                _ => (self.rope_cos.ptr, self.rope_sin.ptr),
            };
            self.dev.shift_keys(&ShiftKeysParams {
                kc: self.kc.ptr,
                cos,
                sin,
                block: block as i32,
                layer: layer as i32,
                n_layer: l.block_layers as i32,
                n_head_kv: l.n_kv_head as i32,
                head_dim: l.head_dim as i32,
                block_size: l.block_size as i32,
                delta: delta as i32,
                neox: i32::from(self.dims.neox),
                kv_type: l.kv_type.code() as i32,
                row_u16: (l.row_bytes() / 2) as i32,
                rot_k: l.kv_type.key_rotation(l.head_dim).unwrap_or(0) as i32,
                pad: 0,
            })?;
        }
        Ok(())
    }

    /// Copy block `b` of the arena to the host (little-endian f16; lengths checked by the
    /// caller).
    pub(crate) fn read_block(&self, b: usize, k: &mut [u8], v: &mut [u8]) -> Result<()> {
        let n = self.layout.keys_bytes() / 2;
        let mut bits = vec![0u16; n];
        for (buf, out) in [(&self.kc, k), (&self.vc, v)] {
            self.dev.read_at(buf, b * n, &mut bits)?;
            for (o, x) in out.chunks_exact_mut(2).zip(&bits) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        Ok(())
    }

    /// Overwrite block `b` of the arena from the host (little-endian f16; lengths checked by
    /// the caller). Ordered on the stream before every later step.
    pub(crate) fn write_block(&mut self, b: usize, k: &[u8], v: &[u8]) -> Result<()> {
        let n = self.layout.keys_bytes() / 2;
        let bits = |x: &[u8]| -> Vec<u16> {
            x.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        let (kb, vb) = (bits(k), bits(v));
        self.dev.write_at(&mut self.kc, b * n, &kb)?;
        self.dev.write_at(&mut self.vc, b * n, &vb)?;
        // The host buffers are the caller's and may be reused at once.
        self.dev.sync()
    }

    /// Run `model` over `batch` on the device; see [`Model::forward`].
    pub(crate) fn forward(
        &mut self,
        model: &Model,
        batch: &[BatchToken],
        tables: &(impl BlockTables + ?Sized),
        scratch: &mut Scratch,
    ) -> Result<usize> {
        let mut ex = executor::CudaExecutor::new(self, model, scratch);
        let r = model.forward(&mut ex, batch, tables);
        if r.is_err() && self.mode == Mode::Capture {
            // Leave the stream usable: end the capture and drop what it recorded.
            let _ = self.dev.end_capture();
        }
        self.mode = Mode::Direct;
        r
    }
}
