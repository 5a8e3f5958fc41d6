"""The PyTorch reference step: ResNet-18 (CIFAR stem) SimCLR at batch 256 pairs, on this CPU.

Two modes (`--amcl`):

- `none` (default): plain SimCLR, the same architecture and step as
  `benchmarks.train_step --encoder resnet18_cifar --no-amcl` (3×3 stem, no max-pool, stages of 2
  basic blocks at 64/128/256/512 channels, global average pool; ONE head 512 → 512 → 128;
  NT-Xent τ = 0.5 over the 2B views; SGD momentum 0.9, weight decay 5e-4, clip 1.0).
- `authors`: AMCL-SimCLR costed as the authors' code computes it (docs: /work/shared/AMCL_METHOD.md
  §3–§4, top-k form): THREE heads 512 → 512 → 128, one shared φ (Linear 128→128, ReLU,
  Linear 128→128) on the L2-normalised head outputs, τ = τ_min + (τ_max − τ_min)·sigmoid(−φ(a)·φ(b))
  with τ_min 1e-5, τ_max 2, the k = 100 negatives most similar by cosine, and per anchor
      −s⁺/τ⁺ + β·Ω(τ⁺) + mean_k(s_k/τ_k) − β·Σ_k(log τ_k + 1/τ_k),   Ω(τ) = (d'/2)·log τ + 1/τ,
  β = 1e-4, averaged over the 2B anchors (both directions) and summed over heads. The cost that
  matters: for every anchor the 2B − 2 negatives are gathered into a pair-expanded tensor
  [2B, 2B − 2, d'] and φ runs on it, i.e. once per (anchor, negative) PAIR, not once per sample
  (the anchor's own φ and the positives' φ run once per anchor). Cosine similarities of the
  negatives are taken from the same expanded tensor. φ is in the optimiser with the rest.
  Each view goes through the encoder on its own (`--forward per_view`, the authors' way).

Written from the method description (the authors' repository is not vendored here). Prints one
JSON line: median step time and images/s over `--steps` timed steps after `--warmup` untimed
ones, the mode, the heads, the pairs φ scores per step, the CPU capability PyTorch dispatches
to, and the peak RSS.

PyTorch is not part of amcl-keras's stack; run it from its own environment. Here the CPU wheel
came from the local wheel directory (the download.pytorch.org CPU index is unreachable offline):

    python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install numpy torch   # or the +cpu wheel
    /tmp/torch-venv/bin/python benchmarks/pytorch_reference.py --threads 2
    /tmp/torch-venv/bin/python benchmarks/pytorch_reference.py --threads 2 --amcl authors
"""

import argparse
import json
import os
import resource
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

TAU_MIN, TAU_MAX = 1e-5, 2.0


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
        self.features = cin

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.blocks(F.relu(self.stem(x))), 1).flatten(1)


def nt_xent(z1, z2, temperature=0.5):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def omega(tau, dim):
    return 0.5 * dim * torch.log(tau) + 1.0 / tau


def temperature(phi_a, phi_b):
    """τ from φ outputs along the last axis: τ_min + (τ_max − τ_min)·sigmoid(−φ(a)·φ(b))."""
    return TAU_MIN + (TAU_MAX - TAU_MIN) * torch.sigmoid(-(phi_a * phi_b).sum(-1))


def negative_index(batch):
    """[2B, 2B − 2]: for anchor i (of the 2B views) every view but itself and its partner."""
    n = 2 * batch
    views = torch.arange(n)
    partner = (views + batch) % n
    keep = (views[None, :] != views[:, None]) & (views[None, :] != partner[:, None])
    return views.expand(n, n)[keep].view(n, n - 2), partner


def amcl_authors_loss(heads_z1, heads_z2, phi, beta=1e-4, top_k=100):
    """AMCL top-k loss (AMCL_METHOD.md §4), φ evaluated per anchor–negative pair; summed over heads."""
    batch, dim = heads_z1[0].shape
    index, partner = negative_index(batch)
    k = min(top_k, 2 * batch - 2)
    total = 0.0
    for z1, z2 in zip(heads_z1, heads_z2):
        u = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, d']
        phi_u = phi(u)  # once per anchor (also the positives' partners)
        sim_pos = (u * u[partner]).sum(-1)
        tau_pos = temperature(phi_u, phi_u[partner])
        negatives = u[index]  # [2B, 2B − 2, d']: pair-expanded
        phi_neg = phi(negatives)  # φ once per (anchor, negative) pair
        sim_neg = torch.einsum("ad,and->an", u, negatives)
        tau_neg = temperature(phi_u[:, None, :], phi_neg)  # [2B, 2B − 2]
        sim_k, chosen = sim_neg.topk(k, dim=1)  # chosen by cosine alone
        tau_k = tau_neg.gather(1, chosen)
        per_anchor = (-sim_pos / tau_pos + beta * omega(tau_pos, dim) + (sim_k / tau_k).mean(1)
                      - beta * (torch.log(tau_k) + 1.0 / tau_k).sum(1))
        total = total + per_anchor.mean()  # mean over 2B anchors = average of the two directions
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amcl", choices=["none", "authors"], default="none",
                        help="none: plain SimCLR, 1 head; authors: AMCL-SimCLR as the authors' code costs it, 3 heads")
    parser.add_argument("--forward", choices=["concatenated", "per_view"],
                        help="encoder forward: both views in one batch, or each view on its own "
                             "(default: concatenated for none, per_view for authors)")
    parser.add_argument("--batch", type=int, default=256, help="pairs per step")
    parser.add_argument("--heads", type=int, help="projection heads (default: 1 for none, 3 for authors)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--beta", type=float, default=1e-4)
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the real one)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    forward = args.forward or ("per_view" if args.amcl == "authors" else "concatenated")
    heads_count = args.heads or (3 if args.amcl == "authors" else 1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = ResNet18Cifar(args.width)
    features, dim = encoder.features, 128
    heads = nn.ModuleList(nn.Sequential(nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, dim))
                          for _ in range(heads_count))
    phi = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, dim))
    parameters = list(encoder.parameters()) + list(heads.parameters())
    if args.amcl == "authors":
        parameters += list(phi.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.06, momentum=0.9, weight_decay=5e-4)
    b = args.batch
    views = torch.rand(2 * b, 3, args.image_size, args.image_size)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if forward == "per_view":
            h1, h2 = encoder(views[:b]), encoder(views[b:])
        else:
            h1, h2 = encoder(views).split(b)
        z1 = [head(h1) for head in heads]
        z2 = [head(h2) for head in heads]
        if args.amcl == "authors":
            loss = amcl_authors_loss(z1, z2, phi, args.beta, args.top_k)
        else:
            loss = sum(nt_xent(a, c) for a, c in zip(z1, z2))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    anchors = 2 * b
    result = {
        "framework": "pytorch", "torch": torch.__version__, "threads": args.threads,
        "mode": "amcl_authors" if args.amcl == "authors" else "simclr_plain", "heads": heads_count,
        "encoder_forward": forward, "batch_pairs": b, "image_size": args.image_size, "width": args.width,
        "median_step_s": round(median, 4), "images_per_s": round(2 * b / median, 2), "steps_timed": len(times),
        "loss": round(float(loss.detach()), 4),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {key: os.environ[key] for key in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
                if key in os.environ},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.amcl == "authors":
        negatives = anchors * (anchors - 2)  # per head
        result.update({
            "top_k": min(args.top_k, anchors - 2), "beta": args.beta, "phi_hidden": 128, "projection_dim": dim,
            "pairs_per_step": {
                "per_head": {"positive_pairs": anchors, "negative_pairs_scored": negatives,
                             "negative_pairs_in_loss": anchors * min(args.top_k, anchors - 2)},
                "heads": heads_count,
                "phi_evaluations": heads_count * (anchors + negatives),  # anchors once, negatives once per pair
            },
            # φ forward MACs (2 layers of 128×128) × 3 for forward + backward, × 2 FLOPs per MAC
            "phi_train_gflop_per_step": round(heads_count * (anchors + negatives) * 2 * dim * 128 * 3 * 2 / 1e9, 2),
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
