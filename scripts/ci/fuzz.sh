#!/usr/bin/env bash
# Build every cargo-fuzz target (fuzz/) in one go and run each for SECONDS seconds, as many at
# once as there are cores (libFuzzer runs one input at a time), from a scratch copy of its committed seeds (fuzz/seeds/TARGET/ -> fuzz/corpus/TARGET/,
# git-ignored). Installs the pinned cargo-fuzz when missing; needs the nightly toolchain.
#
#   bash scripts/ci/fuzz.sh [SECONDS] [TARGET...]    # default: 30 s each, every target
#   bash scripts/ci/fuzz.sh --build-only             # install what is missing and build, run nothing
#                                                    # (scripts/test.sh runs it in the background)
#
# FUZZ_FORK=1 runs libFuzzer in fork mode (-fork=1 -ignore_crashes=1): it keeps going after a
# crash and reports the count; crashes land in fuzz/artifacts/TARGET/. Logs: fuzz/logs/TARGET.log.
# Exits non-zero when a target crashed, hung or ran out of memory.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"

CARGO_FUZZ_VERSION=0.13.1
build_only=0
if [ "${1:-}" = --build-only ]; then
    build_only=1
    shift
fi
SECONDS_EACH=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf tokenizer chat sampler grammar capi)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# One build for all targets (they share every dependency). AddressSanitizer stays on: the C-API
# target goes through raw pointers and the runtime has unsafe SIMD and mmap code.
# `cargo fuzz build` has no --locked: check the committed fuzz/Cargo.lock is current first.
cargo +nightly metadata --locked --format-version 1 >/dev/null
cargo +nightly fuzz build
[ "$build_only" = 0 ] || exit 0
bin=target/x86_64-unknown-linux-gnu/release

mkdir -p logs
# One target: exit 0 when it ran clean, 1 when it failed or left artifacts (its log says why).
run_target() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    # Inputs up to 4 KB (the GGUF seeds are larger: their size is the limit there), at full
    # length from the start: -len_control's slow growth restarts in every fork-mode job.
    local max_len=4096
    [ "$t" = gguf ] && max_len=32768
    # A hang is a unit past 60 s. The instrumented build (AddressSanitizer, coverage and
    # comparison tracing) runs 30-40x slower than a release build: a chat template that stops
    # at its fuel or memory limit after 0.2-0.5 s natively takes 8-19 s here, and libFuzzer's
    # default 10 s slow-unit report turned those into CI failures (2026-12-03; the inputs are
    # chat/tests.rs's slowest_fuzz_inputs_end).
    local args=(-max_total_time="$SECONDS_EACH" -timeout=60 -report_slow_units=60
                -rss_limit_mb=2048 -max_len=$max_len -len_control=0
                -artifact_prefix="artifacts/$t/" -print_final_stats=1)
    [ "${FUZZ_FORK:-0}" = 1 ] && args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    "$bin/$t" "${args[@]}" "corpus/$t" >"logs/$t.log" 2>&1 || return 1
    ! ls "artifacts/$t"/* >/dev/null 2>&1
}

jobs_max=$(nproc 2>/dev/null || echo 1)
for t in "${TARGETS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
        wait -n || true
    done
    echo "== fuzz $t (${SECONDS_EACH}s)"
    rm -f "logs/$t.status"
    { if run_target "$t"; then echo 0; else echo 1; fi >"logs/$t.status"; } &
done
wait
status=0
for t in "${TARGETS[@]}"; do
    if [ "$(cat "logs/$t.status" 2>/dev/null)" = 0 ]; then
        echo "fuzz $t: ok, $(grep -E '^#[0-9]+' "logs/$t.log" | tail -n 1)"
    else
        status=1
        echo "fuzz target $t failed: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        tail -n 40 "logs/$t.log"
        if ls "artifacts/$t"/* >/dev/null 2>&1; then
            echo "fuzz target $t left artifacts:"; ls "artifacts/$t"
        fi
    fi
done
exit $status
