"""3x3x3 convolution speed on this machine: jaxbrain's CPU convolution vs XLA's native conv3d
vs PyTorch's conv3d (oneDNN), forward and forward+backward, at the shapes SwinUNETR uses.

    python bench/bench_conv3d.py

Ratios are PyTorch time / jaxbrain time (above 1: jaxbrain faster).
"""

from __future__ import annotations

import time

import numpy as np
import jax
import jax.numpy as jnp
import torch

from jaxbrain.models.conv3d import conv3x3x3_cpu, conv3x3x3_xla

SHAPES = [  # (spatial, cin, cout): SwinUNETR fs48 at 96^3 and fs24 at 64^3
    (96, 4, 48), (96, 48, 48), (96, 96, 48), (48, 48, 48), (24, 96, 96), (64, 48, 24), (32, 96, 96),
]


def best(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    torch.set_num_threads(2)
    print("| shape (C_in -> C_out) | XLA conv3d fwd | jaxbrain fwd | torch fwd | fwd ratio | XLA fwd+bwd | jaxbrain fwd+bwd | torch fwd+bwd | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for s, cin, cout in SHAPES:
        x = rng.normal(size=(1, s, s, s, cin)).astype(np.float32)
        k = (0.05 * rng.normal(size=(3, 3, 3, cin, cout))).astype(np.float32)
        xj, kj = jnp.asarray(x), jnp.asarray(k)
        res = {}
        for name, conv in (("xla", conv3x3x3_xla), ("ours", conv3x3x3_cpu)):
            f = jax.jit(conv)
            g = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.square(conv(x, k))), argnums=(0, 1)))
            res[name] = (best(lambda: f(xj, kj).block_until_ready()),
                         best(lambda: jax.block_until_ready(g(xj, kj))))
        xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()).to(memory_format=torch.channels_last_3d)
        kt = torch.from_numpy(k.transpose(4, 3, 0, 1, 2).copy())
        with torch.no_grad():
            tf = best(lambda: torch.nn.functional.conv3d(xt, kt, padding=1))
        xg, kg = xt.clone().requires_grad_(), kt.clone().requires_grad_()
        tb = best(lambda: (torch.nn.functional.conv3d(xg, kg, padding=1) ** 2).sum().backward())
        print(f"| {s}^3 ({cin} -> {cout}) | {res['xla'][0]:.3f} | {res['ours'][0]:.3f} | {tf:.3f} | "
              f"{tf / res['ours'][0]:.2f}x | {res['xla'][1]:.3f} | {res['ours'][1]:.3f} | {tb:.3f} | "
              f"{tb / res['ours'][1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
