"""jaxbrain.convert: round trips, strict key accounting, published checkpoint layouts, CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as tnn

from monai.networks.nets import SwinUNETR as MonaiSwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformer as MonaiSwinTransformer

from jaxbrain.convert import CheckpointMismatchError, load_torch, save_torch
from jaxbrain.models import SwinTransformer, SwinUNETR
from flax import traverse_util

from _util import (from_torch_output, head_volume, numpy_state, random_params, rel_l2,
                   to_torch_input, torch_state)

CFG = dict(feature_size=12, depths=(2, 2, 2, 2))


def _flat(tree):
    return traverse_util.flatten_dict(tree)


def _assert_bitwise(a, b):
    fa, fb = _flat(a), _flat(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), "/".join(k)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("use_v2", [False, True])
def test_flax_torch_flax_round_trip_is_bitwise(tmp_path, suffix, use_v2):
    model = SwinUNETR(4, 3, use_v2=use_v2, **CFG)
    params = random_params(model, seed=7)
    path = tmp_path / f"m{suffix}"
    state = save_torch(params, model, path)
    assert state["swinViT.layers1.0.blocks.0.attn.relative_position_index"].shape == (343, 343)
    back, report = load_torch(path, model)
    assert report.ok and not report.unused
    _assert_bitwise(params, back)


def _monai_state(in_channels=2, **kw):
    torch.manual_seed(0)
    return numpy_state(MonaiSwinUNETR(in_channels=in_channels, out_channels=3, **{**CFG, **kw}))


def _error(state, model) -> str:
    with pytest.raises(CheckpointMismatchError) as info:
        load_torch(state, model)
    return str(info.value)


def test_missing_key_is_named_with_shape():
    state = _monai_state()
    del state["encoder2.layer.conv1.conv.weight"]
    msg = _error(state, SwinUNETR(2, 3, **CFG))
    assert "missing from the checkpoint (1)" in msg
    assert "encoder2.layer.conv1.conv.weight  expected shape (12, 12, 3, 3, 3)" in msg


def test_extra_key_is_named_with_shape():
    state = _monai_state()
    state["decoder9.extra.weight"] = np.zeros((5, 7), np.float32)
    msg = _error(state, SwinUNETR(2, 3, **CFG))
    assert "not in the model (1)" in msg and "decoder9.extra.weight  shape (5, 7)" in msg


def test_wrong_shape_is_named_with_both_shapes():
    state = _monai_state()
    state["swinViT.layers2.0.blocks.1.mlp.linear1.weight"] = np.zeros((10, 24), np.float32)
    msg = _error(state, SwinUNETR(2, 3, **CFG))
    assert "swinViT.layers2.0.blocks.1.mlp.linear1.weight  checkpoint (10, 24) vs model (96, 24)" in msg


def test_wrong_in_channels_names_every_affected_key_and_says_why():
    msg = _error(_monai_state(in_channels=4), SwinUNETR(1, 3, **CFG))
    assert "swinViT.patch_embed.proj.weight  checkpoint (12, 4, 2, 2, 2) vs model (12, 1, 2, 2, 2)" in msg
    assert "encoder1.layer.conv1.conv.weight  checkpoint (12, 4, 3, 3, 3) vs model (12, 1, 3, 3, 3)" in msg
    assert "encoder1.layer.conv3.conv.weight" in msg
    assert "the checkpoint has in_channels=4, the model in_channels=1" in msg


def test_non_strict_returns_the_same_report_and_keeps_given_values():
    state = _monai_state()
    del state["encoder2.layer.conv1.conv.weight"]
    state["extra.weight"] = np.ones(3, np.float32)
    model = SwinUNETR(2, 3, **CFG)
    init = random_params(model, seed=3)
    with pytest.raises(ValueError, match="pass params="):
        load_torch(state, model, strict=False)
    params, report = load_torch(state, model, strict=False, params=init)
    assert report.missing == [("encoder2.layer.conv1.conv.weight", (12, 12, 3, 3, 3))]
    assert report.unused == [("extra.weight", (3,))]
    np.testing.assert_array_equal(params["encoder2"]["conv1"]["kernel"], init["encoder2"]["conv1"]["kernel"])
    assert "missing 1, unused 1" in str(report)


def test_changed_relative_position_index_is_reported():
    state = _monai_state()
    key = "swinViT.layers3.0.blocks.1.attn.relative_position_index"
    state[key] = state[key][::-1].copy()
    assert key in _error(state, SwinUNETR(2, 3, **CFG))


def test_wrapped_checkpoints_with_module_prefix(tmp_path):
    state = _monai_state()
    ckpt = {"epoch": 12, "best_acc": 0.91,
            "state_dict": {"module." + k: v for k, v in torch_state(state).items()}}
    torch.save(ckpt, tmp_path / "ddp.pt")
    params, report = load_torch(tmp_path / "ddp.pt", SwinUNETR(2, 3, **CFG))
    assert report.ok and report.source_format == "MONAI SwinUNETR"
    np.testing.assert_array_equal(params["out"]["bias"], state["out.conv.conv.bias"])
    # Pickled NumPy objects need an explicit opt-in, and the error says so and names the file.
    torch.save({"best_acc": np.float64(0.9), "model": torch_state(state)}, tmp_path / "np.pt")
    with pytest.raises(ValueError, match=r"np\.pt.*trust_pickle=True"):
        load_torch(tmp_path / "np.pt", SwinUNETR(2, 3, **CFG))
    _, report = load_torch(tmp_path / "np.pt", SwinUNETR(2, 3, **CFG), trust_pickle=True)
    assert report.ok
    # nnU-Net's checkpoint_final.pth: the weights under network_weights.
    torch.save({"network_weights": torch_state(state), "trainer_name": "nnUNetTrainer",
                "current_epoch": 1000}, tmp_path / "checkpoint_final.pth")
    _, report = load_torch(tmp_path / "checkpoint_final.pth", SwinUNETR(2, 3, **CFG))
    assert report.ok


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_torch(tmp_path / "nowhere.pt", SwinUNETR(2, 3, **CFG))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_torch(tmp_path / "junk.pt", SwinUNETR(2, 3, **CFG))


class SSLHead(tnn.Module):
    """The published SSL head (research-contributions SwinUNETR/Pretrain, as BrainSegFounder
    uses it): rotation and contrastive Linear heads on the bottleneck tokens and a 5-stage
    conv / InstanceNorm / LeakyReLU / trilinear decoder, on MONAI's SwinTransformer."""

    def __init__(self, in_channels, feature_size):
        super().__init__()
        dim = 16 * feature_size
        self.swinViT = MonaiSwinTransformer(in_chans=in_channels, embed_dim=feature_size,
                                            window_size=(7, 7, 7), patch_size=(2, 2, 2),
                                            depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
        self.rotation_head = tnn.Linear(dim, 4)
        self.contrastive_head = tnn.Linear(dim, 512)
        chans = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [tnn.Conv3d(cin, cout, 3, padding=1), tnn.InstanceNorm3d(cout), tnn.LeakyReLU(),
                       tnn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
        layers.append(tnn.Conv3d(chans[-1], in_channels, 1))
        self.conv = tnn.Sequential(*layers)


def test_brainsegfounder_ssl_checkpoint_loads_encoder_only(tmp_path):
    torch.manual_seed(1)
    head = SSLHead(2, 12)
    state = {"module." + k: v for k, v in head.state_dict().items()}
    assert {"module.conv.0.weight", "module.conv.20.bias", "module.rotation_head.weight"} <= set(state)
    torch.save({"global_step": 10, "epoch": 1, "state_dict": state}, tmp_path / "ssl.pt")
    model = SwinUNETR(2, 3, **CFG)
    init = random_params(model, seed=9)

    msg = _error(torch.load(tmp_path / "ssl.pt", weights_only=True), model)
    assert "rotation_head.weight" in msg and "encoder1.layer.conv1.conv.weight" in msg

    params, report = load_torch(tmp_path / "ssl.pt", model, encoder_only=True, params=init)
    assert report.ok and "SSL head" in report.source_format
    assert {"rotation_head.weight", "contrastive_head.weight", "conv.0.weight", "conv.20.weight"} <= set(report.ignored)
    assert "encoder1.layer.conv1.conv.weight" in report.kept
    np.testing.assert_array_equal(params["encoder1"]["conv1"]["kernel"], init["encoder1"]["conv1"]["kernel"])
    emb = head.swinViT.patch_embed.proj.weight.detach().numpy()
    np.testing.assert_array_equal(params["swinViT"]["patch_embed"]["kernel"], emb.transpose(2, 3, 4, 1, 0))

    encoder = SwinTransformer(**model.encoder_kwargs())
    x = head_volume((64, 64, 64), 2, seed=11)
    ours = encoder.apply({"params": params["swinViT"]}, x)
    with torch.no_grad():
        theirs = head.swinViT(to_torch_input(x))
    assert rel_l2(np.asarray(ours[4]), from_torch_output(theirs[4])) < 1e-4


def test_monai_model_swinvit_naming():
    """MONAI's released model_swinvit.pt: module.layers1.0..., mlp.fc1 / mlp.fc2."""
    torch.manual_seed(2)
    enc = MonaiSwinTransformer(in_chans=1, embed_dim=12, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                               depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
    state = {"module." + k.replace("mlp.linear", "mlp.fc"): v for k, v in enc.state_dict().items()}
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in state
    model = SwinTransformer(in_channels=1, embed_dim=12)
    params, report = load_torch({"state_dict": state}, model)
    assert report.ok and report.source_format == "MONAI model_swinvit.pt"
    w = enc.layers2[0].blocks[1].mlp.linear2.weight.detach().numpy()
    np.testing.assert_array_equal(params["layers2"]["blocks_1"]["mlp"]["linear2"]["kernel"], w.T)


def test_cli_round_trip(tmp_path):
    from jaxbrain.convert.__main__ import main
    torch.manual_seed(3)
    net = MonaiSwinUNETR(in_channels=2, out_channels=3, **CFG)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "in.pt")
    with pytest.raises(SystemExit, match="downsample"):
        main(["from-torch", str(tmp_path / "in.pt"), str(tmp_path / "ckpt")])
    assert main(["from-torch", str(tmp_path / "in.pt"), str(tmp_path / "ckpt"), "--set", "downsample=merging"]) == 0
    assert main(["to-torch", str(tmp_path / "ckpt"), str(tmp_path / "out.safetensors")]) == 0
    from safetensors.torch import load_file
    fresh = MonaiSwinUNETR(in_channels=2, out_channels=3, **CFG)
    fresh.load_state_dict(load_file(tmp_path / "out.safetensors"), strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_cli_help_and_inspect(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxbrain.convert", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "from-torch" in out.stdout and "to-torch" in out.stdout
    torch.manual_seed(4)
    torch.save(MonaiSwinUNETR(in_channels=4, out_channels=3, feature_size=24, depths=(2, 2, 6, 2),
                              use_v2=True).state_dict(), tmp_path / "m.pt")
    out = subprocess.run([sys.executable, "-m", "jaxbrain.convert", "inspect", str(tmp_path / "m.pt")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r'"in_channels": 4, "feature_size": 24', out.stdout)
    assert '"depths": [2, 2, 6, 2]' in out.stdout and '"use_v2": true' in out.stdout
    assert '"out_channels": 3' in out.stdout and "merging_legacy" in out.stdout
