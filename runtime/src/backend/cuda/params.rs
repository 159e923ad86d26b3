//! Kernel parameter structs, field for field the structs of `kernels/common.cuh` (device
//! pointers as `u64`, first; then 4-byte integers and floats; padded to 8 bytes). Each kernel
//! takes exactly one of these by value.

// Field meanings are documented once, beside the CUDA structs in common.cuh.
#![allow(missing_docs)]
use cudarc::driver::DeviceRepr;

/// A device address.
pub type DevPtr = u64;

/// `quantize_q8_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QuantizeParams {
    pub x: DevPtr,
    pub y: DevPtr,
    pub n_rows: i32,
    pub n_cols: i32,
    pub x_stride: i32,
    pub pad: i32,
}

/// Every `matmul_*` kernel (`a`: f32 rows for F32 / F16 / BF16 weights, Q8_1 or Q8_K blocks
/// for quantized ones).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MatmulParams {
    pub w: DevPtr,
    pub a: DevPtr,
    pub out: DevPtr,
    pub w1: DevPtr,
    pub out1: DevPtr,
    pub w2: DevPtr,
    pub out2: DevPtr,
    pub rows: i32,
    pub cols: i32,
    pub n_tok: i32,
    pub row_bytes: i32,
    pub accumulate: i32,
    pub n_jobs: i32,
    pub rows1: i32,
    pub rows2: i32,
    /// Split K of the tensor-core tiles: partial sums and per-tile counters (the launcher sets
    /// them from the device's buffers; 0 otherwise).
    pub part: DevPtr,
    pub count: DevPtr,
}

impl MatmulParams {
    /// One product, `out = a W^T` (or `+=` with `accumulate`), of `rows` rows of `row_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub fn one(
        w: DevPtr,
        a: DevPtr,
        out: DevPtr,
        rows: usize,
        cols: usize,
        n_tok: usize,
        row_bytes: usize,
        accumulate: bool,
    ) -> MatmulParams {
        MatmulParams {
            w,
            a,
            out,
            w1: 0,
            out1: 0,
            w2: 0,
            out2: 0,
            rows: rows as i32,
            cols: cols as i32,
            n_tok: n_tok as i32,
            row_bytes: row_bytes as i32,
            accumulate: i32::from(accumulate),
            n_jobs: 1,
            rows1: 0,
            rows2: 0,
            part: 0,
            count: 0,
        }
    }

    /// Rows of every product of the launch together.
    pub fn total_rows(&self) -> usize {
        let r = [self.rows, self.rows1, self.rows2];
        r[..self.n_jobs.clamp(1, 3) as usize]
            .iter()
            .map(|&r| r as usize)
            .sum()
    }

    /// Add a product of `rows` more rows of the same type, width and activations (written to
    /// `out`) to this launch; false (and nothing changed) when it holds three already.
    pub fn push(&mut self, w: DevPtr, out: DevPtr, rows: usize) -> bool {
        match self.n_jobs {
            1 => (self.w1, self.out1, self.rows1) = (w, out, rows as i32),
            2 => (self.w2, self.out2, self.rows2) = (w, out, rows as i32),
            _ => return false,
        }
        self.n_jobs += 1;
        true
    }
}

/// `rms_norm`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RmsNormParams {
    pub x: DevPtr,
    pub w: DevPtr,
    pub out: DevPtr,
    /// 0, or `[n_rows]` i32 source rows.
    pub rows: DevPtr,
    /// 0, or where the output's Q8_1 blocks go.
    pub q8_1: DevPtr,
    /// 0, or where the output's Q8_K blocks go.
    pub q8_k: DevPtr,
    pub n_rows: i32,
    pub n_cols: i32,
    pub eps: f32,
    pub pad: i32,
}

/// `swiglu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwigluParams {
    pub gate: DevPtr,
    pub up: DevPtr,
    pub q8_1: DevPtr,
    pub q8_k: DevPtr,
    pub n: i32,
    pub n_vec: i32,
}

/// `add_bias`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BiasParams {
    pub x: DevPtr,
    pub b: DevPtr,
    pub n_rows: i32,
    pub n_cols: i32,
}

/// `rope_kv_write`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RopeKvParams {
    pub q: DevPtr,
    pub k: DevPtr,
    pub v: DevPtr,
    pub kc: DevPtr,
    pub vc: DevPtr,
    pub cos: DevPtr,
    pub sin: DevPtr,
    pub tok_pos: DevPtr,
    pub tok_block: DevPtr,
    pub n_tok: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    pub head_dim: i32,
    pub block_size: i32,
    pub n_layer: i32,
    pub layer: i32,
    pub neox: i32,
    pub q_scale: f32,
    pub kv_type: i32,
    pub row_u16: i32,
    pub rot_k: i32,
    pub rot_v: i32,
    /// 1: round q to f16 after scaling (ggml's one-query attention); 0: keep it f32 (its tiled
    /// path, `attention_tiled::takes`).
    pub round_q: i32,
}

/// `paged_attention` and `attention_reduce`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnParams {
    pub q: DevPtr,
    pub out: DevPtr,
    pub kc: DevPtr,
    pub vc: DevPtr,
    pub tables: DevPtr,
    pub tok_pos: DevPtr,
    pub tok_row: DevPtr,
    pub part_acc: DevPtr,
    pub part_ms: DevPtr,
    pub n_tok: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    pub head_dim: i32,
    pub block_size: i32,
    pub n_layer: i32,
    pub layer: i32,
    pub max_blocks: i32,
    pub part_len: i32,
    pub n_parts: i32,
    pub scale: f32,
    pub window: i32,
    pub kv_type: i32,
    pub row_u16: i32,
}

/// `argmax`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArgmaxParams {
    pub x: DevPtr,
    pub out: DevPtr,
    /// Scratch of `n_rows * ARGMAX_PARTS * 2` i32 (each part's best value bits and index).
    pub part: DevPtr,
    pub n_rows: i32,
    pub n_cols: i32,
}

/// `topk_rows`: the `k` most likely tokens of each listed logits row
/// (`sampler::top_candidates`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TopkParams {
    /// Logits, `n_cols` wide.
    pub x: DevPtr,
    /// `[n_rows]` i32: the logits rows to select from.
    pub rows: DevPtr,
    /// One buffer of u32, at list position `j`: ids `[n_rows, k]` (most likely first), then their
    /// raw logits' bits `[n_rows, k]`, then `[n_rows, 2]` (candidates written, or -1 where the
    /// row holds a NaN; the row's usable, above -inf, logits). See [`topk_out_len`].
    pub out: DevPtr,
    pub n_rows: i32,
    pub n_cols: i32,
    pub k: i32,
    pub pad: i32,
}

/// Elements of [`TopkParams::out`] for `n_rows` rows of `k` candidates.
pub fn topk_out_len(n_rows: usize, k: usize) -> usize {
    n_rows * (2 * k + 2)
}

/// `add`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AddParams {
    pub x: DevPtr,
    pub y: DevPtr,
    pub n: i32,
    pub pad: i32,
}

/// `geglu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GegluParams {
    pub gate: DevPtr,
    pub up: DevPtr,
    pub table: DevPtr,
    pub q8_1: DevPtr,
    pub q8_k: DevPtr,
    pub n: i32,
    pub pad: i32,
}

/// `gather_rows`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GatherParams {
    pub src: DevPtr,
    pub dst: DevPtr,
    pub rows: DevPtr,
    pub n_rows: i32,
    pub n_cols: i32,
}

/// `shift_keys`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShiftKeysParams {
    pub kc: DevPtr,
    pub cos: DevPtr,
    pub sin: DevPtr,
    pub block: i32,
    pub layer: i32,
    pub n_layer: i32,
    pub n_head_kv: i32,
    pub head_dim: i32,
    pub block_size: i32,
    pub delta: i32,
    pub neox: i32,
    pub kv_type: i32,
    pub row_u16: i32,
    pub rot_k: i32,
    pub pad: i32,
}

/// `hadamard_rows`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HadamardParams {
    pub x: DevPtr,
    pub n_rows: i32,
    pub row_len: i32,
    pub n: i32,
    pub pad: i32,
}

/// `copy_slots`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CopySlotsParams {
    pub kc: DevPtr,
    pub vc: DevPtr,
    pub src: i32,
    pub dst: i32,
    pub n_elems: i32,
    pub tile: i32,
    pub n_tiles: i32,
    pub pad: i32,
}

// SAFETY: plain `#[repr(C)]` structs of integers and floats whose layout matches the CUDA
// structs of common.cuh field for field; the kernels read them by value.
unsafe impl DeviceRepr for QuantizeParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for MatmulParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for RmsNormParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for SwigluParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for BiasParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for RopeKvParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for AttnParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for ArgmaxParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for TopkParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for CopySlotsParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for ShiftKeysParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for AddParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for GegluParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for GatherParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for HadamardParams {}

const _: () = assert!(size_of::<QuantizeParams>() == 32);
const _: () = assert!(size_of::<MatmulParams>() == 104);
const _: () = assert!(size_of::<RmsNormParams>() == 64);
const _: () = assert!(size_of::<SwigluParams>() == 40);
const _: () = assert!(size_of::<BiasParams>() == 24);
const _: () = assert!(size_of::<RopeKvParams>() == 128);
const _: () = assert!(size_of::<AttnParams>() == 128);
const _: () = assert!(size_of::<ArgmaxParams>() == 32);
const _: () = assert!(size_of::<TopkParams>() == 40);
const _: () = assert!(size_of::<CopySlotsParams>() == 40);
const _: () = assert!(size_of::<ShiftKeysParams>() == 72);
const _: () = assert!(size_of::<HadamardParams>() == 24);
const _: () = assert!(size_of::<AddParams>() == 24);
const _: () = assert!(size_of::<GegluParams>() == 48);
const _: () = assert!(size_of::<GatherParams>() == 32);
