"""Every config file loads with each of its presets, and its parts are constructible."""

import glob
import os

import pytest

from jaxbrain import objectives
from jaxbrain.data import pipeline
from jaxbrain.training import loop
from jaxbrain.training.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
@pytest.mark.parametrize("preset", ["", "demo", "62m", "69m", "277m,bf16,remat"])
def test_config_presets_load(path, preset):
    c = load_config_file(path, preset)
    model = loop.build_model(c.model)
    assert model.in_channels == c.model.in_channels
    objectives.create(**c.objective)
    pipeline.parse_transforms(c.data.preprocess)
    pipeline.parse_transforms(c.data.augment)
    swin = c.model.name != "pctnet"
    if "277m" in preset:
        assert c.compute_dtype == "bfloat16" and c.model.remat
        assert c.model.feature_size == 96 if swin else c.model.features[-1] == 512
    if preset == "demo":
        assert c.data.synthetic is not None
        assert c.model.feature_size == 12 if swin else c.model.features[0] == 8
    if not swin:  # PCT-Net's Swin blocks are built for one size: the crops and the window
        assert tuple(c.model.input_size) == tuple(c.data.roi)
        if "eval" in c:
            assert tuple(c.eval.roi) == tuple(c.model.input_size)
    if "finetune" in path or "stage2" in path:
        assert c.init.required and (c.init.encoder_only if swin else c.init.new_head)


def test_unknown_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(os.path.join(ROOT, "configs", "nope.py"))
