"""Masked-autoencoder pretraining step of the 3D ViT, jaxbrain against MONAI's
``MaskedAutoEncoderViT`` in the same run, and the synthetic corpus's generation rate.

    python bench/bench_mae.py                    # ViT-B/16 encoder on 96^3, batch 2 (the mae preset)
    python bench/bench_mae.py --small            # width 192, depth 4, 64^3: a quick check
    python bench/bench_mae.py --corpus 8         # also write 8 synthetic cohort scans at 2 mm
    python bench/bench_mae.py --precision bf16   # on a GPU: bf16 compute vs torch autocast bf16

The step (both sides): 75% of the 6^3 patches masked per scan (jaxbrain: exactly
round(0.75 N), the objective's random masking; MONAI: ``torch.multinomial`` without
replacement, int(0.25 N) kept), the encoder on the visible patches and the CLS token, a
4-block, 256-wide decoder (8 heads, MLP 1024) over all patch positions, the per-patch
normalised pixel MSE on the masked patches, backward and AdamW (lr 1.5e-4, betas 0.9 /
0.95, weight decay 0.05). jaxbrain's step is :mod:`jaxbrain.objectives.mae` over
:class:`jaxbrain.models.MAE` (configs/brain_pretrain.py:mae); MONAI's model is its own
(sin-cos encoder positions, no qkv bias; a learned decoder table, as its
sin-cos one needs a width divisible by 6: the same cost), its loss written here on its outputs as MAE defines it.
Each side: median of ``--repeats`` steps after one warm-up step, XLA's compilation timed
apart; samples/s and the ratio jaxbrain / MONAI (above 1: jaxbrain faster).

``--corpus N`` times :func:`jaxbrain.data.cohort.write_cohort` writing N subjects of the
synthetic-MRI pretraining corpus (91 x 109 x 91 at 2 mm, int16 NIfTI, the MNI152 anatomy
when nilearn is installed) in one process: scans/s per core. Rows go to
bench/results/mae-<device>-<precision>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import gpu  # Clock, host_init, the timed jitted step, the torch device set-up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    "vit_b": dict(hidden=768, depth=12, heads=12, mlp=3072, spatial=(96, 96, 96), patch=16,
                  batch=2, decoder_width=256, decoder_depth=4, decoder_heads=8),
    "small": dict(hidden=192, depth=4, heads=3, mlp=768, spatial=(64, 64, 64), patch=16,
                  batch=2, decoder_width=128, decoder_depth=2, decoder_heads=4),
}
MASK_RATIO = 0.75


def _images(cfg):
    import numpy as np
    rng = np.random.default_rng(0)
    return rng.normal(size=(cfg["batch"], *cfg["spatial"], 1)).astype(np.float32)


def bench_jax(cfg, repeats, precision, remat):
    import jax
    import jax.numpy as jnp
    import optax
    from jaxbrain.models import MAE
    from jaxbrain.objectives.mae import MAE as MAEObjective

    model = MAE(1, cfg["spatial"], cfg["patch"], hidden_size=cfg["hidden"], depth=cfg["depth"],
                num_heads=cfg["heads"], mlp_dim=cfg["mlp"], decoder_width=cfg["decoder_width"],
                decoder_depth=cfg["decoder_depth"], decoder_heads=cfg["decoder_heads"],
                dtype=gpu._jax_dtype(precision), remat=remat)
    objective = MAEObjective(patch_size=cfg["patch"], mask_ratio=MASK_RATIO)
    x = jnp.asarray(_images(cfg))
    params = gpu.host_init(model, x[:1])["params"]
    tx = optax.adamw(1.5e-4, b1=0.9, b2=0.95, weight_decay=0.05)

    def step(state, batch):
        key, sub = jax.random.split(state["key"])

        def loss_fn(p):
            def apply(v, **inputs):
                return model.apply({"params": p}, v, train=True, **inputs)
            loss, _ = objective.compute(apply, batch, sub)
            return loss
        loss, g = jax.value_and_grad(loss_fn)(state["p"])
        u, o = tx.update(g, state["o"], state["p"])
        return {"p": optax.apply_updates(state["p"], u), "o": o, "key": key}, loss

    state = {"p": params, "o": tx.init(params), "key": jax.random.key(0)}
    out = gpu._jax_time_step(step, state, {"image": x}, gpu.Clock(repeats, 1, float("inf")))
    out = gpu._jax_info(out)
    return dict(out, samples_per_s=cfg["batch"] / out["step_s"], device=out["device_kind"])


def _torch_patches(x, patch: int):
    """(B, C, D, H, W) -> (B, N, patch^3 * C), patches in row-major grid order."""
    b, c, d, h, w = x.shape
    g = (d // patch, h // patch, w // patch)
    x = x[:, :, :g[0] * patch, :g[1] * patch, :g[2] * patch]
    x = x.reshape(b, c, g[0], patch, g[1], patch, g[2], patch)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, g[0] * g[1] * g[2], -1)


def bench_torch(cfg, repeats, precision, threads):
    import numpy as np
    from monai.networks.nets import MaskedAutoEncoderViT
    torch, device, cuda = gpu._torch_setup()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = MaskedAutoEncoderViT(
        1, cfg["spatial"], cfg["patch"], hidden_size=cfg["hidden"], mlp_dim=cfg["mlp"],
        num_layers=cfg["depth"], num_heads=cfg["heads"], masking_ratio=MASK_RATIO,
        decoder_hidden_size=cfg["decoder_width"], decoder_mlp_dim=4 * cfg["decoder_width"],
        decoder_num_layers=cfg["decoder_depth"], decoder_num_heads=cfg["decoder_heads"],
        decoder_pos_embed_type="learnable",  # MONAI's 3D sin-cos table needs a width divisible by 6
    ).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(_images(cfg), -1, 1))).to(device)
    amp = precision == "bf16" and cuda

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            pred, mask = net(x)
        target = _torch_patches(x, cfg["patch"])
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((pred.float() - target) ** 2).mean(-1)
        loss = (per_patch * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        gpu._sync(cuda)

    out = gpu._torch_info(dict(gpu.Clock(repeats, 1, float("inf")).median(step)), cuda)
    return dict(out, samples_per_s=cfg["batch"] / out["step_s"])


def bench_corpus(n: int) -> dict:
    """Writes ``n`` synthetic cohort scans (2 mm MNI grid) in this process: scans/s."""
    from jaxbrain.data import cohort
    with tempfile.TemporaryDirectory() as tmp:
        cohort.write_cohort(tmp, 1, workers=0, progress=False, followup=0.0, seed=99)  # template maps
        t0 = time.perf_counter()
        cohort.write_cohort(os.path.join(tmp, "corpus"), n, workers=0, followup=0.0)
        seconds = time.perf_counter() - t0
    return {"scans": n, "seconds": seconds, "scans_per_s_per_core": n / seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the small configuration instead of ViT-B/16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--remat", action="store_true", help="rematerialise blocks in jaxbrain")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--corpus", type=int, default=0, help="also time writing N synthetic scans")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    name = "small" if args.small else "vit_b"
    cfg = CONFIGS[name]
    ours = bench_jax(cfg, args.repeats, args.precision, args.remat)
    theirs = None if args.skip_torch else bench_torch(cfg, args.repeats, args.precision, args.torch_threads)
    corpus = bench_corpus(args.corpus) if args.corpus else None
    row = dict(config=name, spec=cfg, jaxbrain=ours, monai=theirs, corpus=corpus)
    print(json.dumps(row), flush=True)

    m = theirs or {}
    spec = (f"{name} (width {cfg['hidden']}, depth {cfg['depth']}, {'x'.join(map(str, cfg['spatial']))}, "
            f"patch {cfg['patch']}, b{cfg['batch']}, decoder {cfg['decoder_width']}x{cfg['decoder_depth']})")
    ratio = f"{ours['samples_per_s'] / m['samples_per_s']:.2f}x" if m else "-"
    print(f"\nMAE pretraining step, {args.precision}, device: {ours['device']}, host: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; medians of "
          f"{args.repeats} steps\n")
    print("| config | jaxbrain samples/s | MONAI samples/s | ratio | jaxbrain compile |")
    print("|---|---|---|---|---|")
    print(f"| {spec} | {ours['samples_per_s']:.3f} | {m.get('samples_per_s', float('nan')):.3f} "
          f"| {ratio} | {ours['compile_s']:.1f} s |")
    if corpus:
        print(f"\nSynthetic corpus: {corpus['scans']} scans (91x109x91, 2 mm) in "
              f"{corpus['seconds']:.1f} s = {corpus['scans_per_s_per_core']:.2f} scans/s per core")
    os.makedirs(args.out, exist_ok=True)
    tag = ours["device"].replace(" ", "_").lower()
    with open(os.path.join(args.out, f"mae-{tag}-{args.precision}.json"), "w") as f:
        json.dump([row], f, indent=1)


if __name__ == "__main__":
    main()
