#!/usr/bin/env bash
# Miri (nightly) over the code whose bugs would be memory or aliasing bugs: the KV block pool and
# its hash index, block tables, the engine's scheduler (on a tiny synthetic model, every forward
# pass interpreted), the persistent thread pool with its barriers, and the block-pool property
# tests. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add miri rust-src --toolchain nightly
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/miri}
cargo +nightly miri setup >/dev/null
# Two interpreters at once (Miri runs one test at a time): the unit tests and the property tests.
echo "== miri: block pool, block tables, scheduler, thread pool; block-pool property tests"
cargo +nightly miri test --locked -p ember --lib --no-run
cargo +nightly miri test --locked -p ember --test block_pool_props --no-run
cargo +nightly miri test --locked -p ember --test block_pool_props >"$CARGO_TARGET_DIR/props.log" 2>&1 &
props=$!
lib_status=0
# The engine's scheduler tests, not its scoring tests: those run whole forward passes (1-2 min
# each interpreted) over the same scheduler code, and the native run checks their results.
cargo +nightly miri test --locked -p ember --lib -- kv:: engine:: threadpool:: \
    --skip engine::score_tests || lib_status=$?
props_status=0
wait "$props" || props_status=$?
cat "$CARGO_TARGET_DIR/props.log"
[ "$lib_status" -eq 0 ] && [ "$props_status" -eq 0 ]
