#!/usr/bin/env bash
# Install libember for C/C++: include/ember.h, libember.so (versioned, with its SONAME link),
# libember.a, a pkg-config file, and
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
# The SONAME ffi/build.rs gives the library: libember.so.MAJOR, or libember.so.0.MINOR for 0.x.
case "$version" in
    0.*) abi=0.$(echo "$version" | cut -d. -f2) ;;
    *) abi=$(echo "$version" | cut -d. -f1) ;;
esac
if command -v readelf >/dev/null; then
    soname=$(readelf -d "$libs/libember.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
    if [ "$soname" != "libember.so.$abi" ]; then
        echo "install.sh: $libs/libember.so has SONAME '$soname', expected libember.so.$abi" >&2
        exit 1
    fi
fi

install -d "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/share/ember"
install -m 644 include/ember.h "$prefix/include/ember.h"
# The file, its SONAME link (what programs load) and the development link (what -lember finds).
install -m 755 "$libs/libember.so" "$prefix/lib/libember.so.$version"
ln -sfn "libember.so.$version" "$prefix/lib/libember.so.$abi"
ln -sfn "libember.so.$abi" "$prefix/lib/libember.so"
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
echo "installed ember $version into $prefix (include/ember.h, lib/libember.so.$version with links libember.so.$abi and libember.so, lib/libember.a, lib/pkgconfig/ember.pc, share/ember/valgrind.supp)"
