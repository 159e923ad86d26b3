#!/usr/bin/env bash
# The C API on the CUDA backend, on a GPU machine that has no Rust toolchain.
#   scripts/device/device-ffi.sh build   # here: libember.so with --features cuda, the C test programs,
#                                 # a synthetic model and SmolLM2 cut to 8 layers, in dev-out/ffi
#   scripts/device/device-ffi.sh run     # there: greedy ids on CUDA (uploaded and mapped weights) equal
#                                 # the CPU's; the 8-thread stress test and a short soak in
#                                 # background mode on the GPU; logs in $OUT (or dev-out/ffi/logs)
set -euo pipefail
cd "$(dirname "$0")/../.."
D=dev-out/ffi
case "${1:-}" in
build)
    export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
    mkdir -p "$D"
    cargo build --release --locked -p ember-ffi --features cuda
    cargo build --release --locked -p ember-cli --bin ember
    cp target/release/libember.so "$D/"
    strip "$D/libember.so"
    link=(-Iinclude -L"$D" -lember -Wl,-rpath,'$ORIGIN' -lpthread)
    for p in greedy stress soak; do
        cc -std=c11 -O2 -Wall -Wextra -Werror "tests/c/$p.c" "${link[@]}" -o "$D/$p"
    done
    target/release/ember synth -o "$D/synth.gguf" 2>/dev/null
    target/release/ember convert -m models/SmolLM2-135M-Instruct.Q4_1.gguf \
        -o "$D/smollm2-8l.gguf" --layers 8 >/dev/null
    gzip -f -1 "$D/libember.so" "$D/smollm2-8l.gguf"
    du -ch "$D"/* | tail -1
    ;;
run)
    OUT=${OUT:-$D/logs}
    mkdir -p "$OUT"
    for f in "$D"/*.gz; do [ -e "$f" ] && gunzip -kf "$f"; done
    # The programs load the library by its SONAME (ffi/build.rs).
    soname=$(readelf -d "$D/libember.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
    ln -sfn libember.so "$D/$soname"
    export EMBER_CUDA_CACHE=/tmp/ember-cuda-cache
    prompts=("The capital of France is" "Once upon a time" "def fibonacci(n):")
    fail=0
    # Equality is asserted on the real (8-layer) model only: the synthetic model's random logits
    # are nearly flat, so CPU and GPU arithmetic may pick different ids at near-ties (runtime/tests/cuda/models.rs
    # checks synthetic models with the margin rule); its ids are kept in the logs for reference.
    m=smollm2-8l
    EMBER_BACKEND=cpu "$D/greedy" "$D/$m.gguf" 24 "${prompts[@]}" >"$OUT/greedy-$m-cpu.txt"
    for w in upload mapped; do
        EMBER_BACKEND=cuda EMBER_CUDA_WEIGHTS=$w "$D/greedy" "$D/$m.gguf" 24 "${prompts[@]}" \
            >"$OUT/greedy-$m-cuda-$w.txt"
        if diff -u "$OUT/greedy-$m-cpu.txt" "$OUT/greedy-$m-cuda-$w.txt"; then
            echo "greedy $m: cuda ($w weights) ids equal the cpu's ($(wc -w <"$OUT/greedy-$m-cpu.txt") ids)"
        else
            echo "greedy $m: cuda ($w weights) ids DIFFER from the cpu's"; fail=1
        fi
    done
    echo "== stress (background engine on the GPU: AUTO picks CUDA)"
    "$D/stress" "$D/synth.gguf" 2>&1 | tee "$OUT/stress.log" || fail=1
    echo "== soak, 2000 requests on the GPU"
    "$D/soak" "$D/synth.gguf" 2000 8 2>&1 | tee "$OUT/soak.log" || fail=1
    exit $fail
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
