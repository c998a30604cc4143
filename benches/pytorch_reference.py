#!/usr/bin/env python3
"""PyTorch reference for `mocse bench`: the same model configurations, measured the same way.

PreAct ResNet-18 (standard, width W) and its fused MoCSE form (N experts of width w as one
network with grouped convolutions, a grouped 1x1 head to [B, N, 2], CE on the aggregated
"True" probabilities plus the experts' BCE), trained with SGD (momentum 0.9, weight decay
5e-4) on random 32x32 images. Each configuration runs in eager f32 NCHW and in channels_last
with AMP (bf16 autocast); training and inference images/s are the median of timed steps
after warm-up, timed with CUDA events on a GPU. One JSON object per line on stdout.

    python3 benches/pytorch_reference.py [--device cuda|cpu] [--steps 20] [--warmup 5]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False, groups=groups)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False, groups=groups)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False, groups=groups)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        short = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet18(nn.Module):
    """groups = 1: the standard network (outputs = classes); groups = N: N experts fused."""

    def __init__(self, width, groups=1, outputs=10):
        super().__init__()
        w = width * groups
        self.groups = groups
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)  # the image is shared: dense stem
        blocks, cin = [], w
        for mult, stride in [(1, 1), (2, 2), (4, 2), (8, 2)]:
            blocks += [Block(cin, w * mult, stride, groups), Block(w * mult, w * mult, 1, groups)]
            cin = w * mult
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Conv2d(cin, outputs * groups, 1, groups=groups)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out).flatten(1)


def loss_fn(out, y, experts):
    if experts == 1:
        return F.cross_entropy(out, y)
    logits = out.view(out.shape[0], experts, 2)
    scores = logits.softmax(-1)[..., 1]
    bce = F.cross_entropy(logits.reshape(-1, 2).float(), F.one_hot(y, experts).reshape(-1))
    return F.cross_entropy(scores.float(), y) + bce


def timer(device):
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def measure(fn):
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return measure

    def measure_wall(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return measure_wall


def run(name, width, experts, batch, device, layout, steps, warmup):
    torch.manual_seed(0)
    net = PreActResNet18(width, experts, 2 if experts > 1 else 10).to(device)
    amp = layout == "channels_last+amp"
    if amp:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, 32, 32, device=device)
    if amp:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    measure = timer(device)

    def train_step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x), y, experts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            net(x)

    net.train()
    train = [measure(train_step) for _ in range(warmup + steps)][warmup:]
    net.eval()
    infer = [measure(infer_step) for _ in range(warmup + steps)][warmup:]
    print(json.dumps({
        "config": name,
        "layout": layout,
        "batch_size": batch,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "train_images_per_s": round(batch / statistics.median(train), 1),
        "infer_images_per_s": round(batch / statistics.median(infer), 1),
    }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    configs = [
        ("preact18 --width 16", 16, 1),
        ("preact18 --width 64", 64, 1),
        ("mocse --expert-width 16 (fused, groups=10)", 16, 10),
    ]
    for layout in ["f32 NCHW", "channels_last+amp"]:
        for name, width, experts in configs:
            run(name, width, experts, args.batch_size, args.device, layout, args.steps, args.warmup)


if __name__ == "__main__":
    main()
