"""Exports name their target: the sidecar (and transformers' config.json) beside every
``to-torch`` file builds the target class alone, which then computes what the Flax model
computes; a layout that cannot represent the model is refused with the setting to change.
(SwinUNETR, the SSL model, MONAI's ViT, timm's ViT, ResNet, DenseNet and PCT-Net are checked
the same way in their own parity tests through ``_sidecar.build``.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jaxbrain import models, runs
from jaxbrain.convert import export
from jaxbrain.convert.__main__ import main
from jaxbrain.models.dino import DinoViT, dino_preset

from _sidecar import build
from _util import random_params, rel_l2

TINY = dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, img_size=32)


def _tokens(model, params, x):
    return np.asarray(model.apply({"params": params}, np.ascontiguousarray(x.transpose(0, 2, 3, 1))))


def _images(seed=0):
    return np.random.default_rng(seed).normal(size=(2, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("preset", ["dinov3_vitb16", "dinov2_vitb14"])
def test_hf_layout_writes_config_json_that_builds_the_model(preset, tmp_path):
    model = DinoViT(**dino_preset(preset, **TINY))
    params = random_params(model, seed=2)
    weights = tmp_path / "model.safetensors"
    state, info = export(params, model, weights, layout="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == ("dinov3_vit" if preset.startswith("dinov3") else "dinov2")
    # transformers alone: from_pretrained on the folder, and the class the sidecar names
    from transformers import AutoModel
    net = AutoModel.from_pretrained(tmp_path).eval()
    built, _ = build(weights)
    assert type(net) is type(built) and type(net).__name__ == info["class"].split(".")[-1]
    x = _images()
    with torch.no_grad():
        theirs = net(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert rel_l2(_tokens(model, params, x), theirs) < 1e-4


def test_dinov2_original_layout_builds_from_the_sidecar(tmp_path):
    model = DinoViT(**dino_preset("dinov2_vitb14", **TINY))
    params = random_params(model, seed=3)
    export(params, model, tmp_path / "backbone.pth")
    net, info = build(tmp_path / "backbone.pth")
    assert info["class"] == "dinov2.models.vision_transformer.DinoVisionTransformer"
    x = _images(1)
    with torch.no_grad():
        out = net.forward_features(torch.from_numpy(x))
    theirs = torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_patchtokens"]], 1).numpy()
    assert rel_l2(_tokens(model, params, x), theirs) < 1e-4


def test_layouts_that_cannot_represent_the_model_are_refused(tmp_path):
    """The whole-scan ViT with mean pooling (its demo's): MONAI's ViT has none; the command
    names the settings and writes nothing. A 3D ViT has no timm layout; unknown layouts are
    named per family."""
    cfg = dict(name="vit", in_channels=1, img_size=(16, 16, 16), patch_size=8, hidden_size=16,
               depth=1, num_heads=2, mlp_dim=32, pool="mean", num_classes=2)
    model = models.from_config(cfg)
    runs.save_converted(str(tmp_path / "ckpt"), cfg, {"params": random_params(model)})
    out = str(tmp_path / "vit.pt")
    with pytest.raises(SystemExit, match=r"MONAI's ViT has no mean pooling .*use model\.pool=cls"
                                         r".*model\.fc_norm=False"):
        main(["to-torch", str(tmp_path / "ckpt"), out])
    with pytest.raises(SystemExit, match="timm VisionTransformer .*3 spatial axes"):
        main(["to-torch", str(tmp_path / "ckpt"), out, "--layout", "timm"])
    with pytest.raises(SystemExit, match="--layout hf: ViT .MONAI. is written as monai or timm"):
        main(["to-torch", str(tmp_path / "ckpt"), out, "--layout", "hf"])
    assert not list(tmp_path.glob("vit.*"))


def test_originals_without_a_package_are_named_with_their_backbone(tmp_path):
    """BrainDINO's networks and the DINO training checkpoint: the sidecar names the original's
    class and its backbone's DinoVisionTransformer arguments (no pip class to build)."""
    from jaxbrain.models import DinoSeg
    from jaxbrain.models.dino_heads import DinoStudent
    from jaxbrain.models.slice_heads import SliceScanViT
    backbone = dino_preset("braindino_vitb16", **TINY)
    made = {"SliceStudent": SliceScanViT(**backbone, num_classes=2, head_depth=1, head_num_heads=2),
            "Primus_Multiscale_conv": DinoSeg(**backbone, in_channels=4, out_channels=3, layers=(0, 1)),
            "DinoVisionTransformer": DinoStudent(**backbone, head_prototypes=16, head_hidden=16,
                                                 head_bottleneck=8)}
    for name, model in made.items():
        _, info = export(random_params(model), model, tmp_path / f"{name}.pth")
        assert json.loads((tmp_path / f"{name}.json").read_text())["class"].endswith(name)
        kwargs = info["kwargs"] if name == "DinoVisionTransformer" else info["backbone"]["kwargs"]
        assert kwargs["embed_dim"] == 32 and kwargs["n_storage_tokens"] == 4
        assert kwargs["pos_embed_rope_dtype"] == "bf16" and kwargs["norm_layer"] == "layernorm"
