#!/usr/bin/env python3
"""Writes tests/data/augmix_reference.npz: what Pillow (the library AugMix uses) makes of real
photographs under each AugMix operation mocse implements, for tests/augmix.rs.

The inputs are the first 14 clean crops of tests/data/cifar10c_reference.npz (public-domain
photographs, see tests/data/README.md) and two hand-made images that reach the operations'
special cases: one of a single grey level (autocontrast and equalize leave it alone) and one of
two levels per channel. Case k applies operation `case_ops[k]` (uint8; ids in the order below,
0 autocontrast .. 8 translate_y) with parameter `case_params[k]` (float32, as mocse passes it)
to every input; `outputs[k]` is Pillow's result:

  autocontrast, equalize                 ImageOps.autocontrast(img), ImageOps.equalize(img)
  posterize_<bits>                       ImageOps.posterize(img, bits)
  solarize_<threshold>                   ImageOps.solarize(img, threshold)
  rotate_<degrees>                       img.rotate(degrees, resample=Image.BILINEAR)
  shear_x_<s>, shear_y_<s>               img.transform((32, 32), Image.AFFINE, (1, s, 0, 0, 1, 0)
                                         or (1, 0, 0, s, 1, 0), resample=Image.BILINEAR)
  translate_x_<t>, translate_y_<t>       the same with (1, 0, t, 0, 1, 0) or (1, 0, 0, 0, 1, t)

`chain_ops` (16, 3) uint8 and `chain_params` (16, 3) float32 give each image a chain of three
operations drawn as AugMix draws them at severity 3; `chain` is Pillow's result of applying them
in turn, each on the uint8 result of the one before, as AugMix does.

  target/torch-venv/bin/pip install Pillow numpy
  target/torch-venv/bin/python scripts/make_augmix_reference.py
"""

import os

import numpy as np
import PIL
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data")
OPS = ["autocontrast", "equalize", "posterize", "solarize", "rotate", "shear_x", "shear_y",
       "translate_x", "translate_y"]
CASES = [("autocontrast", None), ("equalize", None)]
CASES += [("posterize", b) for b in (1, 3, 4, 8)]
CASES += [("solarize", t) for t in (128, 180, 254, 0)]
CASES += [("rotate", d) for d in (-8.0, 3.0, 8.0, 2.5, 30.0)]
CASES += [(op, s) for op in ("shear_x", "shear_y") for s in (0.09, -0.05, 0.3)]
CASES += [(op, t) for op in ("translate_x", "translate_y") for t in (3.0, -2.0, 10.0)]


def apply(img, op, p):
    if op == "autocontrast":
        return ImageOps.autocontrast(img)
    if op == "equalize":
        return ImageOps.equalize(img)
    if op == "posterize":
        return ImageOps.posterize(img, int(p))
    if op == "solarize":
        return ImageOps.solarize(img, int(p))
    if op == "rotate":
        return img.rotate(p, resample=Image.BILINEAR)
    coefficients = {
        "shear_x": (1, p, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, p, 1, 0),
        "translate_x": (1, 0, p, 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, p),
    }[op]
    return img.transform((32, 32), Image.AFFINE, coefficients, resample=Image.BILINEAR)


def main():
    photos = np.load(os.path.join(DATA, "cifar10c_reference.npz"))["inputs"][:14]
    grey = np.full((1, 32, 32, 3), 117, np.uint8)
    two = np.zeros((1, 32, 32, 3), np.uint8)
    two[0, :, :16] = (40, 90, 200)
    two[0, :, 16:] = (41, 160, 10)
    inputs = np.concatenate([photos, grey, two])
    case_ops = np.array([OPS.index(op) for op, _ in CASES], np.uint8)
    case_params = np.array([0.0 if p is None else p for _, p in CASES], np.float32)
    outputs = [[np.asarray(apply(Image.fromarray(x), OPS[op], float(p))) for x in inputs]
               for op, p in zip(case_ops, case_params)]
    out = {"inputs": inputs, "case_ops": case_ops, "case_params": case_params,
           "outputs": np.array(outputs, np.uint8)}
    rng = np.random.default_rng(0)
    chain_ops = rng.integers(0, len(OPS), size=(len(inputs), 3)).astype(np.uint8)
    levels = rng.uniform(0.1, 3.0, size=(len(inputs), 3))
    signs = np.where(rng.uniform(size=(len(inputs), 3)) > 0.5, -1.0, 1.0)
    # AugMix's parameters at severity 3 for each operation (its int_/float_parameter).
    params = np.zeros((len(inputs), 3), np.float32)
    chain = []
    for i, x in enumerate(inputs):
        img = Image.fromarray(x)
        for k in range(3):
            op, level, sign = OPS[chain_ops[i, k]], levels[i, k], signs[i, k]
            p = {
                "autocontrast": 0.0,
                "equalize": 0.0,
                "posterize": 4 - int(level * 4 / 10),
                "solarize": 256 - int(level * 256 / 10),
                "rotate": sign * int(level * 30 / 10),
                "shear_x": sign * level * 0.3 / 10,
                "shear_y": sign * level * 0.3 / 10,
                "translate_x": sign * int(level * (32 / 3) / 10),
                "translate_y": sign * int(level * (32 / 3) / 10),
            }[op]
            params[i, k] = p
            img = apply(img, op, float(params[i, k]))
        chain.append(np.asarray(img))
    out["chain_ops"], out["chain_params"], out["chain"] = chain_ops, params, np.stack(chain)
    path = os.path.normpath(os.path.join(DATA, "augmix_reference.npz"))
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, Pillow {PIL.__version__}, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
