#!/usr/bin/env bash
# Pack llama.cpp's source for the GPU machine (which reaches no network): the tree vendored in the
# PyPI sdist of llama-cpp-python (pinned as in scripts/bench/bench-vs-llama.sh), without what a
# CUDA build of llama-bench and llama-batched-bench does not read (models, docs, tests, the other
# GPU backends, the web UI), as dev-out/llama-src.tar.xz (about 4 MiB). scripts/device/vs-llama-cuda.sh
# builds it there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
LLAMA_DIR="$ROOT/.bench/llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
die() { echo "pack-llama: $*" >&2; exit 1; }
# shellcheck source=scripts/bench/llama-source.sh
source "$ROOT/scripts/bench/llama-source.sh"
fetch_llama_source
mkdir -p dev-out
SRC="$LLAMA_DIR/src/vendor/llama.cpp"
skip=(.git models docs media gguf-py tests examples pocs app tools/ui tools/server/public
      tools/server/webui)
for b in blas cann et hexagon hip metal musa opencl openvino rpc sycl virtgpu vulkan webgpu zdnn \
    zendnn; do
    skip+=("ggml/src/ggml-$b")
done
args=()
for s in "${skip[@]}"; do args+=(--exclude="./$s"); done
tar -C "$SRC" "${args[@]}" -cJf dev-out/llama-src.tar.xz .
echo "llama.cpp $(cd "$SRC" && git describe --always 2>/dev/null || echo "from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION"):" \
    "dev-out/llama-src.tar.xz $(du -h dev-out/llama-src.tar.xz | cut -f1)"
