"""SwinUNETR speed: jaxbrain (JAX/XLA) against MONAI (PyTorch), same configuration, same run.

    python bench/bench_swin_unetr.py                        # small + BrainSegFounder sizes
    python bench/bench_swin_unetr.py --configs small --repeats 5
    python bench/bench_swin_unetr.py --precision bf16       # on a GPU: bf16 vs torch AMP

For each configuration it times the forward pass (inference) and a training step (forward,
backward, AdamW update; sigmoid BCE against a fixed random target), each as the median of
``--repeats`` runs after one warm-up run (which includes XLA compilation, reported apart).
The ratio column is MONAI time / jaxbrain time: above 1 means jaxbrain is faster. On a GPU the
peak device memory of each is reported too. Results are printed as a Markdown table and
written to bench/results/swin_unetr-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

CONFIGS = {
    # name: (feature_size, depths, spatial, batch, in_channels, out_channels)
    "small": (24, (2, 2, 2, 2), (64, 64, 64), 1, 4, 3),
    "brats": (48, (2, 2, 2, 2), (96, 96, 96), 1, 4, 3),
    "brats128": (48, (2, 2, 2, 2), (128, 128, 128), 2, 4, 3),
}


def _median_time(fn, repeats):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def bench_jax(cfg, repeats, precision, remat):
    import jax
    import jax.numpy as jnp
    import optax
    import flax.linen as nn
    from jaxbrain.models import SwinUNETR

    fs, depths, spatial, batch, cin, cout = cfg
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    model = SwinUNETR(cin, cout, feature_size=fs, depths=depths, dtype=dtype, remat=remat)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, *spatial, cin)).astype(np.float32))
    y = jnp.asarray((rng.random((batch, *spatial, cout)) > 0.5).astype(np.float32))
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), x[:1])["params"]))()
    tx = optax.adamw(1e-4, weight_decay=1e-5)
    opt = tx.init(params)

    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))

    def loss_fn(p):
        logits = model.apply({"params": p}, x, train=True)
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    state = {"p": params, "o": opt}

    def run_step():
        state["p"], state["o"], loss = step(state["p"], state["o"])
        loss.block_until_ready()

    f, f_first = _median_time(lambda: fwd(state["p"], x).block_until_ready(), repeats)
    s, s_first = _median_time(run_step, repeats)
    dev = jax.devices()[0]
    peak = (dev.memory_stats() or {}).get("peak_bytes_in_use") if dev.platform == "gpu" else None
    return dict(forward_s=f, step_s=s, forward_first_s=f_first, step_first_s=s_first, peak_bytes=peak,
                device=str(dev.device_kind))


def bench_torch(cfg, repeats, precision, threads):
    import torch
    from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

    if threads:
        torch.set_num_threads(threads)
    fs, depths, spatial, batch, cin, cout = cfg
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    net = MonaiSwinUNETR(in_channels=cin, out_channels=cout, feature_size=fs, depths=depths).to(device)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(batch, cin, *spatial)).astype(np.float32)).to(device)
    y = torch.from_numpy((rng.random((batch, cout, *spatial)) > 0.5).astype(np.float32)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
    amp = precision == "bf16" and cuda
    bce = torch.nn.BCEWithLogitsLoss()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward():
        net.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            net(x)
        sync()

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = bce(net(x).float(), y)
        loss.backward()
        opt.step()
        sync()

    f, _ = _median_time(forward, repeats)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    s, _ = _median_time(step, repeats)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return dict(forward_s=f, step_s=s, peak_bytes=peak)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="small,brats", help=f"comma list of {sorted(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: jaxbrain bf16 compute vs torch autocast bf16 (GPU only for torch)")
    parser.add_argument("--remat", action="store_true", help="rematerialise blocks in jaxbrain")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    rows = []
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        ours = bench_jax(cfg, args.repeats, args.precision, args.remat)
        theirs = None if args.skip_torch else bench_torch(cfg, args.repeats, args.precision, args.torch_threads)
        rows.append(dict(config=name, spec=dict(zip(
            ["feature_size", "depths", "spatial", "batch", "in_channels", "out_channels"], cfg)),
            jaxbrain=ours, monai=theirs))
        print(json.dumps(rows[-1]), flush=True)

    dev = rows[0]["jaxbrain"]["device"]
    print(f"\nSwinUNETR, {args.precision}, device: {dev}, host: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; times are medians of {args.repeats} runs (seconds)\n")
    print("| config | jaxbrain fwd | MONAI fwd | fwd ratio | jaxbrain step | MONAI step | step ratio | jaxbrain compile (step) | peak mem jaxbrain / MONAI |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        j, m = r["jaxbrain"], r["monai"] or {}
        spec = r["spec"]
        label = f"{r['config']} (fs{spec['feature_size']}, {'x'.join(map(str, spec['spatial']))}, b{spec['batch']})"
        ratio = lambda k: f"{m[k] / j[k]:.2f}x" if m.get(k) else "-"
        mem = "-"
        if j.get("peak_bytes") and m.get("peak_bytes"):
            mem = f"{j['peak_bytes'] / 2**30:.1f} / {m['peak_bytes'] / 2**30:.1f} GiB"
        print(f"| {label} | {j['forward_s']:.3f} | {m.get('forward_s', float('nan')):.3f} | {ratio('forward_s')} "
              f"| {j['step_s']:.3f} | {m.get('step_s', float('nan')):.3f} | {ratio('step_s')} "
              f"| {j['step_first_s'] - j['step_s']:.1f} s | {mem} |")
    os.makedirs(args.out, exist_ok=True)
    tag = dev.replace(" ", "_").lower()
    with open(os.path.join(args.out, f"swin_unetr-{tag}-{args.precision}.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
