#!/usr/bin/env python3
"""Cross-checks mocse's PGD robust accuracy against an independent PGD written here in PyTorch,
on the PyTorch twin of each run's network (scripts/mocse_torch.py).

    python3 scripts/check_pgd_torch.py RUN_DIR|FILE.safetensors [...] [--images 500]
        [--eps 8/255,2/255] [--norm linf|l2] [--alpha A] [--steps 20] [--restarts 1] [--seed 0]
        [--mocse target/release/mocse] [--device cpu] [--work DIR]
        [--model preact18|mocse --width W --expert-width W --aggregate prob|logodds]

A checkpoint file is evaluated with `mocse eval --checkpoint`, its model from the config.json
beside it, else from --model and its flags (given to mocse and to the twin alike): copying a
MoCSE run's model.safetensors alone into a directory and giving `--model mocse --expert-width W
--aggregate logodds` checks the other aggregation of the same weights.

For every run and every eps:
  1. the fixed test set: the first --images synthetic test images, read back from
     `mocse eval --attack pgd --eps 0 --no-random-start --save-adversarial clean.npz` (at eps 0
     the saved images are the clean images, float32 in [0, 1]); the twin's clean predictions
     must equal mocse's on them;
  2. mocse's PGD: `mocse eval --data synthetic --test-subset N --attack pgd ... --json
     --save-adversarial`, its robust accuracy read from the report;
  3. an independent PGD (Madry et al.) on the twin, with its own RNG (torch, --seed): a random
     start uniform in the eps-ball (L-infinity: uniform per value; L2: uniform in the ball),
     clamped to [0, 1]; sign-gradient steps (linf) or L2-normalised steps with projection onto
     the ball (l2), then a clamp to [0, 1]; the attacked loss is the cross-entropy of the class
     scores summed over the batch; the model in eval mode. An image counts as broken when the
     clean image or any iterate of any restart (the start included) is misclassified, as in
     mocse;
  4. mocse's saved adversarial images re-checked with the twin: every image mocse marks broken
     must be misclassified by the twin too (the twin's class is compared with mocse's
     `predicted`), every robust one classified correctly; every image must lie in [0, 1] and
     within eps of its clean image.

Prints a table: run | model | norm eps | images | clean acc mocse / torch | robust acc mocse |
robust acc torch | difference (standard error sqrt(p(1-p)/N)*sqrt(2), p the mean of the two
robust accuracies) | images robust for only one of the two | saved-adversarial agreement | time.
Exits 1 if a difference exceeds 3 standard errors plus one image, a clean prediction or a saved
adversarial image disagrees (beyond a near tie: the twin's two competing scores within
--tie-tolerance of each other, relative to the scores' range), or a saved image leaves the ball
or [0, 1]; exits 2 if a mocse command fails (its output shown). Needs torch, safetensors and
numpy (`python3 -m venv target/torch-venv && target/torch-venv/bin/pip install torch safetensors
numpy`). The mocse side is slow on a CPU: about 5 minutes per eps for 500 images of a width-4
MoCSE (20 steps, with mocse's sanity-check attacks) on 2 cores.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mocse_torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixel_amount(s):
    """`8/255` or `0.03`, as mocse reads it (f64 division, then f32)."""
    if "/" in s:
        num, den = s.split("/", 1)
        value = float(num) / float(den)
    else:
        value = float(s)
    return float(np.float32(value))


def mocse(binary, args):
    """Runs `mocse ARGS`; on failure shows its output and stops."""
    p = subprocess.run([binary] + args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(f"mocse {' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
        sys.exit(2)
    return p


def scores_of(model, images, batch_size):
    """The twin's class scores of NHWC float images in [0, 1]."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2).float()
            out.append(model(x).double())
    return torch.cat(out).numpy()


def disagreements(scores, claimed, tie_tolerance):
    """Images whose twin prediction differs from `claimed`: (all, beyond a near tie). A near tie:
    the twin's scores of its own class and of the claimed class within tie_tolerance of each
    other, relative to the largest score magnitude."""
    ours = scores.argmax(1)
    differ = np.nonzero(ours != claimed)[0]
    scale = max(np.abs(scores).max(), 1e-12)
    gap = (scores[differ, ours[differ]] - scores[differ, claimed[differ]]) / scale
    return differ, differ[gap > tie_tolerance]


def random_start(x, eps, norm, gen):
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps
    else:
        # Uniform in the L2 ball: a uniform direction, radius eps * u^(1/d).
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        radius = eps * torch.rand(x.shape[0], generator=gen, dtype=x.dtype) ** (1.0 / d)
        delta = direction * radius.view(-1, 1, 1, 1)
    return (x + delta).clamp(0, 1)


def step(x_adv, grad, x, eps, alpha, norm):
    if norm == "linf":
        x_adv = x_adv + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
    else:
        g = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = x_adv + torch.where(g > 0, alpha * grad / g.clamp_min(1e-30), torch.zeros_like(grad)) - x
        d = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.where(d > eps, eps / d.clamp_min(1e-30), torch.ones_like(d))
        x_adv = x + delta
    return x_adv.clamp(0, 1)


def torch_pgd(model, images, labels, eps, alpha, steps, restarts, norm, random, seed, batch_size):
    """Per image: robust (bool) under PGD on `model`, images NHWC float in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    robust = np.zeros(len(images), bool)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2).float()
        y = torch.from_numpy(labels[i:i + batch_size].astype(np.int64))
        with torch.no_grad():
            alive = model(x).argmax(1) == y  # a misclassified clean image is not robust
        for _ in range(restarts):
            if not alive.any():
                break
            # Start every restart from a fresh random point for all images of the batch (so the
            # random stream does not depend on which images are still standing), but attack only
            # those still standing: in eval mode each image's gradient is its own.
            start = random_start(x, eps, norm, gen) if random and eps > 0 else x.clone()
            idx = alive.nonzero().flatten()
            xa, xc, yc = start[idx], x[idx], y[idx]
            for s in range(steps + 1):
                xa = xa.detach().requires_grad_(True)
                scores = model(xa)
                hit = scores.argmax(1) != yc
                if hit.any():
                    alive[idx[hit]] = False
                if s == steps or not alive[idx].any():
                    break
                loss = F.cross_entropy(scores, yc, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xa)
                with torch.no_grad():
                    xa = step(xa, grad, xc, eps, alpha, norm)
                keep = ~hit  # drop the broken ones
                idx, xa, xc, yc = idx[keep], xa[keep], xc[keep], yc[keep]
        robust[i:i + len(y)] = alive.numpy()
    return robust


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="mocse run directories or checkpoint files")
    parser.add_argument("--mocse", default=os.path.join(ROOT, "target", "release", "mocse"))
    parser.add_argument("--images", type=int, default=500, help="the first N synthetic test images")
    parser.add_argument("--eps", default="8/255", help="comma-separated eps values (a row each)")
    parser.add_argument("--alpha", default=None, help="step size [default: eps/4, as mocse]")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    parser.add_argument("--no-random-start", action="store_true", help="both attacks start at the image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the PyTorch attack's random starts")
    parser.add_argument("--mocse-seed", type=int, default=0, help="mocse eval --seed (the seed of its random starts)")
    parser.add_argument("--device", default="cpu", help="mocse eval --device")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    parser.add_argument("--tie-tolerance", type=float, default=1e-4)
    parser.add_argument("--model", choices=["preact18", "mocse"], help="checkpoint files without config.json")
    parser.add_argument("--width", type=int, default=64, help="with --model preact18 [default: 64]")
    parser.add_argument("--expert-width", type=int, default=16, help="with --model mocse [default: 16]")
    parser.add_argument("--aggregate", choices=["prob", "logodds"], default="prob", help="with --model mocse")
    parser.add_argument("--work", default=None, help="keep the mocse outputs in DIR [default: a temp dir]")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    eps_texts = [e.strip() for e in a.eps.split(",") if e.strip()]
    failed = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        for r, run in enumerate(a.runs):
            base = os.path.join(work, f"{r}-{os.path.basename(os.path.normpath(run))}")
            target, load = ["--run", run], {}
            if os.path.isfile(run):
                target = ["--checkpoint", run]
                if not os.path.exists(os.path.join(os.path.dirname(run) or ".", "config.json")):
                    if not a.model:
                        parser.error(f"{run} has no config.json beside it: give --model and its flags")
                    width = a.width if a.model == "preact18" else a.expert_width
                    target += ["--model", a.model, "--width" if a.model == "preact18" else "--expert-width", str(width)]
                    if a.model == "mocse":
                        target += ["--aggregate", a.aggregate]
                    load = dict(kind=a.model, width=width, aggregate=a.aggregate)
            common = ["eval"] + target + ["--data", "synthetic", "--test-subset", str(a.images),
                                          "--device", a.device, "--batch-size", str(a.batch_size), "--attack", "pgd"]
            clean_npz = base + "-clean.npz"
            mocse(a.mocse, common + ["--eps", "0", "--alpha", "1/255", "--steps", "1", "--no-random-start",
                                     "--save-adversarial", clean_npz])
            clean = np.load(clean_npz)
            images, labels, clean_pred = clean["images"], clean["labels"], clean["predicted"].astype(np.int64)
            n = len(labels)
            on_grid = np.array_equal(images, np.round(images * np.float32(255)) / np.float32(255))
            model = mocse_torch.load(run, **load)
            kind = type(model).__name__ + (f"({model.aggregate})" if isinstance(model, mocse_torch.MoCSE) else "")
            clean_scores = scores_of(model, images, a.batch_size)
            clean_torch = clean_scores.argmax(1)
            differ, real = disagreements(clean_scores, clean_pred, a.tie_tolerance)
            ties = f" ({len(differ) - len(real)} near ties)" if len(differ) > len(real) else ""
            print(f"{run}: {n} images ({'' if on_grid else 'not '}all exactly k/255 in float32); "
                  f"twin's clean predictions agree with mocse's on {n - len(differ)}/{n}{ties}")
            failed |= len(real) > 0
            for eps_text in eps_texts:
                eps = pixel_amount(eps_text)
                alpha_text = a.alpha
                alpha = pixel_amount(alpha_text) if alpha_text else float(np.float32(eps / 4))
                tag = f"{base}-{a.norm}-{eps_text.replace('/', '_')}"
                args = common + ["--eps", eps_text, "--steps", str(a.steps), "--restarts", str(a.restarts),
                                 "--norm", a.norm, "--json", tag + ".json",
                                 "--save-adversarial", tag + ".npz"]
                if alpha_text:
                    args += ["--alpha", alpha_text]
                if a.no_random_start:
                    args += ["--no-random-start"]
                args += ["--seed", str(a.mocse_seed)]
                t0 = time.time()
                mocse(a.mocse, args)
                t_mocse = time.time() - t0
                report = json.load(open(tag + ".json"))
                adv = report["adversarial"]["pgd"]
                saved = np.load(tag + ".npz")
                m_robust = saved["robust"].astype(bool)
                assert adv["num_images"] == n and np.array_equal(saved["labels"], labels), "test sets differ"
                problems = []
                if adv["robust_images"] != int(m_robust.sum()):
                    problems.append(f"report says {adv['robust_images']} robust, the saved flags {m_robust.sum()}")
                if (m_robust & (clean_pred != labels)).any():
                    problems.append("robust flags on clean-misclassified images")
                if adv["sanity"]["warnings"]:
                    print(f"  mocse sanity warnings: {adv['sanity']['warnings']}")

                t0 = time.time()
                t_robust = torch_pgd(model, images, labels, eps, alpha, a.steps, a.restarts, a.norm,
                                     not a.no_random_start, a.seed, a.batch_size)
                t_torch = time.time() - t0

                # mocse's saved adversarial images, re-checked.
                x_adv = saved["images"]
                m_pred = saved["predicted"].astype(np.int64)
                adv_scores = scores_of(model, x_adv, a.batch_size)
                twin = adv_scores.argmax(1)
                broken = ~m_robust
                if (m_pred[m_robust] != labels[m_robust]).any():
                    problems.append("robust images whose saved prediction is not the label")
                if (m_pred[broken] == labels[broken]).any():
                    problems.append("broken images whose saved prediction is the label")
                differ, real = disagreements(adv_scores, m_pred, a.tie_tolerance)
                broken_ok = int((twin[broken] != labels[broken]).sum())
                broken_same = int((twin[broken] == m_pred[broken]).sum())
                robust_ok = int((twin[m_robust] == labels[m_robust]).sum())
                if len(real):
                    problems.append(f"the twin disagrees with mocse's prediction on {len(real)} saved images "
                                    f"(e.g. #{real[:5].tolist()})")
                diff = x_adv.astype(np.float64) - images.astype(np.float64)
                if a.norm == "linf":
                    dist = np.abs(diff).reshape(n, -1).max(1)
                    limit = eps * (1 + 1e-6) + 1e-7
                else:
                    dist = np.sqrt((diff.reshape(n, -1) ** 2).sum(1))
                    limit = eps * (1 + 1e-5) + 1e-6
                if (dist > limit).any():
                    problems.append(f"{int((dist > limit).sum())} saved images leave the eps-ball "
                                    f"(largest distance {dist.max():.6g}, eps {eps:.6g})")
                if x_adv.min() < 0 or x_adv.max() > 1 or not np.isfinite(x_adv).all():
                    problems.append(f"saved images outside [0, 1] ({x_adv.min()}, {x_adv.max()})")

                pm, pt = adv["robust_accuracy"], float(t_robust.mean())
                p = (pm + pt) / 2
                se = math.sqrt(p * (1 - p) / n) * math.sqrt(2)
                d = pm - pt
                too_far = abs(d) > 3 * se + 1.0 / n
                if too_far:
                    problems.append(f"robust accuracies differ by {d:+.4f}, more than 3 standard errors + 1 image")
                only_m = int((m_robust & ~t_robust).sum())
                only_t = int((~m_robust & t_robust).sum())
                agreement = (f"broken {broken_ok}/{int(broken.sum())} (same class {broken_same}), "
                             f"robust {robust_ok}/{int(m_robust.sum())}, max dist {dist.max():.4g}")
                rows.append((run, kind, f"{a.norm} {eps_text}", n,
                             f"{report['clean_accuracy']:.2%} / {(clean_torch == labels).mean():.2%}",
                             f"{pm:.2%}", f"{pt:.2%}", f"{d:+.2%} (se {se:.2%})", f"{only_m} / {only_t}", agreement,
                             f"{t_mocse:.0f}s / {t_torch:.0f}s", "FAIL" if problems else "ok"))
                for pr in problems:
                    print(f"  {run} {a.norm} eps {eps_text}: {pr}")
                failed |= bool(problems)
    start = "no random start" if a.no_random_start else "random start"
    print(f"\nPGD {a.norm}, {a.steps} steps, {a.restarts} restart(s), alpha {a.alpha or 'eps/4'}, {start}; "
          f"mocse seed {a.mocse_seed}, torch seed {a.seed}")
    header = ("run", "model", "norm eps", "images", "clean acc mocse / torch", "robust mocse", "robust torch",
              "difference", "robust only mocse / only torch", "saved adversarial (twin)", "time mocse / torch", "")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(c) for c in row))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
