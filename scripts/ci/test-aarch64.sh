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

# Dependencies (tokenizers, regex, serde...) at opt-level 1: their code is not under test here
# and the golden check spends its time in Ember's kernels; this saves about a minute of the
# cross build (4 min -> 3) for no measurable change in the run (15-16 s under qemu).
DEPS_O1=(--config 'profile.test.package."*".opt-level=1')

echo "== aarch64: lint and cross-build"
cargo clippy --locked --target "$TARGET" -p ember-kernels --all-targets -- -D warnings
cargo clippy --locked --target "$TARGET" -p ember-kernels --all-targets --no-default-features \
    -- -D warnings
cargo test --locked "${DEPS_O1[@]}" --target "$TARGET" -p ember-kernels --tests --no-run
cargo test --locked "${DEPS_O1[@]}" --target "$TARGET" -p ember --test golden --no-run
echo "aarch64 set-up, lint and cross-build: $((SECONDS - t0)) s"

for cpu in max:neon-dotprod cortex-a53:neon-nodot; do
    model=${cpu%%:*}
    path=${cpu#*:}
    echo "== aarch64: qemu -cpu $model (must select the $path kernels)"
    t=$SECONDS
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT -cpu $model"
    EMBER_EXPECT_CPU=$path cargo test --locked "${DEPS_O1[@]}" --target "$TARGET" -p ember-kernels --tests
    EMBER_EXPECT_CPU=$path cargo test --locked "${DEPS_O1[@]}" --target "$TARGET" -p ember --test golden -- \
        --exact greedy_first_steps_match_llama_cpp --nocapture
    echo "qemu -cpu $model: $((SECONDS - t)) s"
done
echo "aarch64 total: $((SECONDS - t0)) s"
