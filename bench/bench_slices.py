"""Speed of the 2D slice source (jaxbrain.data.slices) against what a ViT-B/16 DINO step eats.

    python bench/bench_slices.py                     # 8 subjects (16 volumes) at 2 mm MNI
    python bench/bench_slices.py --n 16 --shape 182,218,182 --slices-per-volume 32

Writes synthetic UK Biobank-like subjects (T1 + FLAIR .nii.gz, the project's synthetic
generator) under ``bench/data/slices-<shape>`` (reused when present), then measures in one
thread (one core): slices/s of the source (decode, reorient, robust scaling, brain-fraction
filter, bilinear resize to 224, 3 channels, batching) over at least one pass of every volume,
and how many of the slices come from the volume cache. The demand side is computed, not
measured: the FLOPs of one BrainDINO ViT-B/16 forward at 224 and at 96 px (XLA's cost
analysis of the jitted encoder on this machine), a DINOv2-recipe step per slice = student
forward + backward (3x a forward) on 2 global 224 crops and 8 local 96 crops plus the
teacher's forward on the 2 global crops, at a stated model FLOPs utilisation of an H100's
bf16 peak. Prints both and the cores one GPU needs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from tqdm import tqdm

H100_BF16_FLOPS = 989e12


def _prepare(root: str, n: int, shape) -> None:
    from jaxbrain.data import synthetic
    done = os.path.join(root, ".complete")
    if os.path.exists(done) and int(open(done).read() or 0) >= n:
        return
    synthetic.write_unlabeled(root, n, shape=tuple(shape), seed=0)
    with open(done, "w") as f:
        f.write(str(n))


def source_rate(root: str, *, size: int, per_volume: int, group: int, batch: int,
                seconds: float) -> dict:
    from jaxbrain.data import slices
    cols = slices.collections_of([{"root": root, "channels": ("t1", "flair")}])
    plan = slices.SlicePlan(cols, seed=0, slice_size=size, brain_fraction=0.1,
                            slices_per_volume=per_volume, volumes_in_memory=group)
    ds = slices.batches(plan, global_batch_size=batch, shard=(0, 1))
    ds[0]  # warm-up
    volumes = len(cols[0].volumes)
    need = max(2, -(-volumes * per_volume // batch))  # one pass over every volume
    t0, done = time.perf_counter(), 0
    with tqdm(desc="slice batches", unit="batch") as bar:
        while done < need or time.perf_counter() - t0 < seconds:
            ds[1 + done]
            done += 1
            bar.update()
    elapsed = time.perf_counter() - t0
    touched = {plan.locate(i)[0] for i in range((1 + done) * batch)}
    return {"slices_per_s": done * batch / elapsed, "volumes_read": plan.reads,
            "volume_draws": len(touched), "volumes": volumes}


def vit_flops() -> dict:
    import jax
    import jax.numpy as jnp
    from jaxbrain import models
    from jaxbrain.models.dino import dino_preset
    out = {}
    for px in (224, 96):
        model = models.from_config({"name": "dino_vit", **dino_preset("braindino_vitb16")})
        x = jax.ShapeDtypeStruct((1, px, px, 3), jnp.float32)
        variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape)), jax.random.key(0))
        compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out[px] = float(cost["flops"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8, help="subjects (2 volumes each)")
    p.add_argument("--shape", default="91,109,91")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--slices-per-volume", type=int, default=16)
    p.add_argument("--volumes-in-memory", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--mfu", type=float, default=0.4)
    args = p.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                        "slices-" + "x".join(map(str, shape)))
    _prepare(root, args.n, shape)
    got = source_rate(root, size=args.size, per_volume=args.slices_per_volume,
                      group=args.volumes_in_memory, batch=args.batch, seconds=args.seconds)
    flops = vit_flops()
    per_slice = 3 * (2 * flops[224] + 8 * flops[96]) + 2 * flops[224]
    demand = args.mfu * H100_BF16_FLOPS / per_slice
    print(f"\nslice source on {platform.node()} ({platform.processor() or platform.machine()}), "
          f"one thread: volumes {shape}, {args.slices_per_volume} slices per volume read, "
          f"{args.size} px")
    print(f"| slices/s per core | volumes read / volume draws touched | ViT-B fwd GFLOPs 224 / 96 | "
          f"GPU demand (slices/s, H100 bf16 at {args.mfu:.0%} MFU) | cores per GPU |")
    print("|---|---|---|---|---|")
    print(f"| {got['slices_per_s']:.0f} | {got['volumes_read']} / {got['volume_draws']} | "
          f"{flops[224] / 1e9:.1f} / {flops[96] / 1e9:.1f} | {demand:.0f} | "
          f"{demand / got['slices_per_s']:.1f} |")


if __name__ == "__main__":
    main()
