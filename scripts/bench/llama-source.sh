# Sourced by the side-by-side scripts (bench-vs-llama.sh, serve-load.sh): llama.cpp's source
# from the PyPI sdist of llama-cpp-python, downloaded once and unpacked under $LLAMA_DIR/src.
# Needs LLAMA_DIR, LLAMA_CPP_PYTHON_VERSION and a `die` function.

fetch_llama_source() {
    local sdist="$LLAMA_DIR/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [[ ! -f "$sdist" ]]; then
        mkdir -p "$LLAMA_DIR/dl"
        # --no-binary for this package only: with :all: pip would also build the sdist's build
        # dependencies (cmake itself) from source just to read its metadata.
        python3 -m pip download "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" \
            --no-binary llama-cpp-python --no-deps -d "$LLAMA_DIR/dl" >&2 \
            || die "pip download of llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION failed"
        [[ -f "$sdist" ]] || die "pip did not leave $sdist (was a wheel fetched instead?)"
    fi
    if [[ ! -f "$LLAMA_DIR/src/vendor/llama.cpp/CMakeLists.txt" ]]; then
        rm -rf "$LLAMA_DIR/src"
        mkdir -p "$LLAMA_DIR/src"
        tar xzf "$sdist" -C "$LLAMA_DIR/src" --strip-components=1
    fi
    [[ -f "$LLAMA_DIR/src/vendor/llama.cpp/CMakeLists.txt" ]] \
        || die "no vendor/llama.cpp in the sdist $sdist"
}
