//! The CUDA device: driver and NVRTC checks, the context and stream, the kernels compiled with
//! NVRTC for the device's compute capability (cached on disk), device buffers, and one launcher
//! per kernel.
//!
//! cudarc panics when libcuda or libnvrtc cannot be loaded, so [`CudaDevice::open`] checks that
//! both libraries load before calling anything else, and reports a clear error instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use ember_kernels::GgmlType;

use super::params::*;
use crate::error::{Error, Result};

/// The kernel sources, concatenated in this order into one NVRTC program.
const SOURCES: [(&str, &str); 8] = [
    (
        "common.cuh",
        include_str!("../../../../kernels/cuda/common.cuh"),
    ),
    (
        "quantize.cu",
        include_str!("../../../../kernels/cuda/quantize.cu"),
    ),
    ("mmvq.cu", include_str!("../../../../kernels/cuda/mmvq.cu")),
    (
        "mmv_float.cu",
        include_str!("../../../../kernels/cuda/mmv_float.cu"),
    ),
    (
        "kquants.cu",
        include_str!("../../../../kernels/cuda/kquants.cu"),
    ),
    (
        "elementwise.cu",
        include_str!("../../../../kernels/cuda/elementwise.cu"),
    ),
    ("kv.cu", include_str!("../../../../kernels/cuda/kv.cu")),
    (
        "attention.cu",
        include_str!("../../../../kernels/cuda/attention.cu"),
    ),
];

/// Positions per attention partition (long contexts are split across thread blocks, as vLLM's
/// paged attention v2 does, and merged by `attention_reduce`). One length for every batch, so
/// that a token's attention is computed the same way whatever else is in the batch (the
/// engine's outputs equal lone sessions', bit for bit) and a lone decode step replays from one
/// graph. 2048 measured best of 128..4096 for 64 sequences × 4096 positions on the H100 taken
/// over both head shapes (BENCHMARKS.md); shorter partitions cost prologues, epilogues and
/// merges, longer ones leave small batches too few thread blocks.
pub const ATT_PART_LEN: usize = 2048;

/// Weight types the CUDA matrix kernels take, and each one's kernel.
const MATMUL_KERNELS: [(GgmlType, &str); 11] = [
    (GgmlType::F32, "matmul_f32"),
    (GgmlType::F16, "matmul_f16"),
    (GgmlType::BF16, "matmul_bf16"),
    (GgmlType::Q4_0, "matmul_q4_0"),
    (GgmlType::Q4_1, "matmul_q4_1"),
    (GgmlType::Q5_0, "matmul_q5_0"),
    (GgmlType::Q5_1, "matmul_q5_1"),
    (GgmlType::Q8_0, "matmul_q8_0"),
    (GgmlType::Q4_K, "matmul_q4_k"),
    (GgmlType::Q5_K, "matmul_q5_k"),
    (GgmlType::Q6_K, "matmul_q6_k"),
];

/// Weight types the CUDA matrix kernels take.
pub const SUPPORTED_WEIGHTS: [GgmlType; 11] = {
    let mut t = [GgmlType::F32; 11];
    let mut i = 0;
    while i < t.len() {
        t[i] = MATMUL_KERNELS[i].0;
        i += 1;
    }
    t
};

/// The activations a weight type's kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acts {
    /// The f32 rows themselves (F32, F16, BF16 weights; the kernels round to f16 / bf16 as
    /// they read, as the CPU's dots do).
    F32,
    /// Q8_1 blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
    Q8_1,
    /// Q8_K super-blocks of 256 (K-quants).
    Q8K,
}

/// The activations weights of `ty` take.
pub fn acts_of(ty: GgmlType) -> Acts {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Acts::F32,
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => Acts::Q8K,
        _ => Acts::Q8_1,
    }
}

pub(crate) fn backend_err(what: impl Into<String>) -> Error {
    Error::Backend(what.into())
}

fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Backend(format!("{what}: {e}"))
}

/// How the kernels were obtained at start-up.
#[derive(Clone, Debug)]
pub struct CompileInfo {
    /// Milliseconds spent compiling (0 when read from the cache) and loading the module.
    pub ms: f64,
    /// Whether the PTX came from the disk cache.
    pub cache_hit: bool,
    /// The cache file, if a cache folder could be used.
    pub cache_path: Option<PathBuf>,
    /// NVRTC target, e.g. `compute_90`.
    pub arch: String,
}

struct Kernels {
    quantize_q8_1: CudaFunction,
    quantize_q8_k: CudaFunction,
    /// One per weight type, in the order of `MATMUL_KERNELS`.
    matmul: Vec<CudaFunction>,
    rms_norm: CudaFunction,
    swiglu: CudaFunction,
    add_bias: CudaFunction,
    argmax: CudaFunction,
    rope_kv_write: CudaFunction,
    copy_slots: CudaFunction,
    paged_attention: CudaFunction,
    attention_reduce: CudaFunction,
    /// Grouped-query attention by shape: head_dim 64 with 1..=8 query heads per KV head, then
    /// head_dim 128 with 1..=8 (index `8 * (head_dim == 128) + group - 1`).
    attn_gqa: Vec<CudaFunction>,
}

/// A device buffer and its address.
pub struct DevBuf<T> {
    buf: CudaSlice<T>,
    /// Device address of element 0.
    pub ptr: DevPtr,
}

impl<T> DevBuf<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == 0
    }

    /// Address of element `i`.
    pub fn at(&self, i: usize) -> DevPtr {
        self.ptr + (i * size_of::<T>()) as u64
    }
}

/// Host memory page-locked and mapped into the device's address space (`cuMemHostRegister` with
/// `DEVICEMAP`, then `cuMemHostGetDevicePointer`): kernels read it in place. On a unified-memory
/// Jetson that is the same DRAM the GPU computes from, so weights need no second copy; on a
/// discrete card every read crosses the bus (correct, slow).
///
/// The registered range is the given bytes widened to 4 KiB boundaries: a file mapping starts on
/// a page boundary and covers whole pages (of 4, 16 or 64 KiB, all multiples of 4 KiB), so the
/// widened range stays inside it. The registration is undone on drop; the bytes must stay mapped
/// until then (the backend that owns this is dropped before the model: see `Session`).
pub struct HostMapping {
    ctx: Arc<CudaContext>,
    /// Registered host range (page-aligned start, length).
    base: usize,
    len: usize,
    /// Host address of the first byte given to [`CudaDevice::map_host`].
    host: usize,
    /// Device address of `host`.
    dev: DevPtr,
}

impl HostMapping {
    /// Device address of the byte at host address `p`, if it lies in the mapping.
    pub fn device_ptr(&self, p: *const u8) -> Option<DevPtr> {
        let a = p as usize;
        (a >= self.base && a < self.base + self.len).then(|| {
            if a >= self.host {
                self.dev + (a - self.host) as u64
            } else {
                self.dev - (self.host - a) as u64
            }
        })
    }

    /// Bytes registered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is registered (never: registration of nothing is refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `base` is the start of a range this mapping registered and has not
            // unregistered; no kernel reading it is in flight (the backend synchronizes its
            // stream before its buffers and mappings are dropped, and errors are ignored here).
            let _ = unsafe { cudarc::driver::sys::cuMemHostUnregister(self.base as *mut _) };
        }
    }
}

impl std::fmt::Debug for HostMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMapping")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

/// An open CUDA device (ordinal 0) with the kernels loaded.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    /// Device name.
    pub name: String,
    /// Compute capability.
    pub cc: (i32, i32),
    /// Kernel compilation.
    pub compile: CompileInfo,
    /// Always use the general attention kernel (one block per query head), not the
    /// grouped-query one; `EMBER_CUDA_ATTN=general` at start-up, or set for comparisons.
    pub general_attention: bool,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("name", &self.name)
            .field("cc", &self.cc)
            .finish()
    }
}

/// FNV-1a, 64 bits: the cache key of a kernel build.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `$EMBER_CUDA_CACHE` (a folder, or `off`), else `$XDG_CACHE_HOME/ember/cuda`, else
/// `~/.cache/ember/cuda`.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("EMBER_CUDA_CACHE") {
        Some(v) if v == "off" => return None,
        Some(v) if !v.is_empty() => return Some(PathBuf::from(v)),
        _ => {}
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("ember/cuda"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/ember/cuda"))
}

/// The NVRTC version, `(major, minor)`.
fn nvrtc_version() -> (i32, i32) {
    let (mut a, mut b) = (0, 0);
    // SAFETY: both pointers are valid for writes of one c_int; the library is loaded (checked
    // by `open` before this is called).
    let _ = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
    (a, b)
}

/// The concatenated kernel source.
pub fn kernel_source() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&format!("// ---- {name} ----\n"));
        s.push_str(src);
        s.push('\n');
    }
    s
}

/// Compile the kernels for `arch` (or read them from the cache); returns PTX text.
fn build_ptx(arch: &str) -> Result<(String, bool, Option<PathBuf>)> {
    let src = kernel_source();
    let options = vec![format!("--gpu-architecture={arch}"), "--std=c++14".into()];
    let (ma, mi) = nvrtc_version();
    let ver = format!("nvrtc {ma}.{mi}");
    let key = fnv1a(&[
        src.as_bytes(),
        arch.as_bytes(),
        options.join(" ").as_bytes(),
        b"fmad=false",
        ver.as_bytes(),
    ]);
    let path = cache_dir().map(|d| d.join(format!("ember-kernels-{key:016x}-{arch}.ptx")));
    if let Some(p) = &path {
        if let Ok(ptx) = std::fs::read_to_string(p) {
            if ptx.contains(".entry") {
                return Ok((ptx, true, path));
            }
        }
    }
    let opts = CompileOptions {
        fmad: Some(false),
        options,
        name: Some("ember_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts).map_err(|e| {
        backend_err(format!(
            "NVRTC ({ver}) failed to compile the kernels for {arch}: {e:?}"
        ))
    })?;
    let text = ptx.to_src();
    if let Some(p) = &path {
        // Best effort: a read-only home only costs the next start-up another compile.
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &text).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok((text, false, path))
}

/// Whether the CUDA driver library can be loaded (without panicking when it cannot).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names and drops what it opened.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl CudaDevice {
    /// Open device 0 and load the kernels.
    pub fn open() -> Result<CudaDevice> {
        if !driver_present() {
            return Err(backend_err(
                "no CUDA driver: libcuda.so could not be loaded (this machine has no NVIDIA \
                 driver, or its folder is not on LD_LIBRARY_PATH / in ld.so.conf)",
            ));
        }
        // SAFETY: as above, for libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(backend_err(
                "the CUDA driver is present but NVRTC (libnvrtc.so) could not be loaded: install \
                 the CUDA runtime compiler (JetPack: cuda-nvrtc; desktop: the cuda-nvrtc package \
                 of your CUDA version) or add its folder to LD_LIBRARY_PATH",
            ));
        }
        let ctx = CudaContext::new(0).map_err(drv("cannot open CUDA device 0"))?;
        // One stream, in order: cudarc's per-buffer event tracking is not needed.
        // SAFETY: every buffer of this device is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let name = ctx.name().map_err(drv("device name"))?;
        let cc = ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        let arch = format!("compute_{}{}", cc.0, cc.1);
        let t0 = Instant::now();
        let (ptx, cache_hit, cache_path) = build_ptx(&arch)?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(drv("loading the kernel module"))?;
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| backend_err(format!("kernel {n}: {e}")))
        };
        let k = Kernels {
            quantize_q8_1: f("quantize_q8_1")?,
            quantize_q8_k: f("quantize_q8_k")?,
            matmul: MATMUL_KERNELS
                .iter()
                .map(|(_, n)| f(n))
                .collect::<Result<_>>()?,
            rms_norm: f("rms_norm")?,
            swiglu: f("swiglu")?,
            add_bias: f("add_bias")?,
            argmax: f("argmax")?,
            rope_kv_write: f("rope_kv_write")?,
            copy_slots: f("copy_slots")?,
            paged_attention: f("paged_attention")?,
            attention_reduce: f("attention_reduce")?,
            attn_gqa: [64, 128]
                .iter()
                .flat_map(|d| (1..=8).map(move |g| format!("attn_gqa_d{d}_g{g}")))
                .map(|n| f(&n))
                .collect::<Result<_>>()?,
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(CudaDevice {
            ctx,
            stream,
            k,
            name,
            cc,
            compile: CompileInfo {
                ms,
                cache_hit,
                cache_path,
                arch,
            },
            general_attention: std::env::var_os("EMBER_CUDA_ATTN").is_some_and(|v| v == "general"),
        })
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    /// A zeroed device buffer of `n` elements (at least one).
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        what: &str,
    ) -> Result<DevBuf<T>> {
        let buf = self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| {
            backend_err(format!(
                "cannot allocate {what} on the device ({} bytes): {e}",
                n * size_of::<T>()
            ))
        })?;
        let ptr = buf.device_ptr(&self.stream).0;
        Ok(DevBuf { buf, ptr })
    }

    /// Register `bytes` (host memory the caller keeps mapped and unchanged while the result
    /// lives) with the device and map them into its address space, read-only where the device
    /// supports it (see [`HostMapping`]).
    pub fn map_host(&self, bytes: &[u8], what: &str) -> Result<HostMapping> {
        if bytes.is_empty() {
            return Err(backend_err(format!("{what}: nothing to map")));
        }
        const PAGE: usize = 4096;
        let host = bytes.as_ptr() as usize;
        let base = host & !(PAGE - 1);
        let len = (host + bytes.len()).next_multiple_of(PAGE) - base;
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the CUDA context"))?;
        use cudarc::driver::sys;
        let read_only = self
            .ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED,
            )
            .unwrap_or(0)
            == 1;
        let flags = sys::CU_MEMHOSTREGISTER_DEVICEMAP
            | if read_only {
                sys::CU_MEMHOSTREGISTER_READ_ONLY
            } else {
                0
            };
        // SAFETY: `base..base + len` lies within pages the caller keeps mapped (the slice's own
        // pages: see `HostMapping`); the driver only pins and maps them, and nothing writes
        // through the mapping (read-only where supported; the kernels never store to weights).
        unsafe { sys::cuMemHostRegister_v2(base as *mut _, len, flags) }
            .result()
            .map_err(|e| {
                backend_err(format!(
                    "cannot map {what} ({len} bytes of host memory) into the device                      (cuMemHostRegister{}: {e}); use --cuda-weights upload",
                    if read_only { ", read-only" } else { "" }
                ))
            })?;
        let mut registered = HostMapping {
            ctx: self.ctx.clone(),
            base,
            len,
            host,
            dev: 0,
        };
        let mut dptr: sys::CUdeviceptr = 0;
        // SAFETY: `dptr` is valid for one write; `host` lies in the range registered above.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dptr, host as *mut _, 0) }
            .result()
            .map_err(|e| {
                backend_err(format!(
                    "cannot get the device address of {what} (cuMemHostGetDevicePointer: {e}); \
                     use --cuda-weights upload"
                ))
            })?;
        registered.dev = dptr;
        Ok(registered)
    }

    /// A device copy of `data`.
    pub fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<DevBuf<T>> {
        if data.is_empty() {
            return Err(backend_err(format!("{what}: nothing to upload")));
        }
        let buf = self.stream.clone_htod(data).map_err(|e| {
            backend_err(format!(
                "cannot upload {what} ({} bytes): {e}",
                std::mem::size_of_val(data)
            ))
        })?;
        let ptr = buf.device_ptr(&self.stream).0;
        Ok(DevBuf { buf, ptr })
    }

    /// Copy `src` to the start of `dst`.
    pub fn write<T: DeviceRepr>(&self, dst: &mut DevBuf<T>, src: &[T]) -> Result<()> {
        if src.len() > dst.len() {
            return Err(backend_err("host-to-device copy larger than its buffer"));
        }
        let mut view = dst.buf.slice_mut(..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(drv("host-to-device copy"))
    }

    /// Copy the start of `src` into `dst` and wait for it (and all earlier work).
    pub fn read<T: DeviceRepr>(&self, src: &DevBuf<T>, dst: &mut [T]) -> Result<()> {
        if dst.len() > src.len() {
            return Err(backend_err("device-to-host copy larger than its buffer"));
        }
        let view = src.buf.slice(..dst.len());
        self.stream
            .memcpy_dtoh(&view, dst)
            .map_err(drv("device-to-host copy"))?;
        self.sync()
    }

    /// Wait for all queued work; reports errors of earlier launches.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("CUDA stream"))
    }

    fn launch<P: DeviceRepr>(
        &self,
        f: &CudaFunction,
        grid: (usize, usize),
        block: u32,
        p: &P,
        what: &'static str,
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        if grid.0 > i32::MAX as usize || grid.1 > 65535 {
            return Err(backend_err(format!("{what}: grid {grid:?} too large")));
        }
        // The engine may be driven from another thread than the one that opened the device.
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the CUDA context"))?;
        // cuLaunchKernel directly (cudarc's launch builder allocates an argument list per
        // launch; a step must allocate nothing): one parameter, the struct, by address.
        let mut args = [p as *const P as *mut std::ffi::c_void];
        // SAFETY: `p` matches the kernel's one by-value parameter struct (params.rs mirrors
        // common.cuh) and outlives the call (the driver copies parameters at launch); every
        // address in it was taken from a live buffer of this device, sized by the caller for the
        // counts in `p` (each launcher's contract); `f` belongs to this context.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (grid.0 as u32, grid.1 as u32, 1),
                (block, 1, 1),
                0,
                self.stream.cu_stream(),
                &mut args,
            )
        }
        .map_err(drv(what))?;
        Ok(())
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
    /// activations [`acts_of`] `ty` names (f32 rows, Q8_1 or Q8_K).
    pub fn matmul(&self, ty: GgmlType, p: &MatmulParams) -> Result<()> {
        let Some(i) = MATMUL_KERNELS.iter().position(|(t, _)| *t == ty) else {
            return Err(backend_err(format!("no CUDA matrix kernel for type {ty}")));
        };
        let grid = (
            (p.rows as usize).div_ceil(4),
            (p.n_tok as usize).div_ceil(8),
        );
        self.launch(&self.k.matmul[i], grid, 128, p, "matmul")
    }

    /// RMSNorm of `n_rows` rows.
    pub fn rms_norm(&self, p: &RmsNormParams) -> Result<()> {
        self.launch(&self.k.rms_norm, (p.n_rows as usize, 1), 256, p, "rms_norm")
    }

    /// `gate = silu(gate) * up`.
    pub fn swiglu(&self, p: &SwigluParams) -> Result<()> {
        let grid = ((p.n as usize).div_ceil(256), 1);
        self.launch(&self.k.swiglu, grid, 256, p, "swiglu")
    }

    /// `x[r] += b`.
    pub fn add_bias(&self, p: &BiasParams) -> Result<()> {
        let grid = ((p.n_cols as usize).div_ceil(256), p.n_rows as usize);
        self.launch(&self.k.add_bias, grid, 256, p, "add_bias")
    }

    /// Row-wise argmax.
    pub fn argmax(&self, p: &ArgmaxParams) -> Result<()> {
        self.launch(&self.k.argmax, (p.n_rows as usize, 1), 256, p, "argmax")
    }

    /// RoPE on q and k, K/V into their slots.
    pub fn rope_kv_write(&self, p: &RopeKvParams) -> Result<()> {
        self.launch(
            &self.k.rope_kv_write,
            (p.n_tok as usize, 1),
            128,
            p,
            "rope_kv_write",
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

    /// Paged attention (and the partition merge when `p.n_parts > 1`): the grouped-query
    /// kernel (one thread block per token × KV head × partition) for head_dim 64 and 128 with up
    /// to 8 query heads per KV head, the general kernel (one block per token × query head ×
    /// partition) otherwise.
    pub fn attention(&self, p: &AttnParams) -> Result<()> {
        let rows = (p.n_tok * p.n_head) as usize;
        let group = p.n_head / p.n_head_kv.max(1);
        let shape = match (p.head_dim, group) {
            (64, 1..=8) => Some(group as usize - 1),
            (128, 1..=8) => Some(8 + group as usize - 1),
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

    /// Record the launches that follow (until [`CudaDevice::end_capture`]) into a graph instead
    /// of running them. Nothing but kernel launches may be queued meanwhile.
    pub fn begin_capture(&self) -> Result<()> {
        self.stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(drv(
                "cuStreamBeginCapture (EMBER_CUDA_GRAPH=off runs without graphs)",
            ))
    }

    /// Stop recording: the launches since [`CudaDevice::begin_capture`] as an executable graph.
    pub fn end_capture(&self) -> Result<Graph> {
        self.stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(drv(
                "cuStreamEndCapture (EMBER_CUDA_GRAPH=off runs without graphs)",
            ))?
            .map(Graph)
            .ok_or_else(|| backend_err("cuStreamEndCapture: an empty graph"))
    }

    /// Replay a captured graph on the stream (allocates nothing).
    pub fn launch_graph(&self, g: &Graph) -> Result<()> {
        g.0.launch().map_err(drv("cuGraphLaunch"))
    }

    /// Events for timing on the stream.
    pub fn timer(&self) -> Result<GpuTimer> {
        let start = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv("cuEventCreate"))?;
        start.record(&self.stream).map_err(drv("cuEventRecord"))?;
        Ok(GpuTimer { start })
    }

    /// Milliseconds since `t` was started, once the queued work finishes.
    pub fn elapsed_ms(&self, t: &GpuTimer) -> Result<f32> {
        let end = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv("cuEventCreate"))?;
        end.record(&self.stream).map_err(drv("cuEventRecord"))?;
        end.synchronize().map_err(drv("cuEventSynchronize"))?;
        t.start.elapsed_ms(&end).map_err(drv("cuEventElapsedTime"))
    }

    /// Device-to-device copy of `n` elements (bandwidth reference).
    pub fn copy_dtod<T: DeviceRepr>(
        &self,
        src: &DevBuf<T>,
        dst: &mut DevBuf<T>,
        n: usize,
    ) -> Result<()> {
        let s = src.buf.slice(..n);
        let mut d = dst.buf.slice_mut(..n);
        self.stream
            .memcpy_dtod(&s, &mut d)
            .map_err(drv("device-to-device copy"))
    }
}

/// A start event on the device's stream.
pub struct GpuTimer {
    start: cudarc::driver::CudaEvent,
}

/// A captured, instantiated CUDA graph that may move to another thread with the backend that
/// owns it (the C API steps its engine on a background thread).
pub struct Graph(cudarc::driver::CudaGraph);

// SAFETY: `CudaGraph` is `!Send` only because it holds the raw driver handles `CUgraph` and
// `CUgraphExec`. Those are process-wide driver objects, not tied to the thread that created
// them: cudarc makes the graph's context current on the calling thread before every launch
// (`CudaGraph::launch` calls `bind_to_thread`), and destroying them needs no current context.
// The graph is owned by one backend and used through `&mut` access to it, never from two
// threads at once (no `Sync`).
unsafe impl Send for Graph {}
