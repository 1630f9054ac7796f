"""Every config file loads with each of its presets, and its parts are constructible; unknown
presets are refused; ``data.roi`` is the one shape (crops, window, PCT-Net's input size)."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from jaxbrain import models, objectives
from jaxbrain.data import layouts, pipeline, synthetic
from jaxbrain.training.config import command_line_config, describe, _load, load_config_file, presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/_x.py files are shared helpers of configs, not configs.
FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "configs", "*.py"))
               if not os.path.basename(f).startswith("_"))


def _preset_cases():
    """(file, preset) pairs: none, each documented preset alone, and the largest combination."""
    out = []
    for path in FILES:
        known = _load(path).PRESETS
        combo = [p for p in ("277m", "mode2", "boxes", "scratch", "bf16", "remat") if p in known]
        for preset in ["", *known, ",".join(combo), ",".join(["demo", *combo[-2:]])]:
            out.append(pytest.param(path, preset, id=f"{os.path.basename(path)}:{preset}"))
    return out


@pytest.mark.parametrize("path,preset", _preset_cases())
def test_config_presets_load(path, preset):
    c = load_config_file(path, preset)
    model = models.from_config(c.model)
    assert model.in_channels == c.model.in_channels
    objectives.create(**c.objective)
    pipeline.parse_transforms(c.data.preprocess)
    pipeline.parse_transforms(c.data.augment, roi=c.data.roi)
    assert "roi=" not in c.data.augment  # the crop size is data.roi's
    json.loads(c.to_json_best_effort())  # the run's saved config.json
    args = preset.split(",")
    swin = c.model.name != "pctnet"
    if "277m" in args:
        assert c.model.feature_size == 96
    if "bf16" in args:
        assert c.compute_dtype == "bfloat16"
    if "remat" in args:
        assert c.model.remat
    if "demo" in args and c.data.get("source", "volumes") == "slices":
        assert all(col.get("synthetic") for col in c.data.collections)
    elif "demo" in args:
        assert c.data.synthetic is not None
        if c.model.name in ("swin_unetr", "ssl_head"):
            assert c.model.feature_size == 12
        elif c.model.name == "pctnet":
            assert c.model.features[0] == 8
    if not swin:  # PCT-Net's Swin blocks are built for one size: the crops and the window
        assert tuple(c.model.input_size) == tuple(c.data.roi)
    if "eval" in c:
        assert c.eval.get("roi") is None and "threshold" not in c.eval
    if "finetune" in path or "stage2" in path:
        assert c.init.required != ("scratch" in args)
        assert c.init.encoder_only if swin else c.init.new_head


def _documented(path) -> set:
    """The presets a config's docstring lists (its ``Presets...`` paragraph, following
    ``as ``other_config```` to the config it builds on)."""
    doc = _load(path).__doc__
    para = next(p for p in re.split(r"\n\s*\n", doc) if p.lstrip().startswith("Presets"))
    names = set(re.findall(r"``([a-z0-9]+)``", para))
    for base in re.findall(r"^\s*Presets[^.]*?\bas ``([a-z0-9_]+)``", para):
        names |= _documented(os.path.join(os.path.dirname(path), base + ".py"))
    return names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_configs_accept_exactly_the_presets_they_document(path):
    assert set(_load(path).PRESETS) == _documented(path)


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_unknown_preset_is_refused(path):
    known = _load(path).PRESETS
    name = "configs/" + os.path.basename(path)
    with pytest.raises(ValueError, match=re.escape(f"{name}: unknown preset 'nope'; known: "
                                                   + ", ".join(known))):
        load_config_file(path, "demo,nope")
    if "62m" in known:
        with pytest.raises(ValueError, match=f"{re.escape(name)}: presets 62m, 277m exclude"):
            load_config_file(path, "62m,277m")


def test_presets_helper():
    assert presets(" demo, bf16 ,", ["demo", "bf16"], "configs/x.py") == ["demo", "bf16"]
    assert presets("", ["demo"], "x") == []
    with pytest.raises(ValueError, match=r"^configs/x.py: unknown preset 'y'; known: a, b$"):
        presets("a,y", ["a", "b"], "x")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """One tiny case of each kind: BraTS, ATLAS, unlabeled (T1 + FLAIR)."""
    root = tmp_path_factory.mktemp("tiny")
    shape, kw = (24, 28, 20), dict(anatomy="procedural")
    synthetic.write_brats(root / "brats", 1, shape=shape, **kw)
    synthetic.write_atlas(root / "atlas", 1, shape=shape, **kw)
    synthetic.write_unlabeled(root / "unlabeled", 1, shape=shape, **kw)
    return root


def _tiny_cases(c, root):
    if c.data.layout == "brats":
        return layouts.brats(str(root / "brats"))
    if c.data.layout == "atlas":
        return layouts.atlas(str(root / "atlas"))
    if c.data.layout == "table":  # whole-scan: a T1 with a value (class or age)
        t1 = str(root / "unlabeled" / "1000000" / "T1" / "T1_brain_to_MNI.nii.gz")
        return [layouts.Case(id="sub-0001", images=(t1,), target=1.0)]
    return layouts.subjects(str(root / "unlabeled" / "subjects.csv"), channels=c.data.channels)


@pytest.mark.parametrize("preset", ["", "demo"])
@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_data_roi_override_sets_the_training_crops(path, preset, tiny_data):
    """``--config.data.roi`` (set after get_config, as config_flags does) changes the crops
    (and the shapes that follow data.roi: ATLAS's resize, stage 1's foreground crop,
    PCT-Net's input size)."""
    c = load_config_file(path, preset)
    if c.data.get("source", "volumes") != "volumes":
        pytest.skip(f"data.source {c.data.source}: no volume crops (tests of its own source)")
    roi = (16, 12, 8)[:len(c.data.roi)]  # 2D models (slice crops) have 2 sizes
    c.data.roi = roi
    assert tuple(c.data.roi) == roi
    if c.model.name == "pctnet":
        assert tuple(c.model.input_size) == roi
    crops = c.data.get("crops_per_volume", 1)
    ds = pipeline.training_dataset(_tiny_cases(c, tiny_data), preprocess=c.data.preprocess,
                                   augment=c.data.augment, global_batch_size=crops, seed=0,
                                   crops_per_volume=crops, shard=(0, 1), roi=tuple(c.data.roi))
    batch = ds[0]
    assert batch["image"].shape == (crops, *roi, c.model.in_channels)
    assert batch["image"].dtype == np.float32
    if "label" in batch:
        assert batch["label"].shape[:1 + len(roi)] == (crops, *roi)


def test_crop_transforms_need_a_roi(tiny_data):
    cases = layouts.brats(str(tiny_data / "brats"))
    kwargs = dict(preprocess="zscore", global_batch_size=1, seed=0, shard=(0, 1))
    with pytest.raises(ValueError, match=r"rand_crop: no crop size"):
        pipeline.training_dataset(cases, augment="rand_crop, brats_regions", **kwargs)
    with pytest.raises(ValueError, match=r"rand_resized_crop: no crop size"):
        pipeline.parse_transforms("rand_flip, rand_resized_crop(scale_min=0.8)")
    # A roi in the spec (the old form) works without one passed, and wins over one passed.
    for roi in (None, (8, 8, 8)):
        ds = pipeline.training_dataset(cases, augment="rand_crop(roi=(12, 16, 8))", roi=roi,
                                       **kwargs)
        assert ds[0]["image"].shape == (1, 12, 16, 8, 4)


def _parse_flags(*argv):
    """The config as train.py gets it (config_flags, locked) from command-line ``argv``."""
    return command_line_config(list(argv))


def test_config_flags_override_follows_references():
    """Through ml_collections.config_flags, as train.py parses them: ``--config.data.roi``
    sets PCT-Net's input size and ATLAS's resize, and the config still serialises."""
    c = _parse_flags(f"--config={ROOT}/configs/misfm_finetune_brats.py:demo",
                     "--config.data.roi=(16,32,32)")
    assert tuple(c.model.input_size) == (16, 32, 32) == tuple(c.data.roi)
    saved = json.loads(c.to_json_best_effort())
    assert saved["model"]["input_size"] == saved["data"]["roi"] == [16, 32, 32]
    assert saved["eval"]["roi"] is None

    c = _parse_flags(f"--config={ROOT}/configs/atlas_swinunetr.py", "--config.data.roi=(80,80,80)",
                     "--config.eval.roi=(64,64,64)")
    assert c.data.preprocess == "zscore, resize(shape=(80, 80, 80))"
    assert tuple(c.eval.roi) == (64, 64, 64)  # the window alone, as an override
    # Setting the derived string itself replaces it.
    c = _parse_flags(f"--config={ROOT}/configs/atlas_swinunetr.py",
                     "--config.data.preprocess=zscore", "--config.data.roi=(80,80,80)")
    assert c.data.preprocess == "zscore"
    with pytest.raises(flags.IllegalFlagValueError, match="unknown preset 'nope'"):
        _parse_flags(f"--config={ROOT}/configs/atlas_swinunetr.py:demo,nope")


def test_unknown_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(os.path.join(ROOT, "configs", "nope.py"))


def test_list_overrides_unknown_keys_and_print_config(tmp_path):
    """List fields (the README's data.collections, a list of dicts) and fields that are None
    take Python or JSON values from the command line, tuples take lists; a key the config
    lacks is one line naming it and its section's keys (train.py: exit 1, no traceback);
    --print_config prints every resolved field, overrides marked, and the model's arguments
    left to its class, without training."""
    pretrain = f"--config={ROOT}/configs/braindino_pretrain.py"
    c = _parse_flags(pretrain, """--config.data.collections=[{"root": "/data/ukb", "channels": """
                               """["t1", "flair"]}, {"root": "/data/brats", "layout": "brats"}]""",
                     "--config.objective.solarize_p=[0.0, 0.2, 0.0]")
    assert c.data.collections == [{"root": "/data/ukb", "channels": ["t1", "flair"]},
                                  {"root": "/data/brats", "layout": "brats"}]
    assert tuple(c.objective.solarize_p) == (0.0, 0.2, 0.0)
    for preset in ("", ":demo"):  # None, a section
        c = _parse_flags(f"--config={ROOT}/configs/brain_age.py{preset}",
                         """--config.data.synthetic={"kind": "cohort", "n": 4, "flag": true}""")
        assert c.data.synthetic.n == 4 and c.data.synthetic.flag is True
    c = _parse_flags(f"--config={ROOT}/configs/brain_age.py:vit,timm", "--config.init.from=videomae",
                     "--config.optim.layer_decay=0.75")  # a keyword in the path; README's field
    assert c.init["from"] == "videomae" and c.optim.layer_decay == 0.75
    assert "init.from = 'videomae'  # overridden" in describe(c, ['init["from"]']).splitlines()
    with pytest.raises(flags.IllegalFlagValueError, match="expected a list"):
        _parse_flags(pretrain, "--config.data.collections=/data/ukb")
    with pytest.raises(ValueError, match=r"^unknown config key model.final_norm; model has: "
                                         r"block, block_inplanes, .*shortcut_type$"):
        _parse_flags(f"--config={ROOT}/configs/brain_age.py:demo", "--config.model.final_norm=True")

    train = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={ROOT}/configs/brain_age.py:demo"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    bad = subprocess.run([*train, "--workdir", str(tmp_path), "--config.data.nope=1"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "unknown config key data.nope; data has: " + ", ".join(
            load_config_file(os.path.join(ROOT, "configs", "brain_age.py"), "demo").data.keys())]
    c = _parse_flags(f"--config={ROOT}/configs/brain_age.py:demo", "--config.total_steps=7")
    lines = describe(c, ["total_steps"]).splitlines()  # train.py --print_config's text
    assert "total_steps = 7  # overridden" in lines and "batch_size = 8" in lines
    assert "model.name = 'resnet'" in lines and "data.root = None" in lines
    assert "# model.conv1_t_stride = 1  (ResNet)" not in lines  # set by the config: a field
    assert any(line.startswith("# model.") and "(ResNet)" in line for line in lines)
    assert not os.listdir(tmp_path)  # nothing written
