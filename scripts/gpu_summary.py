#!/usr/bin/env python3
"""One table from scripts/gpu-check.sh's results: every training-step benchmark (mocse's kernels
and cuDNN in bf16 and f32, PyTorch's layouts) with images/s, achieved TFLOP/s and the fraction
of the card's dense bf16 peak, then the convolution layers' best and worst fractions.

    python3 scripts/gpu_summary.py OUT_DIR MORE_DIR [--peak-tflops 989]
"""
import argparse
import glob
import json
import os


def records(path):
    """The JSON objects of a file that holds them one after another (pretty-printed or one per
    line), skipping anything else (a stage's stray output)."""
    if not os.path.exists(path):
        return []
    text, decoder, out, at = open(path).read(), json.JSONDecoder(), [], 0
    while True:
        at = text.find("{", at)
        if at < 0:
            return out
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at += 1
            continue
        out.append(value)
        at = end


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("more")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100/H200: 989)")
    a = p.parse_args()
    peak = a.peak_tflops
    print(f"| what | model | precision | images/s (train) | TFLOP/s | of bf16 peak ({peak:.0f}) |")
    print("|---|---|---|---:|---:|---:|")
    for r in records(os.path.join(a.out, "bench.jsonl")):
        if r.get("what") != "train-step":
            continue
        tflops = r["train_gflop_per_s"] / 1e3
        impl = "mocse " + ("fused" if r.get("fused") else "unfused") + (
            ", cuDNN convolutions" if r.get("conv_impl") == "cudnn" else "")
        print(f"| {impl} | {r['model_description']} | {r.get('precision', 'f32')} | {r['train_images_per_s']:.0f} | "
              f"{tflops:.1f} | {100 * tflops / peak:.1f}% |")
        if r.get("train_graph_images_per_s"):
            g = r["train_graph_images_per_s"]
            gt = tflops * g / r["train_images_per_s"]
            print(f"| {impl}, step graph | {r['model_description']} | {r.get('precision', 'f32')} | {g:.0f} | "
                  f"{gt:.1f} | {100 * gt / peak:.1f}% |")
    for r in records(os.path.join(a.out, "pytorch.jsonl")):
        print(f"| PyTorch {r.get('experts', 'fused')} | {r['model']} width {r['width']} | {r['layout']} | "
              f"{r['train_images_per_s']:.0f} | | |")
    for path in sorted(glob.glob(os.path.join(a.more, "conv_layers_*.json"))):
        report = json.load(open(path))
        rows = [r for r in report["rows"] if r["implementation"] in ("fused grouped", "dense", "cudnn", "cudnn grouped")]
        if not rows:
            continue
        print(f"\n{os.path.basename(path)}: {report['model']}, {report.get('precision', 'f32')}")
        for impl in sorted({r["implementation"] for r in rows}):
            mine = sorted((r for r in rows if r["implementation"] == impl), key=lambda r: r["gflop_per_s"])
            lo, hi = mine[0], mine[-1]
            print(f"  {impl}: {lo['gflop_per_s'] / 1e3:.1f} TFLOP/s ({lo['layer']} {lo['direction']}) to "
                  f"{hi['gflop_per_s'] / 1e3:.1f} TFLOP/s ({hi['layer']} {hi['direction']}, "
                  f"{100 * hi['gflop_per_s'] / 1e3 / peak:.1f}% of the bf16 peak)")


if __name__ == "__main__":
    main()
