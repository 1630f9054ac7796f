"""MONAI < 1.5's PatchMerging order ("merging_legacy"), which every older SwinUNETR checkpoint
(BrainSegFounder's included) was trained with. MONAI >= 1.5 no longer has it: the torch
reference of the old order is the README's ``LegacyPatchMerging`` snippet, executed as the
README shows it, on MONAI's own PatchMerging."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

from jaxbrain import runs
from jaxbrain.convert import load_torch
from jaxbrain.models import SwinUNETR

from _util import (from_torch_output, head_volume, jitted_apply, random_params, rel_l2,
                   to_torch_input)

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The README's python block that defines LegacyPatchMerging, exactly as printed."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if "class LegacyPatchMerging" in b]
    assert len(found) == 1, "README.md: expected one python block defining LegacyPatchMerging"
    return found[0]


def _legacy_class():
    """LegacyPatchMerging from the README block (its class definition and imports only)."""
    code = readme_snippet()
    namespace: dict = {}
    exec(code[:code.index("sidecar = ")], namespace)
    return namespace["LegacyPatchMerging"]


LegacyPatchMerging = _legacy_class()


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


def test_readme_lines_give_monai_the_legacy_order_of_a_to_torch_export(tmp_path, monkeypatch):
    """to-torch refuses a legacy-order model without --allow-legacy-merging; with it the
    sidecar names the order, and the README's lines (run as printed, in the export's folder)
    make MONAI's own SwinUNETR compute the exported model."""
    from jaxbrain.convert.__main__ import main
    kwargs = dict(in_channels=1, out_channels=2, downsample="merging_legacy", **CFG)
    model = SwinUNETR(**kwargs)  # the model (and compiled forward) of the test above
    params = random_params(model, seed=4)
    runs.save_converted(str(tmp_path / "ckpt"), {"name": "swin_unetr", **kwargs}, {"params": params})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="merging_legacy.*--allow-legacy-merging"):
        main(["to-torch", "ckpt", "exported.pt"])
    assert not (tmp_path / "exported.pt").exists()
    assert main(["to-torch", "ckpt", "exported.pt", "--allow-legacy-merging"]) == 0
    sidecar = json.loads((tmp_path / "exported.json").read_text())
    assert sidecar["merging_order"] == "merging_legacy" and "downsample" not in sidecar["kwargs"]
    assert "LegacyPatchMerging" in sidecar["downsample"]
    namespace: dict = {}
    exec(readme_snippet(), namespace)
    net = namespace["net"].eval()
    assert net.swinViT.layers1[0].downsample.__class__.__name__ == "LegacyPatchMerging"
    x = head_volume(SHAPE, 1, seed=5)
    ours = np.asarray(jitted_apply(model)(params, x))
    assert rel_l2(_run(net, x), ours) < 1e-5
    # MONAI's corrected class from the same arguments loads the file strictly and differs.
    current = MonaiSwinUNETR(**sidecar["kwargs"]).eval()
    current.load_state_dict(torch.load("exported.pt", weights_only=True), strict=True)
    assert rel_l2(_run(current, x), ours) > 1e-2


def test_merge_orders_are_permutations_or_not():
    from jaxbrain.models import MERGE_ORDERS
    full = {(i, j, k) for i in range(2) for j in range(2) for k in range(2)}
    assert set(MERGE_ORDERS["merging"]) == full and set(MERGE_ORDERS["mergingv2"]) == full
    assert set(MERGE_ORDERS["merging_legacy"]) == full - {(1, 1, 0), (0, 1, 1)}
    assert len(MERGE_ORDERS["merging_legacy"]) == 8
