//! The CUDA device: driver and NVRTC checks, the context and stream, the kernel module (built by
//! `compile.rs`, launched through `launch.rs`), device buffers, host mappings, copies and graphs.
//!
//! cudarc panics when libcuda or libnvrtc cannot be loaded, so [`CudaDevice::open`] checks that
//! both libraries load before calling anything else, and reports a clear error instead.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use cudarc::nvrtc::Ptx;

use super::compile::{build_ptx, CompileInfo};
use super::error::{backend_err, drv};
use super::module::Kernels;
use super::params::DevPtr;
use crate::error::Result;

/// Default of [`CudaDevice::mmv_blocks_per_sm`].
const MMV_BLOCKS_PER_SM: usize = 0;

/// Default of [`CudaDevice::mmv1_rows`]: two rows per thread block, so each thread has two
/// rows' loads in flight (as llama.cpp's fused gate/up kernel has).
pub const MMV1_ROWS: usize = 2;

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
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) k: Kernels,
    /// Device name.
    pub name: String,
    /// Compute capability.
    pub cc: (i32, i32),
    /// Streaming multiprocessors.
    pub sms: usize,
    /// Kernel compilation.
    pub compile: CompileInfo,
    /// Always use the general attention kernel (one block per query head), not the
    /// grouped-query one; `EMBER_CUDA_ATTN=general` at start-up, or set for comparisons.
    pub general_attention: bool,
    /// Most thread blocks per multiprocessor of a matrix-vector product of Q4_0..Q8_0 or K-quant
    /// weights (its blocks then take several rows each); 0: one block per row (or row pair).
    /// `EMBER_CUDA_MMV_BLOCKS=N` at start-up, or set for comparisons.
    pub mmv_blocks_per_sm: usize,
    /// Weight rows per thread block of a lone token's Q4_0..Q8_0 product: 1 or 2
    /// ([`MMV1_ROWS`] unless `EMBER_CUDA_MMV1_ROWS=N` at start-up, for comparisons).
    pub mmv1_rows: usize,
    /// Products of this many tokens or more run on the tensor cores: Q4_0..Q8_0 weights, and
    /// K-quants ([`MMQ_MIN_TOKENS`] and [`MMQ_MIN_TOKENS_KQUANT`], or both N with
    /// `EMBER_CUDA_MMQ_MIN=N` at start-up, for comparisons).
    ///
    /// [`MMQ_MIN_TOKENS`]: super::MMQ_MIN_TOKENS
    /// [`MMQ_MIN_TOKENS_KQUANT`]: super::MMQ_MIN_TOKENS_KQUANT
    pub mmq_min_tokens: (usize, usize),
    /// Most tokens of a Q4_K product on 64 x 16 tiles everywhere
    /// ([`MMQ_NARROW_MAX_TOKENS_Q4K`] unless `EMBER_CUDA_MMQ_NARROW_MAX=N` at start-up, for
    /// comparisons).
    ///
    /// [`MMQ_NARROW_MAX_TOKENS_Q4K`]: super::MMQ_NARROW_MAX_TOKENS_Q4K
    pub mmq_narrow_max_q4k: usize,
    /// The tensor-core tile shape of [`CudaDevice::matmul`] (`EMBER_CUDA_MMQ_TILES=large` or
    /// `small` or `narrow` at start-up, for comparisons; else chosen per product).
    pub mmq_tiles: super::MmqTiles,
    /// Split K of the tensor-core tiles: 0 chooses per launch (enough thread blocks for
    /// [`CudaDevice::mmq_split_blocks`] per multiprocessor), N forces N splits where the K steps
    /// and the partial-sum buffer allow (`EMBER_CUDA_MMQ_SPLIT=N` at start-up, 1 = off).
    pub mmq_split: usize,
    /// Thread blocks per multiprocessor that the automatic split K aims for
    /// (`EMBER_CUDA_MMQ_SPLIT_SM=N` at start-up).
    pub mmq_split_blocks: usize,
    /// Programmatic dependent launch (compute capability 9.0 and above, unless
    /// `EMBER_CUDA_PDL=off` at start-up): each kernel is launched allowed to start while the one
    /// before it finishes, and waits in its first statement (`PDL_ENTRY` in common.cuh) until
    /// that kernel's writes are visible. Saves the launch gap between the ~160 small kernels of a
    /// decode step; results are the same bits either way.
    pub pdl: bool,
    /// Whether the tensor-core products are launched that way too (`EMBER_CUDA_PDL=all`). Off
    /// by default: on an H100, launched early they cost the 1B shape's pp512 7–10% and
    /// 64-sequence decode 17–18% (not profiled; a guess is thread blocks placed unevenly while the kernel before
    /// still holds multiprocessors), where the small kernels gained 5% of batch-1 decode.
    pub pdl_mmq: bool,
    /// Split K's partial sums (`MMQ_SPLIT_FLOATS`) and per-tile arrival counters
    /// (`MMQ_SPLIT_TILES`, zero between launches: the last split of a tile resets its own).
    pub(super) split_part: DevBuf<f32>,
    pub(super) split_count: DevBuf<u32>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("name", &self.name)
            .field("cc", &self.cc)
            .finish()
    }
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
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(drv("multiprocessor count"))?
            .max(1) as usize;
        let arch = format!("compute_{}{}", cc.0, cc.1);
        let t0 = Instant::now();
        let (ptx, cache_hit, cache_path) = build_ptx(&arch)?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(drv("loading the kernel module"))?;
        let k = Kernels::load(&module)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let split_err = |e| backend_err(format!("cannot allocate the split-K buffers: {e}"));
        let split_part = stream
            .alloc_zeros::<f32>(super::MMQ_SPLIT_FLOATS)
            .map_err(split_err)?;
        let split_count = stream
            .alloc_zeros::<u32>(super::MMQ_SPLIT_TILES)
            .map_err(split_err)?;
        let split_part_ptr = split_part.device_ptr(&stream).0;
        let split_count_ptr = split_count.device_ptr(&stream).0;
        let env_usize = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Ok(CudaDevice {
            ctx,
            stream,
            k,
            name,
            cc,
            sms,
            compile: CompileInfo {
                ms,
                cache_hit,
                cache_path,
                arch,
            },
            general_attention: std::env::var_os("EMBER_CUDA_ATTN").is_some_and(|v| v == "general"),
            mmv_blocks_per_sm: std::env::var("EMBER_CUDA_MMV_BLOCKS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(MMV_BLOCKS_PER_SM),
            mmv1_rows: env_usize("EMBER_CUDA_MMV1_ROWS").unwrap_or(MMV1_ROWS),
            mmq_min_tokens: env_usize("EMBER_CUDA_MMQ_MIN")
                .map_or((super::MMQ_MIN_TOKENS, super::MMQ_MIN_TOKENS_KQUANT), |n| {
                    (n, n)
                }),
            mmq_narrow_max_q4k: env_usize("EMBER_CUDA_MMQ_NARROW_MAX")
                .unwrap_or(super::MMQ_NARROW_MAX_TOKENS_Q4K),
            mmq_tiles: match std::env::var("EMBER_CUDA_MMQ_TILES").as_deref() {
                Ok("large") => super::MmqTiles::Large,
                Ok("small") => super::MmqTiles::Small,
                Ok("narrow") => super::MmqTiles::Narrow,
                _ => super::MmqTiles::Auto,
            },
            mmq_split: env_usize("EMBER_CUDA_MMQ_SPLIT").unwrap_or(0),
            mmq_split_blocks: env_usize("EMBER_CUDA_MMQ_SPLIT_SM")
                .unwrap_or(super::MMQ_SPLIT_BLOCKS_PER_SM),
            pdl: cc.0 >= 9 && std::env::var_os("EMBER_CUDA_PDL").is_none_or(|v| v != "off"),
            pdl_mmq: std::env::var_os("EMBER_CUDA_PDL").is_some_and(|v| v == "all"),
            split_part: DevBuf {
                ptr: split_part_ptr,
                buf: split_part,
            },
            split_count: DevBuf {
                ptr: split_count_ptr,
                buf: split_count,
            },
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

    /// Copy `src[at..at + dst.len()]` into `dst` and wait for it (and all earlier work).
    pub fn read_at<T: DeviceRepr>(&self, src: &DevBuf<T>, at: usize, dst: &mut [T]) -> Result<()> {
        let end = at
            .checked_add(dst.len())
            .filter(|&e| e <= src.len())
            .ok_or_else(|| backend_err("device-to-host copy past the end of its buffer"))?;
        let view = src.buf.slice(at..end);
        self.stream
            .memcpy_dtoh(&view, dst)
            .map_err(drv("device-to-host copy"))?;
        self.sync()
    }

    /// Copy `src` into `dst[at..at + src.len()]`.
    pub fn write_at<T: DeviceRepr>(&self, dst: &mut DevBuf<T>, at: usize, src: &[T]) -> Result<()> {
        let end = at
            .checked_add(src.len())
            .filter(|&e| e <= dst.len())
            .ok_or_else(|| backend_err("host-to-device copy past the end of its buffer"))?;
        let mut view = dst.buf.slice_mut(at..end);
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(drv("host-to-device copy"))
    }

    /// Wait for all queued work; reports errors of earlier launches.
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("CUDA stream"))
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
