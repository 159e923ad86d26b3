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
        &MatmulParams {
            w: wd.ptr,
            a: ad.ptr,
            out: out.ptr,
            rows: rows as i32,
            cols: cols as i32,
            n_tok: n_tok as i32,
            row_bytes: (w.len() / rows) as i32,
            accumulate: i32::from(init.is_some()),
            pad: 0,
        },
        tiles,
    )?;
    let mut h = vec![0f32; n_tok * rows];
    dev.read(&out, &mut h)?;
    Ok(h)
}

/// RMSNorm of every row of `x` (rows of `w.len()`), or of the rows listed in `rows`.
pub fn rms_norm(
    dev: &CudaDevice,
    x: &[f32],
    w: &[f32],
    rows: Option<&[i32]>,
    eps: f32,
) -> Result<Vec<f32>> {
    let n_cols = w.len();
    let n_rows = rows.map_or(x.len() / n_cols, |r| r.len());
    let xd = dev.upload(x, "x")?;
    let wd = dev.upload(w, "w")?;
    let rd = rows.map(|r| dev.upload(r, "rows")).transpose()?;
    let out = dev.alloc::<f32>(n_rows * n_cols, "out")?;
    dev.rms_norm(&RmsNormParams {
        x: xd.ptr,
        w: wd.ptr,
        out: out.ptr,
        rows: rd.as_ref().map_or(0, |r| r.ptr),
        n_rows: n_rows as i32,
        n_cols: n_cols as i32,
        eps,
        pad: 0,
    })?;
    let mut h = vec![0f32; n_rows * n_cols];
    dev.read(&out, &mut h)?;
    Ok(h)
}

/// `silu(gate) * up` over the whole slice (ggml's vectorized expf for the first `len / 8 * 8`).
pub fn swiglu(dev: &CudaDevice, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    let g = dev.upload(gate, "gate")?;
    let u = dev.upload(up, "up")?;
    let n = gate.len();
    dev.swiglu(&SwigluParams {
        gate: g.ptr,
        up: u.ptr,
        n: n as i32,
        n_vec: (n / 8 * 8) as i32,
    })?;
    let mut h = vec![0f32; n];
    dev.read(&g, &mut h)?;
    Ok(h)
}

/// `gate = gelu(gate) * up` on the device, with the CPU's f16 GELU table.
pub fn geglu(dev: &CudaDevice, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    let g = dev.upload(gate, "gate")?;
    let u = dev.upload(up, "up")?;
    let table = dev.upload(crate::backend::gelu::table(), "GELU table")?;
    dev.geglu(&GegluParams {
        gate: g.ptr,
        up: u.ptr,
        table: table.ptr,
        n: gate.len() as i32,
        pad: 0,
    })?;
    let mut h = vec![0f32; gate.len()];
    dev.read(&g, &mut h)?;
    Ok(h)
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
