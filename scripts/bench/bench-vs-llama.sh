#!/usr/bin/env bash
# Side-by-side benchmark of Ember against llama.cpp on the same model, threads and sizes.
#
# Run by developers, not CI. It
#   1. builds llama.cpp's `llama-bench` and `llama-batched-bench` from the source vendored in the
#      PyPI sdist of llama-cpp-python (pinned below) under .bench/ (git-ignored; nothing of
#      llama.cpp is committed), once: the build is skipped when both binaries exist;
#   2. builds `ember` (release);
#   3. runs, round after round, each measurement with llama.cpp and with Ember back to back
#      (the order alternates between rounds so slow drift of a shared machine hits both alike):
#        - pp512 / tg128: `llama-bench -p 512 -n 128 -r 1` vs `ember bench -p 512 -n 128 -r 1`
#        - batched S_PP / S_TG at B sequences: `llama-batched-bench -npp 128 -ntg 64 -npl B` vs
#          `ember bench --concurrency B -p 128 -n 65` (Ember's first token comes from the prefill,
#          so -n 65 makes the same 64 batched decode steps over the same context lengths);
#   4. writes the medians over rounds as one Markdown table to .bench/side-by-side-<date>.md
#      (and prints it); raw outputs stay beside it in .bench/runs/<date>/.
#
# Usage: scripts/bench/bench-vs-llama.sh [--model PATH] [--threads N] [--reps R] [--quick]
#                                  [--bw-limit TOK_S] [--npl LIST] [--ember-cpu PATH]
#   --model PATH     GGUF model (default models/SmolLM2-135M-Instruct.Q4_1.gguf,
#                    fetched by scripts/fetch-model.sh)
#   --threads N      threads for both runtimes (default 2)
#   --reps R         rounds; the table shows the median of R samples (default 5)
#   --quick          a smoke run: pp128 / tg32, batched at 1 and 4 sequences with -npp 32
#                    -ntg 16, 1 round (unless --reps / --npl say otherwise)
#   --bw-limit TOK_S batch-1 decode limit set by memory bandwidth (weight bytes per token /
#                    read bandwidth; about 150 for SmolLM2-135M Q4_1 on the dev-2c machine kind):
#                    adds a "% of bandwidth limit" column to the batch-1 decode rows
#   --npl LIST       batched sequence counts (default 1,4,16,32)
#   --ember-cpu PATH run Ember with EMBER_CPU=PATH (e.g. avx2 on an AVX-512 machine, to compare
#                    with an AVX2 build of llama.cpp: LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF
#                    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"); the table says which
# Environment: LLAMA_CPP_PYTHON_VERSION (default below), BUILD_JOBS (llama.cpp build, default 2),
# LLAMA_CMAKE_ARGS (extra cmake arguments for llama.cpp, built in a folder of their own; e.g.
# -DGGML_NATIVE=OFF for an AVX2-level build, the ISA of Ember's x86 kernels, where GGML_NATIVE would
# use AVX-512 / VNNI; unset on a CPU that reports AMX, it names every native instruction set but
# AMX, whose path segfaults in virtual machines that do not grant the tile state), CARGO_BUILD_JOBS
# as usual. EMBER_CPU is unset for the Ember runs unless
# --ember-cpu sets it: by default the kernel path Ember picks at run time is what is measured.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

# llama-cpp-python 0.3.36 vendors llama.cpp 0c1e57098, the version the goldens in
# shared/golden were produced with.
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
BUILD_JOBS="${BUILD_JOBS:-2}"

MODEL="models/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS=2
REPS=""
QUICK=0
BW_LIMIT=""
NPL=""
EMBER_CPU_PATH=""
N_PROMPT=512
N_GEN=128
NPP=128
NTG=64

die() { echo "bench-vs-llama: $*" >&2; exit 1; }
need_val() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) need_val "$@"; MODEL="$2"; shift 2 ;;
        --threads) need_val "$@"; THREADS="$2"; shift 2 ;;
        --reps) need_val "$@"; REPS="$2"; shift 2 ;;
        --bw-limit) need_val "$@"; BW_LIMIT="$2"; shift 2 ;;
        --npl) need_val "$@"; NPL="$2"; shift 2 ;;
        --ember-cpu) need_val "$@"; EMBER_CPU_PATH="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '$THREADS'"
[[ -z "$REPS" || "$REPS" =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer, got '$REPS'"
[[ -z "$BW_LIMIT" || "$BW_LIMIT" =~ ^[0-9]+(\.[0-9]+)?$ ]] \
    || die "--bw-limit must be a number of tokens per second, got '$BW_LIMIT'"
[[ -z "$NPL" || "$NPL" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--npl must be a list like 1,4,16, got '$NPL'"
if [[ $QUICK == 1 ]]; then
    REPS="${REPS:-1}"; NPL="${NPL:-1,4}"; N_PROMPT=128; N_GEN=32; NPP=32; NTG=16
fi
REPS="${REPS:-5}"
NPL="${NPL:-1,4,16,32}"
[[ -f "$MODEL" ]] || die "model $MODEL not found (scripts/fetch-model.sh fetches the default one)"
MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"

# ---------------------------------------------------------------------------------------------
# 1. llama.cpp, from the llama-cpp-python sdist, built once under .bench/
LLAMA_DIR="$ROOT/.bench/llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
# A CPU that reports AMX (Sapphire Rapids and later) makes GGML_NATIVE build llama.cpp's AMX path,
# which segfaults where the tile state is not granted (this project's virtual machines): there
# the default build names the instruction sets instead, everything native but AMX.
if [[ -z "${LLAMA_CMAKE_ARGS:-}" ]] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON"
    LLAMA_CMAKE_ARGS+=" -DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON"
    LLAMA_CMAKE_ARGS+=" -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
    echo "bench-vs-llama: this CPU reports AMX; llama.cpp is built with $LLAMA_CMAKE_ARGS" >&2
fi
# Extra cmake arguments (e.g. -DGGML_NATIVE=OFF) get a build folder of their own.
LLAMA_BUILD="$LLAMA_DIR/build"
if [[ -n "${LLAMA_CMAKE_ARGS:-}" ]]; then
    LLAMA_BUILD="$LLAMA_DIR/build-$(printf '%s' "$LLAMA_CMAKE_ARGS" | md5sum | cut -c1-8)"
fi
LLAMA_BENCH="$LLAMA_BUILD/bin/llama-bench"
LLAMA_BATCHED="$LLAMA_BUILD/bin/llama-batched-bench"

# fetch_llama_source: the sdist unpacked under $LLAMA_DIR/src (shared with serve-load.sh).
# shellcheck source=scripts/bench/llama-source.sh
source "$ROOT/scripts/bench/llama-source.sh"

build_llama() {
    command -v cmake >/dev/null || {
        echo "cmake not found: installing it (apt-get install -y cmake)" >&2
        apt-get install -y cmake >/dev/null || die "cannot install cmake; install it and rerun"
    }
    fetch_llama_source
    local t0=$SECONDS
    # Release, llama.cpp's default CPU flags (GGML_NATIVE on), static binaries, no network
    # (OpenSSL off; this llama.cpp has no CURL option any more), no tests / examples / server.
    # shellcheck disable=SC2086 # LLAMA_CMAKE_ARGS is a list of arguments
    cmake -S "$LLAMA_DIR/src/vendor/llama.cpp" -B "$LLAMA_BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        ${LLAMA_CMAKE_ARGS:-} >&2
    cmake --build "$LLAMA_BUILD" --config Release --target llama-bench llama-batched-bench \
        -j "$BUILD_JOBS" >&2
    echo "$((SECONDS - t0))" >"$LLAMA_BUILD/ember-build-seconds"
    echo "llama.cpp built in $((SECONDS - t0)) s" >&2
}

# The instruction sets ggml-cpu was compiled for (this llama.cpp's llama-bench and
# llama-batched-bench do not print its CPU feature line): with GGML_NATIVE, the macros the compiler
# defines for -march=native on this machine; otherwise the -m flags of the build.
record_isa() {
    local flags cxx
    flags="$(grep -h '^C_FLAGS' "$LLAMA_BUILD/ggml/src/CMakeFiles/ggml-cpu.dir/flags.make" \
        2>/dev/null || true)"
    cxx="$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$LLAMA_BUILD/CMakeCache.txt" 2>/dev/null)"
    if [[ "$flags" == *-march=native* ]]; then
        "${cxx:-c++}" -march=native -dM -E -x c++ /dev/null \
            | grep -oE '__(SSE3|SSSE3|SSE4_2|AVX|AVX2|FMA|F16C|BMI2|AVXVNNI|AVX512[A-Z0-9]*|AMX_[A-Z0-9]*)__ ' \
            | tr -d '_ ' | sort -u | paste -sd' ' | sed 's/^/-march=native = /'
    else
        echo "$flags" | grep -oE -- '-m[a-z0-9_=.-]+' | sort -u | paste -sd' '
    fi >"$LLAMA_BUILD/ember-isa"
}

if [[ -x "$LLAMA_BENCH" && -x "$LLAMA_BATCHED" ]]; then
    echo "llama.cpp: using the existing build in $LLAMA_BUILD" >&2
else
    build_llama
fi
[[ -x "$LLAMA_BENCH" && -x "$LLAMA_BATCHED" ]] || die "llama.cpp binaries missing after the build"
[[ -s "$LLAMA_BUILD/ember-isa" ]] || record_isa
echo "llama.cpp from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION:" \
    "$("$LLAMA_BENCH" --version 2>&1 | head -1); ggml-cpu ISA: $(cat "$LLAMA_BUILD/ember-isa")" >&2

# ---------------------------------------------------------------------------------------------
# 2. Ember, release build, run-time kernel choice
cargo build --release -p ember-cli --bin ember >&2
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
EMBER="$TARGET_DIR/release/ember"
[[ -x "$EMBER" ]] || die "ember binary not found at $EMBER"
unset EMBER_CPU
if [[ -n "$EMBER_CPU_PATH" ]]; then
    export EMBER_CPU="$EMBER_CPU_PATH"
    "$EMBER" info -m "$MODEL" >/dev/null || die "EMBER_CPU=$EMBER_CPU_PATH is refused on this machine"
fi

# ---------------------------------------------------------------------------------------------
# 3. Interleaved runs
STAMP="$(date -u +%Y-%m-%dT%H%M%SZ)"
RUNS="$ROOT/.bench/runs/$STAMP"
mkdir -p "$RUNS"
IFS=',' read -r -a PLS <<<"$NPL"
TABLE_PY="$ROOT/scripts/bench/bench_table.py"

# One sample: run a command, keep its stdout as $RUNS/<name> and its stderr beside it.
sample() {
    local name="$1"; shift
    if ! "$@" >"$RUNS/$name" 2>"$RUNS/$name.err"; then
        tail -20 "$RUNS/$name.err" >&2
        die "failed: $*"
    fi
    python3 "$TABLE_PY" show "$RUNS/$name" >&2
}

llama_single() {
    sample "r$1-llama-single.json" "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" \
        -p "$N_PROMPT" -n "$N_GEN" -r 1 -o json
}
ember_single() {
    sample "r$1-ember-single.json" "$EMBER" bench -m "$MODEL" -t "$THREADS" \
        -p "$N_PROMPT" -n "$N_GEN" -r 1 --json
}
llama_batched() {
    # Context for B sequences of NPP + NTG tokens each (the KV cache is split per sequence).
    sample "r$1-llama-batched-$2.jsonl" "$LLAMA_BATCHED" -m "$MODEL" -t "$THREADS" \
        -c "$(($2 * (NPP + NTG)))" -b 2048 -ub 512 -npp "$NPP" -ntg "$NTG" -npl "$2" \
        --output-format jsonl
}
ember_batched() {
    # Ember's first generated token comes out of the prefill: NTG + 1 tokens make NTG batched
    # decode steps over the same context lengths as llama-batched-bench's -ntg NTG.
    sample "r$1-ember-batched-$2.json" "$EMBER" bench -m "$MODEL" -t "$THREADS" \
        --concurrency "$2" -p "$NPP" -n "$((NTG + 1))" --json
}

# Both runtimes for one measurement, llama.cpp first in odd rounds and Ember first in even ones.
pair() {
    local round="$1" what="$2"; shift 2
    if ((round % 2 == 1)); then
        "llama_$what" "$round" "$@"; "ember_$what" "$round" "$@"
    else
        "ember_$what" "$round" "$@"; "llama_$what" "$round" "$@"
    fi
}

# What the table states about the run (read by bench_table.py).
M_PY="$LLAMA_CPP_PYTHON_VERSION" M_CMAKE="${LLAMA_CMAKE_ARGS:-}" \
    M_ISA="$(cat "$LLAMA_BUILD/ember-isa")" \
    M_BUILD_S="$(cat "$LLAMA_BUILD/ember-build-seconds" 2>/dev/null || true)" \
    M_COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo -dirty)" \
    M_MODEL="$MODEL" M_THREADS="$THREADS" M_REPS="$REPS" M_N_PROMPT="$N_PROMPT" M_N_GEN="$N_GEN" \
    M_NPP="$NPP" M_NTG="$NTG" M_NPL="$NPL" M_BW="$BW_LIMIT" M_STAMP="$STAMP" \
    M_EMBER_CPU="$EMBER_CPU_PATH" \
    M_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" M_HOST="$(hostname)" \
    M_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" M_NPROC="$(nproc)" \
    python3 - "$RUNS/meta.json" <<'PY'
import json, os, sys
e = os.environ
num = lambda k: (float(e[k]) if "." in e[k] else int(e[k])) if e.get(k) else None
json.dump({
    "llama_cpp_python": e["M_PY"], "llama_cmake_args": e["M_CMAKE"], "llama_isa": e["M_ISA"],
    "llama_build_seconds": num("M_BUILD_S"), "ember_commit": e["M_COMMIT"], "model": e["M_MODEL"],
    "threads": num("M_THREADS"), "reps": num("M_REPS"), "n_prompt": num("M_N_PROMPT"),
    "n_gen": num("M_N_GEN"), "npp": num("M_NPP"), "ntg": num("M_NTG"),
    "npl": [int(b) for b in e["M_NPL"].split(",")], "bw_limit": num("M_BW"),
    "stamp": e["M_STAMP"], "load_before": e["M_LOAD"], "host": e["M_HOST"], "cpu": e["M_CPU"],
    "nproc": num("M_NPROC"), "ember_cpu": e.get("M_EMBER_CPU", ""),
}, open(sys.argv[1], "w"), indent=1)
PY

echo "runs: $RUNS ($REPS rounds)" >&2
t_start=$SECONDS
for ((r = 1; r <= REPS; r++)); do
    echo "--- round $r/$REPS" >&2
    pair "$r" single
    for b in "${PLS[@]}"; do
        pair "$r" batched "$b"
    done
done
echo "measured in $((SECONDS - t_start)) s" >&2
python3 - "$RUNS/meta.json" "$((SECONDS - t_start))" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys
p = sys.argv[1]
m = json.load(open(p))
m["measure_seconds"], m["load_after"] = int(sys.argv[2]), sys.argv[3]
json.dump(m, open(p, "w"), indent=1)
PY

# ---------------------------------------------------------------------------------------------
# 4. The table
OUT="$ROOT/.bench/side-by-side-$STAMP.md"
python3 "$TABLE_PY" table "$RUNS" >"$OUT"
cat "$OUT"
echo "written to $OUT" >&2
