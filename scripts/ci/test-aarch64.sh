#!/usr/bin/env bash
# aarch64 in CI: cross-build for aarch64-unknown-linux-gnu, lint the NEON code, and run the kernel
# tests and one short real-model check (the first greedy steps of a llama.cpp golden) under
# qemu-user on two CPUs: `-cpu max` (NEON with the dotprod extension: the `sdot` kernels) and
# `-cpu cortex-a53` (plain NEON). Each run asserts the kernel path it selected
# (EMBER_EXPECT_CPU), so a detection bug cannot silently test the wrong kernels.
# Called by scripts/test.sh; runs alone too. Installs what it needs (apt, rustup target).
set -euo pipefail
cd "$(dirname "$0")/../.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
t0=$SECONDS

echo "== aarch64: set-up"
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -e "$SYSROOT/lib/crt1.o" ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
bash scripts/fetch-model.sh

# A target dir of its own: the cross build shares no artifacts with the host build.
export CARGO_TARGET_DIR=target/aarch64
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# The default path selection is under test: nothing may force one.
unset EMBER_CPU

# Dependencies (tokenizers, regex, serde...) and the runtime crate at opt-level 1: their code
# is not under test here and the golden check spends its time in Ember's kernels
# (ember-kernels stays at 3); the dependencies' saved about a minute of the cross build (4 min
# -> 3), the runtime's about another half minute (2026-12-04: the golden test binary from
# scratch in 210 s, its first steps under qemu in 15 s, as before).
DEPS_O1=(--config 'profile.test.package."*".opt-level=1'
         --config 'profile.test.package.ember.opt-level=1')

echo "== aarch64: lint and cross-build"
cargo clippy --locked --target "$TARGET" -p ember-kernels --all-targets -- -D warnings
cargo clippy --locked --target "$TARGET" -p ember-kernels --all-targets --no-default-features \
    -- -D warnings
cargo test --locked "${DEPS_O1[@]}" --target "$TARGET" -p ember-kernels --tests --no-run
cargo test --locked "${DEPS_O1[@]}" --target "$TARGET" -p ember --test golden --no-run
# The test executables, run below by qemu directly: both CPU models at once (two `cargo test`
# runs would wait on each other's build-directory lock). Each runs in its package's folder, as
# under cargo.
executables() {
    cargo test --locked "${DEPS_O1[@]}" --target "$TARGET" "$@" --no-run 2>&1 |
        sed -n 's/^ *Executable .* (\(.*\))$/\1/p'
}
mapfile -t kernel_tests < <(executables -p ember-kernels --tests)
mapfile -t golden_test < <(executables -p ember --test golden)
[ ${#kernel_tests[@]} -gt 0 ] && [ ${#golden_test[@]} -eq 1 ]
echo "aarch64 set-up, lint and cross-build: $((SECONDS - t0)) s"

# One CPU model: the kernel tests and the first greedy steps of SmolLM2's golden.
run_cpu() {
    local model=$1 path=$2 bin
    local qemu=(qemu-aarch64 -L "$SYSROOT" -cpu "$model")
    for bin in "${kernel_tests[@]}"; do
        (cd kernels && EMBER_EXPECT_CPU=$path "${qemu[@]}" "$OLDPWD/$bin") || return 1
    done
    (cd runtime && EMBER_EXPECT_CPU=$path "${qemu[@]}" "$OLDPWD/${golden_test[0]}" \
        --exact greedy_first_steps_match_llama_cpp --nocapture)
}

t=$SECONDS
pids=()
for cpu in max:neon-dotprod cortex-a53:neon-nodot; do
    model=${cpu%%:*}
    echo "== aarch64: qemu -cpu $model (must select the ${cpu#*:} kernels), in the background"
    run_cpu "$model" "${cpu#*:}" >"$CARGO_TARGET_DIR/qemu-$model.log" 2>&1 &
    pids+=($!)
done
status=0
for i in 0 1; do
    wait "${pids[$i]}" || status=1
done
for model in max cortex-a53; do
    echo "== aarch64: qemu -cpu $model"
    cat "$CARGO_TARGET_DIR/qemu-$model.log"
done
echo "qemu, both CPU models: $((SECONDS - t)) s"
[ "$status" -eq 0 ] || { echo "aarch64: a qemu run failed (logs above)" >&2; exit 1; }
echo "aarch64 total: $((SECONDS - t0)) s"
