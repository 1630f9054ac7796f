"""MONAI < 1.5's PatchMerging order ("merging_legacy"), which every older SwinUNETR checkpoint
(BrainSegFounder's included) was trained with. MONAI >= 1.5 no longer has it, so the torch
reference of the old order lives here, built on MONAI's own PatchMerging."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
from monai.networks.nets.swin_unetr import PatchMerging

from jaxbrain.convert import load_torch, save_torch
from jaxbrain.models import SwinUNETR

from _util import (from_torch_output, head_volume, jitted_apply, random_params, rel_l2,
                   to_torch_input)


class LegacyPatchMerging(PatchMerging):
    """MONAI 0.9-1.4 PatchMerging.forward: slices (0,0,0),(1,0,0),(0,1,0),(0,0,1),(1,0,1),
    (0,1,0),(0,0,1),(1,1,1) -- two duplicates, (1,1,0) and (0,1,1) never used."""

    def forward(self, x):
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        offsets = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in offsets], -1)
        return self.reduction(self.norm(x))


CFG = dict(feature_size=12, depths=(2, 2, 2, 2))
SHAPE = (64, 64, 64)


def _legacy_monai():
    torch.manual_seed(0)
    return MonaiSwinUNETR(in_channels=1, out_channels=2, downsample=LegacyPatchMerging, **CFG).eval()


def _run(net, x):
    with torch.no_grad():
        return from_torch_output(net(to_torch_input(x)))


def test_old_checkpoints_give_old_outputs_only_with_legacy_order():
    net = _legacy_monai()
    x = head_volume(SHAPE, 1)
    old = _run(net, x)
    legacy = SwinUNETR(1, 2, downsample="merging_legacy", **CFG)
    params, _ = load_torch(net.state_dict(), legacy)
    assert rel_l2(np.asarray(jitted_apply(legacy)(params, x)), old) < 1e-4
    # The same weights under the corrected order load without complaint yet compute
    # something else: the silent change this option exists to prevent.
    current = SwinUNETR(1, 2, downsample="merging", **CFG)
    params, report = load_torch(net.state_dict(), current)
    assert report.ok
    assert rel_l2(np.asarray(jitted_apply(current)(params, x)), old) > 1e-2


def test_legacy_export_runs_in_legacy_torch_model(tmp_path):
    model = SwinUNETR(1, 2, downsample="merging_legacy", **CFG)
    params = random_params(model, seed=4)
    save_torch(params, model, tmp_path / "legacy.pt")
    net = _legacy_monai()
    net.load_state_dict(torch.load(tmp_path / "legacy.pt", weights_only=True), strict=True)
    x = head_volume(SHAPE, 1, seed=5)
    assert rel_l2(np.asarray(jitted_apply(model)(params, x)), _run(net, x)) < 1e-4


def test_merge_orders_are_permutations_or_not():
    from jaxbrain.models import MERGE_ORDERS
    full = {(i, j, k) for i in range(2) for j in range(2) for k in range(2)}
    assert set(MERGE_ORDERS["merging"]) == full and set(MERGE_ORDERS["mergingv2"]) == full
    assert set(MERGE_ORDERS["merging_legacy"]) == full - {(1, 1, 0), (0, 1, 1)}
    assert len(MERGE_ORDERS["merging_legacy"]) == 8
