//! Where the forward pass runs: the CPU (worker threads over `ember-kernels`) or a CUDA GPU.
//!
//! A [`Backend`] owns the KV arena (in host memory for the CPU, in device memory for CUDA) and
//! runs the model's one forward pass ([`Model::forward`]) through its executor
//! ([`cpu::CpuExecutor`], or the CUDA backend's); the engine and the session only schedule, and
//! read the logits back from the forward pass's [`Scratch`]. The CUDA backend exists in every build: built
//! without the `cuda` feature it is a stub whose constructor says so ("built without CUDA"), so
//! no call site carries a `cfg`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;
pub mod gelu;

use std::fmt;
use std::str::FromStr;

use ember_kernels::dispatch::KernelSet;
use ember_kernels::traits::ToFloatFn;

use crate::compute::Compute;
use crate::error::{Error, Result};
use crate::kv::{KvArena, KvGroups, KvLayout};
use crate::model::weights::Mat;
use crate::model::{BatchToken, BlockTables, Model, Scratch};
use ember_kernels::kv::hadamard;

pub use cpu::CpuExecutor;

/// Whether this build has the CUDA backend (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Whether this build has the SIMD CPU kernels (the `simd` feature).
pub const SIMD_BUILT: bool = cfg!(feature = "simd");
pub use cuda::CudaBackend;

/// Which backend to run on (`--backend cuda|cpu|auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// The CPU kernels, on worker threads.
    #[default]
    Cpu,
    /// A CUDA GPU (device 0); an error if there is none or the build has no CUDA support.
    Cuda,
    /// CUDA when it can be started, else the CPU (the reason is kept in [`Backend::note`]).
    Auto,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "auto" => Ok(BackendKind::Auto),
            _ => Err(format!(
                "unknown backend {s:?} (expected cpu, cuda or auto)"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Auto => "auto",
        })
    }
}

/// Where the CUDA backend keeps the weight matrices (`--cuda-weights upload|mapped`; the CPU
/// backend ignores it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CudaWeights {
    /// Copied into device memory once, at start-up.
    #[default]
    Upload,
    /// Read in place from the memory-mapped model file, registered with the driver as
    /// host-mapped memory (`cuMemHostRegister`): no copy and no device memory for weights. Meant
    /// for unified-memory devices (Jetson), where host and GPU share the DRAM; on a discrete card
    /// every weight read crosses the bus (correct, slow).
    Mapped,
}

impl FromStr for CudaWeights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "upload" => Ok(CudaWeights::Upload),
            "mapped" => Ok(CudaWeights::Mapped),
            _ => Err(format!(
                "unknown CUDA weight placement {s:?} (expected upload or mapped)"
            )),
        }
    }
}

impl fmt::Display for CudaWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CudaWeights::Upload => "upload",
            CudaWeights::Mapped => "mapped",
        })
    }
}

/// Sizes a backend is built for.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct BackendSizes {
    pub layout: KvLayout,
    pub n_blocks: usize,
    pub max_tokens: usize,
    pub max_logits: usize,
    pub n_ctx: usize,
    pub threads: usize,
    /// Where CUDA keeps the weights.
    pub cuda_weights: CudaWeights,
    /// The CPU kernels (the CPU backend computes with them).
    pub kernels: KernelSet,
}

enum Inner {
    Cpu { compute: Compute, arena: KvArena },
    Cuda(Box<CudaBackend>),
}

/// A started backend with its KV arena.
pub struct Backend {
    inner: Inner,
    /// The arena's layer groups (which block table and slot each layer's K/V use).
    groups: KvGroups,
    note: Option<String>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.name())
            .field("n_blocks", &self.n_blocks())
            .finish()
    }
}

impl Backend {
    /// Start a backend of `kind` for `model` and allocate its KV arena, whose blocks hold the
    /// layers of one of `groups` each (`z.layout.block_layers` must be `groups.size()`).
    pub(crate) fn new(
        kind: BackendKind,
        model: &Model,
        z: BackendSizes,
        groups: KvGroups,
    ) -> Result<Backend> {
        if z.layout.block_layers != groups.size()
            || groups.len() * groups.size() != model.config.n_layer
        {
            return Err(Error::InvalidParam {
                name: "kv_groups",
                what: format!(
                    "{} groups of {} layers for blocks of {} layers and a model of {}",
                    groups.len(),
                    groups.size(),
                    z.layout.block_layers,
                    model.config.n_layer
                ),
            });
        }
        let cpu = |note, groups| -> Result<Backend> {
            let compute =
                Compute::new(z.threads, z.kernels).map_err(|what| Error::InvalidParam {
                    name: "threads",
                    what,
                })?;
            Ok(Backend {
                inner: Inner::Cpu {
                    compute,
                    arena: KvArena::new(z.layout, z.n_blocks)?,
                },
                groups,
                note,
            })
        };
        match kind {
            BackendKind::Cpu => cpu(None, groups),
            BackendKind::Cuda => Ok(Backend {
                inner: Inner::Cuda(Box::new(CudaBackend::new(model, z, &groups)?)),
                groups,
                note: None,
            }),
            BackendKind::Auto => match CudaBackend::new(model, z, &groups) {
                Ok(b) => Ok(Backend {
                    inner: Inner::Cuda(Box::new(b)),
                    groups,
                    note: None,
                }),
                Err(e) => cpu(
                    Some(format!(
                        "CUDA not used, running on the CPU: {}",
                        match e {
                            Error::Backend(m) => m,
                            other => other.to_string(),
                        }
                    )),
                    groups,
                ),
            },
        }
    }

    /// The KV arena's layer groups.
    pub fn kv_groups(&self) -> &KvGroups {
        &self.groups
    }

    /// `"cpu"` or `"cuda"`.
    pub fn name(&self) -> &'static str {
        match self.inner {
            Inner::Cpu { .. } => "cpu",
            Inner::Cuda(_) => "cuda",
        }
    }

    /// One line about the backend (device name and compute capability for CUDA).
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Cpu { compute, .. } => format!("cpu ({} threads)", compute.n_threads()),
            Inner::Cuda(c) => c.describe(),
        }
    }

    /// Whether the backend selects a sampled row's most likely tokens itself (CUDA), so that
    /// only those come back to the host; the scratch then needs room for them
    /// (`Scratch::reserve_device_top`).
    pub(crate) fn selects_top(&self) -> bool {
        matches!(self.inner, Inner::Cuda(_))
    }

    /// Why `auto` fell back to the CPU, if it did.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// CPU worker threads (0 on CUDA, where the CPU only schedules and samples).
    pub fn threads(&self) -> usize {
        match &self.inner {
            Inner::Cpu { compute, .. } => compute.n_threads(),
            Inner::Cuda(_) => 0,
        }
    }

    /// Bytes of the KV arena (host or device memory).
    pub fn arena_bytes(&self) -> usize {
        match &self.inner {
            Inner::Cpu { arena, .. } => arena.bytes(),
            Inner::Cuda(c) => c.arena_bytes(),
        }
    }

    /// Blocks of the KV arena.
    pub fn n_blocks(&self) -> usize {
        match &self.inner {
            Inner::Cpu { arena, .. } => arena.n_blocks(),
            Inner::Cuda(c) => c.n_blocks(),
        }
    }

    /// Geometry of the KV arena.
    pub fn layout(&self) -> KvLayout {
        match &self.inner {
            Inner::Cpu { arena, .. } => arena.layout(),
            Inner::Cuda(c) => c.layout(),
        }
    }

    /// Run `model` over `batch` (see [`Model::forward`]); the logits land in `scratch`.
    pub(crate) fn forward(
        &mut self,
        model: &Model,
        batch: &[BatchToken],
        tables: &(impl BlockTables + ?Sized),
        scratch: &mut Scratch,
    ) -> Result<usize> {
        scratch.argmax.fill(crate::model::scratch::NO_ARGMAX);
        scratch.top_len.fill(crate::model::scratch::NO_TOP);
        match &mut self.inner {
            Inner::Cpu { compute, arena } => model.forward(
                &mut CpuExecutor::new(model, compute, arena, &self.groups, scratch),
                batch,
                tables,
            ),
            Inner::Cuda(c) => c.forward(model, batch, tables, scratch),
        }
    }

    /// Whether CUDA runs decode steps (one token per sequence, each wanting logits) as captured
    /// graphs, one per shape (default on, unless `EMBER_CUDA_GRAPH=off` at start-up); off drops
    /// the captured graphs. No effect on the CPU. For comparisons: both ways give bit-equal
    /// logits.
    #[doc(hidden)]
    pub fn set_cuda_graph(&mut self, on: bool) {
        if let Inner::Cuda(c) = &mut self.inner {
            c.set_graph(on);
        }
    }

    /// Decode-step graphs CUDA has captured (0 on the CPU). For tests and benchmarks.
    #[doc(hidden)]
    pub fn cuda_graphs(&self) -> usize {
        match &self.inner {
            Inner::Cuda(c) => c.graph_count(),
            Inner::Cpu { .. } => 0,
        }
    }

    /// Copy block `b`'s keys and values as stored (`[block_layers][n_kv_head][block_size][row]`
    /// each, [`KvLayout::keys_bytes`] bytes) into `k` and `v`.
    pub(crate) fn read_block(&self, b: usize, k: &mut [u8], v: &mut [u8]) -> Result<()> {
        check_block(self.layout(), self.n_blocks(), b, k.len(), v.len())?;
        match &self.inner {
            Inner::Cpu { arena, .. } => {
                let (ks, vs) = arena.block_data(b);
                k.copy_from_slice(ks);
                v.copy_from_slice(vs);
                Ok(())
            }
            Inner::Cuda(c) => c.read_block(b, k, v),
        }
    }

    /// Overwrite block `b` with keys and values laid out as [`Backend::read_block`] gives them.
    pub(crate) fn write_block(&mut self, b: usize, k: &[u8], v: &[u8]) -> Result<()> {
        check_block(self.layout(), self.n_blocks(), b, k.len(), v.len())?;
        match &mut self.inner {
            Inner::Cpu { arena, .. } => {
                arena.set_block_data(b, k, v);
                Ok(())
            }
            Inner::Cuda(c) => c.write_block(b, k, v),
        }
    }

    /// Rotate every key of block `block` (a block of layer group `group`) back by `delta`
    /// positions, in every layer slot of the block (RoPE by `-delta`, with the RoPE table of
    /// each slot's layer: the sliding-window one for sliding-window layers):
    /// what a context shift does to the keys it moves `delta` positions down. Computed in f32
    /// from the stored row and stored back (rounded to f16, or quantized again), as llama.cpp's
    /// K shift does on its K cache. Values do not move. `scratch` holds the CPU's RoPE tables.
    ///
    /// Errors: a block or `delta` out of range (`delta` in `1..n_ctx`), a device failure.
    pub(crate) fn shift_keys(
        &mut self,
        block: usize,
        group: usize,
        delta: usize,
        pairing: crate::model::RopePairing,
        scratch: &crate::model::Scratch,
    ) -> Result<()> {
        if group >= self.groups.len() {
            return Err(Error::Backend("shift_keys: no such layer group".into()));
        }
        let swa = self.groups.sliding(group);
        match &mut self.inner {
            Inner::Cpu { compute, arena } => {
                let l = arena.layout();
                let half = l.head_dim / 2;
                if block >= arena.n_blocks()
                    || delta == 0
                    || (delta + 1) * half > scratch.rope_cos.len()
                    || swa.len() != l.block_layers
                    || l.head_dim > 256
                {
                    return Err(Error::Backend(
                        "shift_keys: block or delta out of range".into(),
                    ));
                }
                let ops = compute.kernels().ops();
                let rotate = match pairing {
                    crate::model::RopePairing::Norm => ops.rope_norm,
                    crate::model::RopePairing::Neox => ops.rope_neox,
                };
                let (mut row, mut neg_sin) = ([0f32; 256], [0f32; 128]);
                for (layer, &sliding) in swa.iter().enumerate() {
                    let (cos, sin) = if sliding {
                        (&scratch.rope_cos_swa, &scratch.rope_sin_swa)
                    } else {
                        (&scratch.rope_cos, &scratch.rope_sin)
                    };
                    let cos = &cos[delta * half..(delta + 1) * half];
                    for (n, &s) in neg_sin
                        .iter_mut()
                        .zip(&sin[delta * half..(delta + 1) * half])
                    {
                        *n = -s;
                    }
                    for h in 0..l.n_kv_head {
                        for key in arena
                            .k_tile_mut(block, layer, h)
                            .chunks_exact_mut(l.row_bytes())
                        {
                            let row = &mut row[..l.head_dim];
                            l.kv_type.load_row(key, row);
                            // Quantized keys are stored rotated (ember_kernels::kv): RoPE
                            // applies to the key itself, between the two (self-inverse) turns.
                            let turn = l.kv_type.key_rotation(l.head_dim);
                            turn.inspect(|&n| hadamard(row, n));
                            rotate(row, cos, &neg_sin[..half]);
                            turn.inspect(|&n| hadamard(row, n));
                            l.kv_type.store_row(row, key);
                        }
                    }
                }
                Ok(())
            }
            Inner::Cuda(c) => c.shift_keys(block, delta, swa),
        }
    }

    /// Copy the first `n_slots` slots of block `src` into block `dst` (copy-on-write).
    pub(crate) fn copy_slots(&mut self, src: usize, dst: usize, n_slots: usize) -> Result<()> {
        match &mut self.inner {
            Inner::Cpu { arena, .. } => {
                arena.copy_slots(src, dst, n_slots);
                Ok(())
            }
            Inner::Cuda(c) => c.copy_slots(src, dst, n_slots),
        }
    }
}

/// A block copy's arguments: a block of the arena, buffers of one block each.
fn check_block(layout: KvLayout, n_blocks: usize, b: usize, k: usize, v: usize) -> Result<()> {
    if b >= n_blocks || k != layout.keys_bytes() || v != layout.keys_bytes() {
        return Err(Error::Backend(format!(
            "block copy: block {b} of {n_blocks}, buffers of {k} and {v} bytes for blocks of {}",
            layout.keys_bytes()
        )));
    }
    Ok(())
}

/// `out[t] = table[batch[t].token] * scale`: the embedding lookup every backend does on the
/// host, each row converted from the table's format by `to_float` (`file`: the mapped model).
pub(crate) fn embed_rows(
    file: &[u8],
    table: &Mat,
    to_float: ToFloatFn,
    batch: &[BatchToken],
    scale: f32,
    out: &mut [f32],
) {
    let e = table.cols;
    let bytes = &file[table.range.clone()];
    for (t, b) in batch.iter().enumerate() {
        let row = &bytes[b.token as usize * table.row_bytes..][..table.row_bytes];
        to_float(row, &mut out[t * e..(t + 1) * e]);
    }
    if scale != 1.0 {
        out[..batch.len() * e].iter_mut().for_each(|x| *x *= scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use crate::synth::{synth_gguf, SynthSpec};

    #[test]
    fn backend_kind_parses_and_prints() {
        for k in [BackendKind::Cpu, BackendKind::Cuda, BackendKind::Auto] {
            assert_eq!(k.to_string().parse::<BackendKind>(), Ok(k));
        }
        assert!("gpu".parse::<BackendKind>().is_err());
    }

    /// Without the `cuda` feature, `cuda` is a clear error and `auto` runs on the CPU saying why;
    /// with it but no driver, the same with the driver's absence as the reason.
    #[test]
    fn cuda_unavailable_is_an_error_and_auto_falls_back() {
        let bytes = synth_gguf(&SynthSpec::default())
            .unwrap()
            .to_bytes()
            .unwrap();
        let m = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
        let c = &m.config;
        let z = BackendSizes {
            layout: KvLayout {
                block_layers: c.n_layer,
                n_kv_head: c.n_head_kv,
                head_dim: c.head_dim,
                block_size: 16,
                kv_type: crate::kv::KvType::F16,
            },
            n_blocks: 4,
            max_tokens: 8,
            max_logits: 1,
            n_ctx: 64,
            threads: 1,
            cuda_weights: CudaWeights::Upload,
            kernels: KernelSet::reference(),
        };
        let why = if cfg!(feature = "cuda") {
            if cuda::driver_present() {
                return; // a GPU machine: runtime/tests/cuda/ covers it
            }
            "no CUDA driver"
        } else {
            "built without CUDA"
        };
        let e = Backend::new(BackendKind::Cuda, &m, z, KvGroups::single(c.n_layer)).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        let b = Backend::new(BackendKind::Auto, &m, z, KvGroups::single(c.n_layer)).unwrap();
        assert_eq!(b.name(), "cpu");
        assert!(b.note().is_some_and(|n| n.contains(why)), "{:?}", b.note());
        let b = Backend::new(BackendKind::Cpu, &m, z, KvGroups::single(c.n_layer)).unwrap();
        assert!(b.note().is_none());
        assert_eq!(b.n_blocks(), 4);
    }

    /// With programmatic dependent launch (sm_90+) a kernel may start while the one before it
    /// runs: each must wait (`PDL_ENTRY()`, common.cuh) before its first memory access, or it
    /// races. Every kernel of the CUDA sources opens with it (checked here, on every build: the
    /// sources are text).
    #[test]
    fn every_cuda_kernel_waits_for_the_kernel_before() {
        let sources = [
            include_str!("cuda/kernels/attention.cu"),
            include_str!("cuda/kernels/elementwise.cu"),
            include_str!("cuda/kernels/kquants.cu"),
            include_str!("cuda/kernels/kv.cu"),
            include_str!("cuda/kernels/mmq.cu"),
            include_str!("cuda/kernels/mmv_float.cu"),
            include_str!("cuda/kernels/mmvq.cu"),
            include_str!("cuda/kernels/quantize.cu"),
            include_str!("cuda/kernels/topk.cu"),
        ];
        let mut kernels = 0;
        for src in sources {
            for (at, _) in src.match_indices("extern \"C\" __global__") {
                // The body: from the signature's `{` to the first statement.
                let open = at + src[at..].find('{').expect("a kernel body");
                let first = src[open + 1..]
                    .trim_start_matches(|c: char| c.is_whitespace() || c == '\\')
                    .split(';')
                    .next()
                    .unwrap_or("");
                assert_eq!(
                    first.trim(),
                    "PDL_ENTRY()",
                    "kernel at `{}` does not start with PDL_ENTRY()",
                    &src[at..open]
                );
                kernels += 1;
            }
        }
        // Macros that stamp out instances count once.
        assert!(kernels >= 20, "found only {kernels} kernel definitions");
    }
}
