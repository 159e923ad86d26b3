#!/usr/bin/env bash
# Build the CUDA binaries for a GPU machine that has no Rust toolchain, and pack them with the
# test model into dev-out/ (git-ignored): the `ember` CLI, the CUDA test binary (runtime/tests/cuda/)
# and the attention benchmark, stripped and gzipped to stay under the machine's upload cap.
# Then run scripts/device/device-run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
mkdir -p dev-out
cargo build --release -p ember-cli --features cuda --bin ember
cargo test --release -p ember --features cuda --test cuda --bench cuda_attention --no-run \
    --message-format=json >dev-out/.build.json
python3 - <<'PY'
import json, shutil
for line in open("dev-out/.build.json"):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        name = m["target"]["name"]
        dst = {"cuda": "dev-out/cuda-tests", "cuda_attention": "dev-out/cuda-bench"}.get(name)
        if dst:
            shutil.copy(m["executable"], dst)
PY
cp target/release/ember dev-out/ember
for b in ember cuda-tests cuda-bench; do
    strip dev-out/$b
    gzip -f -1 dev-out/$b
done
if [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] && [ ! -f dev-out/smollm2-8l.gguf.gz ]; then
    gunzip -c dev-out/ember.gz >/tmp/ember-host && chmod +x /tmp/ember-host
    /tmp/ember-host convert -m models/SmolLM2-135M-Instruct.Q4_1.gguf -o dev-out/smollm2-8l.gguf --layers 8
    gzip -f -1 dev-out/smollm2-8l.gguf
fi
rm -f dev-out/.build.json
du -ch dev-out/* | tail -1
