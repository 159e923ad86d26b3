#!/usr/bin/env bash
# Records what llama-quantize writes for the real models, for runtime/tests/convert_kquants.rs:
# the sha256 and size of each whole output file (tests/golden/quantize.json). Run by developers
# when the llama.cpp version or the cases change, not by CI.
#
#   scripts/golden/kquant-golden.sh > tests/golden/quantize.json
#
# llama.cpp comes from the llama-cpp-python sdist (scripts/bench/llama-source.sh), built under
# .bench/ (llama-quantize only; about 4 minutes on 2 cores the first time). Each case is a
# requantization (--allow-requantize: the inputs are already quantized; llama-quantize
# dequantizes to f32 first, as ember convert does), without an importance matrix, on 2 threads
# (the output does not depend on the thread count).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
die() { echo "kquant-golden: $*" >&2; exit 1; }
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
LLAMA_DIR="$ROOT/.bench/llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
LLAMA_BUILD="$LLAMA_DIR/build-quantize"
# shellcheck source=scripts/bench/llama-source.sh
source "$ROOT/scripts/bench/llama-source.sh"
# QUANTIZE: an llama-quantize already built from the same source (any CPU flags).
QUANTIZE="${QUANTIZE:-$LLAMA_BUILD/bin/llama-quantize}"
if [[ ! -x "$QUANTIZE" ]]; then
    command -v cmake >/dev/null || die "cmake not found (apt-get install -y cmake)"
    fetch_llama_source
    # Quantization runs in ggml-base, compiled without -march flags whatever GGML_NATIVE says;
    # NATIVE off keeps the build away from the AMX path this VM cannot run.
    cmake -S "$LLAMA_DIR/src/vendor/llama.cpp" -B "$LLAMA_BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
    cmake --build "$LLAMA_BUILD" --target llama-quantize -j "$(nproc)" >&2
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# model key, file under models/, then the cases: "TYPE" or "pure:TYPE" (--pure: one type for
# every matrix, which is what `ember convert --type Q4_K` means).
CASES=(
    "smollm2 SmolLM2-135M-Instruct.Q4_1.gguf Q4_K_M Q5_K_M Q4_K_S Q6_K pure:Q4_K_S"
    "gemma3 gemma-3-270m-q4_k_m.gguf Q4_K_M Q5_K_S"
)
echo "{"
echo "  \"llama.cpp\": \"llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist, llama-quantize --allow-requantize\","
first_model=1
for line in "${CASES[@]}"; do
    read -r key file types <<<"$line"
    [[ -f "$ROOT/models/$file" ]] || die "models/$file missing (scripts/fetch-model.sh)"
    [[ $first_model == 1 ]] || echo ","
    first_model=0
    printf '  "%s": {\n' "$key"
    first=1
    for t in $types; do
        flags=(--allow-requantize)
        name="$t"
        if [[ $t == pure:* ]]; then
            flags+=(--pure)
            t="${t#pure:}"
            # Under --pure the mix does not matter, only its base k-quant: ember names it Q4_K.
            name="${t%_[SM]}"
        fi
        "$QUANTIZE" "${flags[@]}" "$ROOT/models/$file" "$TMP/out.gguf" "$t" 2 >"$TMP/log" 2>&1 \
            || { cat "$TMP/log" >&2; die "llama-quantize $t failed"; }
        [[ $first == 1 ]] || echo ","
        first=0
        printf '    "%s": {"sha256": "%s", "bytes": %s}' "$name" \
            "$(sha256sum "$TMP/out.gguf" | cut -d' ' -f1)" "$(stat -c %s "$TMP/out.gguf")"
    done
    printf '\n  }'
done
echo
echo "}"
