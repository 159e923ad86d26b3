#!/usr/bin/env bash
# Install libember for C/C++: include/ember.h, libember.so, libember.a, a pkg-config file, and
# share/ember/valgrind.supp (the tokenizer's process-lifetime caches, which valgrind reports as
# "possibly lost": run your program with valgrind --suppressions=PREFIX/share/ember/valgrind.supp).
#
#   scripts/install.sh PREFIX
#
# Builds the libraries with `cargo build --release -p ember-ffi` unless EMBER_LIB_DIR names a
# directory that already holds libember.so and libember.a (CI passes the ones it just built).
# Afterwards: cc app.c $(pkg-config --cflags --libs ember)   with
#   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig (unless PREFIX is a system prefix), and the loader told
#   where libember.so is (ldconfig, LD_LIBRARY_PATH, or -Wl,-rpath,PREFIX/lib).
# Static linking: cc app.c -IPREFIX/include PREFIX/lib/libember.a -lpthread -ldl -lm
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: scripts/install.sh PREFIX" >&2
    exit 2
fi
prefix=$1
cd "$(dirname "$0")/.."
case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac

libs=${EMBER_LIB_DIR:-}
if [ -z "$libs" ]; then
    cargo build --release --locked -p ember-ffi
    libs=target/release
fi
for f in libember.so libember.a; do
    [ -f "$libs/$f" ] || { echo "install.sh: $libs/$f not found" >&2; exit 1; }
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)

install -d "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/share/ember"
install -m 644 include/ember.h "$prefix/include/ember.h"
install -m 755 "$libs/libember.so" "$prefix/lib/libember.so"
install -m 644 "$libs/libember.a" "$prefix/lib/libember.a"
install -m 644 tests/c/valgrind.supp "$prefix/share/ember/valgrind.supp"
# Libs.private: what the Rust standard library inside libember.a needs from the system when
# linking statically (scripts/ci/test-ffi.sh links examples/c/generate.c against libember.a with
# exactly these).
cat > "$prefix/lib/pkgconfig/ember.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: ember
Description: Ember, an embedded LLM inference runtime (C API)
Version: $version
Libs: -L\${libdir} -lember
Libs.private: -lpthread -ldl -lm
Cflags: -I\${includedir}
PC
echo "installed ember $version into $prefix (include/ember.h, lib/libember.{so,a}, lib/pkgconfig/ember.pc, share/ember/valgrind.supp)"
