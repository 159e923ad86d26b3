//! The kernels' build: the `.cu` sources beside this file, concatenated into one NVRTC program,
//! compiled for the device's compute capability at start-up, and cached on disk as PTX (keyed
//! by the source, the target, the options and the NVRTC version).

use std::path::PathBuf;

use cudarc::nvrtc::CompileOptions;

use super::error::backend_err;
use crate::error::Result;

/// The kernel sources, concatenated in this order into one NVRTC program.
const SOURCES: [(&str, &str); 10] = [
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("quantize.cu", include_str!("kernels/quantize.cu")),
    ("mmvq.cu", include_str!("kernels/mmvq.cu")),
    ("mmv_float.cu", include_str!("kernels/mmv_float.cu")),
    ("kquants.cu", include_str!("kernels/kquants.cu")),
    ("mmq.cu", include_str!("kernels/mmq.cu")),
    ("elementwise.cu", include_str!("kernels/elementwise.cu")),
    ("topk.cu", include_str!("kernels/topk.cu")),
    ("kv.cu", include_str!("kernels/kv.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
];

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
pub(super) fn nvrtc_version() -> (i32, i32) {
    let (mut a, mut b) = (0, 0);
    // SAFETY: both pointers are valid for writes of one c_int; the library is loaded (checked
    // by `open` before this is called).
    let _ = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
    (a, b)
}

/// The concatenated kernel source. For kernel work on a GPU machine without a Rust toolchain,
/// `EMBER_CUDA_KERNEL_DIR=<folder>` takes each file found there instead of the built-in one
/// (the disk cache is keyed by the source, so variants never mix). A folder that holds none of
/// the sources is an error, not a silent run of the built-in kernels.
pub fn kernel_source() -> Result<String> {
    let dir = std::env::var_os("EMBER_CUDA_KERNEL_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let mut s = String::new();
    let mut taken = 0;
    for (name, src) in SOURCES {
        let own = dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join(name)).ok());
        taken += usize::from(own.is_some());
        s.push_str(&format!("// ---- {name} ----\n"));
        s.push_str(own.as_deref().unwrap_or(src));
        s.push('\n');
    }
    if let (Some(d), 0) = (&dir, taken) {
        let names: Vec<&str> = SOURCES.iter().map(|(n, _)| *n).collect();
        return Err(backend_err(format!(
            "EMBER_CUDA_KERNEL_DIR={}: holds none of the kernel sources ({})",
            d.display(),
            names.join(", ")
        )));
    }
    Ok(s)
}

/// Compile the kernels for `arch` (or read them from the cache); returns PTX text.
pub(super) fn build_ptx(arch: &str) -> Result<(String, bool, Option<PathBuf>)> {
    let src = kernel_source()?;
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
