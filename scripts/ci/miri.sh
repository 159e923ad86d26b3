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
# Two interpreters at once, one per core (Miri runs one test at a time, ~30 s per engine built
# and seconds per interpreted step): the two longest engine tests in one (~3 min), the other
# scheduler tests, the pool and thread-pool tests and the property tests in the other. Not the engine's
# scoring tests: those run whole forward passes (1-2 min each interpreted) over the same
# scheduler code, and the native run checks their results. Nor the prompt cache's engine tests
# (safe code over the same pool calls; each builds engines, minutes interpreted): the arena's
# block copies they rely on have their own small test in kv::, and the native run checks
# every damaged byte; nor the cache file's checksum tests (integer arithmetic, no unsafe); nor
# the grammar and speculative-decoding engine tests (hundreds of interpreted forward passes;
# the grammar and the draft bookkeeping are safe code, and the block-pool paths they take are
# the ones the scheduler tests above already run); nor the context-shift tests that generate
# past the context (safe code over the same pool calls, block copies included); nor the
# quantized-KV engine tests (the same pool calls over byte rows; the arena's own tests of every
# KV type run); nor the sliding-window group tests (the same pool calls per layer group; the
# grouped block table's own test in kv:: runs); nor the engine tests that only check how requests and configurations are
# refused (parameter arithmetic in safe code, ~30 s each interpreted).
cargo +nightly miri test --locked -p ember --lib --no-run
cargo +nightly miri test --locked -p ember --test block_pool_props --no-run
# `--build-only`: install and build, run nothing (scripts/test.sh runs it in the background).
[ "${1:-}" != --build-only ] || exit 0
echo "== miri: block pool, block tables, scheduler, thread pool; block-pool property tests"
long=(engine::tests::preemption_and_chunked_prefill_match_a_roomy_engine
      engine::tests::prefix_reuse_below_block_granularity)
cargo +nightly miri test --locked -p ember --lib -- "${long[@]}" \
    >"$CARGO_TARGET_DIR/long.log" 2>&1 &
long_pid=$!
rest_status=0
cargo +nightly miri test --locked -p ember --lib -- kv:: engine:: threadpool:: \
    --skip engine::score_tests --skip engine::prompt_cache_tests --skip kv::cache_file \
    --skip engine::grammar_tests --skip engine::speculative::tests::speculative_output \
    --skip engine::kv_type_tests --skip engine::window_tests \
    --skip engine::draft_model::tests::draft_model_output \
    --skip engine::shift::tests::shift \
    --skip engine::draft_model::tests::a_draft_model_is_checked_and_required \
    --skip engine::shift::tests::bad_shift_requests_are_refused \
    --skip engine::tests::batch_budget_is_lowered_to_what_the_sequences_hold \
    --skip engine::tests::requests_that_can_never_fit_say_why \
    --skip engine::tests::huge_max_tokens_are_context_full_not_a_wrap \
    --skip "${long[0]}" --skip "${long[1]}" || rest_status=$?
cargo +nightly miri test --locked -p ember --test block_pool_props || rest_status=$?
long_status=0
wait "$long_pid" || long_status=$?
cat "$CARGO_TARGET_DIR/long.log"
[ "$rest_status" -eq 0 ] && [ "$long_status" -eq 0 ]
