"""JAX reference for `metaclf bench`: the same default CNN (conv3x3 16 → leaky ReLU → maxpool 2 →
conv3x3 16 → leaky ReLU → maxpool 2 → conv3x3 16 → leaky ReLU → fc 16·H/4·W/4 → 10), random
weights, random input of shape C,H,W (--shape, default 1,28,28), on this machine's CPU:

- grad_jax: per-sample gradient of -log softmax at the predicted label with jit(vmap(grad)),
  reduced to the same 35 statistics (7 per layer and for all layers), batch 256;
- train_jax: one SGD-with-momentum training step (dropout on, batch 128) with jit(grad).

    pip install "jax[cpu]"
    python3 bench/reference_jax.py --shape 2,64,64   # prints one JSON object, images/s
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="1,28,28", help="C,H,W")
C, H, W = (int(v) for v in ap.parse_args().shape.split(","))
FC_IN = 16 * (H // 4) * (W // 4)

key = jax.random.PRNGKey(0)
ks = jax.random.split(key, 8)


def he(k, shape, fan_in):
    b = (6.0 / fan_in) ** 0.5
    return jax.random.uniform(k, shape, minval=-b, maxval=b)


params = {
    "conv1": (he(ks[0], (16, C, 3, 3), 9 * C), jnp.zeros(16)),
    "conv2": (he(ks[1], (16, 16, 3, 3), 144), jnp.zeros(16)),
    "conv3": (he(ks[2], (16, 16, 3, 3), 144), jnp.zeros(16)),
    "fc": (he(ks[3], (10, FC_IN), FC_IN), jnp.zeros(10)),
}


def conv(x, w, b):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return jax.nn.leaky_relu(y + b[None, :, None, None], 0.01)


def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def dropout(x, k, p=0.25):
    if k is None:
        return x
    keep = jax.random.bernoulli(k, 1 - p, x.shape)
    return jnp.where(keep, x / (1 - p), 0.0)


def logits(p, x, k=None):
    k1, k2 = (None, None) if k is None else jax.random.split(k)
    h = dropout(pool(conv(x, *p["conv1"])), k1)
    h = pool(conv(h, *p["conv2"]))
    h = dropout(conv(h, *p["conv3"]), k2)
    h = h.reshape(h.shape[0], -1)
    w, b = p["fc"]
    return h @ w.T + b


def stats(v):
    m = jnp.mean(v)
    d = v - m
    m2, m3, m4 = jnp.mean(d ** 2), jnp.mean(d ** 3), jnp.mean(d ** 4)
    ok = m2 > 0
    skew = jnp.where(ok, m3 / jnp.where(ok, m2, 1.0) ** 1.5, 0.0)
    kurt = jnp.where(ok, m4 / jnp.where(ok, m2, 1.0) ** 2 - 3.0, 0.0)
    return jnp.stack([jnp.sum(jnp.abs(v)), jnp.sqrt(jnp.sum(v * v)), jnp.min(v), jnp.max(v), m, skew, kurt])


def one_sample_stats(p, x):
    x = x[None]
    pred = jnp.argmax(logits(p, x)[0])
    g = jax.grad(lambda q: -jax.nn.log_softmax(logits(q, x)[0])[pred])(p)
    per = [jnp.concatenate([g[n][0].ravel(), g[n][1].ravel()]) for n in ["conv1", "conv2", "conv3", "fc"]]
    return jnp.concatenate([stats(v) for v in per] + [stats(jnp.concatenate(per))])


grad_batch = jax.jit(jax.vmap(one_sample_stats, in_axes=(None, 0)))


@jax.jit
def train_step(p, v, x, y, k, lr=0.01, mu=0.9, wd=5e-4):
    def loss(q):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(q, x, k)), y[:, None], 1))
    g = jax.grad(loss)(p)
    v = jax.tree_util.tree_map(lambda vv, gg, pp: mu * vv + gg + wd * pp, v, g, p)
    p = jax.tree_util.tree_map(lambda pp, vv: pp - lr * vv, p, v)
    return p, v


def rate(n, f):
    f()
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < 3.0 or reps < 2:
        f()
        reps += 1
    return n * reps / (time.perf_counter() - t)


x256 = jax.random.uniform(ks[4], (256, C, H, W))
x128, y128 = x256[:128], jnp.arange(128) % 10
vel = jax.tree_util.tree_map(jnp.zeros_like, params)
out = {
    "name": "jax",
    "grad": rate(256, lambda: grad_batch(params, x256).block_until_ready()),
    "train": rate(128, lambda: jax.block_until_ready(train_step(params, vel, x128, y128, ks[5]))),
    "version": jax.__version__,
    "shape": [C, H, W],
}
print(json.dumps(out))
