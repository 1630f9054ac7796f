"""BrainSegFounder end to end at test size: stage 1 -> stage 2 -> fine-tuning, each starting
from the previous stage's weights (compared array by array)."""

import json
import os

import flax
import jax
import numpy as np
import pytest

from jaxbrain import models, runs
from jaxbrain.training import loop
from jaxbrain.training.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROI = (64, 32, 32)  # two bottleneck tokens, H == W


def _config(name, **synthetic):
    c = load_config_file(os.path.join(ROOT, "configs", name), "demo")
    c.progress = False
    c.batch_size = 2
    c.log_every, c.ckpt_every = 1, 1000
    c.model.update(depths=(1, 1, 1, 1))  # compile time
    if c.objective.name == "ssl":
        c.data.update(roi=ROI, threads=1, augment=f"rand_crop(roi={ROI})")
    c.data.synthetic.update(anatomy="procedural", **synthetic)
    return c


def _init(config):
    model = models.from_config(config.model)
    roi = tuple(config.data.roi)
    dummy = np.zeros((1, *roi, config.model.in_channels), np.float32)
    params = loop.initial_variables(config, model, dummy, jax.random.key(config.seed + 1))["params"]
    return flax.traverse_util.flatten_dict(jax.device_get(params))


def _params(path):
    """The parameters (flat {path: array}) of a run or converted model."""
    return flax.traverse_util.flatten_dict(jax.device_get(runs.load_run(path).variables["params"]))


def _losses(workdir, key):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def test_stage1_stage2_finetune_chain(tmp_path):
    s1, s2 = str(tmp_path / "stage1"), str(tmp_path / "stage2")

    c1 = _config("brainsegfounder_stage1.py", n=3, shape=(64, 40, 40))
    c1.total_steps = 12
    c1.optim.update(lr=1e-3, warmup_steps=2)
    loop.train_and_evaluate(c1, s1)
    rec = _losses(s1, "train/reconstruction_loss")
    assert len(rec) == 12 and all(np.isfinite(rec))
    assert np.mean(rec[-3:]) < 0.8 * np.mean(rec[:3])
    stage1 = _params(s1)

    # Stage 2 (4 channels) starts from the stage-1 encoder; the 2-channel patch embedding is
    # averaged into 4 channels; the SSL heads are new.
    c2 = _config("brainsegfounder_stage2_brats.py", n=3, shape=(64, 40, 40))
    c2.total_steps = 2
    with pytest.raises(ValueError, match="init.orbax"):
        _init(c2)
    c2.init.orbax = s1
    start2 = _init(c2)
    embed = ("swinViT", "patch_embed", "kernel")
    for key, value in start2.items():
        if key == embed:
            expected = np.repeat(stage1[key].mean(-2, keepdims=True), 4, -2) * (2 / 4)
            np.testing.assert_allclose(value, expected, rtol=1e-6)
        elif key[0] == "swinViT":
            np.testing.assert_array_equal(value, stage1[key])
        else:
            assert not np.array_equal(value, stage1[key]), key  # heads start fresh
    c2_fresh = c2.copy_and_resolve_references()
    c2_fresh.init.channels = "fresh"
    assert not np.allclose(_init(c2_fresh)[embed], start2[embed])
    loop.train_and_evaluate(c2, s2)
    stage2 = _params(s2)
    assert not np.allclose(stage2[embed], start2[embed])  # the new embedding is trained

    # Fine-tuning starts from the stage-2 encoder; decoder and output head are new.
    c3 = _config("brainsegfounder_finetune_brats.py", n=3, shape=(64, 40, 40))
    c3.init.orbax = s2
    start3 = _init(c3)
    encoder = [k for k in start3 if k[0] == "swinViT"]
    assert len(encoder) > 10
    for key in encoder:
        np.testing.assert_array_equal(start3[key], stage2[key])

    # The stage-2 run exports to the published SSL layout, loads strictly into the PyTorch
    # replica, and imports back unchanged.
    import torch
    from jaxbrain.convert.__main__ import main as convert
    from torch_ssl import DataParallelLike, SSLReplica
    pt = str(tmp_path / "stage2.pt")
    assert convert(["to-torch", s2, pt]) == 0
    saved = torch.load(pt, weights_only=True)
    net = SSLReplica(4, 12, (1, 1, 1, 1), (3, 6, 12, 24))
    DataParallelLike(net).load_state_dict(saved["state_dict"], strict=True)
    back = str(tmp_path / "back")
    assert convert(["from-torch", pt, back, "--model", "ssl_head",
                    "--set", "downsample=merging_legacy"]) == 0
    reimported = _params(back)
    assert set(reimported) == set(stage2)
    for key, value in stage2.items():
        np.testing.assert_array_equal(reimported[key], value)
