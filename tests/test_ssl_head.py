"""The SSL model against a PyTorch replica of the published one: outputs, strict checkpoint
interchange in the original layout, and the trilinear upsampling."""

import json

import numpy as np
import pytest
import torch

from jaxbrain.convert import export, load_torch
from jaxbrain.models import SSLHead
from jaxbrain.models.blocks import upsample2x_linear

from _util import from_torch_output, head_volume, jitted_apply, random_params, rel_l2, to_torch_input
from torch_ssl import DataParallelLike, SSLReplica

CFG = dict(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), downsample="merging")
IN = 2


def _torch_outputs(net, x):
    with torch.no_grad():
        rot, con, rec = net.eval()(to_torch_input(x))
    return {"rotation": rot.numpy(), "contrastive": con.numpy(),
            "reconstruction": from_torch_output(rec)}


def _compare(ours, theirs):
    for key in ("rotation", "contrastive", "reconstruction"):
        assert np.asarray(ours[key]).shape == theirs[key].shape, key
        assert rel_l2(ours[key], theirs[key]) < 1e-4, key


def test_upsample_matches_torch_trilinear():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4, 6)).astype(np.float32)
    ours = np.asarray(upsample2x_linear(x))
    up = torch.nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
    theirs = from_torch_output(up(to_torch_input(x)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_export_loads_strictly_into_the_published_layout(tmp_path):
    model = SSLHead(IN, **CFG)
    params = random_params(model, seed=4)
    path = tmp_path / "ssl.pt"
    export(params, model, path)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"state_dict", "global_step"}
    keys = set(saved["state_dict"])
    assert {"module.rotation_head.weight", "module.contrastive_head.weight",
            "module.conv.0.weight", "module.conv.20.bias"} <= keys
    assert all(k.startswith("module.") for k in keys)
    info = json.loads((tmp_path / "ssl.json").read_text())  # the replica from the sidecar alone
    assert info["class"] == "SSLHead" and info["merging_order"] == "merging"
    args, swin = info["kwargs"]["args"], info["swin"]
    net = SSLReplica(args["in_channels"], args["feature_size"], swin["depths"], swin["num_heads"])
    DataParallelLike(net).load_state_dict(saved["state_dict"], strict=True)
    assert saved["state_dict"]["module.rotation_head.weight"].shape == (4, 16 * 12)
    x = head_volume((64, 64, 64), IN, seed=5)
    _compare(jitted_apply(model)(params, x), _torch_outputs(net, x))
    # ... and back, bit for bit.
    back, report = load_torch(path, model)
    assert report.ok and report.source_format.startswith("SwinUNETR SSL head")
    import jax
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_import_from_replica_state_dict():
    torch.manual_seed(1)
    net = SSLReplica(IN, CFG["feature_size"], CFG["depths"], CFG["num_heads"])
    model = SSLHead(IN, **CFG)
    params, report = load_torch(DataParallelLike(net).state_dict(), model)
    assert report.ok and not report.unused and not report.missing
    x = head_volume((64, 32, 64), IN, seed=6)
    _compare(jitted_apply(model)(params, x), _torch_outputs(net, x))


def test_ssl_encoder_loads_into_swin_unetr():
    """Fine-tuning starts from an SSL checkpoint's encoder; the heads are reported ignored."""
    from jaxbrain.models import SwinUNETR
    net = SSLReplica(IN, CFG["feature_size"], CFG["depths"], CFG["num_heads"])
    seg = SwinUNETR(IN, 3, **CFG)
    init = random_params(seg, seed=7)
    params, report = load_torch(DataParallelLike(net).state_dict(), seg, params=init,
                                encoder_only=True)
    assert report.ok
    assert any(k.startswith("rotation_head") for k in report.ignored)
    w = net.swinViT.patch_embed.proj.weight.detach().numpy()
    np.testing.assert_array_equal(params["swinViT"]["patch_embed"]["kernel"],
                                  w.transpose(2, 3, 4, 1, 0))


def test_too_small_input_is_rejected():
    import jax
    model = SSLHead(IN, **CFG)
    with pytest.raises(ValueError, match="two"):
        jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 32, IN), np.float32))


@pytest.mark.parametrize("mode", ["average", "repeat", "fresh"])
def test_torch_ssl_checkpoint_initialises_a_model_with_more_channels(tmp_path, mode):
    """Stage 2 from a PyTorch stage-1 file: 2-channel patch embedding -> 4 channels."""
    import flax
    import jax
    from ml_collections import ConfigDict
    from jaxbrain.training import loop
    cfg = dict(CFG, depths=(1, 1, 1, 1))
    torch.manual_seed(3)
    net = SSLReplica(2, cfg["feature_size"], cfg["depths"], cfg["num_heads"])
    path = tmp_path / "stage1.pt"
    torch.save({"state_dict": DataParallelLike(net).state_dict(), "global_step": 10}, path)
    model = SSLHead(4, **cfg)
    config = ConfigDict({"init": {"torch": str(path), "encoder_only": True, "channels": mode}})
    params = loop.initial_variables(config, model, np.zeros((1, 64, 32, 32, 4), np.float32),
                                    jax.random.key(0))["params"]
    flat = flax.traverse_util.flatten_dict(jax.device_get(params))
    w = net.swinViT.patch_embed.proj.weight.detach().numpy().transpose(2, 3, 4, 1, 0)  # (k,k,k,2,F)
    got = flat[("swinViT", "patch_embed", "kernel")]
    assert got.shape == w.shape[:3] + (4, w.shape[-1])
    if mode == "average":
        np.testing.assert_allclose(got, np.repeat(w.mean(3, keepdims=True), 4, 3) * 0.5, rtol=1e-6)
    elif mode == "repeat":
        np.testing.assert_allclose(got, w[..., [0, 1, 0, 1], :] * 0.5, rtol=1e-6)
    else:
        assert not np.allclose(got[..., :2, :], w)
    qkv = net.swinViT.layers1[0].blocks[0].attn.qkv.weight.detach().numpy().T
    np.testing.assert_array_equal(flat[("swinViT", "layers1", "blocks_0", "attn", "qkv", "kernel")], qkv)
    rot = net.rotation_head.weight.detach().numpy().T  # heads: encoder_only keeps them fresh
    assert not np.allclose(flat[("rotation_head", "kernel")], rot)
