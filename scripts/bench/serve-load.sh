#!/usr/bin/env bash
# Side by side: `ember serve` and llama.cpp's `llama-server` under the same bounded load on
# loopback (run by developers, not CI).
#
#   1. builds `llama-server` from the llama.cpp source in the PyPI sdist of llama-cpp-python
#      (pinned below) under .bench/ (git-ignored), once;
#   2. builds `ember` (release);
#   3. starts each server on 127.0.0.1 with the same model, threads, context and parallel
#      slots, and runs scripts/bench/serve_load.py against it at each concurrency, rounds
#      interleaved (ember, llama, ember, llama, ...);
#   4. prints a Markdown table of medians over the rounds: requests/s, p50 and p99 latency,
#      generated tokens/s.
#
# usage: scripts/bench/serve-load.sh [--conc "1 8 32"] [--requests N] [--max-tokens N] [--rounds R]
# Environment: LLAMA_CPP_PYTHON_VERSION, BUILD_JOBS (llama.cpp build, default 2),
# LLAMA_CMAKE_ARGS (extra cmake arguments, e.g. the AVX-512 options where the CPU reports AMX).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
BUILD_JOBS="${BUILD_JOBS:-2}"
MODEL="models/SmolLM2-135M-Instruct.Q4_1.gguf"
CONC="1 8 32"
REQUESTS=64
MAX_TOKENS=32
ROUNDS=3
THREADS=2
CTX=1024

die() { echo "serve-load: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conc) CONC="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done

LLAMA_DIR="$ROOT/.bench/llama.cpp-$LLAMA_CPP_PYTHON_VERSION"
LLAMA_BUILD="$LLAMA_DIR/build-server"
LLAMA_SERVER="$LLAMA_BUILD/bin/llama-server"
# shellcheck source=scripts/bench/llama-source.sh
source "$ROOT/scripts/bench/llama-source.sh"

if [[ ! -x "$LLAMA_SERVER" ]]; then
    fetch_llama_source
    # shellcheck disable=SC2086 # LLAMA_CMAKE_ARGS is a list of arguments
    cmake -S "$LLAMA_DIR/src/vendor/llama.cpp" -B "$LLAMA_BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON ${LLAMA_CMAKE_ARGS:-} >&2
    cmake --build "$LLAMA_BUILD" --config Release --target llama-server -j "$BUILD_JOBS" >&2
fi
[[ -f "$MODEL" ]] || bash scripts/fetch-model.sh
cargo build --release --locked -p ember-cli >&2
EMBER=target/release/ember
MAX_CONC=0
for c in $CONC; do (( c > MAX_CONC )) && MAX_CONC=$c; done

PORT=18431
wait_up() {
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "server on port $PORT did not come up"
}
start() {
    case "$1" in
        ember) "$EMBER" serve -m "$MODEL" --port "$PORT" -t "$THREADS" --ctx "$CTX" \
                   --max-seqs "$MAX_CONC" --max-queue 1024 2>/dev/null & ;;
        # One slot per client, a context of CTX per slot (llama-server splits -c over -np);
        # continuous batching is its default.
        llama) "$LLAMA_SERVER" -m "$MODEL" --port "$PORT" -t "$THREADS" -c "$((CTX * MAX_CONC))" \
                   -np "$MAX_CONC" --log-disable >/dev/null 2>&1 & ;;
    esac
    SERVER_PID=$!
    wait_up
}
stop() { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; }
trap 'stop' EXIT

RESULTS="$(mktemp)"
for r in $(seq 1 "$ROUNDS"); do
    for srv in ember llama; do
        start "$srv"
        # Warm-up: one request, untimed.
        python3 scripts/bench/serve_load.py "http://127.0.0.1:$PORT" 1 1 4 >/dev/null
        for c in $CONC; do
            line="$(python3 scripts/bench/serve_load.py "http://127.0.0.1:$PORT" "$c" "$REQUESTS" "$MAX_TOKENS")"
            echo "{\"server\": \"$srv\", \"round\": $r, \"result\": $line}" | tee -a "$RESULTS" >&2
        done
        stop
    done
done

python3 - "$RESULTS" "$REQUESTS" "$MAX_TOKENS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{sys.argv[2]} chat requests per level, max_tokens {sys.argv[3]} (ignore_eos), greedy; medians of {max(r['round'] for r in rows)} rounds")
print()
print("| clients | server | req/s | p50 latency (s) | p99 latency (s) | gen tok/s | errors |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
for c in sorted({r["result"]["concurrency"] for r in rows}):
    for srv in ("ember", "llama"):
        rs = [r["result"] for r in rows if r["server"] == srv and r["result"]["concurrency"] == c]
        med = lambda k: statistics.median(x[k] for x in rs)
        name = "ember serve" if srv == "ember" else "llama-server"
        print(f"| {c} | {name} | {med('req_s'):.2f} | {med('p50_s'):.3f} | {med('p99_s'):.3f} | "
              f"{med('gen_tok_s'):.1f} | {sum(x['errors'] for x in rs)} |")
EOF
