#!/usr/bin/env python3
"""The PyTorch side of mocse's benchmarks: one configuration of `mocse bench --what train-step`,
measured the same way in PyTorch, as one JSON line on stdout.

The network and loss are mocse's own twin (scripts/mocse_torch.py): PreAct ResNet-18 with the
input normalisation inside, or MoCSE (N experts fused into one grouped network, or with
--unfused N separate networks run one after another, or with --stacked the N networks
vectorised by torch.func), trained with CE (plus, for MoCSE, the
experts' BCE) and SGD (lr 1e-3, momentum 0.9, weight decay 5e-4) on the same random batch.
A training step is forward, backward and the update; inference is a forward pass in eval
mode without gradients. Each is the median of --steps timed steps after --warmup untimed
ones, wall clock (CUDA events on a GPU).

With --twin DIR (written by `mocse bench --what train-step --twin DIR`) it first loads mocse's
weights and batch and checks that its training-mode output and loss equal mocse's; it then
times that very network. It exits with status 1 when they differ.

    python3 benches/pytorch_peer.py --model mocse --width 16 --batch-size 64 [--unfused | --stacked]
        [--layout nchw|channels_last|channels_last+tf32|channels_last+amp] [--device cpu|cuda] [--threads 2]
        [--steps 3] [--warmup 1] [--twin DIR]
    python3 benches/pytorch_peer.py --all --device cuda --batch-size 128   # scripts/gpu-check.sh's

Needs torch, numpy and safetensors.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import mocse_torch  # noqa: E402

CLASSES = 10


class Unfused(nn.Module):
    """N binary experts as N separate networks, run one after another; outputs side by side."""

    def __init__(self, width, experts):
        super().__init__()
        self.experts = nn.ModuleList(mocse_torch.PreActResNet18(width, 1, 2) for _ in range(experts))

    def forward(self, x):
        return torch.cat([e(x) for e in self.experts], 1)


class Stacked(nn.Module):
    """N binary experts as one network vectorised over the experts: torch.func's
    stack_module_state and vmap of functional_call, PyTorch's idiom for batching identical models.
    Under vmap batch norm can keep no running statistics (torch.func.replace_all_batch_norm_modules_),
    so evaluation mode normalises with the batch's statistics too; the arithmetic is otherwise
    the unfused experts'. Outputs side by side, as Unfused's."""

    def __init__(self, width, experts):
        super().__init__()
        from torch.func import functional_call, replace_all_batch_norm_modules_, stack_module_state

        nets = [mocse_torch.PreActResNet18(width, 1, 2) for _ in range(experts)]
        for net in nets:
            replace_all_batch_norm_modules_(net)
        params, buffers = stack_module_state(nets)
        self.names = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(params[k].detach().clone()) for k in self.names)
        self.buffer_names = list(buffers)
        for i, k in enumerate(self.buffer_names):
            self.register_buffer(f"stacked_buffer_{i}", buffers[k])
        base = nets[0]

        def one(p, b, x):
            return functional_call(base, (p, b), (x,))

        self.call = torch.vmap(one, in_dims=(0, 0, None))

    def forward(self, x):
        params = dict(zip(self.names, self.stacked))
        buffers = {k: getattr(self, f"stacked_buffer_{i}") for i, k in enumerate(self.buffer_names)}
        out = self.call(params, buffers, x)  # [experts, batch, 2]
        return out.permute(1, 0, 2).reshape(x.shape[0], -1)


def twin_check(directory, tolerance):
    """Loads mocse's benchmark weights and batch from DIR, compares output and loss; returns
    (network in train mode, its config, images, labels, a report dict)."""
    with open(os.path.join(directory, "twin.json")) as f:
        record = json.load(f)
    cfg, expected_loss = record["model"], record["loss"]
    model = mocse_torch.load(os.path.join(directory, "model.safetensors"), cfg["kind"], cfg["width"],
                             cfg["num_classes"], cfg["aggregate"])
    net = model.net if isinstance(model, mocse_torch.MoCSE) else model
    net.train()
    x = torch.from_numpy(np.load(os.path.join(directory, "images.npy")))
    y = torch.from_numpy(np.load(os.path.join(directory, "labels.npy")))
    expected = np.load(os.path.join(directory, "output.npy")).astype(np.float64)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        raw = net(x)
        loss = mocse_torch.training_loss(raw, y, cfg["kind"], cfg["aggregate"], cfg["bce_weight"]).item()
    net.load_state_dict(state)  # the forward pass moved the running statistics
    ours = raw.double().numpy().reshape(expected.shape)
    output_diff = float(np.abs(ours - expected).max() / max(np.abs(expected).max(), 1e-12))
    loss_diff = abs(loss - expected_loss) / max(abs(expected_loss), 1e-12)
    report = {"twin_output_relative_diff": output_diff, "twin_loss": loss, "mocse_loss": expected_loss,
              "twin_loss_relative_diff": loss_diff}
    if not (output_diff <= tolerance and loss_diff <= tolerance):
        print(f"twin check failed in {directory}: {report}", file=sys.stderr)
        sys.exit(1)
    print(f"twin check passed (tolerance {tolerance}) in {directory}: {report}", file=sys.stderr)
    return net, cfg, x, y, report


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


def measure(net, cfg, x, y, device, layout, steps, warmup):
    """Median seconds of a training step and of an inference pass."""
    amp = layout == "channels_last+amp"
    # PyTorch lets cuDNN use TF32 for f32 convolutions by default; strict f32 unless asked.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = layout.endswith("+tf32")
    net, x, y = net.to(device), x.to(device), y.to(device)
    if layout.startswith("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
        if not isinstance(net, Stacked):  # its weights are stacked 5-D tensors
            net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    clock = timer(device)

    def train_step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            raw = net(x)
        loss = mocse_torch.training_loss(raw.float(), y, cfg["kind"], cfg["aggregate"], cfg["bce_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            net(x)

    net.train()
    train = [clock(train_step) for _ in range(warmup + steps)][warmup:]
    net.eval()
    infer = [clock(infer_step) for _ in range(warmup + steps)][warmup:]
    return statistics.median(train), statistics.median(infer)


def run(a):
    kind = a.model
    report = {}
    if a.twin:
        net, cfg, x, y, report = twin_check(a.twin, a.tolerance)
        kind, width, batch = cfg["kind"], cfg["width"], x.shape[0]
        if a.unfused:
            net = Unfused(width, cfg["num_classes"])
        elif a.stacked:
            net = Stacked(width, cfg["num_classes"])
    else:
        width, batch = a.width, a.batch_size
        cfg = {"kind": kind, "aggregate": "prob", "bce_weight": 1.0}
        torch.manual_seed(0)
        if kind == "mocse" and a.unfused:
            net = Unfused(width, CLASSES)
        elif kind == "mocse" and a.stacked:
            net = Stacked(width, CLASSES)
        elif kind == "mocse":
            net = mocse_torch.PreActResNet18(width, CLASSES, 2)
        else:
            net = mocse_torch.PreActResNet18(width, 1, CLASSES)
        x = torch.rand(batch, 3, 32, 32)
        y = torch.randint(0, CLASSES, (batch,))
    train, infer = measure(net, cfg, x, y, a.device, a.layout, a.steps, a.warmup)
    print(json.dumps({
        "model": kind,
        "width": width,
        "fused": not a.unfused and not a.stacked,
        "experts": "unfused" if a.unfused else "stacked (torch.func vmap)" if a.stacked else "fused (grouped)",
        "batch_size": batch,
        "layout": a.layout,
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timed_steps": a.steps,
        "train_images_per_s": batch / train,
        "infer_images_per_s": batch / infer,
        **report,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["preact18", "mocse"], default="preact18")
    parser.add_argument("--width", type=int, default=64, help="preact18's width or each expert's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unfused", action="store_true")
    parser.add_argument("--stacked", action="store_true",
                        help="mocse: the experts as one torch.func-vectorised network (vmap over stacked weights)")
    parser.add_argument("--layout", choices=["nchw", "channels_last", "channels_last+tf32", "channels_last+amp"],
                        default="channels_last",
                        help="memory format and arithmetic: strict f32 (TF32 off, like mocse's kernels), +tf32 "
                             "(PyTorch's default for convolutions on a GPU) or +amp (bf16 autocast)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads [default: PyTorch's]")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--twin", metavar="DIR", help="check against (and time) mocse's benchmark network in DIR")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative, for --twin")
    parser.add_argument("--all", action="store_true",
                        help="every configuration (PreAct-18 widths 16 and 64, MoCSE fused and unfused) in "
                             "channels_last strict f32, +tf32 and +amp, batch --batch-size")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.all:
        run(a)
        return
    for layout in ["channels_last", "channels_last+tf32", "channels_last+amp"]:
        for model, width, experts in [("preact18", 16, "fused"), ("preact18", 64, "fused"), ("mocse", 16, "fused"),
                                      ("mocse", 16, "unfused"), ("mocse", 16, "stacked")]:
            run(argparse.Namespace(**{**vars(a), "model": model, "width": width, "unfused": experts == "unfused",
                                      "stacked": experts == "stacked", "layout": layout, "twin": None}))


if __name__ == "__main__":
    main()
