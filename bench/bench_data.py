"""Input-pipeline speed: jaxbrain's grain pipeline against MONAI's loaders on the same files.

    python bench/bench_data.py                       # 8 BraTS-size cases, ROI 128, 2 workers
    python bench/bench_data.py --n 4 --roi 96 --workers 1

Writes synthetic BraTS 2021 cases (240 x 240 x 155, 4 channels, .nii.gz) under
``bench/data`` (reused when present), builds the jaxbrain cache, then measures:

* training crops/s: load, reorient to RAS, per-channel z-score over nonzero voxels, random
  ROI crop, random flips on 3 axes, batched. jaxbrain from .nii.gz and from the cache;
  MONAI ``LoadImaged, EnsureChannelFirstd, Orientationd, NormalizeIntensityd,
  RandSpatialCropd, RandFlipd`` in a torch DataLoader with the same number of workers
  (decoding every time, as ``Dataset``; and as ``CacheDataset``, which keeps the
  deterministic part in memory);
* evaluation volumes/s: whole volumes, load + reorient + z-score, batch 1.

Each figure is taken after a warm-up batch (worker start-up excluded). The demand of a GPU
SwinUNETR training step is computed from the model's FLOPs (XLA cost analysis of the GPU
formulation, BrainSegFounder size, at the benchmark ROI) at a stated model FLOPs
utilisation. Results are printed as a Markdown table and written to
bench/results/data-<host>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time

import numpy as np

H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM


def _prepare(root: str, n: int, shape) -> None:
    from jaxbrain.data import synthetic
    done = os.path.join(root, "brats21_folds.json")
    if os.path.exists(done):
        with open(done) as f:
            if len(json.load(f)["training"]) >= n:
                return
    synthetic.write_brats(root, n, version=2021, shape=tuple(shape), seed=0)


def _rate(iterator, batches: int, per_batch: int, min_seconds: float = 5.0) -> float:
    """Items per second over at least ``batches`` batches and ``min_seconds`` after a warm-up
    batch (finite iterators: pass min_seconds=0); then the iterator's
    worker processes are shut down so they do not compete with the next measurement."""
    next(iterator)  # warm-up: worker start-up, first decode
    t0 = time.perf_counter()
    done = 0
    while done < batches or time.perf_counter() - t0 < min_seconds:
        next(iterator)
        done += 1
    rate = done * per_batch / (time.perf_counter() - t0)
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    del iterator
    gc.collect()
    return rate


def jaxbrain_rates(cases, cache_dir, args) -> dict:
    from jaxbrain.data import pipeline
    roi = (args.roi,) * 3
    augment = f"rand_crop(roi={roi}), rand_flip(prob=0.5)"
    out = {}
    t0 = time.perf_counter()
    pipeline.build_cache(cases, "zscore", cache_dir, workers=args.workers)
    out["cache_build_s"] = time.perf_counter() - t0
    cached = pipeline.open_cache(cache_dir, "zscore", cases)
    # Worker processes (like torch's DataLoader) and, as an alternative, the same number of
    # threads in one process: cache reads are memory copies that release the GIL, so threads
    # avoid the copy of every batch through shared memory.
    for name, source in (("nii", cases), ("cache", cached)):
        ds = pipeline.training_dataset(source, preprocess="zscore", augment=augment,
                                       global_batch_size=args.batch, seed=0, shard=(0, 1))
        ev = pipeline.eval_dataset(source, preprocess="zscore", shard=(0, 1))
        for mode, kw in (("procs", dict(workers=args.workers)),
                         ("threads", dict(workers=0, threads=args.workers))):
            out[f"crops_{name}_{mode}"] = _rate(iter(pipeline.loader(ds, **kw)), args.batches,
                                                args.batch)
            out[f"volumes_{name}_{mode}"] = _rate(iter(pipeline.loader(ev, **kw)),
                                                  min(len(cases) - 1, args.batches), 1, 0)
    return out


def monai_rates(cases, args) -> dict:
    import torch
    from monai import data as mdata
    from monai import transforms as mt
    files = [{"image": list(c.images)} for c in cases]
    load = [mt.LoadImaged("image", image_only=True), mt.EnsureChannelFirstd("image"),
            mt.Orientationd("image", axcodes="RAS"),
            mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    augment = [mt.RandSpatialCropd("image", roi_size=(args.roi,) * 3, random_size=False)] + [
        mt.RandFlipd("image", prob=0.5, spatial_axis=a) for a in range(3)]
    out = {}

    def loader(ds, batch, shuffle=True):
        # Sampling with replacement: no epoch boundary (and no worker restart) while timing.
        sampler = (torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**6)
                   if shuffle else None)
        return iter(torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler,
                                                num_workers=args.workers))

    torch.set_num_threads(1)
    ds = mdata.Dataset(files, mt.Compose(load + augment))
    out["crops_monai"] = _rate(loader(ds, args.batch), args.batches, args.batch)
    cds = mdata.CacheDataset(files, mt.Compose(load + augment), num_workers=args.workers or None,
                             progress=False)
    out["crops_monai_cache"] = _rate(loader(cds, args.batch), args.batches, args.batch)
    ev = mdata.Dataset(files, mt.Compose(load))
    out["volumes_monai"] = _rate(loader(ev, 1, shuffle=False), min(len(cases) - 1, args.batches),
                                 1, 0)
    return out


def gpu_demand(roi: int, mfu: float) -> dict:
    """Training crops/s one H100 would consume: BrainSegFounder SwinUNETR (feature 48, 4 in,
    3 out) fwd+bwd FLOPs per crop from XLA's cost analysis of the GPU formulation."""
    from unittest import mock
    import jax
    import jax.numpy as jnp
    from jaxbrain.models import conv3d, swin_unetr
    model = swin_unetr.SwinUNETR(in_channels=4, out_channels=3, feature_size=48,
                                 downsample="merging")
    x = jax.ShapeDtypeStruct((1, roi, roi, roi, 4), jnp.float32)
    with mock.patch.object(conv3d.jax, "default_backend", lambda: "gpu"), \
            mock.patch.object(swin_unetr, "use_window_scan", lambda: False):
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        grad = jax.jit(jax.grad(lambda p, x: jnp.mean(model.apply(p, x) ** 2)))
        flops = grad.lower(params, x).cost_analysis()["flops"]
    return {"step_tflop_per_crop": flops / 1e12, "mfu": mfu,
            "crops_demand": H100_BF16_FLOPS * mfu / flops}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="cases")
    p.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155))
    p.add_argument("--roi", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mfu", type=float, default=0.4, help="assumed GPU model FLOPs utilisation")
    p.add_argument("--data", default="bench/data/brats21")
    args = p.parse_args()

    from jaxbrain.data import layouts
    _prepare(args.data, args.n, args.shape)
    cases = layouts.brats(args.data)[: args.n]
    res = jaxbrain_rates(cases, args.data + "_cache", args)
    res.update(monai_rates(cases, args))
    res.update(gpu_demand(args.roi, args.mfu))
    res.update(vars(args), host=platform.node(), cpus=os.cpu_count())

    w = args.workers
    rows = []
    for what, unit, ref_key, ref_name in (("crops", "training crops/s", "crops_monai", "Dataset"),
                                          ("crops", "training crops/s", "crops_monai_cache",
                                           "CacheDataset"),
                                          ("volumes", "eval volumes/s", "volumes_monai", "Dataset")):
        for source in ("nii", "cache"):
            if ref_name == "CacheDataset" and source == "nii":
                continue
            for mode in ("procs", "threads"):
                ours = res[f"{what}_{source}_{mode}"]
                rows.append((f"{unit}, from {'.nii.gz' if source == 'nii' else 'cache'}, "
                             f"{w} {'processes' if mode == 'procs' else 'threads'}",
                             ours, res[ref_key], f"MONAI {ref_name}, {w} workers"))
    print(f"\n{args.n} cases {tuple(args.shape)} x 4 channels, ROI {args.roi}^3, batch "
          f"{args.batch}, {os.cpu_count()} CPUs\n")
    print("| measure | jaxbrain | MONAI | reference | ratio |\n|---|---|---|---|---|")
    for name, ours, ref, which in rows:
        print(f"| {name} | {ours:.2f} | {ref:.2f} | {which} | {ours / ref:.2f}x |")
    best = max(res["crops_cache_procs"], res["crops_cache_threads"])
    print(f"\ncache build: {res['cache_build_s']:.1f} s for {args.n} cases")
    print(f"GPU demand: the SwinUNETR fs48 training step is {res['step_tflop_per_crop']:.2f} TFLOP "
          f"per {args.roi}^3 crop, so one H100 at {args.mfu:.0%} MFU consumes "
          f"{res['crops_demand']:.1f} crops/s; the cache pipeline delivers {best:.1f} crops/s "
          f"on {os.cpu_count()} CPUs here, {best / os.cpu_count():.1f} per core: "
          f"{res['crops_demand'] * os.cpu_count() / best:.1f} cores feed one H100")
    os.makedirs("bench/results", exist_ok=True)
    with open(f"bench/results/data-{platform.node()}.json", "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
