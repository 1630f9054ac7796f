"""SwinUNETR demo: build BrainSegFounder's network in Flax, segment a synthetic
BraTS case (4 channels, written in the BraTS layout and read back through the data pipeline),
export the weights to PyTorch, check MONAI's SwinUNETR reproduces the output, and
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


def brats_case(size: int, workdir: str, seed: int = 0) -> tuple[np.ndarray, str]:
    """(1, size, size, size, 4): a synthetic BraTS 2021 case (on the MNI152 template when
    nilearn is installed) written to disk in the BraTS layout and read back through the data
    pipeline (reorientation to RAS, per-channel z-score)."""
    from jaxbrain.data import layouts, pipeline, synthetic
    root = os.path.join(workdir, "brats21")
    synthetic.write_brats(root, 1, shape=(size, size, size), seed=seed)
    cases = layouts.brats(root)
    record = pipeline.eval_dataset(cases, preprocess="zscore", shard=(0, 1))[0]
    return record["image"][None], cases[0].id


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feature-size", type=int, default=24)
    parser.add_argument("--depths", default="2,2,2,2")
    parser.add_argument("--size", type=int, default=64, help="cubic input size, a multiple of 32")
    parser.add_argument("--downsample", default="merging",
                        help="merging (MONAI >= 1.5, the recipes' order), merging_legacy (BrainSegFounder's published weights, MONAI < 1.5; checked in MONAI >= 1.5 through the README's LegacyPatchMerging), mergingv2")
    parser.add_argument("--out", default=None, help="where to write the exported .pt (default: a temp dir)")
    args = parser.parse_args(argv)

    import jax
    import flax.linen as nn
    from jaxbrain.convert import load_torch, save_torch
    from jaxbrain.models import SwinUNETR, count_params

    depths = tuple(int(d) for d in args.depths.split(","))
    model = SwinUNETR(in_channels=4, out_channels=3, feature_size=args.feature_size, depths=depths,
                      downsample=args.downsample)
    workdir = os.path.dirname(args.out) if args.out else tempfile.mkdtemp(prefix="jaxbrain-demo-")
    x, case_id = brats_case(args.size, workdir)
    print(f"input: synthetic {case_id} read from {workdir}, shape {x.shape}")
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), x)["params"]))()
    print(f"SwinUNETR(4 -> 3, feature {args.feature_size}, depths {depths}, {args.downsample}): "
          f"{count_params(params) / 1e6:.2f}M parameters on {jax.devices()[0].device_kind}")

    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    t0 = time.perf_counter()
    logits = np.asarray(apply(params, x))
    t1 = time.perf_counter()
    logits = np.asarray(apply(params, x))
    t2 = time.perf_counter()
    print(f"forward on the synthetic case (channels-last {x.shape}) -> {logits.shape}: "
          f"compile+run {t1 - t0:.1f} s, run {t2 - t1:.2f} s")
    probs = 1 / (1 + np.exp(-logits))
    print("mean sigmoid per output channel [TC, WT, ET]:", np.round(probs.mean(axis=(0, 1, 2, 3)), 4))

    out = args.out or os.path.join(workdir, "swin_unetr.pt")
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
