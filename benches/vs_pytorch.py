#!/usr/bin/env python3
"""mocse and PyTorch side by side on this machine: the same networks, batches and thread count,
run in turn (mocse, PyTorch, mocse, PyTorch, ...) for --rounds rounds, so that both see the same
machine in the same minutes. Prints per configuration the median images/s of each and the
ratio mocse / PyTorch, for training steps and for inference, then the corruption evaluation's
images/s beside PyTorch's inference.

Every round of every configuration runs `mocse bench --what train-step` (median of --steps timed
steps after --warmup) and then benches/pytorch_peer.py on the same network in each PyTorch
layout of --layouts; PyTorch's figure is its faster layout. Before timing, the peer loads
mocse's own weights and batch (`mocse bench --twin`) and checks that its output and loss equal
mocse's, so both sides time the same computation.

    scripts/bench-vs-pytorch.sh [options]        # makes target/torch-venv and builds mocse first
    python3 benches/vs_pytorch.py --python target/torch-venv/bin/python [--rounds 3] [--steps 3]
        [--configs NAME,..] [--eval-images 100] [--markdown FILE] [--json FILE]
    python3 benches/vs_pytorch.py --without-pytorch ...      # mocse's side only

Only the standard library is needed here; torch lives in the peer's interpreter (--python).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "benches", "pytorch_peer.py")

# name: (mocse bench arguments, peer arguments, evaluated for the corruption row)
CONFIGS = {
    "preact18-w16-b128": (["--model", "preact18", "--width", "16", "--batch-size", "128"],
                          ["--model", "preact18", "--width", "16", "--batch-size", "128"], True),
    "preact18-w64-b64": (["--model", "preact18", "--width", "64", "--batch-size", "64"],
                         ["--model", "preact18", "--width", "64", "--batch-size", "64"], True),
    "mocse-w16-b64-fused": (["--model", "mocse", "--expert-width", "16", "--batch-size", "64"],
                            ["--model", "mocse", "--width", "16", "--batch-size", "64"], True),
    "mocse-w16-b64-unfused": (["--model", "mocse", "--expert-width", "16", "--batch-size", "64", "--unfused"],
                              ["--model", "mocse", "--width", "16", "--batch-size", "64", "--unfused"], False),
}
CPU_FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16"]


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def run_json(command, env, what):
    """Runs a command that prints or writes one JSON object; returns it."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr.strip()}")
    return done


def machine():
    model, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    flags = [f for f in CPU_FLAGS if f in present]
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return {"cpu": model, "cpu_flags": flags, "logical_cpus": os.cpu_count(), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def ratio(a, b):
    return a / b if a and b else None


def fmt(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"


def times(x):
    return "-" if x is None else f"**{x:.2f}x**"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mocse", default=os.path.join(ROOT, "target", "release", "mocse"))
    p.add_argument("--python", default=os.path.join(ROOT, "target", "torch-venv", "bin", "python"),
                   help="an interpreter with torch, numpy and safetensors")
    p.add_argument("--without-pytorch", action="store_true", help="time mocse only (no interpreter needed)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="threads of both (RAYON_NUM_THREADS, torch)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of: " + ", ".join(CONFIGS))
    p.add_argument("--layouts", default="channels_last,nchw", help="PyTorch memory layouts to try")
    p.add_argument("--eval-images", type=int, default=100,
                   help="test images of the corruption evaluation (x96 images evaluated); 0 skips it")
    p.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    a = p.parse_args()
    names = [c for c in a.configs.split(",") if c]
    for c in names:
        if c not in CONFIGS:
            fail(f"unknown configuration {c!r}; expected one of {', '.join(CONFIGS)}")
    if a.rounds < 1 or a.steps < 1 or a.warmup < 0 or a.threads < 1 or a.eval_images < 0:
        fail("--rounds, --steps and --threads must be at least 1, --warmup and --eval-images at least 0")
    if not os.access(a.mocse, os.X_OK):
        fail(f"{a.mocse} is not an executable mocse; build it with `cargo build --release` or pass --mocse")
    layouts = [] if a.without_pytorch else [x for x in a.layouts.split(",") if x]
    if not a.without_pytorch and not os.access(a.python, os.X_OK):
        fail(f"{a.python} is not an interpreter; run scripts/bench-vs-pytorch.sh (it makes target/torch-venv) "
             "or pass --python, or --without-pytorch")
    env = {**os.environ, "RAYON_NUM_THREADS": str(a.threads), "OMP_NUM_THREADS": str(a.threads)}
    info = {**machine(), "threads": a.threads, "rounds": a.rounds, "steps": a.steps, "warmup": a.warmup,
            "mocse": a.mocse, "torch": None}
    print(f"# mocse vs PyTorch, {info['date']}, commit {info['commit']}, {info['cpu']} "
          f"({', '.join(info['cpu_flags']) or 'no AVX2'}), {a.threads} threads, {a.rounds} rounds of "
          f"{a.warmup} warm-up + {a.steps} timed steps", flush=True)
    samples = {c: {"mocse": [], **{layout: [] for layout in layouts}} for c in names}
    twins = {}
    with tempfile.TemporaryDirectory(prefix="mocse-vs-pytorch-") as work:
        for r in range(a.rounds):
            for c in names:
                ours, theirs, _ = CONFIGS[c]
                twin = os.path.join(work, c)
                out = os.path.join(work, "mocse.json")
                command = [a.mocse, "bench", "--what", "train-step", *ours, "--device", "cpu", "--steps",
                           str(a.steps), "--warmup", str(a.warmup), "--json", out]
                if r == 0:
                    command += ["--twin", twin]
                run_json(command, env, "mocse bench")
                with open(out) as f:
                    m = json.load(f)
                samples[c]["mocse"].append(m)
                line = f"round {r + 1}/{a.rounds} {c}: mocse train {m['train_images_per_s']:.1f} " \
                       f"infer {m['infer_images_per_s']:.1f}"
                for layout in layouts:
                    done = run_json([a.python, PEER, *theirs, "--layout", layout, "--device", "cpu", "--threads",
                                     str(a.threads), "--steps", str(a.steps), "--warmup", str(a.warmup),
                                     "--twin", twin], env, "the PyTorch peer")
                    t = json.loads(done.stdout.strip().splitlines()[-1])
                    samples[c][layout].append(t)
                    info["torch"] = t["torch"]
                    twins[c] = {k: t[k] for k in t if k.startswith("twin_") or k == "mocse_loss"}
                    line += f" | torch {layout} train {t['train_images_per_s']:.1f} infer {t['infer_images_per_s']:.1f}"
                print(line, flush=True)
        evals = {}
        for c in names:
            if a.eval_images == 0 or not CONFIGS[c][2]:
                continue
            ours = CONFIGS[c][0]
            model = ours[:4]
            start = time.perf_counter()
            run_json([a.mocse, "eval", "--checkpoint", os.path.join(work, c, "model.safetensors"), *model,
                      "--data", "synthetic", "--test-subset", str(a.eval_images), "--corruptions", "all",
                      "--device", "cpu", "--json", os.path.join(work, "eval.json")], env, "mocse eval")
            seconds = time.perf_counter() - start
            evals[c] = a.eval_images * 96 / seconds
            print(f"{c}: corruption evaluation of {a.eval_images} x 96 images in {seconds:.1f} s: "
                  f"{evals[c]:.1f} images/s", flush=True)

    rows = []
    for c in names:
        s = samples[c]
        med = {k: (statistics.median(x["train_images_per_s"] for x in v),
                   statistics.median(x["infer_images_per_s"] for x in v)) for k, v in s.items() if v}
        torch_train = max((med[layout][0], layout) for layout in layouts) if layouts else (None, None)
        torch_infer = max((med[layout][1], layout) for layout in layouts) if layouts else (None, None)
        rows.append({"config": c, "mocse_train": med["mocse"][0], "mocse_infer": med["mocse"][1],
                     "torch_train": torch_train[0], "torch_train_layout": torch_train[1],
                     "torch_infer": torch_infer[0], "torch_infer_layout": torch_infer[1],
                     "train_ratio": ratio(med["mocse"][0], torch_train[0]),
                     "infer_ratio": ratio(med["mocse"][1], torch_infer[0]),
                     "eval_images_per_s": evals.get(c), "twin": twins.get(c)})
    title = (f"{info['date']}, commit `{info['commit']}`, {info['cpu']} ({', '.join(info['cpu_flags'])}), "
             f"{a.threads} threads each, PyTorch {info['torch'] or 'not run'}; medians of {a.rounds} rounds of "
             f"{a.warmup} warm-up + {a.steps} timed steps, mocse and PyTorch in turn")
    lines = [title, "",
             "| config | mocse train img/s | PyTorch train img/s | train ratio | mocse inference img/s "
             "| PyTorch inference img/s | inference ratio | mocse corruption eval img/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lay = lambda k: f" ({r[k]})" if r[k] else ""  # noqa: E731
        lines.append(f"| {r['config']} | {fmt(r['mocse_train'])} | {fmt(r['torch_train'])}{lay('torch_train_layout')} "
                     f"| {times(r['train_ratio'])} | {fmt(r['mocse_infer'])} | {fmt(r['torch_infer'])}"
                     f"{lay('torch_infer_layout')} | {times(r['infer_ratio'])} | {fmt(r['eval_images_per_s'])} |")
    checked = [f"{c}: output {t['twin_output_relative_diff']:.1e}, loss {t['twin_loss_relative_diff']:.1e}"
               for c, t in twins.items()]
    if checked:
        lines += ["", "Twin check (PyTorch on mocse's weights and batch, relative difference): " + "; ".join(checked)]
    text = "\n".join(lines) + "\n"
    print()
    print(text, end="")
    if a.markdown:
        write(a.markdown, text)
    if a.json:
        write(a.json, json.dumps({"machine": info, "rows": rows, "samples": samples}, indent=1) + "\n")


def write(path, text):
    """Atomically: a temporary file beside it, then a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
