#!/usr/bin/env bash
# Run every test of the project from a fresh clone: installs what the tests need (the Python
# `gguf` package used as an independent reference, the model), then lint and the test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each section prints its name on start; the time of every section is summed up at the end
# (CI has 35 minutes: the summary says where they go).
times=()
t_section=$SECONDS
t_all=$SECONDS
section_name=""
section() {
    [ -z "$section_name" ] || times+=("$(printf '%5d s  %s' $((SECONDS - t_section)) "$section_name")")
    section_name=$1
    t_section=$SECONDS
    [ -z "$1" ] || echo "== $1"
}
# On success and on failure alike (a failed section is the last one listed).
summary() {
    status=$?
    # A background prebuild (below) still running when a section failed: stop it.
    [ -z "${prebuild_pid:-}" ] || kill -- -"$prebuild_pid" 2>/dev/null || true
    section ""
    echo "== time per section (exit status $status)"
    printf '%s\n' "${times[@]}"
    echo "total: $((SECONDS - t_all)) s"
}
trap summary EXIT

section "set-up"
if ! python3 -c "import gguf, numpy" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "gguf==0.19.0" "numpy<3"
fi
# An independent JSON Schema validator for the schema-constrained outputs (runtime/tests/json_schema.rs).
if ! python3 -c "import jsonschema" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "jsonschema==4.23.0"
fi
# The official OpenAI client, driving `ember serve` in cli/tests/server.rs.
if ! python3 -c "import openai" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check "openai==1.109.1"
fi
bash scripts/fetch-model.sh
bash scripts/fetch-model.sh gemma3

# The fuzz targets (nightly, AddressSanitizer) and Miri's test binaries build in the background
# at idle priority, from the start: the sections before them leave a core idle much of the time
# (valgrind and the C ABI programs, single-threaded test phases, links), and their 7 minutes of
# building on 2 cores used to come after everything else. `nice -n 19` keeps them out of the
# foreground's way; their own target folders (fuzz/target, target/miri) share no lock with it.
# The last two sections wait for them; a failed prebuild is rebuilt there, in the foreground,
# where its errors show. `setsid` (one process group, stopped as one on failure) also starts a
# new scheduler autogroup where the kernel has them (sched_autogroup_enabled), and autogroups
# share the CPU equally whatever their members' nice values: the group's own nice is set too,
# or the prebuild takes half the machine (measured: lint and tests 400 s slower, no gain).
mkdir -p target
setsid bash -c '{ echo 19 >/proc/self/autogroup; } 2>/dev/null || true
                nice -n 19 bash scripts/ci/fuzz.sh --build-only &&
                nice -n 19 bash scripts/ci/miri.sh --build-only' >target/prebuild.log 2>&1 &
prebuild_pid=$!
# Waits for the prebuild, says how it ended; the section then runs its script as usual.
wait_prebuild() {
    [ -n "${prebuild_pid:-}" ] || return 0
    local t=$SECONDS rc=0
    wait "$prebuild_pid" || rc=$?
    prebuild_pid=""
    echo "background prebuild (fuzz targets, Miri): exit $rc, waited $((SECONDS - t)) s (log: target/prebuild.log)"
}

section "format and lint"
cargo fmt --all -- --check
# Every feature combination compiles warning-free, tests included: default (simd), scalar only,
# and with the CUDA backend (ember-ffi too: its background engine thread needs every backend
# to be Send).
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --no-default-features -- -D warnings
cargo clippy --workspace --all-targets --locked --features ember/cuda,ember-ffi/cuda -- -D warnings
# The Rust API's documentation builds without a warning (broken links included), CUDA modules too.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p ember -p ember-kernels --features ember/cuda

# Model tests each start their own worker threads: run tests one at a time so they do not
# fight over the cores (spinning workers on an oversubscribed machine are slow).
section "tests (default features: simd)"
cargo test --workspace --locked -- --test-threads=1
section "C ABI"
bash scripts/ci/test-ffi.sh  # the C ABI: header, C/C++ programs under valgrind/ASan, greedy equality

# The run above tested every kernel set this CPU has against the reference in one process
# (kernels/tests/dispatch.rs, and through whole synthetic models in model_paths.rs); on a CPU
# with AVX-512 its real-model goldens took the `avx512` path, so the AVX2 path's greedy goldens
# run here too: every x86 path is checked on the real models.
if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then
    section "real-model goldens on the AVX2 path (EMBER_CPU=avx2)"
    # `--workspace`, as above: with `-p ember` alone the features resolve differently and cargo
    # rebuilt the runtime and its dependencies (86 s); this way it reuses the build above.
    EMBER_CPU=avx2 EMBER_EXPECT_CPU=avx2 cargo test --workspace --locked --test golden --test gemma3 \
        -- --test-threads=1 --skip perplexity
fi

# The scalar-only build (no SIMD code compiled): the same tests on the reference kernels. The
# default build above already ran the reference kernel set against every SIMD set, on kernels
# and on whole synthetic models (model_paths.rs); here the slowest model tests, whose kernels
# those cover, are skipped to keep CI within its time budget: perplexity over 7k tokens, the
# full greedy goldens (2.5 and 5 minutes on scalar kernels; the first 8 steps of SmolLM2's and
# the F32 golden still run), the engine's many-request equivalence tests and its 100-step
# allocation count (90 s here; the engine's allocations do not depend on the kernels, and
# no_alloc.rs still counts the scalar forward pass's), and the prompt-cache CLI test (about 50 s
# here: eight runs of SmolLM2 and Gemma 3; the cache file holds what the kernels computed, and
# the engine's prompt_cache_tests still run here on the reference kernels), and the JSON Schema
# outputs of SmolLM2 checked by Python's jsonschema (the grammar and the sampler do not depend
# on the kernels; the grammar's own tests run here), and the OpenAI client against `ember serve`
# (HTTP and the engine's batching do not depend on the kernels; the raw-HTTP server test runs),
# and the k-quant conversions compared with llama-quantize's files (20 s; conversion runs the
# reference quantizers in every build, and their own tests run here), and `ember serve
# --context-shift` on SmolLM2 (a minute here; the shift's rotation is checked on these kernels
# by the engine's shift tests, and the CLI's shift runs in the chat test), and the CLI's and
# the engine's tests of conversation policy, parallel samples and speculative decoding (chat
# turns past the context, prompt lookup and draft models, n > 1 with seeds: 3 minutes here,
# where the reference kernels decode SmolLM2 at about 10 tok/s; what they check is scheduling
# and bookkeeping, the same code in every build, and the engine's own speculative and shift
# tests run here on a synthetic model).
section "tests (--no-default-features: scalar only)"
EMBER_EXPECT_CPU=scalar cargo test --workspace --locked --no-default-features -- --test-threads=1 \
    --skip perplexity_matches_llama_cpp --skip greedy_matches_llama_cpp \
    --skip concurrent_equals_solo --skip hundred_requests_in_a_tiny_arena \
    --skip shared_prefix_is_stored_and_computed_once \
    --skip hundred_steps_with_eight_sequences_allocate_nothing \
    --skip prompt_cache_files_reuse_the_prompt_and_refuse_bad_files \
    --skip schema_outputs_validate --skip openai_client_against_ember_serve \
    --skip kquants_equal_llama_quantize --skip serve_with_context_shift_goes_past_the_context \
    --skip a_chat_longer_than_its_context_truncates_or_refuses \
    --skip prompt_lookup_keeps_the_output_and_reports_its_drafts \
    --skip prompt_lookup_gives_the_plain_greedy_output \
    --skip parallel_samples_share_the_prompt_and_match_solo_seeds
section "aarch64 (cross-build, qemu)"
bash scripts/ci/test-aarch64.sh

# Fuzzing smoke: the six cargo-fuzz targets of fuzz/ (GGUF reader, tokenizer, chat templates,
# sampler, grammar, C ABI) built in one go with AddressSanitizer, then each run for 20 s (one per core at
# a time) from its committed seeds. scripts/ci/fuzz.sh installs the pinned cargo-fuzz if missing;
# README.md "Fuzzing" says how to run them for longer.
section "fuzz smoke (20 s per target)"
wait_prebuild
bash scripts/ci/fuzz.sh 20

# The CUDA backend builds without a CUDA toolkit (cudarc loads libcuda / libnvrtc at run time):
# clippy above compiled it with its tests. Without a GPU its tests could only print "skipped";
# they run on the GPU machine (scripts/device/device-run.sh), against the CPU.

# Miri over the block pool, block tables, scheduler and thread pool (nightly; see the script).
section "miri"
bash scripts/ci/miri.sh

section ""
