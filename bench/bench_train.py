"""Training throughput of the BraTS recipe: jaxbrain's training loop against a MONAI loop.

    python bench/bench_train.py                     # demo size: feature 12, 64^3, batch 2
    python bench/bench_train.py --feature 24 --steps 20
    python bench/bench_train.py --full              # on a GPU: BrainSegFounder 128^3 step

Both sides train the same SwinUNETR (depths 2,2,2,2, 4 -> 3 sigmoid channels [TC, WT, ET])
with the same recipe on the same synthetic BraTS 2021 cases (.nii.gz, written under
bench/data/train_brats and reused): per-channel z-score over nonzero voxels, random ROI crop,
flips on 3 axes, intensity scale/shift 0.1; Dice loss; AdamW. Measured in one run:

* loop steps/s, data included: jaxbrain is ``train.py`` itself (``train_and_evaluate`` with
  ``configs/brats_swinunetr.py:demo`` pointed at the files; decoding .nii.gz every time, and
  from its memory-mapped cache); MONAI is the research-contributions BraTS loop
  (``LoadImaged, ConvertToMultiChannelBasedOnBratsClassesd, CropForegroundd,
  RandSpatialCropd, RandFlipd x3, NormalizeIntensityd, RandScaleIntensityd,
  RandShiftIntensityd`` in a DataLoader, ``Dataset`` and ``CacheDataset``; DiceLoss(sigmoid);
  AdamW). Steps after compilation / warm-up only.
* step/s alone (a fixed batch already in memory), to separate model speed from input speed.

Ratio = jaxbrain rate / MONAI rate (above 1: jaxbrain faster). With ``--full`` (meant for a
GPU) it also times the full BrainSegFounder step (feature 48, depths 2,2,6,2, 128^3, batch 2
on one device) and reports samples/s, peak device memory and model FLOPs utilisation (XLA
cost analysis FLOPs / time / the device's peak). Results are printed as a Markdown table and
written to bench/results/train-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 per device


def _config(args, root: str, steps: int, cache: str | None):
    from jaxbrain.training.config import load_config_file
    c = load_config_file(os.path.join(ROOT, "configs", "brats_swinunetr.py"), "demo")
    roi = (args.roi,) * 3
    c.model.feature_size = args.feature
    c.batch_size = args.batch
    c.total_steps = steps
    c.log_every = steps - 1          # one log: the rate over steps 2..N (compile excluded)
    c.eval_every = 0
    c.ckpt_every = 10 ** 9
    c.progress = False
    c.optim.warmup_steps = 1
    c.data.update(root=root, cache=cache, roi=roi, threads=args.workers,
                  augment=(f"rand_crop(roi={roi}), brats_regions, rand_flip(prob=0.5), "
                           "rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)"))
    return c


def jax_loop(args, root: str, cache: str | None) -> float:
    from jaxbrain.training import loop
    with tempfile.TemporaryDirectory() as workdir:
        last = loop.train_and_evaluate(_config(args, root, args.steps + 1, cache), workdir)
    return last["steps_per_s"]


def jax_step(args) -> float:
    import jax
    import jax.numpy as jnp
    from jaxbrain import models, objectives
    from jaxbrain.training import loop
    from jaxbrain.training.optim import make_optimizer
    c = _config(args, "", args.steps, None)
    model = models.from_config(c.model)
    objective = objectives.create(**c.objective)
    tx, lr_fn = make_optimizer(c.optim, c.total_steps)
    x, y = _batch(args)
    batch = {"image": jnp.asarray(x.transpose(0, 2, 3, 4, 1)),
             "label": jnp.asarray(y.transpose(0, 2, 3, 4, 1))}
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1))}
    step = jax.jit(loop.make_train_step(model, objective, tx, lr_fn, jnp.float32),
                   donate_argnums=(0,))
    state, m = step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return args.steps / (time.perf_counter() - t0)


def _batch(args):
    rng = np.random.default_rng(0)
    shape = (args.batch, 4, *(args.roi,) * 3)
    x = rng.normal(size=shape).astype(np.float32)
    y = (rng.random((args.batch, 3, *(args.roi,) * 3)) > 0.7).astype(np.float32)
    return x, y


def _torch_model(args):
    import torch
    from monai.losses import DiceLoss
    from monai.networks.nets import SwinUNETR
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=4, out_channels=3, feature_size=args.feature,
                    depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = DiceLoss(to_onehot_y=False, sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5)

    def step(x, y):
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def torch_loop(args, files, cached: bool) -> float:
    import torch
    from monai import data as mdata
    from monai import transforms as mt
    roi = (args.roi,) * 3
    keys = ["image", "label"]
    deterministic = [mt.LoadImaged(keys), mt.EnsureChannelFirstd(keys),
                     mt.ConvertToMultiChannelBasedOnBratsClassesd("label"),
                     mt.CropForegroundd(keys, source_key="image", k_divisible=list(roi))]
    random = ([mt.RandSpatialCropd(keys, roi_size=roi, random_size=False)]
              + [mt.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)]
              + [mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
                 mt.RandScaleIntensityd("image", factors=0.1, prob=1.0),
                 mt.RandShiftIntensityd("image", offsets=0.1, prob=1.0)])
    transform = mt.Compose(deterministic + random)
    ds = (mdata.CacheDataset(files, transform, progress=False) if cached
          else mdata.Dataset(files, transform))
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10 ** 6)
    batches = iter(torch.utils.data.DataLoader(ds, batch_size=args.batch, sampler=sampler,
                                               num_workers=args.workers))
    step = _torch_model(args)
    b = next(batches)
    step(b["image"], b["label"])  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        b = next(batches)
        step(b["image"].as_tensor(), b["label"].as_tensor())
    rate = args.steps / (time.perf_counter() - t0)
    del batches
    return rate


def torch_step(args) -> float:
    import torch
    x, y = (torch.from_numpy(a) for a in _batch(args))
    step = _torch_model(args)
    step(x, y)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    return args.steps / (time.perf_counter() - t0)


def full_step(batch: int = 2, roi: int = 128, steps: int = 10, dtype: str = "bfloat16") -> dict:
    """The BrainSegFounder BF-S step (feature 48, depths 2,2,6,2) on one device."""
    import jax
    import jax.numpy as jnp
    from jaxbrain import models, objectives
    from jaxbrain.training import loop
    from jaxbrain.training.optim import make_optimizer
    model = models.create("swin_unetr", in_channels=4, out_channels=3, feature_size=48,
                          depths=(2, 2, 6, 2), downsample="merging_legacy",
                          dtype=models.DTYPES[dtype])
    objective = objectives.create(name="segmentation", kind="sigmoid", dice=1.0, ce=0.0)
    tx, lr_fn = make_optimizer(dict(name="adamw", lr=1e-4, weight_decay=1e-5,
                                    schedule="constant"), 100)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(batch, roi, roi, roi, 4)), jnp.float32),
             "label": jnp.asarray(rng.random((batch, roi, roi, roi, 3)) > 0.7, jnp.float32)}
    params = jax.jit(lambda k: model.init(k, batch["image"][:1])["params"])(jax.random.key(0))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1))}
    fn = jax.jit(loop.make_train_step(model, objective, tx, lr_fn, models.DTYPES[dtype]),
                 donate_argnums=(0,))
    compiled = fn.lower(state, batch).compile()
    flops = compiled.cost_analysis()["flops"]
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    peak = next((v for k, v in PEAK_FLOPS.items() if k in dev.device_kind), None)
    return {"device": dev.device_kind, "dtype": dtype, "batch": batch["image"].shape[0],
            "roi": roi, "step_s": dt, "samples_per_s": batch["image"].shape[0] / dt,
            "step_tflop": flops / 1e12, "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2 ** 30,
            "mfu": flops / dt / peak if peak else None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="synthetic cases")
    p.add_argument("--shape", type=int, nargs=3, default=(96, 96, 64))
    p.add_argument("--feature", type=int, default=12)
    p.add_argument("--roi", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    p.add_argument("--workers", type=int, default=2, help="loader threads / DataLoader workers")
    p.add_argument("--full", action="store_true", help="also the full 128^3 step (GPU)")
    p.add_argument("--data", default=os.path.join(ROOT, "bench", "data", "train_brats"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args()

    import jax
    import torch
    from jaxbrain.data import layouts, synthetic
    if not os.path.exists(os.path.join(args.data, ".complete")):
        synthetic.write_brats(args.data, args.n, version=2021, shape=tuple(args.shape), seed=0)
        open(os.path.join(args.data, ".complete"), "w").close()
    cases = layouts.find_cases("brats", args.data)
    files = [{"image": list(c.images), "label": c.label} for c in cases]

    r = {}
    # MONAI first: its DataLoader forks worker processes, which must happen before JAX starts
    # its threads.
    r["torch_loop_dataset"] = torch_loop(args, files, cached=False)
    r["torch_loop_cachedataset"] = torch_loop(args, files, cached=True)
    r["torch_step"] = torch_step(args)
    with tempfile.TemporaryDirectory() as cache:
        r["jax_loop_nii"] = jax_loop(args, args.data, None)
        r["jax_loop_cache"] = jax_loop(args, args.data, cache)
    r["jax_step"] = jax_step(args)
    if args.full:
        r["full"] = full_step()

    backend = jax.default_backend()
    size = f"feature {args.feature}, {args.roi}^3, batch {args.batch}"
    rows = [("loop, from .nii.gz", r["jax_loop_nii"], r["torch_loop_dataset"], "Dataset"),
            ("loop, jaxbrain cache", r["jax_loop_cache"], r["torch_loop_cachedataset"],
             "CacheDataset"),
            ("step alone (batch in memory)", r["jax_step"], r["torch_step"], "same step")]
    print(f"\n{backend}, {platform.machine()}, {os.cpu_count()} cores, {size}, "
          f"jax {jax.__version__}, torch {torch.__version__}\n")
    print("| steps/s | jaxbrain | MONAI | MONAI side | ratio |\n|---|---|---|---|---|")
    for name, a, b, ref in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {ref} | {a / b:.2f}x |")
    if "full" in r:
        f = r["full"]
        print(f"\nfull step ({f['device']}, {f['dtype']}, batch {f['batch']}, {f['roi']}^3): "
              f"{f['samples_per_s']:.2f} samples/s, peak memory {f['peak_memory_gib']:.1f} GiB, "
              f"{f['step_tflop']:.2f} TFLOP/step, MFU "
              + (f"{100 * f['mfu']:.1f}%" if f["mfu"] else "(peak FLOP/s of this device unknown)"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"train-{backend}.json"), "w") as fh:
        json.dump(dict(r, args=vars(args), jax=jax.__version__, torch=torch.__version__), fh,
                  indent=2)


if __name__ == "__main__":
    main()
