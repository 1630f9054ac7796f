"""MIS-FM end to end at test size: Volume Fusion pretraining of PCT-Net through train.py's loop
(the loss falls; BatchNorm statistics are kept and counted), then the BraTS fine-tuning
initialisation from it, and its export to MIS-FM's PyTorch layout. (Exact resume, running
statistics included, is the loop's and is tested on the toy model in test_loop_protocol.py.)"""

from __future__ import annotations

import json
import os

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxbrain import models
from jaxbrain.training import loop
from jaxbrain.training.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (16, 32, 32)
TINY = dict(input_size=SIZE, features=(4, 8, 16, 32, 64), num_heads=(2, 2, 4), depths=(1, 1, 1))


def _vf_config():
    c = load_config_file(os.path.join(ROOT, "configs", "misfm_vf_pctnet.py"), "demo")
    c.progress = False
    c.batch_size = 2
    c.total_steps, c.log_every, c.ckpt_every = 12, 1, 1000
    c.optim.update(lr=3e-3, decay_steps=1000)
    c.model.update(**TINY)
    c.objective.update(block_min=(4, 4, 4), block_max=(8, 16, 16))
    c.data.update(roi=SIZE, threads=1, augment=c.data.augment.replace("(32, 64, 64)", str(SIZE)))
    c.data.synthetic.update(n=3, shape=(40, 48, 40), anatomy="procedural")
    return c


def _state(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def test_vf_pretraining_initialises_finetuning_and_exports(tmp_path):
    straight = str(tmp_path / "straight")
    loop.train_and_evaluate(_vf_config(), straight)
    losses = _losses(straight)
    assert len(losses) == 12 and np.all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    a = _state(straight, 12)
    assert "batch_stats" in a["model_state"]
    counts = [v for k, v in flax.traverse_util.flatten_dict(a["model_state"]).items() if k[-1] == "count"]
    assert counts and all(int(c) == 12 for c in counts)

    # Fine-tuning on BraTS (4 channels, 3 regions) from the VF run: the stem's input kernel is
    # averaged 1 -> 4 channels, the output layers are new, everything else is the VF run's.
    c = load_config_file(os.path.join(ROOT, "configs", "misfm_finetune_brats.py"), "demo")
    c.model.update(**TINY)
    with pytest.raises(ValueError, match="init.orbax"):
        loop.initial_variables(c, models.from_config(c.model), np.zeros((1, *SIZE, 4), np.float32),
                               jax.random.key(0))
    c.init.orbax = straight
    start = flax.traverse_util.flatten_dict(jax.device_get(loop.initial_variables(
        c, models.from_config(c.model), np.zeros((1, *SIZE, 4), np.float32), jax.random.key(0))))
    vf = flax.traverse_util.flatten_dict({"params": a["params"], **a["model_state"]})
    proj = ("params", "embedding", "proj", "kernel")
    np.testing.assert_allclose(start[proj], np.repeat(vf[proj], 4, -2) / 4, rtol=1e-6)
    new = [k for k in start if start[k].shape != np.shape(vf[k])]
    assert sorted(k[1:3] for k in new if k != proj) == sorted(
        [("pred_head", "out_conv0")] * 2 + [("pred_head", "out_conv1")] * 2
        + [("pyramid_ct", "out_conv2")] * 2 + [("pyramid_ct", "out_conv3")] * 2)
    for k in start:
        if start[k].shape == np.shape(vf[k]) and k != proj:
            np.testing.assert_array_equal(start[k], vf[k])

    # The VF run exports to MIS-FM's layout and loads strictly into the PyTorch replica.
    torch = pytest.importorskip("torch")
    from torch_pctnet import PCTNet as TorchPCTNet
    from jaxbrain.convert.__main__ import main as convert
    pt = str(tmp_path / "vf.pt")
    assert convert(["to-torch", straight, pt]) == 0
    net = TorchPCTNet({"in_chns": 1, "class_num": 5, "input_size": list(SIZE),
                       "feature_chns": list(TINY["features"]), "num_heads": list(TINY["num_heads"]),
                       "depths": list(TINY["depths"]), "multiscale_pred": True})
    net.load_state_dict(torch.load(pt, weights_only=True)["model_state_dict"], strict=True)
    key = "pyramid_ct.convtrans_e2.conv.conv_conv.0.running_var"
    np.testing.assert_array_equal(net.state_dict()[key].numpy(),
                                  vf[("batch_stats", "pyramid_ct", "convtrans_e2", "conv",
                                      "conv_conv_0", "var")])
