#!/usr/bin/env bash
# Ember's CUDA backend side by side with llama.cpp's, on the GPU machine, in one call (issue 15).
#
# Run there (it has no Rust and no network) from the folder that scripts/device/build-device.sh and
# scripts/device/pack-llama.sh filled here (first argument, default dev-out):
#   OUT=$OUT bash scripts/device/vs-llama-cuda.sh dev-out
# It
#   1. takes llama.cpp's CUDA binaries from <folder>/llama-bin.tar.xz.* when an earlier call brought
#      them back, else builds llama-bench and llama-batched-bench from <folder>/llama-src.tar.xz
#      (-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90, shared libraries; about 4.5 minutes on 16
#      cores; kept in /tmp/llama-build for the machine's later calls) and, with PACK_LLAMA=DIR,
#      leaves them in DIR as llama-bin.tar.xz.NN (15 MiB parts) to carry into later calls;
#      BUILD_ONLY=1 stops there;
#   2. writes the synthetic models (`ember synth`, random weights, real shapes, --ctx 4096):
#      SmolLM2-135M Q4_0, Llama-3.2-1B Q4_0 and Q4_K;
#   3. runs ROUNDS rounds (default 3); in each, for each model, llama.cpp and Ember back to back,
#      the order alternating between rounds:
#        - batch-1: `llama-bench -p 512 -n 128 -fa 0,1` vs `ember bench -p 512 -n 128 -r 1`
#        - 16 and 64 sequences: `llama-batched-bench -npp 32 -ntg 128 -npl 16,64` with -fa off
#          and on vs `ember bench --concurrency C -p 32 -n 129` (Ember's first token comes from the
#          prefill: -n 129 makes the same 128 batched decode steps); S_TG against decode_tok_s;
#      with `ember-prev` in the folder (an earlier build), it runs too, beside `ember`;
#   4. writes $OUT/vs-llama.md: medians over rounds, llama.cpp's better flash-attention setting
#      for each figure (the setting named), and the ratios, with the lowest and highest ratio of
#      one round's figures (a cell near its goal shows whether every round met it). Raw outputs go to $OUT/vs-llama-raw.txt.
# Environment: ROUNDS, MODELS (a subset of: smollm2-q4_0 llama1b-q4_0 llama1b-q4_k), PACK_LLAMA,
# BUILD_ONLY.
set -uo pipefail
D=${1:-dev-out}
OUT=${OUT:-$D/logs}
ROUNDS=${ROUNDS:-3}
MODELS=${MODELS:-smollm2-q4_0 llama1b-q4_0 llama1b-q4_k}
mkdir -p "$OUT" /tmp/ember-m
export EMBER_CUDA_CACHE=/tmp/ember-cuda-cache
for f in "$D"/ember.gz "$D"/ember-prev.gz; do [ -e "$f" ] && gunzip -kf "$f"; done
chmod +x "$D"/ember "$D"/ember-prev 2>/dev/null
RAW="$OUT/vs-llama-raw.txt"
: >"$RAW"
die() { echo "vs-llama-cuda: $*" | tee -a "$RAW" >&2; exit 1; }

# 1. llama.cpp
LB=/tmp/llama-build/bin
if [ -x $LB/llama-bench ] && [ -x $LB/llama-batched-bench ]; then
    echo "llama.cpp: the build of an earlier call on this machine" | tee -a "$RAW"
elif ls "$D"/llama-bin.tar.xz.* >/dev/null 2>&1; then
    mkdir -p /tmp/llama-build
    cat "$D"/llama-bin.tar.xz.* | tar -C /tmp/llama-build -xJf - || die "cannot unpack llama-bin"
    echo "llama.cpp: binaries from an earlier call" | tee -a "$RAW"
else
    [ -f "$D/llama-src.tar.xz" ] || die "no $D/llama-src.tar.xz (scripts/device/pack-llama.sh)"
    mkdir -p /tmp/llama-src
    tar -C /tmp/llama-src -xJf "$D/llama-src.tar.xz" || die "cannot unpack llama-src"
    t0=$SECONDS
    cmake -S /tmp/llama-src -B /tmp/llama-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >/tmp/llama-cmake.log 2>&1 \
        || { tail -30 /tmp/llama-cmake.log; die "cmake failed"; }
    cmake --build /tmp/llama-build --target llama-bench llama-batched-bench -j "$(nproc)" \
        >/tmp/llama-build.log 2>&1 || { tail -40 /tmp/llama-build.log; die "llama.cpp build failed"; }
    echo "llama.cpp: built in $((SECONDS - t0)) s" | tee -a "$RAW"
    if [ -n "${PACK_LLAMA:-}" ]; then
        mkdir -p "$PACK_LLAMA"
        (cd /tmp/llama-build && strip bin/llama-bench bin/llama-batched-bench bin/*.so* 2>/dev/null
         tar -cf - bin/llama-bench bin/llama-batched-bench bin/*.so*) | xz -T0 -6 \
            | split -b 15M -d - "$PACK_LLAMA/llama-bin.tar.xz."
        ls -la "$PACK_LLAMA"/llama-bin.tar.xz.* | tee -a "$RAW"
    fi
fi
export LD_LIBRARY_PATH=$LB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -x $LB/llama-bench ] && [ -x $LB/llama-batched-bench ] || die "llama.cpp binaries missing"
[ -n "${BUILD_ONLY:-}" ] && exit 0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
    | tee -a "$RAW"

# 2. models
synth() { "$D"/ember synth -o "/tmp/ember-m/$1.gguf" --type "$2" --embd-type "$2" "${@:3}" --ctx 4096 \
    >/dev/null 2>&1 || die "ember synth $1 failed"; }
for m in $MODELS; do
    case $m in
        smollm2-q4_0) synth "$m" q4_0 --vocab 49152 --embd 576 --layers 30 --heads 9 --kv-heads 3 --ff 1536 ;;
        llama1b-q4_0) synth "$m" q4_0 --vocab 128256 --embd 2048 --layers 16 --heads 32 --kv-heads 8 --ff 8192 ;;
        llama1b-q4_k) synth "$m" q4_k --vocab 128256 --embd 2048 --layers 16 --heads 32 --kv-heads 8 --ff 8192 ;;
        *) die "unknown model $m" ;;
    esac
done

# 3. rounds. Each line of $RAW: "<round> <model> <runtime> <kind> <json>".
EMBERS=ember
[ -x "$D"/ember-prev ] && EMBERS="ember ember-prev"
emit() { while IFS= read -r l; do echo "$1 $l"; done | tee -a "$RAW"; }
llama_run() {
    local r=$1 m=/tmp/ember-m/$2.gguf
    timeout 300 $LB/llama-bench -m "$m" -ngl 99 -p 512 -n 128 -fa 0,1 -r 1 -o json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' \
        | emit "$r $2 llama single"
    for fa in off on; do
        timeout 300 $LB/llama-batched-bench -m "$m" -ngl 99 -c $((64 * 160)) -b 2048 -ub 512 \
            -npp 32 -ntg 128 -npl 16,64 -fa $fa --output-format jsonl 2>/dev/null \
            | grep '^{' | emit "$r $2 llama batched"
    done
}
ember_run() {
    local r=$1 m=/tmp/ember-m/$2.gguf b
    for b in $EMBERS; do
        timeout 300 "$D"/$b bench -m "$m" --backend cuda -p 512 -n 128 -r 1 --json 2>/dev/null \
            | grep '^{' | emit "$r $2 $b single"
        for c in 16 64; do
            timeout 300 "$D"/$b bench -m "$m" --backend cuda --concurrency $c -p 32 -n 129 --json \
                2>/dev/null | grep '^{' | emit "$r $2 $b batched"
        done
    done
}
t0=$SECONDS
for r in $(seq "$ROUNDS"); do
    for m in $MODELS; do
        if ((r % 2 == 1)); then llama_run "$r" "$m"; ember_run "$r" "$m"
        else ember_run "$r" "$m"; llama_run "$r" "$m"; fi
    done
done
echo "measured in $((SECONDS - t0)) s" | tee -a "$RAW"

# 4. the table
python3 - "$RAW" "$ROUNDS" >"$OUT/vs-llama.md" <<'PY'
import json, statistics, sys
from collections import defaultdict
raw, rounds = sys.argv[1], sys.argv[2]
v = defaultdict(list)  # (model, runtime, workload, setting) -> samples
by_round = defaultdict(dict)  # the same key -> {round: sample}
def add(key, r, x):
    v[key].append(x)
    by_round[key][r] = x
for line in open(raw):
    p = line.split(" ", 4)
    if len(p) < 5 or not p[4].startswith(("{", "[")):
        continue
    r, m, rt, kind, js = p
    d = json.loads(js)
    if rt == "llama" and kind == "single":
        for rec in d:
            w = "pp512" if rec["n_prompt"] else "tg128"
            add((m, rt, w, "fa %d" % rec["flash_attn"]), r, rec["avg_ts"])
    elif rt == "llama":
        add((m, rt, "S_TG x%d" % d["pl"], "fa %s" % ("on" if d["flash_attn"] == 1 else "off")), r, d["speed_tg"])
    elif kind == "single":
        add((m, rt, "pp512", ""), r, d["prefill_tok_s"])
        add((m, rt, "tg128", ""), r, d["decode_tok_s"])
    else:
        add((m, rt, "S_TG x%d" % d["concurrency"], ""), r, d["decode_tok_s"])
med = {k: (statistics.median(s), len(s)) for k, s in v.items()}
models = sorted({k[0] for k in med}, key=lambda m: (m.startswith("llama"), m))
rts = sorted({k[1] for k in med if k[1] != "llama"})
print(f"Medians of {rounds} interleaved rounds (tok/s); llama.cpp: the better flash-attention setting;")
print("in brackets the lowest and highest ratio of one round's figures (the two runtimes back to back).\n")
print("| model | workload | llama.cpp | " + " | ".join(rts) + " | " + " | ".join(f"{r} / llama.cpp" for r in rts) + " |")
print("| --- | --- | ---: | " + " | ".join(["---:"] * (2 * len(rts))) + " |")
for m in models:
    for w in ["tg128", "pp512", "S_TG x16", "S_TG x64"]:
        ll = [(x, k[3], k) for k, x in med.items() if k[:3] == (m, "llama", w)]
        best = max(ll, default=None, key=lambda t: t[0][0])
        lv = best[0][0] if best else None
        cells = [f"{lv:.0f} ({best[1]})" if best else "-"]
        es = [med.get((m, r, w, ""), (None, 0))[0] for r in rts]
        cells += [f"{e:.0f}" if e else "-" for e in es]
        for r, e in zip(rts, es):
            if not (e and lv):
                cells.append("-")
                continue
            ours, theirs = by_round[(m, r, w, "")], by_round[best[2]]
            per = [ours[k] / theirs[k] for k in ours if k in theirs and theirs[k]]
            span = f" [{min(per):.2f}–{max(per):.2f}]" if len(per) > 1 else ""
            cells.append(f"{e / lv:.2f}{span}")
        print(f"| {m} | {w} | " + " | ".join(cells) + " |")
PY
cat "$OUT/vs-llama.md"
