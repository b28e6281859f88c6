"""JAX reference for `metaclf bench`: the same network as metaclf's (`--arch FILE`, the JSON
`metaclf bench` writes; default the paper's CNN), random weights, random input of shape C,H,W,
this machine's CPU:

- grad: per-sample gradient of -log softmax at the predicted label for every parameter with
  jit(vmap(grad(f, has_aux=True))), f computing the logits once and the loss at their own
  argmax (no separate forward for the prediction); the 7 statistics per layer and for all
  layers computed on the stacked [B, P] per-sample gradients inside the same jit; batch norm
  in evaluation mode (running statistics);
- train: one SGD-with-momentum training step (dropout on, batch norm on batch statistics;
  running statistics not tracked), batch min(B, 128), with jit(grad).

    pip install "jax[cpu]"
    python3 bench/reference_jax.py --shape 2,64,64 --arch arch.json   # one JSON object
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_arch import paper_arch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="1,28,28", help="C,H,W")
ap.add_argument("--arch", help="metaclf layer list (JSON); default the paper's CNN")
ap.add_argument("--batch", type=int, default=256)
args = ap.parse_args()
C, H, W = (int(v) for v in args.shape.split(","))
arch = json.load(open(args.arch)) if args.arch else paper_arch((C, H, W))
K = arch["classes"]
B = args.batch
keys = iter(jax.random.split(jax.random.PRNGKey(0), 10_000))


def he(shape, fan_in):
    b = (6.0 / fan_in) ** 0.5
    return jax.random.uniform(next(keys), shape, minval=-b, maxval=b)


def expand(layers, c):
    """metaclf's residual blocks as their parts (names as metaclf's)."""
    out = []
    for l in layers:
        if l["kind"] != "residual":
            out.append(l)
            if l["kind"] in ("conv", "linear"):
                c = l["out"] or K
            continue
        n, o, s = l["name"], l["out"], l["stride"]
        conv = lambda name, k, st: {"kind": "conv", "name": f"{n}.{name}", "out": o, "kernel": k, "stride": st, "padding": k // 2, "bias": False}
        bn = lambda name: {"kind": "batchnorm", "name": f"{n}.{name}", "eps": 1e-5}
        body = [conv("conv1", 3, s), bn("bn1"), {"kind": "relu", "slope": 0.0}, conv("conv2", 3, 1), bn("bn2")]
        short = [conv("shortcut.0", 1, s), bn("shortcut.1")] if s != 1 or c != o else []
        out.append({"kind": "block", "body": body, "short": short})
        out.append({"kind": "relu", "slope": 0.0})
        c = o
    return out


layers = expand(arch["layers"], C)
params, state = {}, {}


def init(layers, shape):
    c, h, w = shape
    for l in layers:
        k = l["kind"]
        if k == "conv":
            kk, st, p = l["kernel"], l["stride"], l["padding"]
            params[l["name"] + ".weight"] = he((l["out"], c, kk, kk), c * kk * kk)
            if l["bias"]:
                params[l["name"] + ".bias"] = jnp.zeros(l["out"])
            c, h, w = l["out"], (h + 2 * p - kk) // st + 1, (w + 2 * p - kk) // st + 1
        elif k == "batchnorm":
            params[l["name"] + ".weight"] = jnp.ones(c)
            params[l["name"] + ".bias"] = jnp.zeros(c)
            state[l["name"]] = (jnp.zeros(c), jnp.ones(c))
        elif k in ("maxpool", "avgpool"):
            h, w = (h - l["kernel"]) // l["stride"] + 1, (w - l["kernel"]) // l["stride"] + 1
        elif k == "global_avgpool":
            h = w = 1
        elif k == "flatten":
            c, h, w = c * h * w, 1, 1
        elif k == "linear":
            out = l["out"] or K
            params[l["name"] + ".weight"] = he((out, c * h * w), c * h * w)
            if l["bias"]:
                params[l["name"] + ".bias"] = jnp.zeros(out)
            c, h, w = out, 1, 1
        elif k == "crop":
            h, w = l["size"]
        elif k == "block":
            c2, h2, w2 = init(l["body"], (c, h, w))
            init(l["short"], (c, h, w))
            c, h, w = c2, h2, w2
    return c, h, w


init(layers, (C, H, W))


def run(p, layers, x, train, key):
    """x: [N, C, H, W] (or [N, F] after flatten)."""
    for l in layers:
        k = l["kind"]
        if k == "conv":
            pd = l["padding"]
            x = lax.conv_general_dilated(x, p[l["name"] + ".weight"], (l["stride"],) * 2, [(pd, pd)] * 2,
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            if l["bias"]:
                x = x + p[l["name"] + ".bias"][None, :, None, None]
        elif k == "batchnorm":
            axes = (0, 2, 3) if x.ndim == 4 else (0,)
            if train:
                mean, var = x.mean(axes), x.var(axes)
            else:
                mean, var = state[l["name"]]
            shp = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
            x = (x - mean.reshape(shp)) / jnp.sqrt(var.reshape(shp) + l["eps"])
            x = x * p[l["name"] + ".weight"].reshape(shp) + p[l["name"] + ".bias"].reshape(shp)
        elif k in ("relu", "leaky_relu"):
            s = l.get("slope", 0.0)
            x = jnp.where(x > 0, x, s * x)
        elif k == "maxpool":
            kk, st = l["kernel"], l["stride"]
            x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, kk, kk), (1, 1, st, st), "VALID")
        elif k == "avgpool":
            kk, st = l["kernel"], l["stride"]
            x = lax.reduce_window(x, 0.0, lax.add, (1, 1, kk, kk), (1, 1, st, st), "VALID") / (kk * kk)
        elif k == "global_avgpool":
            x = x.mean((2, 3))
        elif k == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif k == "dropout":
            if train:
                key, sub = jax.random.split(key)
                keep = jax.random.bernoulli(sub, 1 - l["rate"], x.shape)
                x = jnp.where(keep, x / (1 - l["rate"]), 0.0)
        elif k == "linear":
            x = x @ p[l["name"] + ".weight"].T
            if l["bias"]:
                x = x + p[l["name"] + ".bias"]
        elif k == "crop":
            ch, cw = l["size"]
            oy, ox = (x.shape[2] - ch) // 2, (x.shape[3] - cw) // 2
            x = x[:, :, oy : oy + ch, ox : ox + cw]
        elif k == "block":
            x = run(p, l["body"], x, train, key) + (run(p, l["short"], x, train, key) if l["short"] else x)
    return x


names = []
for k in params:
    n = k.rsplit(".", 1)[0]
    if n not in names:
        names.append(n)


def loss_at_own_pred(p, x):
    z = run(p, layers, x[None], False, None)[0]
    pred = jnp.argmax(lax.stop_gradient(z))
    return -jax.nn.log_softmax(z)[pred], z


def stats_rows(v):
    m = v.mean(1, keepdims=True)
    d = v - m
    d2 = d * d
    m2, m3, m4 = d2.mean(1), (d2 * d).mean(1), (d2 * d2).mean(1)
    ok = m2 > 0
    safe = jnp.where(ok, m2, 1.0)
    skew = jnp.where(ok, m3 / safe**1.5, 0.0)
    kurt = jnp.where(ok, m4 / safe**2 - 3.0, 0.0)
    return jnp.stack([jnp.abs(v).sum(1), jnp.sqrt((v * v).sum(1)), v.min(1), v.max(1), m[:, 0], skew, kurt], 1)


@jax.jit
def grad_batch(p, x):
    g, _ = jax.vmap(jax.grad(loss_at_own_pred, has_aux=True), in_axes=(None, 0))(p, x)
    per = [jnp.concatenate([g[k].reshape(x.shape[0], -1) for k in p if k.rsplit(".", 1)[0] == n], 1) for n in names]
    return jnp.concatenate([stats_rows(v) for v in per] + [stats_rows(jnp.concatenate(per, 1))], 1)


def ce(p, x, y, key):
    z = run(p, layers, x, True, key)
    return -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1).mean()


@jax.jit
def train_step(p, v, x, y, key):
    g = jax.grad(ce)(p, x, y, key)
    v = {k: 0.9 * v[k] + g[k] + 5e-4 * p[k] for k in p}
    return {k: p[k] - 0.01 * v[k] for k in p}, v


def rate(n, f):
    f()
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < 3.0 or reps < 2:
        f()
        reps += 1
    return n * reps / (time.perf_counter() - t)


x = jax.random.uniform(next(keys), (B, C, H, W))
TB = min(B, 128)
xt, yt = x[:TB], jnp.arange(TB) % K
vel = {k: jnp.zeros_like(v) for k, v in params.items()}
tp = dict(params)


def one_train():
    global tp, vel
    tp, vel = train_step(tp, vel, xt, yt, next(keys))
    jax.block_until_ready(tp)


out = {
    "name": "jax",
    "grad": rate(B, lambda: grad_batch(params, x).block_until_ready()),
    "train": rate(TB, one_train),
    "version": jax.__version__,
    "shape": [C, H, W],
    "batch": B,
}
print(json.dumps(out))
