#!/usr/bin/env bash
# Miri (nightly) over the code whose bugs would be memory or aliasing bugs: the KV block pool and
# its hash index, block tables, the engine's scheduler (on a tiny synthetic model, every forward
# pass interpreted), the persistent thread pool with its barriers, and the block-pool property
# tests. Called by scripts/test.sh; about 5 minutes on 2 cores, most of it building the std
# library for Miri the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add miri rust-src --toolchain nightly
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/miri}
cargo +nightly miri setup >/dev/null
echo "== miri: block pool, block tables, scheduler, thread pool"
cargo +nightly miri test --locked -p ember --lib -- kv:: engine:: threadpool::
echo "== miri: block-pool property tests"
cargo +nightly miri test --locked -p ember --test block_pool_props
