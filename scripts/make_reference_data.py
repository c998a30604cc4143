#!/usr/bin/env python3
"""Writes tests/data/cifar10c_reference.npz: what the CIFAR-10-C reference generator makes of 48
real photographs, for the corruption tests (tests/corruption_reference.rs).

The generator is `make_cifar_c.py` of hendrycks/robustness (ImageNet-C/create_c/, commit 8190fe3,
Apache-2.0). It is not part of this repository: give its path with --generator (its directory
also holds the frost photographs it opens). Only its corruption functions are run (its code up
to "End Distortions"; its CIFAR-10 loop and torch imports are left out), on the current
libraries, with shims for the APIs that moved since 2019 (nothing else changes):
scipy.ndimage.interpolation is now scipy.ndimage, skimage's gaussian(multichannel=True) is now
channel_axis=-1, NumPy's binary fromstring is frombuffer and its float_ is float64.

The photographs are six sample images bundled with scikit-image, all public domain or CC0 (see
tests/data/README.md), eight 32x32 crops each at several scales. Output keys:
  inputs               (48, 32, 32, 3) uint8, the clean crops
  <corruption>_s<k>    (48, 32, 32, 3) uint8, the generator's output at severity k, for the 8
                       deterministic corruptions
  stats_<corruption>_s<k>  (4,) float64, for the 11 random corruptions, over 8 draws: mean
                       |out - in|, mean (out - in), std (out - in), fraction of values changed
                       (0..255 scale); their single outputs would only bloat the file

Set up (a developer's machine; ImageMagick 6 for Wand, e.g. Debian's libmagickwand-6.q16-6):
  python3 -m venv target/refgen-venv
  target/refgen-venv/bin/pip install numpy scipy scikit-image opencv-python-headless Pillow Wand
  target/refgen-venv/bin/python scripts/make_reference_data.py --generator .../create_c/make_cifar_c.py
"""

import argparse
import os
import sys
import types

import numpy as np
import scipy.ndimage
import skimage
import skimage.data
import skimage.filters
from PIL import Image

CORRUPTIONS = [
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
    "snow", "frost", "fog", "spatter",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate",
]
DETERMINISTIC = {"gaussian_blur", "defocus_blur", "zoom_blur", "brightness", "contrast", "saturate",
                 "pixelate", "jpeg_compression"}
# Public domain or CC0, as scikit-image's documentation of each states.
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina"]
DRAWS = 8


def load_generator(path):
    """The generator's corruption functions, as a module, with the shims applied."""
    source = open(path, encoding="utf-8").read()
    end = source.index("# /////////////// End Distortions")
    kept = [line for line in source[:end].splitlines()
            if not line.startswith(("import torch", "import torchvision"))]
    # NumPy 2 removed binary np.fromstring (np.frombuffer reads the same bytes) and np.float_.
    kept = [line.replace("np.fromstring(", "np.frombuffer(").replace("np.float_", "np.float64") for line in kept]
    sys.modules["scipy.ndimage.interpolation"] = scipy.ndimage
    plain_gaussian = skimage.filters.gaussian

    def gaussian(image, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return plain_gaussian(image, *args, **kwargs)

    skimage.filters.gaussian = gaussian
    module = types.ModuleType("make_cifar_c")
    module.__file__ = path
    exec(compile("\n".join(kept), path, "exec"), module.__dict__)
    return module


def crops():
    """Eight 32x32 crops of each photograph: the short side scaled to 32, 48, 64 and 96 pixels,
    two crops per scale (towards either end of the long side)."""
    out = []
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for short in (32, 48, 64, 96):
            scale = short / min(photo.size)
            w, h = round(photo.size[0] * scale), round(photo.size[1] * scale)
            small = photo.resize((w, h), Image.LANCZOS)
            for t in (0.3, 0.7):
                x, y = round((w - 32) * t), round((h - 32) * (1 - t))
                out.append(np.asarray(small.crop((x, y, x + 32, y + 32))))
    return np.stack(out).astype(np.uint8)


def apply(function, images, severity):
    """As make_cifar_c.py's loop does: the function on a PIL image, cast with np.uint8 (which
    truncates)."""
    return np.stack([np.uint8(function(Image.fromarray(img), severity)) for img in images])


def stats(outs, inputs):
    d = outs.astype(np.float64) - np.broadcast_to(inputs, outs.shape).astype(np.float64)
    mean = d.mean()
    return np.array([np.abs(d).mean(), mean, np.sqrt(max((d * d).mean() - mean * mean, 0.0)), (d != 0).mean()])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", required=True, help="path of make_cifar_c.py")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                      "cifar10c_reference.npz"))
    parser.add_argument("--seed", type=int, default=0, help="seed of NumPy's global generator")
    a = parser.parse_args()
    generator = os.path.abspath(a.generator)
    out = os.path.abspath(a.out)
    generator_module = load_generator(generator)
    inputs = crops()
    arrays = {"inputs": inputs}
    os.chdir(os.path.dirname(generator))  # frost opens ./frostN.png
    np.random.seed(a.seed)
    for name in CORRUPTIONS:
        function = getattr(generator_module, name)
        for s in range(1, 6):
            if name in DETERMINISTIC:
                arrays[f"{name}_s{s}"] = apply(function, inputs, s)
            else:
                draws = np.stack([apply(function, inputs, s) for _ in range(DRAWS)])
                arrays[f"stats_{name}_s{s}"] = stats(draws, inputs[None])
        print(f"{name}: done", file=sys.stderr)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
