#!/usr/bin/env bash
# The C ABI end to end: the header is current, the libraries build, the C test program, the
# stress test and the examples compile with plain cc/c++ and run clean under valgrind (or
# AddressSanitizer where valgrind is too slow), and greedy output through the C API equals
# `ember generate --temp 0`. Called by scripts/test.sh; needs the model (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
t_start=$SECONDS
CBINDGEN_VERSION=0.29.4
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

echo "== C ABI: tools"
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v readelf >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cbindgen="$HOME/.cargo/bin/cbindgen"
if [ "$("$cbindgen" --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
    # About 2 minutes on 2 cores; cached in ~/.cargo/bin afterwards.
    cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --quiet
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== C ABI: include/ember.h is current"
"$cbindgen" --quiet --config ffi/cbindgen.toml --crate ember-ffi --output "$tmp/ember.h" ffi
if ! diff -u include/ember.h "$tmp/ember.h"; then
    echo "include/ember.h is stale: regenerate it with" >&2
    echo "  cbindgen --config ffi/cbindgen.toml --crate ember-ffi --output include/ember.h ffi" >&2
    exit 1
fi

echo "== C ABI: libraries"
# The `test` profile (opt-level 3, like release) and the whole workspace, as `cargo test
# --workspace` builds it: the same features on every crate, so after the test run only the
# C libraries' final step is new (`-p ember-ffi` alone gave the kernels and the runtime other
# features, and the CLI others still: both were compiled again, 70 s of CI).
cargo build --locked --profile test --workspace
lib=target/debug
# What programs linked with -lember load (the library's SONAME, ffi/build.rs): in the build
# directory as scripts/install.sh makes it in a prefix.
soname=$(readelf -d "$lib/libember.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
case "$soname" in libember.so.[0-9]*) ;; *) echo "libember.so: bad SONAME '$soname'" >&2; exit 1 ;; esac
ln -sfn libember.so "$lib/$soname"
ember_bin=target/debug/ember

echo "== C ABI: compile (the header as C11 and C++17, -Wall -Wextra -Werror -pedantic)"
warn=(-Wall -Wextra -Werror -pedantic)
link=(-Iinclude -L"$lib" -lember -Wl,-rpath,"$PWD/$lib" -lpthread)
cc -std=c11 "${warn[@]}" tests/c/test_api.c "${link[@]}" -o "$tmp/test_api"
cc -std=c11 "${warn[@]}" tests/c/stress.c "${link[@]}" -o "$tmp/stress"
cc -std=c11 "${warn[@]}" tests/c/greedy.c "${link[@]}" -o "$tmp/greedy"
# The soak test with LeakSanitizer: it replaces malloc for the whole process, Rust included.
cc -std=c11 "${warn[@]}" -fsanitize=leak tests/c/soak.c "${link[@]}" -o "$tmp/soak-lsan"
cc -std=c11 "${warn[@]}" examples/c/generate.c "${link[@]}" -o "$tmp/generate"
c++ -std=c++17 "${warn[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer \
    examples/cpp/chat.cpp "${link[@]}" -o "$tmp/chat-asan"
# The static library, linked by path.
cc -std=c11 "${warn[@]}" -Iinclude examples/c/generate.c "$lib/libember.a" \
    -lpthread -ldl -lm -o "$tmp/generate-static"

"$ember_bin" synth -o "$tmp/synth.gguf" 2>/dev/null
vg=(valgrind --leak-check=full --error-exitcode=1 --quiet --suppressions=tests/c/valgrind.supp)

echo "== C ABI: test program (every function and misuse) under valgrind, synthetic model"
"${vg[@]}" "$tmp/test_api" "$tmp/synth.gguf"
echo "== C ABI: test program natively, with the chat model"
"$tmp/test_api" "$tmp/synth.gguf" "$MODEL"

echo "== C ABI: 8 threads x 50 requests, random cancellations, background mode, under valgrind"
"${vg[@]}" "$tmp/stress" "$tmp/synth.gguf"
echo "== C ABI: the same natively, with 2 compute threads per step"
"$tmp/stress" "$tmp/synth.gguf" 2

echo "== C ABI: soak, short version (the full one: tests/c/soak.c, BENCHMARKS.md), LeakSanitizer"
"$tmp/soak-lsan" "$tmp/synth.gguf" 3000 8

echo "== C ABI: greedy ids through the C API equal ember generate --temp 0"
prompts=("The capital of France is" "Once upon a time"
         $'<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n')
n_tokens=12
"$tmp/greedy" "$MODEL" "$n_tokens" "${prompts[@]}" > "$tmp/greedy.c.txt"
: > "$tmp/greedy.cli.txt"
for p in "${prompts[@]}"; do
    "$ember_bin" generate -m "$MODEL" --temp 0 -n "$n_tokens" --json -p "$p" |
        python3 -c 'import json, sys; print(" ".join(map(str, json.load(sys.stdin)["ids"])))' \
        >> "$tmp/greedy.cli.txt"
done
diff -u "$tmp/greedy.cli.txt" "$tmp/greedy.c.txt"
[ "$(wc -l < "$tmp/greedy.c.txt")" -eq ${#prompts[@]} ]
echo "ok: $(wc -w < "$tmp/greedy.c.txt") ids equal over ${#prompts[@]} prompts"

echo "== C ABI: examples/c/generate.c (caller-driven) under valgrind, 4 tokens"
EMBER_THREADS=1 "${vg[@]}" "$tmp/generate" "$MODEL" "The capital of France is" 4
echo "== C ABI: examples/c/generate.c linked statically"
EMBER_THREADS=2 "$tmp/generate-static" "$MODEL" "The capital of France is" 8
echo "== C ABI: examples/cpp/chat.cpp (4 threads, background) under AddressSanitizer"
# valgrind needs ~13 minutes for its four chat prompts; ASan checks the C++ side and LeakSanitizer
# every allocation of the process.
EMBER_THREADS=2 "$tmp/chat-asan" "$MODEL" 16

echo "== C ABI: scripts/install.sh and pkg-config"
EMBER_LIB_DIR="$lib" bash scripts/install.sh "$tmp/prefix" >/dev/null
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c11 "${warn[@]}" examples/c/minimal.c $(pkg-config --cflags --libs ember) \
    -Wl,-rpath,"$tmp/prefix/lib" -o "$tmp/minimal"
"$tmp/minimal" "$MODEL"
# It loads the library by its SONAME, which the prefix links to the versioned file.
readelf -d "$tmp/minimal" | grep -q "Shared library: \[$soname\]"
[ "$(readlink "$tmp/prefix/lib/libember.so")" = "$soname" ]
[ -f "$tmp/prefix/lib/$(readlink "$tmp/prefix/lib/$soname")" ]
# The installed suppressions are the ones every valgrind run above used.
cmp tests/c/valgrind.supp "$tmp/prefix/share/ember/valgrind.supp"

echo "== C ABI: ok ($((SECONDS - t_start)) s)"
