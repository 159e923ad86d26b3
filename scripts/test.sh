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
bash scripts/fetch-model.sh gemma3

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Model tests each start their own worker threads: run tests one at a time so they do not
# fight over the cores (spinning workers on an oversubscribed machine are slow).
echo "== tests (default features: simd)"
cargo test --workspace --locked -- --test-threads=1

# The scalar-only build. Until the SIMD kernels land, `simd` compiles no extra code, so this pass
# proves the feature combination builds and runs; the two slowest model tests (perplexity over
# 7k tokens, 32-request equivalence under three engine configurations) already ran above on the
# same kernels and are skipped here to keep CI within its time budget.
echo "== tests (--no-default-features: scalar only)"
cargo test --workspace --locked --no-default-features -- --test-threads=1 \
    --skip perplexity_matches_llama_cpp --skip concurrent_equals_solo
