"""SwinUNETR demo: build BrainSegFounder's network in Flax, segment a synthetic 4-channel head
volume, export the weights to PyTorch, check MONAI's SwinUNETR reproduces the output, and
import them back bit for bit.

    python -m jaxbrain.demo                         # feature size 24, 64^3 (a minute on a laptop)
    python -m jaxbrain.demo --feature-size 48 --size 96 --depths 2,2,6,2   # BF-S 64M at 96^3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def synthetic_head(size: int, channels: int, seed: int = 0) -> np.ndarray:
    """(1, D, H, W, C): an ellipsoidal head with a brighter 'brain', a dark ventricle system
    and a bright lesion, with a per-channel contrast and noise."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"), -1)
    r = np.linalg.norm(g / np.array([0.85, 0.95, 0.8]), axis=-1)
    head = (r < 0.95).astype(np.float32)
    brain = (r < 0.8).astype(np.float32)
    ventricles = (np.linalg.norm((g - [0, 0.05, 0]) / [0.12, 0.3, 0.1], axis=-1) < 1).astype(np.float32)
    lesion = (np.linalg.norm(g - [0.35, -0.2, 0.25], axis=-1) < 0.15).astype(np.float32)
    contrasts = [(0.3, 0.8, 0.2, 1.5), (0.4, 0.7, 0.9, 1.2), (0.5, 0.6, 0.3, 0.9), (0.3, 0.5, 1.0, 1.4)]
    chans = []
    for c in range(channels):
        skin, tissue, csf, les = contrasts[c % 4]
        v = skin * head + (tissue - skin) * brain + (csf - tissue) * ventricles * brain + (les - tissue) * lesion
        chans.append(v + 0.03 * rng.normal(size=v.shape))
    return np.stack(chans, -1)[None].astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feature-size", type=int, default=24)
    parser.add_argument("--depths", default="2,2,2,2")
    parser.add_argument("--size", type=int, default=64, help="cubic input size, a multiple of 32")
    parser.add_argument("--downsample", default="merging_legacy",
                        help="merging_legacy (BrainSegFounder, MONAI < 1.5), merging, mergingv2")
    parser.add_argument("--out", default=None, help="where to write the exported .pt (default: a temp dir)")
    args = parser.parse_args(argv)

    import jax
    import flax.linen as nn
    from jaxbrain.convert import load_torch, save_torch
    from jaxbrain.models import SwinUNETR, count_params

    depths = tuple(int(d) for d in args.depths.split(","))
    model = SwinUNETR(in_channels=4, out_channels=3, feature_size=args.feature_size, depths=depths,
                      downsample=args.downsample)
    x = synthetic_head(args.size, 4)
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), x)["params"]))()
    print(f"SwinUNETR(4 -> 3, feature {args.feature_size}, depths {depths}, {args.downsample}): "
          f"{count_params(params) / 1e6:.2f}M parameters on {jax.devices()[0].device_kind}")

    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    t0 = time.perf_counter()
    logits = np.asarray(apply(params, x))
    t1 = time.perf_counter()
    logits = np.asarray(apply(params, x))
    t2 = time.perf_counter()
    print(f"forward on a synthetic {args.size}^3 head volume (channels-last {x.shape}) -> {logits.shape}: "
          f"compile+run {t1 - t0:.1f} s, run {t2 - t1:.2f} s")
    probs = 1 / (1 + np.exp(-logits))
    print("mean sigmoid per output channel [TC, WT, ET]:", np.round(probs.mean(axis=(0, 1, 2, 3)), 4))

    out = args.out or os.path.join(tempfile.mkdtemp(prefix="jaxbrain-demo-"), "swin_unetr.pt")
    state = save_torch(params, model, out)
    print(f"exported {len(state)} tensors to {out}")
    back, report = load_torch(out, model)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)))
    print(f"re-imported: {report}\n  bitwise identical to the exported parameters: {same}")

    try:
        import torch
        from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
    except ImportError:
        print("MONAI / torch not installed (pip install -e '.[test]'): skipping the MONAI check")
        return 0 if same else 1
    if args.downsample == "merging_legacy":
        from monai.networks.nets.swin_unetr import PatchMerging
        from jaxbrain.models import MERGE_ORDERS

        class LegacyPatchMerging(PatchMerging):  # MONAI < 1.5 slice order
            def forward(self, x):
                slices = [x[:, i::2, j::2, k::2] for i, j, k in MERGE_ORDERS["merging_legacy"]]
                return self.reduction(self.norm(torch.cat(slices, -1)))
        downsample = LegacyPatchMerging
    else:
        downsample = args.downsample
    net = MonaiSwinUNETR(in_channels=4, out_channels=3, feature_size=args.feature_size, depths=depths,
                         downsample=downsample).eval()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())).numpy().transpose(0, 2, 3, 4, 1)
    err = float(np.linalg.norm(logits - ref) / np.linalg.norm(ref))
    print(f"MONAI SwinUNETR loaded the export with strict=True; relative L2 difference of the outputs: {err:.2e}")
    ok = same and err < 1e-4
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
