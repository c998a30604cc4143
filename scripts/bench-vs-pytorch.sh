#!/usr/bin/env bash
# mocse and PyTorch side by side on this machine (benches/vs_pytorch.py): makes the PyTorch
# virtualenv under target/torch-venv when it is missing (about 5 GB; never in CI), builds
# mocse in release mode, then runs both in turn and prints the medians and ratios.
#
#   scripts/bench-vs-pytorch.sh [--rounds 3] [--markdown FILE] [--json FILE] [...]
#   (every option of `python3 benches/vs_pytorch.py --help`)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/torch-venv
if ! "$venv/bin/python" -c "import torch, numpy, safetensors" 2>/dev/null; then
    echo "making $venv with torch, numpy and safetensors (about 5 GB, once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch numpy safetensors
fi
cargo build --release --quiet
exec python3 benches/vs_pytorch.py --python "$venv/bin/python" "$@"
