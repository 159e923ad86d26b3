//! One launcher per kernel: the grid and block each kernel is launched with, and the one
//! launch path (`cuLaunchKernel`, or `cuLaunchKernelEx` for programmatic dependent launch, with the
//! parameter struct, allocating nothing).

use cudarc::driver::{CudaFunction, DeviceRepr};
use ember_kernels::GgmlType;

use super::device::CudaDevice;
use super::error::{backend_err, drv};
use super::module::{MATMUL_KERNELS, MMQ_KERNELS};
use super::params::*;
use crate::error::Result;

/// Positions per attention partition (long contexts are split across thread blocks, as vLLM's
/// paged attention v2 does, and merged by `attention_reduce`). One length for every batch, so
/// that a token's attention is computed the same way whatever else is in the batch (the
/// engine's outputs equal lone sessions', bit for bit) and a lone decode step replays from one
/// graph. 2048 measured best of 128..4096 for 64 sequences × 4096 positions on the H100 taken
/// over both head shapes (BENCHMARKS.md); shorter partitions cost prologues, epilogues and
/// merges, longer ones leave small batches too few thread blocks.
pub const ATT_PART_LEN: usize = 2048;

/// Thread blocks per row of the argmax (`ARGMAX_PARTS` in elementwise.cu; one warp merges
/// them); [`ArgmaxParams::part`] holds `2 * ARGMAX_PARTS` i32 per row.
pub const ARGMAX_PARTS: usize = 128;

/// From this many tokens a Q4_0..Q8_0 product runs on the tensor cores (`mmq.cu`, compute
/// capability 8.0 or more), below it as matrix-vector products (`mmvq.cu`). A token's result
/// then depends on which side of the line its batch falls, in the last bits (BENCHMARKS.md,
/// issue 15): tests that compare batched and lone runs bit for bit keep their batches below
/// [`MMQ_MIN_TOKENS_KQUANT`]. Swept on an H100 (decode of 4 to 12 sequences): the 64 x 16 tiles
/// win from 7 (1B shape) or 8 (SmolLM2) tokens, and take 1.3 to 1.9x at 9 to 12, where the
/// matrix-vector kernels, 8 tokens a pass, read the weights twice.
pub const MMQ_MIN_TOKENS: usize = 8;

/// [`MMQ_MIN_TOKENS`] for K-quant weights (Q4_K, Q5_K, Q6_K; `kquants.cu` below it): their
/// tiles win from 5 tokens (H100, 1B Q4_K shape).
pub const MMQ_MIN_TOKENS_KQUANT: usize = 5;

/// Most tokens of a Q4_K product on 64 x 16 tiles everywhere ([`MmqTiles::Auto`]; 16 for the
/// other types). Q4_K's 64 x 16 tiles load weights straight into the `mma` fragments; its 64 x
/// 64 and 16 x 32 tiles stage them through shared memory. H100, 1B Q4_K shape, decode of 24 and
/// 32 sequences: the 64 x 16 tiles beat the choice before (64 x 64 or 16 x 32) by 27–29%.
pub const MMQ_NARROW_MAX_TOKENS_Q4K: usize = 32;

/// Token counts (after [`MMQ_NARROW_MAX_TOKENS_Q4K`] for Q4_K) over which a Q4_0 or Q4_K product
/// takes the direct 64 x 16 tiles where 64 x 64 tiles would be fewer than the multiprocessors
/// (`narrow_or_small`; 16 x 32 before); where 64 x 64 tiles fill them they stay. H100, 1B
/// shapes, per launch at 64 sequences (ncu): Q4_0's down projection 56.6 → 48.2 µs, Q/K/V
/// 22.5 → 21.5; Q4_K's gate/up 63.5 µs and logits 473 µs on 64 x 16 tiles, 57.4 and 352 on
/// 64 x 64. Decode, 2 rounds: Q4_0 at 64 sequences +2%, at 48 the same, at 24 and 32 −6%
/// (so not below 33).
pub const MMQ_DIRECT_TOKENS: std::ops::RangeInclusive<usize> = 33..=64;

/// [`MMQ_DIRECT_TOKENS`] of Q4_K. Decode against 64 x 16 tiles everywhere, 2 rounds: 128
/// sequences 24.8k → 27.9k tok/s, 96 +2–4%, 64 +3%, 48 −2%; against the choice before (64 x 64
/// or 16 x 32 tiles) +15–29% from 32 to 128 sequences. At 512 tokens (pp512) 64 x 16 tiles
/// everywhere lose 15%.
pub const MMQ_DIRECT_TOKENS_Q4K: std::ops::RangeInclusive<usize> = 33..=128;

/// Tile shape of the tensor-core products (`mmq.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmqTiles {
    /// Up to 16 tokens (Q4_K: [`MMQ_NARROW_MAX_TOKENS_Q4K`]) 64 x 16, or 16 x 32 for small
    /// matrices (`narrow_or_small`); above, 64 x 64, or where 64 x 64 tiles would be fewer than
    /// the multiprocessors 16 x 32 (Q4_0 and Q4_K over [`MMQ_DIRECT_TOKENS`]:
    /// `narrow_or_small`).
    Auto,
    /// 64 weight rows x 64 tokens.
    Large,
    /// 16 weight rows x 32 tokens.
    Small,
    /// 64 weight rows x 16 tokens.
    Narrow,
}

/// Split K of the tensor-core tiles (`mmq.cu`): with fewer tiles than this many thread blocks
/// per multiprocessor, each tile's K steps are split over several thread blocks (at most
/// [`MMQ_MAX_SPLIT`], at least [`MMQ_SPLIT_MIN_STEPS`] K steps each), whose partial sums the
/// last one adds up. (H100, Llama-3.2-1B shape, 16 and 64 sequences: 2 beat 4 and 8 in all four
/// Q4_0 / Q4_K cases, by 1–4%.)
pub const MMQ_SPLIT_BLOCKS_PER_SM: usize = 2;

/// Fewest K steps (of 256 columns) per split of an automatic split K: a split of one step
/// spends about as long on its partial sums as on its products (H100, SmolLM2 shape at 64
/// sequences, 16 x 32 tiles over 576 columns, 3 K steps: 30 018 tok/s split 3 ways, 33 495 with
/// the build before split K).
pub const MMQ_SPLIT_MIN_STEPS: usize = 2;

/// Most thread blocks one tile's K steps are split over.
pub const MMQ_MAX_SPLIT: usize = 16;

/// Floats of the split-K partial-sum buffer (8 MiB): a launch splits only while its tiles'
/// partial sums fit (tiles x splits x tile elements).
pub const MMQ_SPLIT_FLOATS: usize = 1 << 21;

/// Tiles a split launch may have (one arrival counter each).
pub const MMQ_SPLIT_TILES: usize = 8192;

impl CudaDevice {
    fn launch<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (usize, usize),
        block: u32,
        p: &P,
        what: &'static str,
    ) -> Result<()> {
        self.launch_with(f, (grid.0, grid.1, 1), block, p, what, self.pdl)
    }

    /// [`CudaDevice::launch`] with a three-dimensional grid, with programmatic dependent launch
    /// ([`CudaDevice::pdl`]) or without.
    fn launch_with<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (usize, usize, usize),
        block: u32,
        p: &P,
        what: &'static str,
        pdl: bool,
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if grid.0 > i32::MAX as usize || grid.1 > 65535 || grid.2 > 65535 {
            return Err(backend_err(format!("{what}: grid {grid:?} too large")));
        }
        // The engine may be driven from another thread than the one that opened the device.
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the CUDA context"))?;
        // cuLaunchKernel(Ex) directly (cudarc's launch builder allocates an argument list per
        // launch; a step must allocate nothing): one parameter, the struct, by address.
        let mut args = [p as *const P as *mut std::ffi::c_void];
        let (g, b) = ((grid.0 as u32, grid.1 as u32, grid.2 as u32), (block, 1, 1));
        if pdl {
            return self.launch_pdl(f, g, b, &mut args).map_err(drv(what));
        }
        // SAFETY: `p` matches the kernel's one by-value parameter struct (params.rs mirrors
        // common.cuh) and outlives the call (the driver copies parameters at launch); every
        // address in it was taken from a live buffer of this device, sized by the caller for the
        // counts in `p` (each launcher's contract); `f` belongs to this context.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                g,
                b,
                0,
                self.stream.cu_stream(),
                &mut args,
            )
        }
        .map_err(drv(what))?;
        Ok(())
    }

    /// `cuLaunchKernelEx` with programmatic stream serialization allowed: the kernel may start
    /// before the previous kernel in the stream has finished; every kernel's `PDL_ENTRY` waits
    /// for it ([`CudaDevice::pdl`]). The same contract on `args` as `launch_kernel`.
    fn launch_pdl(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut std::ffi::c_void],
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: 0,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: `config` and `attr` live through the call; `args` holds the address of the
        // kernel's one parameter struct, as the caller's `launch_kernel` contract states; `f`
        // belongs to this context, bound to this thread by the caller.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }

    /// Quantize `n_rows` rows of `n_cols` f32 (row stride `x_stride`) to Q8_1.
    pub fn quantize_q8_1(&self, p: &QuantizeParams) -> Result<()> {
        let nb = (p.n_cols / 32) as usize;
        self.launch(
            &self.k.quantize_q8_1,
            (nb.div_ceil(8), p.n_rows as usize),
            256,
            p,
            "quantize_q8_1",
        )
    }

    /// Quantize `n_rows` rows of `n_cols` f32 (a multiple of 256) to Q8_K.
    pub fn quantize_q8_k(&self, p: &QuantizeParams) -> Result<()> {
        let nb = (p.n_cols / 256) as usize;
        self.launch(
            &self.k.quantize_q8_k,
            (nb.div_ceil(4), p.n_rows as usize),
            128,
            p,
            "quantize_q8_k",
        )
    }

    /// `out = a W^T` (or `out += a W^T`) for a weight of type `ty`; `p.a` holds the
    /// activations [`acts_of`](super::module::acts_of) `ty` names (f32 rows, Q8_1 or Q8_K).
    pub fn matmul(&self, ty: GgmlType, p: &MatmulParams) -> Result<()> {
        self.matmul_tiles(ty, p, self.mmq_tiles)
    }

    /// [`CudaDevice::matmul`] with the tensor-core tile shape chosen by the caller (tests run
    /// both shapes; they give the same results). The products of a fused launch (`p.n_jobs`
    /// above 1) give the same bits as launched one by one.
    pub fn matmul_tiles(&self, ty: GgmlType, p: &MatmulParams, tiles: MmqTiles) -> Result<()> {
        let Some(i) = MATMUL_KERNELS.iter().position(|(t, _)| *t == ty) else {
            return Err(backend_err(format!("no CUDA matrix kernel for type {ty}")));
        };
        let (rows, n) = (p.total_rows(), p.n_tok as usize);
        let mmq_min = match ty {
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => self.mmq_min_tokens.1,
            _ => self.mmq_min_tokens.0,
        };
        let narrow_max = match ty {
            GgmlType::Q4_K => self.mmq_narrow_max_q4k,
            _ => 16,
        };
        let direct = match ty {
            GgmlType::Q4_0 => MMQ_DIRECT_TOKENS.contains(&n),
            GgmlType::Q4_K => MMQ_DIRECT_TOKENS_Q4K.contains(&n),
            _ => false,
        };
        if n >= mmq_min && self.cc.0 >= 8 {
            if let Some(j) = MMQ_KERNELS.iter().position(|(t, _)| *t == ty) {
                let large_tiles = rows.div_ceil(64) * n.div_ceil(64);
                let cols = p.cols as usize;
                let shape = match tiles {
                    MmqTiles::Auto if n <= narrow_max => self.narrow_or_small(rows, n, cols),
                    // Fewer 64 x 64 tiles than multiprocessors: 16 x 32 tiles, or the direct
                    // 64 x 16 ones.
                    MmqTiles::Auto if large_tiles < self.sms && direct => {
                        self.narrow_or_small(rows, n, cols)
                    }
                    MmqTiles::Auto if large_tiles < self.sms => MmqTiles::Small,
                    MmqTiles::Auto => MmqTiles::Large,
                    t => t,
                };
                let (bm, bn, f) = match shape {
                    MmqTiles::Small => (16, 32, &self.k.mmq_small[j]),
                    MmqTiles::Narrow => (64, 16, &self.k.mmq_narrow[j]),
                    _ => (64, 64, &self.k.mmq[j]),
                };
                // A tile holds rows of one product: fused products must start on tile rows.
                let starts_ok = match p.n_jobs {
                    1 => true,
                    2 => p.rows % bm == 0,
                    _ => p.rows % bm == 0 && p.rows1 % bm == 0,
                };
                if !starts_ok {
                    return self.matmul_each(ty, p, tiles);
                }
                let grid = (rows.div_ceil(bm as usize), n.div_ceil(bn));
                let split = self.mmq_split_for(grid.0 * grid.1, bm as usize * bn, p.cols as usize);
                let mut q = *p;
                q.part = self.split_part.ptr;
                q.count = self.split_count.ptr;
                // Tensor-core tiles start after the kernel before them has finished, even
                // with programmatic dependent launch (`CudaDevice::pdl_mmq`).
                let pdl = self.pdl && self.pdl_mmq;
                return self.launch_with(f, (grid.0, grid.1, split), 128, &q, "mmq", pdl);
            }
        }
        // Weight rows per thread block of the matrix-vector kernels: one warp per row for float
        // weights (mmv_float.cu), two warps for K-quants (kquants.cu), four for the others
        // (mmvq.cu), or two rows of four warps for a lone token ([`CudaDevice::mmv1_rows`]).
        // The rows of a block may belong to different products of a fused launch.
        let mut rows_per_block = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 4,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 2,
            _ => 1,
        };
        let mut f = &self.k.matmul[i];
        if n == 1 {
            if let (Some(f2), 2) = (&self.k.matmul_1x2[i], self.mmv1_rows) {
                (f, rows_per_block) = (f2, 2);
            } else if let Some(f1) = &self.k.matmul_1[i] {
                f = f1;
            }
        }
        let mut blocks = rows.div_ceil(rows_per_block);
        // Q4_0..Q8_0 and K-quant kernels can take several rows per thread block.
        if rows_per_block < 4 && self.mmv_blocks_per_sm > 0 {
            blocks = blocks.min(self.sms * self.mmv_blocks_per_sm);
        }
        self.launch(f, (blocks, n.div_ceil(8)), 128, p, "matmul")
    }

    /// Splits of each tile's K steps for a tensor-core launch of `tiles` tiles of `tile_elems`
    /// outputs over `cols` columns: enough thread blocks to fill the multiprocessors
    /// ([`CudaDevice::mmq_split_blocks`] each) or the forced [`CudaDevice::mmq_split`], at most
    /// one per K step of 256 columns and [`MMQ_MAX_SPLIT`], and only as many as the partial-sum
    /// buffer holds.
    fn mmq_split_for(&self, tiles: usize, tile_elems: usize, cols: usize) -> usize {
        let mut steps = cols.div_ceil(256);
        let want = match self.mmq_split {
            0 => {
                steps /= MMQ_SPLIT_MIN_STEPS;
                (self.sms * self.mmq_split_blocks).div_ceil(tiles.max(1))
            }
            n => n,
        };
        if tiles > self.split_count.len() {
            return 1;
        }
        let fit = self.split_part.len() / (tiles * tile_elems).max(1);
        want.min(steps).min(MMQ_MAX_SPLIT).min(fit).max(1)
    }

    /// The tile shape of a product of `rows` weight rows, `n` (few) tokens and `cols`
    /// columns: 64 x 16 where its thread blocks (split K included) fill the multiprocessors, or
    /// make at least as many as 16 x 32 tiles would; else 16 x 32 (small matrices: SmolLM2's
    /// 576 rows make 9 tiles of 64 x 16, too few to split over 3 K steps).
    fn narrow_or_small(&self, rows: usize, n: usize, cols: usize) -> MmqTiles {
        let blocks = |bm: usize, bn: usize| {
            let tiles = rows.div_ceil(bm) * n.div_ceil(bn);
            tiles * self.mmq_split_for(tiles, bm * bn, cols)
        };
        let narrow = blocks(64, 16);
        if narrow >= self.sms * self.mmq_split_blocks || narrow >= blocks(16, 32) {
            MmqTiles::Narrow
        } else {
            MmqTiles::Small
        }
    }

    /// The products of a fused launch, one launch each.
    fn matmul_each(&self, ty: GgmlType, p: &MatmulParams, tiles: MmqTiles) -> Result<()> {
        let jobs = [
            (p.w, p.out, p.rows),
            (p.w1, p.out1, p.rows1),
            (p.w2, p.out2, p.rows2),
        ];
        for &(w, out, rows) in &jobs[..p.n_jobs.clamp(1, 3) as usize] {
            let one = MatmulParams::one(
                w,
                p.a,
                out,
                rows as usize,
                p.cols as usize,
                p.n_tok as usize,
                p.row_bytes as usize,
                p.accumulate != 0,
            );
            self.matmul_tiles(ty, &one, tiles)?;
        }
        Ok(())
    }

    /// RMSNorm of `n_rows` rows (and their quantization, `p.q8_1` / `p.q8_k`, for which
    /// `n_cols` must be a multiple of 32 / 256).
    pub fn rms_norm(&self, p: &RmsNormParams) -> Result<()> {
        if (p.q8_1 != 0 && p.n_cols % 32 != 0) || (p.q8_k != 0 && p.n_cols % 256 != 0) {
            return Err(backend_err(
                "rms_norm: a quantized output needs whole blocks",
            ));
        }
        self.launch(&self.k.rms_norm, (p.n_rows as usize, 1), 256, p, "rms_norm")
    }

    /// `gate = silu(gate) * up` (and its quantization, `p.q8_1` / `p.q8_k`, for which `p.n` must
    /// be a multiple of 256).
    pub fn swiglu(&self, p: &SwigluParams) -> Result<()> {
        if (p.q8_1 != 0 || p.q8_k != 0) && p.n % 256 != 0 {
            return Err(backend_err(
                "swiglu: a quantized output needs a multiple of 256 elements",
            ));
        }
        let grid = ((p.n as usize).div_ceil(256), 1);
        self.launch(&self.k.swiglu, grid, 256, p, "swiglu")
    }

    /// `gate = gelu(gate) * up` (the f16 table lookup), quantized as [`CudaDevice::swiglu`].
    pub fn geglu(&self, p: &GegluParams) -> Result<()> {
        if (p.q8_1 != 0 || p.q8_k != 0) && p.n % 256 != 0 {
            return Err(backend_err(
                "geglu: a quantized output needs a multiple of 256 elements",
            ));
        }
        let grid = ((p.n as usize).div_ceil(256), 1);
        self.launch(&self.k.geglu, grid, 256, p, "geglu")
    }

    /// `x += y`.
    pub fn add(&self, p: &AddParams) -> Result<()> {
        let grid = ((p.n as usize).div_ceil(256), 1);
        self.launch(&self.k.add, grid, 256, p, "add")
    }

    /// `dst[r] = src[rows[r]]`.
    pub fn gather_rows(&self, p: &GatherParams) -> Result<()> {
        self.launch(
            &self.k.gather_rows,
            (p.n_rows as usize, 1),
            256,
            p,
            "gather_rows",
        )
    }

    /// `x[r] += b`.
    pub fn add_bias(&self, p: &BiasParams) -> Result<()> {
        let grid = ((p.n_cols as usize).div_ceil(256), p.n_rows as usize);
        self.launch(&self.k.add_bias, grid, 256, p, "add_bias")
    }

    /// Row-wise argmax.
    pub fn argmax(&self, p: &ArgmaxParams) -> Result<()> {
        let rows = p.n_rows as usize;
        self.launch(&self.k.argmax_part, (rows, ARGMAX_PARTS), 256, p, "argmax")?;
        self.launch(&self.k.argmax_reduce, (rows, 1), 32, p, "argmax")
    }

    /// Each row's `p.k` most likely tokens (one 1024-thread block per row, `topk.cu`).
    pub fn topk(&self, p: &TopkParams) -> Result<()> {
        if p.k < 1 || p.k as usize > crate::sampler::MAX_DEVICE_TOP {
            return Err(backend_err(format!("topk: k = {} out of range", p.k)));
        }
        self.launch(&self.k.topk_rows, (p.n_rows as usize, 1), 1024, p, "topk")
    }

    /// RoPE on q and k, K/V into their slots: one thread block per token and KV head (with its
    /// query heads), or per token where Walsh-Hadamard rotations mix heads.
    pub fn rope_kv_write(&self, p: &RopeKvParams) -> Result<()> {
        let rotated = p.rot_k > 0 || p.rot_v > 0;
        let split = p.n_head_kv > 0 && p.n_head % p.n_head_kv == 0 && !rotated;
        let (ys, threads) = if split {
            (p.n_head_kv as usize, 128)
        } else {
            (1, 256)
        };
        self.launch(
            &self.k.rope_kv_write,
            (p.n_tok as usize, ys),
            threads,
            p,
            "rope_kv_write",
        )
    }

    /// Rotate one (block, layer)'s keys back by `delta` positions (a context shift).
    pub fn shift_keys(&self, p: &ShiftKeysParams) -> Result<()> {
        self.launch(
            &self.k.shift_keys,
            ((p.n_head_kv * p.block_size) as usize, 1),
            64,
            p,
            "shift_keys",
        )
    }

    /// Copy-on-write of a block's first slots.
    pub fn copy_slots(&self, p: &CopySlotsParams) -> Result<()> {
        self.launch(
            &self.k.copy_slots,
            (p.n_tiles as usize, 1),
            256,
            p,
            "copy_slots",
        )
    }

    /// Rows turned by Walsh-Hadamard blocks of `p.n`, in place (one thread block per row).
    pub fn hadamard_rows(&self, p: &HadamardParams) -> Result<()> {
        self.launch(
            &self.k.hadamard_rows,
            (p.n_rows as usize, 1),
            128,
            p,
            "hadamard_rows",
        )
    }

    /// Paged attention (and the partition merge when `p.n_parts > 1`): the grouped-query
    /// kernel (one thread block per token × KV head × partition) for head_dim 64 and 128 with up
    /// to 8 query heads per KV head, the general kernel (one block per token × query head ×
    /// partition) otherwise.
    pub fn attention(&self, p: &AttnParams) -> Result<()> {
        let rows = (p.n_tok * p.n_head) as usize;
        let group = p.n_head / p.n_head_kv.max(1);
        let shape = match (p.head_dim, group) {
            (64, 1..=8) => Some(16 * p.kv_type as usize + group as usize - 1),
            (128, 1..=8) => Some(16 * p.kv_type as usize + 8 + group as usize - 1),
            _ => None,
        };
        let gqa = shape.map(|s| &self.k.attn_gqa[s]);
        match gqa {
            Some(f) if !self.general_attention => self.launch(
                f,
                ((p.n_tok * p.n_head_kv) as usize, p.n_parts as usize),
                128,
                p,
                "attn_gqa",
            )?,
            _ => self.launch(
                &self.k.paged_attention,
                (rows, p.n_parts as usize),
                128,
                p,
                "paged_attention",
            )?,
        }
        if p.n_parts > 1 {
            self.launch(
                &self.k.attention_reduce,
                (rows, 1),
                128,
                p,
                "attention_reduce",
            )?;
        }
        Ok(())
    }
}
