"""PyTorch reference for `metaclf bench`, in the strongest formulation we know: the same
network as metaclf's (`--arch FILE`, the JSON `metaclf bench` writes; default the paper's CNN),
random weights, random input of shape C,H,W, this machine's CPU with 2 threads:

- grad: per-sample gradient of -log softmax at the predicted label, all layers' weights, with
  torch.func in ONE forward+backward per batch: vmap(grad(f, has_aux=True)) where f computes
  the logits once and takes the loss at their own argmax (no separate forward pass for the
  prediction); the 7 statistics (L1, L2, min, max, mean, skewness, kurtosis) per layer and
  for all layers are then computed on the stacked [B, P] per-sample gradients with batched
  reductions along dim 1 (not vmap-ed); batch norm in evaluation mode;
- mc: MC-dropout probabilities, T = 50 passes, in the prefix-once formulation: the layers
  before the first dropout run once on the batch (they are deterministic), the rest on the
  batch repeated for several passes at a time (at most 4096 rows a slice, as metaclf), dropout
  active and batch norm in evaluation mode, under `torch.inference_mode`; the result the
  [T, B, K] softmax probabilities (what metaclf's MC benchmark computes);
- train: one eager training step (SGD with momentum, dropout and batch norm in training
  mode, batch min(B, 128)).

    pip install torch
    python3 bench/reference_torch.py --shape 2,64,64 --arch arch.json   # one JSON object
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_net import build  # noqa: E402
from paper_arch import paper_arch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="1,28,28", help="C,H,W")
ap.add_argument("--arch", help="metaclf layer list (JSON); default the paper's CNN")
ap.add_argument("--batch", type=int, default=256)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--compile", action="store_true", help="torch.compile the gradient function")
args = ap.parse_args()
C, H, W = (int(v) for v in args.shape.split(","))
torch.set_num_threads(args.threads)
torch.manual_seed(0)
arch = json.load(open(args.arch)) if args.arch else paper_arch((C, H, W))
arch["input"] = [C, H, W]
K = arch["classes"]
B = args.batch

net = build(arch)
net.eval()
params = {k: v.detach() for k, v in net.named_parameters()}
buffers = {k: v.detach() for k, v in net.named_buffers()}
# parameterised layers in graph order, each with its tensors (weight, bias)
layers = []
for k in params:
    layer = k.rsplit(".", 1)[0]
    if layer not in layers:
        layers.append(layer)


def loss_at_own_pred(p, x):
    out = functional_call(net, (p, buffers), (x[None],))[0]
    pred = out.detach().argmax()
    return -torch.gather(torch.log_softmax(out, 0), 0, pred[None])[0], out


per_sample = vmap(grad(loss_at_own_pred, has_aux=True), in_dims=(None, 0))
if args.compile:
    per_sample = torch.compile(per_sample)


def stats_rows(v):
    """The 7 statistics of each row of v [B, P]."""
    m = v.mean(1, keepdim=True)
    d = v - m
    d2 = d * d
    m2, m3, m4 = d2.mean(1), (d2 * d).mean(1), (d2 * d2).mean(1)
    ok = m2 > 0
    safe = torch.where(ok, m2, torch.ones_like(m2))
    skew = torch.where(ok, m3 / safe**1.5, torch.zeros_like(m2))
    kurt = torch.where(ok, m4 / safe**2 - 3.0, torch.zeros_like(m2))
    return torch.stack([v.abs().sum(1), v.square().sum(1).sqrt(), v.amin(1), v.amax(1), m[:, 0], skew, kurt], 1)


def grad_batch(x):
    g, _ = per_sample(params, x)
    per = [torch.cat([g[k].flatten(1) for k in params if k.rsplit(".", 1)[0] == l], 1) for l in layers]
    return torch.cat([stats_rows(v) for v in per] + [stats_rows(torch.cat(per, 1))], 1)


def rate(n, f):
    f()
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < 3.0 or reps < 2:
        f()
        reps += 1
    return n * reps / (time.perf_counter() - t)


x = torch.rand(B, C, H, W)
TB = min(B, 128)
xt, yt = x[:TB], torch.arange(TB) % K
tnet = build(arch)
tnet.train()
opt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def train_step():
    opt.zero_grad()
    F.cross_entropy(tnet(xt), yt).backward()
    opt.step()


T = 50
order = net.order
# the first top-level module that is or holds a dropout: everything before it runs once
first = next(
    (i for i, m in enumerate(order) if any(isinstance(s, torch.nn.Dropout) for s in m.modules())),
    None,
)


def mc_batch(x):
    with torch.inference_mode():
        net.eval()
        if first is None:  # no dropout: every pass is the plain forward
            return torch.softmax(net(x), 1).expand(T, -1, -1)
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.train()
        h = x
        for m in order[:first]:
            h = m(h)
        per = max(1, min(T, 4096 // x.shape[0]))
        out, done = [], 0
        while done < T:
            tc = min(per, T - done)
            z = h.repeat(tc, *([1] * (h.dim() - 1)))
            for m in order[first:]:
                z = m(z)
            out.append(torch.softmax(z, 1).view(tc, x.shape[0], -1))
            done += tc
        net.eval()
        return torch.cat(out, 0)


out = {
    "name": "torch.func" + (" compiled" if args.compile else ""),
    "grad": rate(B, lambda: grad_batch(x)),
    "mc": rate(B, lambda: mc_batch(x)),
    "train": rate(TB, train_step),
    "params": sum(p.numel() for p in params.values()),
    "version": torch.__version__,
    "threads": torch.get_num_threads(),
    "shape": [C, H, W],
    "batch": B,
}
print(json.dumps(out))
