//! Host-slice wrappers of single kernels, for tests and benchmarks that compare each kernel with
//! the CPU reference (`runtime/tests/cuda/`, `benches/cuda_attention.rs`). Each call uploads its inputs,
//! launches one kernel and reads the output back; nothing here is used by the forward pass.

use ember_kernels::GgmlType;

use super::device::{CudaDevice, DevBuf};
use super::error::backend_err;
use super::params::*;
use crate::error::Result;

/// Quantize `n_rows` rows of `x` (`n_cols` each, a multiple of 32) to Q8_1 bytes.
pub fn quantize_q8_1(dev: &CudaDevice, x: &[f32], n_rows: usize, n_cols: usize) -> Result<Vec<u8>> {
    let xd = dev.upload(x, "x")?;
    let n = n_rows * n_cols / 32 * 36;
    let y = dev.alloc::<u8>(n, "y")?;
    dev.quantize_q8_1(&QuantizeParams {
        x: xd.ptr,
        y: y.ptr,
        n_rows: n_rows as i32,
        n_cols: n_cols as i32,
        x_stride: n_cols as i32,
        pad: 0,
    })?;
    let mut out = vec![0u8; n];
    dev.read(&y, &mut out)?;
    Ok(out)
}

/// Quantize `n_rows` rows of `x` (`n_cols` each, a multiple of 256) to Q8_K bytes.
pub fn quantize_q8_k(dev: &CudaDevice, x: &[f32], n_rows: usize, n_cols: usize) -> Result<Vec<u8>> {
    let xd = dev.upload(x, "x")?;
    let n = n_rows * n_cols / 256 * 292;
    let y = dev.alloc::<u8>(n, "y")?;
    dev.quantize_q8_k(&QuantizeParams {
        x: xd.ptr,
        y: y.ptr,
        n_rows: n_rows as i32,
        n_cols: n_cols as i32,
        x_stride: n_cols as i32,
        pad: 0,
    })?;
    let mut out = vec![0u8; n];
    dev.read(&y, &mut out)?;
    Ok(out)
}

/// `out[t][r] = W[r] . a[t]`: `w` is `rows` rows of `ty` blocks, `acts` `n_tok` rows of Q8_1
/// (Q8_K for K-quant weights, little-endian f32 for F32, F16 and BF16 weights).
/// With `init`, the output starts from it and the product is added (`accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dev: &CudaDevice,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    acts: &[u8],
    n_tok: usize,
    init: Option<&[f32]>,
    tiles: super::MmqTiles,
) -> Result<Vec<f32>> {
    let wd = dev.upload(w, "w")?;
    let ad = dev.upload(acts, "acts")?;
    let mut out = dev.alloc::<f32>(n_tok * rows, "out")?;
    if let Some(i) = init {
        dev.write(&mut out, i)?;
    }
    dev.matmul_tiles(
        ty,
        &MatmulParams::one(
            wd.ptr,
            ad.ptr,
            out.ptr,
            rows,
            cols,
            n_tok,
            w.len() / rows,
            init.is_some(),
        ),
        tiles,
    )?;
    let mut h = vec![0f32; n_tok * rows];
    dev.read(&out, &mut h)?;
    Ok(h)
}

/// Up to three products of the same activations in one launch (as the forward pass fuses Q/K/V
/// and gate/up): `ws` holds each product's weights (whole rows of `ty`, `cols` wide) and row
/// count; returns each product's `[n_tok, rows]` output.
pub fn matmul_fused(
    dev: &CudaDevice,
    ty: GgmlType,
    ws: &[(&[u8], usize)],
    cols: usize,
    acts: &[u8],
    n_tok: usize,
    tiles: super::MmqTiles,
) -> Result<Vec<Vec<f32>>> {
    let ad = dev.upload(acts, "acts")?;
    let mut bufs = Vec::new();
    for &(w, rows) in ws {
        bufs.push((
            dev.upload(w, "w")?,
            dev.alloc::<f32>(n_tok * rows, "out")?,
            rows,
        ));
    }
    let Some((w0, o0, r0)) = bufs.first() else {
        return Ok(Vec::new());
    };
    let mut p = MatmulParams::one(
        w0.ptr,
        ad.ptr,
        o0.ptr,
        *r0,
        cols,
        n_tok,
        ws[0].0.len() / r0,
        false,
    );
    for (w, o, rows) in &bufs[1..] {
        if !p.push(w.ptr, o.ptr, *rows) {
            return Err(backend_err("at most three products in one launch"));
        }
    }
    dev.matmul_tiles(ty, &p, tiles)?;
    let mut outs = Vec::new();
    for (_, o, rows) in &bufs {
        let mut h = vec![0f32; n_tok * rows];
        dev.read(o, &mut h)?;
        outs.push(h);
    }
    Ok(outs)
}

/// RMSNorm of every row of `x` (rows of `w.len()`), or of the rows listed in `rows`.
pub fn rms_norm(
    dev: &CudaDevice,
    x: &[f32],
    w: &[f32],
    rows: Option<&[i32]>,
    eps: f32,
) -> Result<Vec<f32>> {
    rms_norm_with(dev, x, w, rows, eps, false).map(|(h, _)| h)
}

/// Output and quantizations (Q8_1 bytes, and Q8_K bytes where the row width is a multiple of
/// 256, else empty) of an operation that quantizes what it writes.
pub type Quantized = (Vec<f32>, (Vec<u8>, Vec<u8>));

/// [`rms_norm`] of every row, the kernel also quantizing its output (the fused form the
/// forward pass launches before a product).
pub fn rms_norm_quantized(dev: &CudaDevice, x: &[f32], w: &[f32], eps: f32) -> Result<Quantized> {
    rms_norm_with(dev, x, w, None, eps, true)
}

/// Device buffers for the Q8_1 and (`k`) Q8_K blocks of `n` values.
fn q8_bufs(dev: &CudaDevice, n: usize, k: bool) -> Result<(DevBuf<u8>, Option<DevBuf<u8>>)> {
    let q1 = dev.alloc::<u8>(n / 32 * 36, "q8_1")?;
    let qk = k
        .then(|| dev.alloc::<u8>(n / 256 * 292, "q8_k"))
        .transpose()?;
    Ok((q1, qk))
}

fn read_q8(dev: &CudaDevice, q: &(DevBuf<u8>, Option<DevBuf<u8>>)) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut a = vec![0u8; q.0.len()];
    dev.read(&q.0, &mut a)?;
    let mut b = vec![0u8; q.1.as_ref().map_or(0, |k| k.len())];
    if let Some(k) = &q.1 {
        dev.read(k, &mut b)?;
    }
    Ok((a, b))
}

fn rms_norm_with(
    dev: &CudaDevice,
    x: &[f32],
    w: &[f32],
    rows: Option<&[i32]>,
    eps: f32,
    quantize: bool,
) -> Result<Quantized> {
    let n_cols = w.len();
    let n_rows = rows.map_or(x.len() / n_cols, |r| r.len());
    let xd = dev.upload(x, "x")?;
    let wd = dev.upload(w, "w")?;
    let rd = rows.map(|r| dev.upload(r, "rows")).transpose()?;
    let out = dev.alloc::<f32>(n_rows * n_cols, "out")?;
    let q = quantize
        .then(|| q8_bufs(dev, n_rows * n_cols, n_cols.is_multiple_of(256)))
        .transpose()?;
    dev.rms_norm(&RmsNormParams {
        x: xd.ptr,
        w: wd.ptr,
        out: out.ptr,
        rows: rd.as_ref().map_or(0, |r| r.ptr),
        q8_1: q.as_ref().map_or(0, |q| q.0.ptr),
        q8_k: q.as_ref().and_then(|q| q.1.as_ref()).map_or(0, |k| k.ptr),
        n_rows: n_rows as i32,
        n_cols: n_cols as i32,
        eps,
        pad: 0,
    })?;
    let mut h = vec![0f32; n_rows * n_cols];
    dev.read(&out, &mut h)?;
    let qs = match &q {
        Some(q) => read_q8(dev, q)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok((h, qs))
}

/// `silu(gate) * up` over the whole slice (ggml's vectorized expf for the first `len / 8 * 8`).
pub fn swiglu(dev: &CudaDevice, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    gated(dev, false, gate, up, false).map(|(h, _)| h)
}

/// `gate = gelu(gate) * up` on the device, with the CPU's f16 GELU table.
pub fn geglu(dev: &CudaDevice, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    gated(dev, true, gate, up, false).map(|(h, _)| h)
}

/// SwiGLU (`gelu` false) or GeGLU over rows of `row_len` (a multiple of 256), the kernel also
/// quantizing its output (the fused form the forward pass launches before the down product).
pub fn gated_quantized(
    dev: &CudaDevice,
    gelu: bool,
    gate: &[f32],
    up: &[f32],
) -> Result<Quantized> {
    gated(dev, gelu, gate, up, true)
}

fn gated(
    dev: &CudaDevice,
    gelu: bool,
    gate: &[f32],
    up: &[f32],
    quantize: bool,
) -> Result<Quantized> {
    let g = dev.upload(gate, "gate")?;
    let u = dev.upload(up, "up")?;
    let n = gate.len();
    let q = quantize.then(|| q8_bufs(dev, n, true)).transpose()?;
    let q8_1 = q.as_ref().map_or(0, |q| q.0.ptr);
    let q8_k = q.as_ref().and_then(|q| q.1.as_ref()).map_or(0, |k| k.ptr);
    if gelu {
        let table = dev.upload(crate::backend::gelu::table(), "GELU table")?;
        dev.geglu(&GegluParams {
            gate: g.ptr,
            up: u.ptr,
            table: table.ptr,
            q8_1,
            q8_k,
            n: n as i32,
            pad: 0,
        })?;
        dev.sync()?;
    } else {
        dev.swiglu(&SwigluParams {
            gate: g.ptr,
            up: u.ptr,
            q8_1,
            q8_k,
            n: n as i32,
            n_vec: (n / 8 * 8) as i32,
        })?;
    }
    let mut h = vec![0f32; n];
    dev.read(&g, &mut h)?;
    let qs = match &q {
        Some(q) => read_q8(dev, q)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok((h, qs))
}

/// Row-wise argmax of `x` (`n_cols` per row).
pub fn argmax(dev: &CudaDevice, x: &[f32], n_cols: usize) -> Result<Vec<i32>> {
    let n_rows = x.len() / n_cols;
    let xd = dev.upload(x, "x")?;
    let out = dev.alloc::<i32>(n_rows, "out")?;
    let part = dev.alloc::<i32>(n_rows * 2 * super::ARGMAX_PARTS, "parts")?;
    dev.argmax(&ArgmaxParams {
        x: xd.ptr,
        out: out.ptr,
        part: part.ptr,
        n_rows: n_rows as i32,
        n_cols: n_cols as i32,
    })?;
    let mut h = vec![0i32; n_rows];
    dev.read(&out, &mut h)?;
    Ok(h)
}

/// The `k` most likely tokens of the logits rows `rows` of `x` (`topk.cu`), in list order: per
/// listed row, `None` where the kernel reports it for a whole-row read (`-1`: a NaN), else the
/// candidates (id, raw logit) and the row's usable-logit count.
#[allow(clippy::type_complexity)]
pub fn topk(
    dev: &CudaDevice,
    x: &[f32],
    n_cols: usize,
    rows: &[i32],
    k: usize,
) -> Result<Vec<std::result::Result<(Vec<(u32, f32)>, usize), i32>>> {
    let n = rows.len();
    let xd = dev.upload(x, "x")?;
    let rows_d = dev.upload(rows, "rows")?;
    let out = dev.alloc::<u32>(topk_out_len(n, k), "out")?;
    dev.topk(&TopkParams {
        x: xd.ptr,
        rows: rows_d.ptr,
        out: out.ptr,
        n_rows: n as i32,
        n_cols: n_cols as i32,
        k: k as i32,
        pad: 0,
    })?;
    let mut h = vec![0u32; topk_out_len(n, k)];
    dev.read(&out, &mut h)?;
    let (ids, rest) = h.split_at(n * k);
    let (vals, info) = rest.split_at(n * k);
    Ok((0..n)
        .map(|j| {
            let w = info[2 * j] as i32;
            if w < 0 {
                return Err(w);
            }
            let at = j * k;
            let c = (0..w as usize)
                .map(|c| (ids[at + c], f32::from_bits(vals[at + c])))
                .collect();
            Ok((c, info[2 * j + 1] as usize))
        })
        .collect())
}

/// Geometry of a paged-attention test or benchmark.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Token slots per block.
    pub block_size: usize,
    /// Layers in the arena.
    pub n_layer: usize,
    /// Layer attended.
    pub layer: usize,
    /// Blocks in the arena.
    pub n_blocks: usize,
    /// Width of a block-table row.
    pub max_blocks: usize,
}

/// Device-resident inputs of paged attention: an f16 arena (bits), block tables and a batch.
pub struct AttnInputs {
    kc: DevBuf<u16>,
    vc: DevBuf<u16>,
    q: DevBuf<f32>,
    out: DevBuf<f32>,
    tables: DevBuf<i32>,
    pos: DevBuf<i32>,
    row: DevBuf<i32>,
    part_acc: DevBuf<f32>,
    part_ms: DevBuf<f32>,
    shape: AttnShape,
    n_tok: usize,
    /// Sliding window (0: none): each query sees only its last `window` positions.
    pub window: usize,
}

impl AttnInputs {
    /// Upload an arena (`kc`, `vc` as f16 bits), queries `[n_tok, n_head*head_dim]`, block
    /// tables `[rows, max_blocks]`, and each token's position and table row; room for
    /// `max_parts` partitions.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: &CudaDevice,
        shape: AttnShape,
        kc: &[u16],
        vc: &[u16],
        q: &[f32],
        tables: &[i32],
        pos: &[i32],
        row: &[i32],
        max_parts: usize,
    ) -> Result<AttnInputs> {
        let n_tok = pos.len();
        let qd = shape.n_head * shape.head_dim;
        Ok(AttnInputs {
            kc: dev.upload(kc, "kc")?,
            vc: dev.upload(vc, "vc")?,
            q: dev.upload(q, "q")?,
            out: dev.alloc(n_tok * qd, "out")?,
            tables: dev.upload(tables, "tables")?,
            pos: dev.upload(pos, "pos")?,
            row: dev.upload(row, "row")?,
            part_acc: dev.alloc(n_tok * qd * max_parts, "part_acc")?,
            part_ms: dev.alloc(n_tok * shape.n_head * max_parts * 2, "part_ms")?,
            shape,
            n_tok,
            window: 0,
        })
    }

    /// Launch attention with partitions of `part_len` positions (`n_parts` of them) without
    /// reading the result back (for timing).
    pub fn launch(&self, dev: &CudaDevice, part_len: usize, n_parts: usize) -> Result<()> {
        let z = self.shape;
        dev.attention(&AttnParams {
            q: self.q.ptr,
            out: self.out.ptr,
            kc: self.kc.ptr,
            vc: self.vc.ptr,
            tables: self.tables.ptr,
            tok_pos: self.pos.ptr,
            tok_row: self.row.ptr,
            part_acc: self.part_acc.ptr,
            part_ms: self.part_ms.ptr,
            n_tok: self.n_tok as i32,
            n_head: z.n_head as i32,
            n_head_kv: z.n_head_kv as i32,
            head_dim: z.head_dim as i32,
            block_size: z.block_size as i32,
            n_layer: z.n_layer as i32,
            layer: z.layer as i32,
            max_blocks: z.max_blocks as i32,
            part_len: part_len as i32,
            n_parts: n_parts as i32,
            scale: 1.0 / (z.head_dim as f32).sqrt(),
            window: self.window as i32,
            kv_type: 0,
            row_u16: z.head_dim as i32,
        })
    }

    /// Run attention and read the output `[n_tok, n_head*head_dim]`.
    pub fn run(&self, dev: &CudaDevice, part_len: usize, n_parts: usize) -> Result<Vec<f32>> {
        self.launch(dev, part_len, n_parts)?;
        let mut h = vec![0f32; self.out.len()];
        dev.read(&self.out, &mut h)?;
        Ok(h)
    }

    /// A device-to-device copy of the whole key arena into the value arena, timed: the
    /// bandwidth reference (bytes moved = 2 × arena half).
    pub fn copy_k_to_v(&mut self, dev: &CudaDevice) -> Result<()> {
        let n = self.kc.len();
        dev.copy_dtod(&self.kc, &mut self.vc, n)
    }
}

/// Outputs of [`rope_kv_write`].
pub struct RopeKvOut {
    /// Rotated queries, rounded to f16 values.
    pub q: Vec<f32>,
    /// Rotated keys (f32).
    pub k: Vec<f32>,
    /// The key arena after the write (16-bit words of stored rows).
    pub kc: Vec<u16>,
    /// The value arena after the write (16-bit words of stored rows).
    pub vc: Vec<u16>,
}

/// RoPE + K/V store for a batch: `q [n_tok, hq*d]`, `k`, `v [n_tok, hkv*d]`, `cos`/`sin`
/// `[n_ctx, d/2]`, each token's position and physical block, an arena of `n_blocks` blocks.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write(
    dev: &CudaDevice,
    shape: AttnShape,
    neox: bool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cos: &[f32],
    sin: &[f32],
    pos: &[i32],
    block: &[i32],
) -> Result<RopeKvOut> {
    let kv = crate::kv::KvType::F16;
    rope_kv_write_of(dev, shape, neox, kv, q, k, v, cos, sin, pos, block)
}

/// [`rope_kv_write`] into an arena of `kv_type` rows (16-bit words of stored rows; quantized
/// rows of heads that are multiples of 64 turned, as the engine stores them).
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write_of(
    dev: &CudaDevice,
    shape: AttnShape,
    neox: bool,
    kv_type: crate::kv::KvType,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cos: &[f32],
    sin: &[f32],
    pos: &[i32],
    block: &[i32],
) -> Result<RopeKvOut> {
    let z = shape;
    let row_bytes = kv_type
        .row_bytes(z.head_dim)
        .ok_or_else(|| backend_err("head size unfit for the KV type"))?;
    let arena = z.n_blocks * z.n_layer * z.n_head_kv * z.block_size * row_bytes / 2;
    let (qd, kd, vd) = (
        dev.upload(q, "q")?,
        dev.upload(k, "k")?,
        dev.upload(v, "v")?,
    );
    let (cd, sd) = (dev.upload(cos, "cos")?, dev.upload(sin, "sin")?);
    let (pd, bd) = (dev.upload(pos, "pos")?, dev.upload(block, "block")?);
    let kc = dev.alloc::<u16>(arena, "kc")?;
    let vc = dev.alloc::<u16>(arena, "vc")?;
    dev.rope_kv_write(&RopeKvParams {
        q: qd.ptr,
        k: kd.ptr,
        v: vd.ptr,
        kc: kc.ptr,
        vc: vc.ptr,
        cos: cd.ptr,
        sin: sd.ptr,
        tok_pos: pd.ptr,
        tok_block: bd.ptr,
        n_tok: pos.len() as i32,
        n_head: z.n_head as i32,
        n_head_kv: z.n_head_kv as i32,
        head_dim: z.head_dim as i32,
        block_size: z.block_size as i32,
        n_layer: z.n_layer as i32,
        layer: z.layer as i32,
        neox: i32::from(neox),
        q_scale: 1.0,
        kv_type: kv_type.code() as i32,
        row_u16: (row_bytes / 2) as i32,
        rot_k: kv_type.key_rotation(z.head_dim).unwrap_or(0) as i32,
        rot_v: kv_type.value_rotation(z.head_dim).unwrap_or(0) as i32,
        round_q: 1,
    })?;
    let mut o = RopeKvOut {
        q: vec![0.0; q.len()],
        k: vec![0.0; k.len()],
        kc: vec![0; arena],
        vc: vec![0; arena],
    };
    dev.read(&qd, &mut o.q)?;
    dev.read(&kd, &mut o.k)?;
    dev.read(&kc, &mut o.kc)?;
    dev.read(&vc, &mut o.vc)?;
    Ok(o)
}

/// A context shift's key rotation on the device: the key arena `kc` (f16 bits, `shape.n_blocks`
/// blocks) with the keys of `block`, layer `shape.layer`, rotated back by `delta` positions with
/// the tables `cos`/`sin` (`[n_ctx, d/2]`). Returns the arena after the kernel.
#[allow(clippy::too_many_arguments)]
pub fn shift_keys(
    dev: &CudaDevice,
    shape: AttnShape,
    neox: bool,
    kc: &[u16],
    cos: &[f32],
    sin: &[f32],
    block: usize,
    delta: usize,
) -> Result<Vec<u16>> {
    let kv = crate::kv::KvType::F16;
    shift_keys_of(dev, shape, neox, kv, kc, cos, sin, block, delta)
}

/// [`shift_keys`] over an arena of `kv_type` rows (16-bit words of stored rows; quantized keys
/// of heads that are multiples of 64 stored turned, as the engine stores them).
#[allow(clippy::too_many_arguments)]
pub fn shift_keys_of(
    dev: &CudaDevice,
    shape: AttnShape,
    neox: bool,
    kv_type: crate::kv::KvType,
    kc: &[u16],
    cos: &[f32],
    sin: &[f32],
    block: usize,
    delta: usize,
) -> Result<Vec<u16>> {
    let z = shape;
    let row_bytes = kv_type
        .row_bytes(z.head_dim)
        .ok_or_else(|| backend_err("head size unfit for the KV type"))?;
    let kd = dev.upload(kc, "kc")?;
    let (cd, sd) = (dev.upload(cos, "cos")?, dev.upload(sin, "sin")?);
    dev.shift_keys(&ShiftKeysParams {
        kc: kd.ptr,
        cos: cd.ptr,
        sin: sd.ptr,
        block: block as i32,
        layer: z.layer as i32,
        n_layer: z.n_layer as i32,
        n_head_kv: z.n_head_kv as i32,
        head_dim: z.head_dim as i32,
        block_size: z.block_size as i32,
        delta: delta as i32,
        neox: i32::from(neox),
        kv_type: kv_type.code() as i32,
        row_u16: (row_bytes / 2) as i32,
        rot_k: kv_type.key_rotation(z.head_dim).unwrap_or(0) as i32,
        pad: 0,
    })?;
    let mut out = vec![0u16; kc.len()];
    dev.read(&kd, &mut out)?;
    Ok(out)
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written) over `bytes`, median of
/// `reps` copies.
pub fn copy_bandwidth(dev: &CudaDevice, bytes: usize, reps: usize) -> Result<f64> {
    let n = bytes / 4;
    let src = dev.alloc::<u32>(n, "copy source")?;
    let mut dst = dev.alloc::<u32>(n, "copy destination")?;
    dev.copy_dtod(&src, &mut dst, n)?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = dev.timer()?;
        dev.copy_dtod(&src, &mut dst, n)?;
        ms.push(f64::from(dev.elapsed_ms(&t)?));
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let m = ms[ms.len() / 2];
    Ok(2.0 * (n * 4) as f64 / (m * 1e-3) / 1e9)
}
