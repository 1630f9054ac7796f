"""SwinUNETR numerics against MONAI's PyTorch implementation, in both weight directions.

Export: random Flax parameters -> save_torch -> MONAI SwinUNETR.load_state_dict(strict=True) ->
same outputs. Import: MONAI-initialised weights -> load_torch -> same outputs. Float32, relative
L2 error below 1e-4. The configurations cover each of: 64^3 and 96x64x128, feature size 12 and
24, depths (2,2,2,2) and (2,2,6,2), use_v2 off and on, downsample "merging" and "mergingv2".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import jax

from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

from jaxbrain.convert import export, load_torch, save_torch
from jaxbrain.models import SwinUNETR

from _sidecar import build
from _util import (from_torch_output, head_volume, jitted_apply, random_params, rel_l2,
                   to_torch_input, torch_state)

TOL = 1e-4

CONFIGS = [
    pytest.param((64, 64, 64), dict(feature_size=12, depths=(2, 2, 2, 2), use_v2=False,
                                    downsample="merging"), id="64cube-fs12-d2222-merging"),
    pytest.param((96, 64, 128), dict(feature_size=24, depths=(2, 2, 6, 2), use_v2=True,
                                     downsample="mergingv2"), id="96x64x128-fs24-d2262-v2-mergingv2"),
    pytest.param((64, 64, 64), dict(feature_size=24, depths=(2, 2, 6, 2), use_v2=False,
                                    downsample="mergingv2"), id="64cube-fs24-d2262-mergingv2"),
    pytest.param((96, 64, 128), dict(feature_size=12, depths=(2, 2, 2, 2), use_v2=True,
                                     downsample="merging"), id="96x64x128-fs12-d2222-v2-merging"),
]
IN, OUT = 2, 3


def _monai(cfg, state=None):
    torch.manual_seed(0)
    net = MonaiSwinUNETR(in_channels=IN, out_channels=OUT, **cfg)
    if state is not None:
        net.load_state_dict(torch_state(state), strict=True)
    return net.eval()


def _run_monai(net, x):
    with torch.no_grad():
        return from_torch_output(net(to_torch_input(x)))


@pytest.mark.parametrize("shape,cfg", CONFIGS)
def test_export_to_monai(shape, cfg, tmp_path):
    model = SwinUNETR(IN, OUT, **cfg)
    params = random_params(model, seed=1)
    path = tmp_path / "exported.pt"
    export(params, model, path)
    net, info = build(path)  # MONAI's class from the sidecar alone
    assert info["class"] == "monai.networks.nets.SwinUNETR"
    assert info["merging_order"] == info["kwargs"]["downsample"] == cfg["downsample"]
    x = head_volume(shape, IN)
    ours = np.asarray(jitted_apply(model)(params, x))
    theirs = _run_monai(net.eval(), x)
    assert ours.shape == theirs.shape == (1, *shape, OUT)
    assert rel_l2(ours, theirs) < TOL


@pytest.mark.parametrize("shape,cfg", CONFIGS)
def test_import_from_monai(shape, cfg):
    net = _monai(cfg)
    model = SwinUNETR(IN, OUT, **cfg)
    params, report = load_torch(net.state_dict(), model)
    assert report.ok and report.source_format == "MONAI SwinUNETR"
    assert len(report.loaded) == sum(1 for k in net.state_dict() if not k.endswith("_index"))
    x = head_volume(shape, IN, seed=2)
    ours = np.asarray(jitted_apply(model)(params, x))
    assert rel_l2(ours, _run_monai(net, x)) < TOL


def test_encoder_hidden_states_match_monai():
    """The stand-alone encoder returns MONAI's 5 hidden states, normalised or not."""
    from jaxbrain.models import SwinTransformer
    cfg = dict(feature_size=12, depths=(2, 2, 2, 2), downsample="merging")
    net = _monai(cfg)
    model = SwinUNETR(IN, OUT, **cfg)
    encoder = SwinTransformer(**model.encoder_kwargs())
    params, report = load_torch(net.state_dict(), encoder, encoder_only=True)
    assert report.ok and len(report.ignored) > 0 and not report.kept
    x = head_volume((64, 64, 64), IN, seed=3)
    for normalize in (True, False):
        ours = encoder.apply({"params": params}, x, normalize)
        with torch.no_grad():
            theirs = net.swinViT(to_torch_input(x), normalize)
        assert len(ours) == len(theirs) == 5
        for a, b in zip(ours, theirs):
            assert rel_l2(np.asarray(a), from_torch_output(b)) < TOL


def test_accelerator_attention_path_matches_monai(monkeypatch):
    """GPUs and TPUs compute attention over all windows at once instead of window by window;
    force that path here and check it against MONAI as well."""
    from jaxbrain.models import swin_unetr
    monkeypatch.setattr(swin_unetr, "use_window_scan", lambda: False)
    cfg = dict(feature_size=12, depths=(2, 2, 2, 2), downsample="merging")
    net = _monai(cfg)
    model = SwinUNETR(IN, OUT, **cfg)
    params, _ = load_torch(net.state_dict(), model)
    x = head_volume((64, 96, 64), IN, seed=4)
    ours = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x))
    assert rel_l2(ours, _run_monai(net, x)) < TOL


def test_shifted_window_mask_patterns():
    from jaxbrain.models.swin_unetr import shift_mask_patterns, shifted_window_regions
    for dims in [(35, 35, 35), (14, 21, 7), (42, 28, 35)]:
        ws, ss = (7, 7, 7), (3, 3, 0) if dims[2] == 7 else (3, 3, 3)
        patterns, index = shift_mask_patterns(dims, ws, ss)
        regions = shifted_window_regions(dims, ws, ss)
        dense = np.where(regions[:, :, None] != regions[:, None, :], -100.0, 0.0)
        assert len(patterns) <= 8 and np.array_equal(patterns[index], dense)
