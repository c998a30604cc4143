"""Load a mocse checkpoint into PyTorch.

mocse writes `model.safetensors` with PyTorch's state_dict names (Rice et al.'s PreAct
ResNet-18: conv1, layer1.0.bn1, ..., layer2.0.shortcut.0, bn, linear), conv weights OIHW, plus
the input normalisation as two buffers, normalize.mean and normalize.std. This module defines
that network (and its fused MoCSE form: every layer grouped into N experts) so that

    import mocse_torch
    model = mocse_torch.load("runs/mocse")              # a run directory (reads config.json)
    model = mocse_torch.load("x.safetensors", kind="mocse", width=16)   # a bare checkpoint
    scores = model(images)   # images: float tensor (B, 3, 32, 32) in [0, 1], RGB

gives the class scores mocse computes: the standard network's logits, or MoCSE's aggregated
expert scores (`prob`: softmax of each expert, its "True" probability; `logodds`: l_True -
l_False). The model is returned in eval mode (batch norm uses the running statistics).
Needs torch and safetensors (`pip install torch safetensors`).
"""

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


class Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.ones(3))

    def forward(self, x):
        return (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False, groups=groups)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False, groups=groups)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False, groups=groups))

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        shortcut = self.shortcut(pre) if hasattr(self, "shortcut") else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class GroupedLinear(nn.Module):
    """The head: each of `groups` copies maps its own features to its own outputs.
    weight (groups * outputs, features), as mocse stores it."""

    def __init__(self, features, outputs, groups):
        super().__init__()
        self.groups, self.outputs = groups, outputs
        self.weight = nn.Parameter(torch.zeros(groups * outputs, features))
        self.bias = nn.Parameter(torch.zeros(groups * outputs))

    def forward(self, x):
        b = x.shape[0]
        x = x.view(b, self.groups, -1)
        w = self.weight.view(self.groups, self.outputs, -1)
        return torch.einsum("bgf,gof->bgo", x, w).reshape(b, -1) + self.bias


class PreActResNet18(nn.Module):
    """groups = 1: the standard network (outputs = classes); groups = N: N experts fused."""

    def __init__(self, width, groups=1, outputs=10):
        super().__init__()
        w = width * groups
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)  # the image is shared: a dense stem
        cin = w
        for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)]):
            cout = w * mult
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(PreActBlock(cin, cout, stride, groups), PreActBlock(cout, cout, 1, groups)))
            cin = cout
        self.bn = nn.BatchNorm2d(cin)
        self.linear = GroupedLinear(width * 8, outputs, groups)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class MoCSE(nn.Module):
    """N binary class experts, fused; returns the aggregated class scores (B, N)."""

    def __init__(self, width, classes=10, aggregate="prob"):
        super().__init__()
        self.net = PreActResNet18(width, groups=classes, outputs=2)
        self.classes, self.aggregate = classes, aggregate

    def forward(self, x):
        logits = self.net(x).view(x.shape[0], self.classes, 2)  # expert n: (False, True)
        if self.aggregate == "prob":
            return logits.softmax(-1)[..., 1]
        return logits[..., 1] - logits[..., 0]


def training_loss(raw, labels, kind, aggregate="prob", bce_weight=1.0):
    """mocse's training loss from the network's raw output: cross-entropy on the logits for
    preact18; for MoCSE, cross-entropy on the aggregated class scores plus bce_weight times the
    experts' mean binary cross-entropy (expert n's target: label == n)."""
    if kind == "preact18":
        return F.cross_entropy(raw, labels)
    b = raw.shape[0]
    logits = raw.view(b, -1, 2)
    experts = logits.shape[1]
    scores = logits.softmax(-1)[..., 1] if aggregate == "prob" else logits[..., 1] - logits[..., 0]
    bce = F.cross_entropy(logits.reshape(-1, 2), F.one_hot(labels, experts).reshape(-1))
    return F.cross_entropy(scores, labels) + bce_weight * bce


def build(kind, width, classes=10, aggregate="prob"):
    if kind == "preact18":
        return PreActResNet18(width, groups=1, outputs=classes)
    if kind == "mocse":
        return MoCSE(width, classes, aggregate)
    raise ValueError(f"unknown model kind {kind!r}: preact18 or mocse")


def load(path, kind=None, width=None, classes=10, aggregate="prob"):
    """A mocse run directory (config.json and model.safetensors) or a checkpoint file (the model
    from config.json beside it, else from kind/width/aggregate)."""
    file = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
    config = os.path.join(os.path.dirname(file) or ".", "config.json")
    if kind is None and os.path.exists(config):
        m = json.load(open(config))["model"]
        kind, width, classes, aggregate = m["kind"], m["width"], m["num_classes"], m["aggregate"]
    if kind is None:
        raise ValueError(f"{file} has no config.json beside it: give kind and width")
    model = build(kind, width, classes, aggregate)
    state = load_file(file)
    target = model.net if isinstance(model, MoCSE) else model
    target.load_state_dict(state, strict=True)
    return model.eval()
