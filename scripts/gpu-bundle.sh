#!/usr/bin/env bash
# Builds what a GPU machine needs (it has no Rust toolchain): the mocse binary and the test
# binaries that have GPU cases, stripped, in .gpu/ (ignored by git; carry it with the call).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
mkdir -p .gpu
cp target/release/mocse .gpu/mocse
for t in devices fused_unfused; do
    exe=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
    cp "$exe" ".gpu/$t"
done
strip .gpu/*
du -sh .gpu
