#!/usr/bin/env python3
"""Compile Ember's CUDA kernels on a machine without a GPU: the check a kernel change gets here
before it costs a GPU-machine call.

The sources are concatenated as runtime/src/backend/cuda/compile.rs does (its SOURCES order,
NVRTC with --fmad=false --std=c++14) and compiled for each target (default compute_90,
compute_87, compute_75). With --regs PATTERN, ptxas assembles the PTX for sm_90 (--sm 87: the
Jetson Orin's sm_87) and prints the registers, spills and shared memory of every kernel whose name matches PATTERN.

NVRTC and ptxas come from NVIDIA's PyPI wheels (nvidia-cuda-nvrtc-cu12, nvidia-cuda-nvcc-cu12),
unpacked once into .bench/cuda-tools (git-ignored) by this script:
    python3 scripts/device/nvrtc-check.py [--dir KERNEL_DIR] [--arch compute_90 ...] [--regs mmq]
"""
import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, ".bench", "cuda-tools")
KERNELS = os.path.join(ROOT, "runtime", "src", "backend", "cuda", "kernels")


def tools():
    lib = os.path.join(TOOLS, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12")
    ptxas = os.path.join(TOOLS, "nvidia", "cuda_nvcc", "bin", "ptxas")
    if not (os.path.exists(lib) and os.path.exists(ptxas)):
        os.makedirs(TOOLS, exist_ok=True)
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", d,
                            "nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-nvcc-cu12==12.9.86"],
                           check=True)
            for w in glob.glob(os.path.join(d, "*.whl")):
                zipfile.ZipFile(w).extractall(TOOLS)
        os.chmod(ptxas, 0o755)
    return lib, ptxas


def source(kernel_dir):
    order = re.findall(r'\("([a-z_0-9]+\.cuh?)", include_str!',
                       open(os.path.join(ROOT, "runtime/src/backend/cuda/compile.rs")).read())
    out = []
    for name in order:
        own = os.path.join(kernel_dir, name) if kernel_dir else None
        path = own if own and os.path.exists(own) else os.path.join(KERNELS, name)
        out.append(f"// ---- {name} ----\n" + open(path).read() + "\n")
    return "".join(out)


def compile_ptx(nvrtc, src, arch):
    prog = ctypes.c_void_p()
    rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"ember_kernels.cu", 0,
                                  None, None)
    assert rc == 0, rc
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++14", b"--fmad=false"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    ptx = None
    if rc == 0:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        nvrtc.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    return rc, log.value.decode(errors="replace"), ptx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", help="kernel variants (as EMBER_CUDA_KERNEL_DIR)")
    ap.add_argument("--arch", nargs="*", default=["compute_90", "compute_87", "compute_75"])
    ap.add_argument("--regs", help="print ptxas's resource usage of matching kernels")
    ap.add_argument("--sm", default="90", help="the target of --regs (default 90; 87: Jetson Orin)")
    a = ap.parse_args()
    lib, ptxas = tools()
    nvrtc = ctypes.CDLL(lib)
    src = source(a.dir)
    failed = False
    ptx90 = None
    for arch in a.arch:
        rc, log, ptx = compile_ptx(nvrtc, src, arch)
        print(f"{arch}: {'ok' if rc == 0 else 'FAILED'}")
        if log.strip():
            print(log)
        failed |= rc != 0
        if arch == f"compute_{a.sm}":
            ptx90 = ptx
    if a.regs and ptx90:
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "k.ptx")
            open(p, "w").write(ptx90)
            r = subprocess.run([ptxas, f"-arch=sm_{a.sm}", "-v", p, "-o", os.path.join(d, "k.cubin")],
                               capture_output=True, text=True)
            name = None
            for line in r.stderr.splitlines():
                m = re.search(r"Compiling entry function '(\w+)'", line)
                if m:
                    name = m.group(1)
                elif name and re.search(a.regs, name) and ("Used" in line or "spill" in line):
                    print(f"{name}: {line.split(':', 1)[-1].strip()}")
    sys.exit(1 if failed else 0)


main()
