#!/usr/bin/env bash
# Fetch the default model if missing, build, and generate text. Extra arguments go to
# `ember generate` (default prompt below).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-model.sh
cargo build --release --locked -p ember-cli
if [ $# -eq 0 ]; then
    set -- -p "<|im_start|>user
Write a haiku about the sea.<|im_end|>
<|im_start|>assistant
" -n 64
fi
exec target/release/ember generate "$@"
