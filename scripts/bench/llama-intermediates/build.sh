#!/usr/bin/env bash
# Build `dump` (dump.cpp) against the llama.cpp of .bench/ with ggml-cpu recompiled for
# x86-64-v3 (-march=haswell): the goldens come from an AVX2 machine, and the AVX-512 build of
# .bench/ (GGML_NATIVE on this host) gives other logits. Reads .bench/ only; builds in $OUT.
# Usage: scripts/bench/llama-intermediates/build.sh [OUT=/tmp/llama-intermediates]
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:-/tmp/llama-intermediates}
LL=$(pwd)/.bench/llama.cpp-0.3.36
SRC=$LL/src/vendor/llama.cpp
B=$LL/build
mkdir -p "$OUT/cpu"
python3 - "$B/compile_commands.json" "$OUT/cpu" "$LL" <<'PY'
import json, subprocess, sys, re
cc, out, ll = sys.argv[1], sys.argv[2], sys.argv[3]
for e in json.load(open(cc)):
    if '/ggml-cpu/' not in e['file']:
        continue
    # The compile database may name another checkout of .bench: point it at this one.
    fix = lambda t: re.sub(r'(-I)?\S*?/\.bench/llama\.cpp-0\.3\.36', lambda m: (m.group(1) or '') + ll, t)
    cmd, src = fix(e['command']), fix(e['file'])
    obj = out + '/' + src.split('ggml/src/')[-1].replace('/', '_') + '.o'
    cmd = cmd.replace('-march=native', '-march=haswell').split(' -o ')[0] + f' -o {obj} -c {src}'
    subprocess.run(cmd, shell=True, check=True, cwd=out)
PY
ar rcs "$OUT/cpu/libggml-cpu.a" "$OUT"/cpu/*.o
g++ -O2 -std=c++17 -I"$SRC/include" -I"$SRC/ggml/include" scripts/bench/llama-intermediates/dump.cpp \
    "$B/src/libllama.a" "$B/ggml/src/libggml.a" "$OUT/cpu/libggml-cpu.a" \
    "$B/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl -o "$OUT/dump"
echo "built $OUT/dump"
