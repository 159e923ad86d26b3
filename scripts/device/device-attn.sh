#!/usr/bin/env bash
# One device call for the attention, mapped-weights and graph work (issue 6): registers and
# spills of the attention kernels (nvcc -Xptxas -v over the source NVRTC compiles), the CUDA
# tests, compute-sanitizer memcheck on the attention test and on a mapped-weights generate, the
# attention benchmark (and, when cuda-bench-prev.gz is there, a previous build's, for
# before/after in one call), uploaded vs mapped `ember generate` on the 8-layer model, batch-1
# decode with the CUDA graph on and off (skip with SKIP_DECODE=1), and ncu on the grouped-query
# kernels. Run on the GPU machine from a folder holding the outputs of scripts/device/build-device.sh
# plus kernels/ (a copy of kernels/cuda): `bash device-attn.sh <folder>`. Logs go to $OUT.
set -uo pipefail
D=${1:-.}
OUT=$(realpath -m "${OUT:-$D/logs}")
mkdir -p "$OUT" /tmp/ember-m
export EMBER_CUDA_CACHE=/tmp/ember-cuda-cache
cd "$D"
for f in *.gz; do [ -e "$f" ] && gunzip -kf "$f"; done
chmod +x ember cuda-tests cuda-bench cuda-bench-prev 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== attention kernels: registers and spills (nvcc -arch=sm_90 --fmad=false)"
cat kernels/common.cuh kernels/attention.cu >/tmp/attn.cu
nvcc -arch=sm_90 --fmad=false -std=c++14 -cubin -Xptxas -v -o /tmp/attn.cubin /tmp/attn.cu 2>&1 \
    >"$OUT/ptxas.txt" 2>&1
grep -E "error" "$OUT/ptxas.txt"
awk '/Compiling entry/ {n=$7} /spill/ {sp=$5" spill st"} /Used/ {print n, $5, "regs", sp}' "$OUT/ptxas.txt" \
    | grep -E "attn|paged" | sort

echo "== tests"
EMBER_CUDA_MODEL=$PWD/smollm2-8l.gguf ./cuda-tests --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests.log" \
    | grep -E "^test |attention general=false hq=(9|32)|mapped|test result|panicked|skipped" 
echo "tests exit: ${PIPESTATUS[0]}"

echo "== attention benchmark"
./cuda-bench 2>&1 | tee "$OUT/bench-attention.md"
if [ -x cuda-bench-prev ]; then
    echo "== attention benchmark, previous build (same call, for before/after)"
    ./cuda-bench-prev 2>&1 | grep -E "copy|SmolLM2|Llama" | tee "$OUT/bench-attention-prev.md"
fi

echo "== memcheck: attention test, mapped generate"
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
"$SAN" --tool memcheck --error-exitcode 9 ./cuda-tests paged_attention --test-threads=1 2>&1 | tail -4 | tee "$OUT/memcheck.log"
echo "memcheck exit (attention): ${PIPESTATUS[0]}"
./ember synth -o /tmp/ember-m/tiny.gguf --type q4_0 --embd-type q4_0 --vocab 512 --embd 256 \
    --layers 2 --heads 8 --kv-heads 2 --ff 512 --ctx 1024 2>/dev/null
"$SAN" --tool memcheck --error-exitcode 9 ./ember generate -m /tmp/ember-m/tiny.gguf --backend cuda \
    --cuda-weights mapped -p "hello world" -n 24 --ignore-eos --ctx 600 2>&1 | tail -4 | tee -a "$OUT/memcheck.log"
echo "memcheck exit (mapped): ${PIPESTATUS[0]}"

echo "== 8-layer model: uploaded vs mapped weights (greedy)"
for w in upload mapped; do
    ./ember generate -m smollm2-8l.gguf --backend cuda --cuda-weights $w -p "The capital of France is" \
        -n 32 --ignore-eos --temp 0 >"$OUT/gen-$w.txt" 2>"$OUT/gen-$w.err"
    echo "$w: exit $? $(grep -i 'backend' "$OUT/gen-$w.err" | head -2)"
done
cmp "$OUT/gen-upload.txt" "$OUT/gen-mapped.txt" && echo "generated text identical"
[ -n "${SKIP_DECODE:-}" ] || {
echo "== batch-1 decode: CUDA graph on (default) and off, synthetic models"
synth() { ./ember synth -o "$1" --type "$2" --embd-type "$2" "${@:3}" --ctx 4096 2>/dev/null; }
synth /tmp/ember-m/smollm2-q4_0.gguf q4_0 --vocab 49152 --embd 576 --layers 30 --heads 9 --kv-heads 3 --ff 1536
synth /tmp/ember-m/llama1b-q4_0.gguf q4_0 --vocab 128256 --embd 2048 --layers 16 --heads 32 --kv-heads 8 --ff 8192
for m in smollm2-q4_0 llama1b-q4_0; do
    for g in on off; do
        EMBER_CUDA_GRAPH=$g timeout 120 ./ember bench -m /tmp/ember-m/$m.gguf --backend cuda -p 512 -n 128 -r 2 \
            --json 2>/dev/null | sed "s/^/$m graph=$g single /" | tee -a "$OUT/bench-decode.txt"
        EMBER_CUDA_GRAPH=$g timeout 120 ./ember bench -m /tmp/ember-m/$m.gguf --backend cuda --concurrency 64 \
            -p 32 -n 128 --json 2>/dev/null | sed "s/^/$m graph=$g c=64 /" | tee -a "$OUT/bench-decode.txt"
    done
done
}

echo "== ncu: attention kernels (first launches, SmolLM2 shape)"
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for k in attn_gqa_d64_g3 attn_gqa_d64_g4; do
    timeout 100 "$NCU" --kernel-name $k --launch-skip 95 --launch-count 1 --section SpeedOfLight \
        --section Occupancy --section WarpStateStats --section LaunchStats ./cuda-bench >"$OUT/ncu-$k.txt" 2>&1
    echo "-- $k"
    grep -E "Duration|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Theoretical Occ|Block Limit Reg" "$OUT/ncu-$k.txt" | head -12
done
echo "== done"
