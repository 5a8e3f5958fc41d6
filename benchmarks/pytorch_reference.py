"""The PyTorch reference step: ResNet-18 (CIFAR stem) SimCLR at batch 256 pairs, on this CPU.

The same architecture and step as `benchmarks.train_step --encoder resnet18_cifar` (3×3 stem,
no max-pool, stages of 2 basic blocks at 64/128/256/512 channels, global average pool; head
512 → 512 → 128; NT-Xent τ = 0.5 over the 2B views; SGD momentum 0.9, weight decay 5e-4),
written in PyTorch as the AMCL authors' code base is (their repository is not available
offline; this is a stand-in with the same FLOPs). Prints one JSON line: median step time and
images/s over `--steps` timed steps after one warm-up step.

PyTorch is not part of amcl-keras's stack; run it from its own environment, with numpy and
torch installed from PyPI:

    python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install numpy torch
    /tmp/torch-venv/bin/python benchmarks/pytorch_reference.py --threads 2
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, stride), conv_bn(cout, cout, 1)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.stem = conv_bn(3, width, 1)
        layers, cin = [], width
        for stage, multiplier in enumerate((1, 2, 4, 8)):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(Block(cin, width * multiplier, stride))
                cin = width * multiplier
        self.blocks = nn.Sequential(*layers)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.blocks(F.relu(self.stem(x))), 1).flatten(1)


def nt_xent(z1, z2, temperature=0.5):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = ResNet18Cifar()
    head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.06, momentum=0.9, weight_decay=5e-4)
    views = torch.rand(2 * args.batch, 3, 32, 32)
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        z = head(encoder(views))
        loss = nt_xent(z[: args.batch], z[args.batch:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "threads": args.threads,
                      "batch_pairs": args.batch, "median_step_s": round(median, 3),
                      "images_per_s": round(2 * args.batch / median, 2), "steps_timed": len(times)}))


if __name__ == "__main__":
    main()
