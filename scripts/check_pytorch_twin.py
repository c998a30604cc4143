#!/usr/bin/env python3
"""Checks that PyTorch, through scripts/mocse_torch.py, computes what mocse computes from the
same checkpoint: both evaluate the 48 real photographs of tests/data/cifar10c_reference.npz
(as an `npy:DIR` test set), mocse writing its per-image class scores with --predictions, and
the script compares them score for score.

    python3 scripts/check_pytorch_twin.py RUN_DIR [RUN_DIR ...] [--mocse target/release/mocse]

Prints, per run, the largest absolute score difference, the largest difference relative to
the run's score range, and how many of the 48 predictions agree; exits 1 if any prediction
differs or a score is off by more than --tolerance (relative, default 1e-4). Needs torch,
safetensors and numpy (`python3 -m venv target/torch-venv && target/torch-venv/bin/pip install
torch safetensors numpy`).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mocse_torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="mocse run directories")
    parser.add_argument("--mocse", default=os.path.join(ROOT, "target", "release", "mocse"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    a = parser.parse_args()
    images = np.load(os.path.join(ROOT, "tests", "data", "cifar10c_reference.npz"))["inputs"]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "images.npy"), images)
        np.save(os.path.join(tmp, "labels.npy"), np.zeros(len(images), np.uint8))
        print("run | model | images | max |score diff| | max relative | predictions agreeing")
        for run in a.runs:
            predictions = os.path.join(tmp, "p.npz")
            subprocess.run([a.mocse, "eval", "--run", run, "--data", f"npy:{tmp}", "--device", "cpu",
                            "--predictions", predictions], check=True, capture_output=True)
            ours = np.load(predictions)["clean_scores"].astype(np.float64)
            model = mocse_torch.load(run)
            with torch.no_grad():
                x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
                theirs = model(x).double().numpy()
            diff = np.abs(ours - theirs).max()
            relative = diff / max(np.abs(theirs).max(), 1e-12)
            agree = int((ours.argmax(1) == theirs.argmax(1)).sum())
            kind = type(model).__name__
            print(f"{run} | {kind} | {len(images)} | {diff:.3e} | {relative:.3e} | {agree}/{len(images)}")
            failed |= agree != len(images) or relative > a.tolerance
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
