#!/usr/bin/env bash
# Everything the CUDA backend needs checked on a GPU machine, in one go, from the stripped
# binaries in a folder (first argument, default dev-out; built elsewhere by
# scripts/device/build-device.sh, as this machine needs no Rust): kernel and model tests,
# compute-sanitizer memcheck on a short run, the attention and start-up benchmark, and decode
# throughput on synthetic models. Logs go to $OUT (or <folder>/logs).
set -uo pipefail
D=${1:-dev-out}
OUT=${OUT:-$D/logs}
mkdir -p "$OUT" /tmp/ember-m
export EMBER_CUDA_CACHE=/tmp/ember-cuda-cache
for f in "$D"/*.gz; do [ -e "$f" ] && gunzip -kf "$f"; done
chmod +x "$D"/ember "$D"/ember-prev "$D"/cuda-tests "$D"/cuda-bench 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== tests"
EMBER_CUDA_MODEL=$D/smollm2-8l.gguf "$D"/cuda-tests --test-threads=1 --nocapture 2>&1 | tee "$OUT/tests.log"
echo "tests exit: ${PIPESTATUS[0]}"

echo "== compute-sanitizer memcheck (short generate, synthetic Q4_0 and the 8-layer model)"
"$D"/ember synth -o /tmp/ember-m/tiny-q4_0.gguf --type q4_0 --embd-type q4_0 --vocab 512 --embd 256 \
    --layers 2 --heads 8 --kv-heads 2 --ff 512 --ctx 1024 2>/dev/null
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
"$SAN" --tool memcheck --error-exitcode 9 "$D"/ember generate -m /tmp/ember-m/tiny-q4_0.gguf \
    --backend cuda -p "hello world" -n 24 --ignore-eos --ctx 600 2>&1 | tail -8 | tee "$OUT/memcheck.log"
echo "memcheck exit (tiny): ${PIPESTATUS[0]}"
"$SAN" --tool memcheck --error-exitcode 9 "$D"/ember generate -m $D/smollm2-8l.gguf --backend cuda \
    -p "The capital of France is" -n 8 --ignore-eos --ctx 1100 2>&1 | tail -6 | tee -a "$OUT/memcheck.log"
echo "memcheck exit (8-layer): ${PIPESTATUS[0]}"
"$D"/ember synth -o /tmp/ember-m/tiny-gemma3.gguf --arch gemma3 --type q8_0 --embd-type q8_0 \
    --vocab 512 --embd 512 --layers 6 --heads 2 --kv-heads 1 --ff 768 --window 16 2>/dev/null
"$SAN" --tool memcheck --error-exitcode 9 "$D"/ember generate -m /tmp/ember-m/tiny-gemma3.gguf \
    --backend cuda -p "hello world" -n 40 --ignore-eos --ctx 256 2>&1 | tail -6 | tee -a "$OUT/memcheck.log"
echo "memcheck exit (gemma3): ${PIPESTATUS[0]}"
# A prompt cache written from device memory, then loaded back into it.
rm -f /tmp/ember-m/tiny.kvc
for pass in save load; do
    "$SAN" --tool memcheck --error-exitcode 9 "$D"/ember generate -m /tmp/ember-m/tiny-q4_0.gguf \
        --backend cuda -p "$(printf 'hello world %.0s' $(seq 20))" -n 8 --ignore-eos --ctx 600 \
        --prompt-cache /tmp/ember-m/tiny.kvc --json 2>&1 | tail -4 | tee -a "$OUT/memcheck.log"
    echo "memcheck exit (prompt cache $pass): ${PIPESTATUS[0]}"
done
# Context shifts: a generation three contexts long (keys rotated on the device, cached blocks
# copied first), on the llama and the gemma3 (two RoPE tables) models.
for m in tiny-q4_0 tiny-gemma3; do
    "$SAN" --tool memcheck --error-exitcode 9 "$D"/ember generate -m /tmp/ember-m/$m.gguf \
        --backend cuda -p "hello world" -n 200 --ignore-eos --ctx 64 --context-policy shift \
        --json 2>&1 | tail -3 | cut -c1-300 | tee -a "$OUT/memcheck.log"
    echo "memcheck exit (context shift, $m): ${PIPESTATUS[0]}"
done

# Quantized KV: Q8_0 rows of heads of 64 (the 8-layer model: stored turned, grouped-query
# kernel), Q4_0 rows of heads of 256 through context shifts (gemma3: the general kernel, two
# RoPE tables) and of heads of 32 (stored as computed).
"$SAN" --tool memcheck --error-exitcode 9 "$D"/ember generate -m $D/smollm2-8l.gguf --backend cuda \
    -p "The capital of France is" -n 8 --ignore-eos --ctx 300 --kv-type q8_0 2>&1 | tail -4 \
    | tee -a "$OUT/memcheck.log"
echo "memcheck exit (q8_0 KV, 8-layer): ${PIPESTATUS[0]}"
for m in tiny-gemma3 tiny-q4_0; do
    "$SAN" --tool memcheck --error-exitcode 9 "$D"/ember generate -m /tmp/ember-m/$m.gguf \
        --backend cuda -p "hello world" -n 150 --ignore-eos --ctx 64 --context-policy shift \
        --kv-type q4_0 --json 2>&1 | tail -3 | cut -c1-300 | tee -a "$OUT/memcheck.log"
    echo "memcheck exit (q4_0 KV, context shift, $m): ${PIPESTATUS[0]}"
done
# The KV types' perplexity on both backends (the 8-layer model, chunks of 256 tokens).
for kv in f16 q8_0 q4_0; do
    for be in cpu cuda; do
        printf '%s %s ' "$kv" "$be" | tee -a "$OUT/kv-ppl.log"
        "$D"/ember perplexity -m $D/smollm2-8l.gguf -f tests/golden/GPL-3.txt -c 256 \
            --backend $be --kv-type $kv --json 2>/dev/null | tail -1 | tee -a "$OUT/kv-ppl.log"
    done
done

[ -n "${SKIP_BENCH:-}" ] && { echo "== done (SKIP_BENCH)"; exit 0; }
echo "== attention bandwidth and start-up"
"$D"/cuda-bench 2>&1 | tee "$OUT/bench-attention.md"

echo "== decode throughput (synthetic models, --backend cuda)"
synth() { "$D"/ember synth -o "$1" --type "$2" --embd-type "$2" "${@:3}" --ctx 4096 2>/dev/null; }
synth /tmp/ember-m/smollm2-q4_0.gguf q4_0 --vocab 49152 --embd 576 --layers 30 --heads 9 --kv-heads 3 --ff 1536
synth /tmp/ember-m/llama1b-q4_0.gguf q4_0 --vocab 128256 --embd 2048 --layers 16 --heads 32 --kv-heads 8 --ff 8192
synth /tmp/ember-m/llama1b-q4_k.gguf q4_k --vocab 128256 --embd 2048 --layers 16 --heads 32 --kv-heads 8 --ff 8192
ls -la /tmp/ember-m
# With a previous build's binary beside this one (`ember-prev`), both run in the same call,
# interleaved, ROUNDS times (before/after on one machine).
BINS=ember
[ -x "$D"/ember-prev ] && BINS="ember ember-prev"
for r in $(seq "${ROUNDS:-1}"); do
for m in smollm2-q4_0 llama1b-q4_0 llama1b-q4_k; do
    for b in $BINS; do
    for c in 1 16 64; do
        timeout 120 "$D"/$b bench -m /tmp/ember-m/$m.gguf --backend cuda --concurrency $c -p 32 -n 128 \
            --json 2>/dev/null | sed "s/^/$b r$r $m c=$c /" | tee -a "$OUT/bench-decode.txt"
    done
    timeout 120 "$D"/$b bench -m /tmp/ember-m/$m.gguf --backend cuda -p 512 -n 128 -r 2 --json 2>/dev/null \
        | sed "s/^/$b r$r $m single /" | tee -a "$OUT/bench-decode.txt"
    done
done
done
echo "== done"
