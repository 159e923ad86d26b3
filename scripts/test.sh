#!/usr/bin/env bash
# Run every test of the project from a fresh clone: installs what the tests need (the Python
# `gguf` package used as an independent reference, the model), then lint and the test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== set-up"
if ! python3 -c "import gguf, numpy" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "gguf==0.19.0" "numpy<3"
fi
bash scripts/fetch-model.sh
bash scripts/fetch-model.sh gemma3

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Model tests each start their own worker threads: run tests one at a time so they do not
# fight over the cores (spinning workers on an oversubscribed machine are slow).
echo "== tests (default features: simd)"
cargo test --workspace --locked -- --test-threads=1
bash scripts/ci/test-ffi.sh  # the C ABI: header, C/C++ programs under valgrind/ASan, greedy equality

# The run above tested every kernel set this CPU has against the reference in one process
# (kernels/tests/dispatch.rs, and through whole synthetic models in model_paths.rs); on a CPU
# with AVX-512 its real-model goldens took the `avx512` path, so the AVX2 path's greedy goldens
# run here too: every x86 path is checked on the real models.
if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then
    echo "== real-model goldens on the AVX2 path (EMBER_CPU=avx2)"
    EMBER_CPU=avx2 EMBER_EXPECT_CPU=avx2 cargo test --locked -p ember --test golden --test gemma3 \
        -- --test-threads=1 --skip perplexity
fi

# The scalar-only build: the same tests on the scalar reference kernels (no SIMD code compiled),
# so the goldens hold on every path. The two slowest model tests (perplexity over 7k tokens,
# 32-request equivalence under three engine configurations) already ran above and their kernels
# are covered by the scalar goldens; they are skipped here to keep CI within its time budget.
echo "== tests (--no-default-features: scalar only)"
cargo test --workspace --locked --no-default-features -- --test-threads=1 \
    --skip perplexity_matches_llama_cpp --skip concurrent_equals_solo \
    --skip hundred_requests_in_a_tiny_arena
bash scripts/ci/test-aarch64.sh

# Fuzzing smoke: the five cargo-fuzz targets of fuzz/ (GGUF reader, tokenizer, chat templates,
# sampler, C ABI) built in one go with AddressSanitizer, then each run for 30 s from its committed
# seeds. scripts/ci/fuzz.sh installs the pinned cargo-fuzz if missing; README.md "Fuzzing" says how
# to run them for longer.
echo "== fuzz smoke (30 s per target)"
bash scripts/ci/fuzz.sh 30

# The CUDA backend builds without a CUDA toolkit (cudarc loads libcuda / libnvrtc at run time).
# Without a driver every CUDA test prints "skipped: no CUDA driver" (--nocapture shows it); on a
# GPU machine the same tests compare each kernel and greedy generation with the CPU.
echo "== CUDA backend (--features cuda)"
# ember-ffi too: its background engine thread needs every backend to be Send.
cargo clippy -p ember -p ember-ffi --features ember/cuda,ember-ffi/cuda --all-targets --locked \
    -- -D warnings
cargo test -p ember --features cuda --locked --test cuda -- --nocapture --test-threads=1

# Miri over the block pool, block tables, scheduler and thread pool (nightly; see the script).
bash scripts/ci/miri.sh
