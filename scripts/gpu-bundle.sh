#!/usr/bin/env bash
# Builds what a GPU machine needs (it has no Rust toolchain): the mocse binary and the test
# binaries that have GPU cases, stripped, in .gpu/ (ignored by git; carry it with the call),
# plus what the corruption tests read and the GPU machine cannot download: the reference
# outputs of tests/data and the frost textures (fetched here into .gpu/cache).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
mkdir -p .gpu
cp target/release/mocse .gpu/mocse
for t in devices fused_unfused corruptions corruption_reference attack training; do
    exe=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
    cp "$exe" ".gpu/$t"
done
strip .gpu/mocse .gpu/devices .gpu/fused_unfused .gpu/corruptions .gpu/corruption_reference .gpu/attack .gpu/training
cp "${MOCSE_TESTDATA:-tests/data}/cifar10c_reference.npz" .gpu/
MOCSE_CACHE=.gpu/cache .gpu/mocse corrupt --input synthetic --test-subset 1 --corruptions frost --out .gpu/frost-check --device cpu
rm -rf .gpu/frost-check
du -sh .gpu
