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

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests (default features: simd)"
cargo test --workspace --locked

echo "== tests (--no-default-features: scalar only)"
cargo test --workspace --locked --no-default-features
