"""PyTorch reference for `metaclf bench`: the same default CNN as bench/reference_jax.py (conv3x3
16 → leaky ReLU → maxpool 2 → dropout → conv3x3 16 → leaky ReLU → maxpool 2 → conv3x3 16 →
leaky ReLU → dropout → fc 16·H/4·W/4 → 10), random weights, random input of shape C,H,W
(--shape, default 1,28,28), on this machine's CPU with 2 threads:

- grad: per-sample gradient of -log softmax at the predicted label with torch.func
  vmap(grad(functional_call)), reduced to the same 35 statistics (L1, L2, min, max, mean,
  skewness, kurtosis per layer and for all layers), batch 256;
- train: one SGD-with-momentum training step (dropout on, batch 128).

    pip install torch
    python3 bench/reference_torch.py --shape 2,64,64   # prints one JSON object, images/s
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="1,28,28", help="C,H,W")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
C, H, W = (int(v) for v in args.shape.split(","))
torch.set_num_threads(args.threads)
torch.manual_seed(0)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(C, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * (H // 4) * (W // 4), 10)
        self.drop = torch.nn.Dropout(0.25)

    def forward(self, x):
        h = self.drop(F.max_pool2d(F.leaky_relu(self.conv1(x), 0.01), 2))
        h = F.max_pool2d(F.leaky_relu(self.conv2(h), 0.01), 2)
        h = self.drop(F.leaky_relu(self.conv3(h), 0.01))
        return self.fc(h.flatten(1))


net = Net()
net.eval()
params = {k: v.detach() for k, v in net.named_parameters()}
LAYERS = ["conv1", "conv2", "conv3", "fc"]


def stats(v):
    m = v.mean()
    d = v - m
    m2, m3, m4 = (d * d).mean(), (d ** 3).mean(), (d ** 4).mean()
    ok = m2 > 0
    safe = torch.where(ok, m2, torch.ones_like(m2))
    skew = torch.where(ok, m3 / safe ** 1.5, torch.zeros_like(m2))
    kurt = torch.where(ok, m4 / safe ** 2 - 3.0, torch.zeros_like(m2))
    return torch.stack([v.abs().sum(), v.square().sum().sqrt(), v.min(), v.max(), m, skew, kurt])


def loss_at_pred(p, x, pred):
    out = functional_call(net, p, (x[None],))[0]
    return -torch.gather(torch.log_softmax(out, 0), 0, pred[None])[0]


per_sample = vmap(grad(loss_at_pred), in_dims=(None, 0, 0))


def grad_batch(x):
    with torch.no_grad():
        pred = net(x).argmax(1)
    g = per_sample(params, x, pred)
    per = [torch.cat([g[n + ".weight"].flatten(1), g[n + ".bias"].flatten(1)], 1) for n in LAYERS]
    out = [vmap(stats)(v) for v in per] + [vmap(stats)(torch.cat(per, 1))]
    return torch.cat(out, 1)


def rate(n, f):
    f()
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < 3.0 or reps < 2:
        f()
        reps += 1
    return n * reps / (time.perf_counter() - t)


x256 = torch.rand(256, C, H, W)
x128, y128 = x256[:128], torch.arange(128) % 10
tnet = Net()
tnet.train()
opt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def train_step():
    opt.zero_grad()
    F.cross_entropy(tnet(x128), y128).backward()
    opt.step()


out = {
    "name": "torch.func",
    "grad": rate(256, lambda: grad_batch(x256)),
    "train": rate(128, train_step),
    "version": torch.__version__,
    "threads": torch.get_num_threads(),
    "shape": [C, H, W],
}
print(json.dumps(out))
