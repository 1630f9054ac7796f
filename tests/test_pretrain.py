"""Pretraining objectives at test size (configs/brain_pretrain.py): the masked autoencoder of
the 3D ViT (exact masking ratio per sample, loss on masked patches only, the loss falls, a
ViT fine-tuning config takes its encoder), contrastive CNN pretraining (views differ, the
loss falls) and synthetic-cohort multitask pretraining (targets from the table's columns,
the loss falls)."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbrain import models, objectives, runs
from jaxbrain.data import tables
from jaxbrain.training import data as data_lib
from jaxbrain.training import loop
from jaxbrain.training.config import load_config_file

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
PRETRAIN = os.path.join(CONFIGS, "brain_pretrain.py")
SHAPE = (24, 32, 24)  # the cohort at 8 mm: 3 x 4 x 3 patches of 8^3


def _config(preset: str, steps: int, n: int = 8):
    c = load_config_file(PRETRAIN, preset)
    c.data.synthetic.update(n=n, shape=SHAPE, workers=0, anatomy="procedural")
    c.data.roi = SHAPE
    c.batch_size = 4
    c.total_steps, c.log_every, c.ckpt_every = steps, 1, steps
    c.optim.update(warmup_steps=2)
    c.progress = False
    return c


def _losses(workdir, key="train/loss"):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def _falls(losses, k=4):
    assert len(losses) >= 2 * k and all(np.isfinite(losses))
    assert np.mean(losses[-k:]) < 0.9 * np.mean(losses[:k]), losses


# --- masked autoencoder -------------------------------------------------------------------


def test_mae_masks_the_ratio_per_sample_and_scores_masked_patches_only():
    obj = objectives.create("mae", patch_size=4, mask_ratio=0.75, norm_pix_loss=True)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 16, 16, 12, 1)), jnp.float32)  # 4 x 4 x 3 = 48 patches
    keep, mask = obj.masking(x, jax.random.key(1))
    assert keep.shape == (3, 12) and mask.shape == (3, 48)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), [36, 36, 36])  # round(0.75 * 48)
    for i in range(3):
        assert sorted(np.asarray(keep[i]).tolist()) == np.flatnonzero(np.asarray(mask[i]) == 0).tolist()
    assert len({tuple(np.sort(np.asarray(k))) for k in keep}) == 3  # drawn per sample
    keep2, _ = obj.masking(x, jax.random.key(2))
    assert not np.array_equal(keep, keep2)  # from the key

    pred = jnp.asarray(rng.normal(size=(3, 48, 64)), jnp.float32)
    base = float(obj.loss(pred, x, mask)[0])

    def with_patch_changed(patch_index):
        g = np.unravel_index(patch_index, (4, 4, 3))
        y = np.array(x)
        y[0, g[0] * 4:(g[0] + 1) * 4, g[1] * 4:(g[1] + 1) * 4, g[2] * 4:(g[2] + 1) * 4] += \
            rng.normal(size=(4, 4, 4, 1))
        return float(obj.loss(pred, jnp.asarray(y), mask)[0])

    visible = int(keep[0, 0])
    masked = int(np.flatnonzero(np.asarray(mask[0]) == 1)[0])
    assert with_patch_changed(visible) == base
    assert with_patch_changed(masked) != base


def test_mae_model_encodes_visible_tokens_only():
    """The encoder's output for the kept patches does not depend on the masked patches'
    pixels (the MAE sees only visible tokens)."""
    model = models.create("mae", in_channels=1, img_size=16, patch_size=8, hidden_size=16,
                          depth=1, num_heads=2, mlp_dim=32, decoder_width=16, decoder_depth=1,
                          decoder_heads=2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 16, 1)), jnp.float32)
    v = model.init(jax.random.key(0), x)
    keep = jnp.asarray([[0, 5]], jnp.int32)
    y = x.at[:, 8:, :8, :8].add(1.0)  # patch 4, masked
    z = x.at[:, :8, :8, :8].add(1.0)  # patch 0, visible
    a, b, c = (model.apply(v, t, keep=keep) for t in (x, y, z))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (1, 8, 8 ** 3)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    c = _config("mae,demo", steps=40)
    c.model.update(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, decoder_width=32,
                   decoder_depth=1, decoder_heads=2)
    c.optim.lr = 3e-3
    workdir = str(tmp_path_factory.mktemp("mae"))
    loop.train_and_evaluate(c, workdir)
    return c, workdir


def test_mae_loss_falls_and_vit_finetuning_takes_the_encoder(mae_run):
    c, workdir = mae_run
    _falls(_losses(workdir))
    ratios = _losses(workdir, "train/mask_ratio")
    np.testing.assert_allclose(ratios, 27 / 36)  # round(0.75 * 36) of 3 x 4 x 3 patches

    age = load_config_file(os.path.join(CONFIGS, "brain_age.py"), "demo,vit")
    age.model.update(hidden_size=32, depth=2, num_heads=2, mlp_dim=64)
    age.data.roi = SHAPE
    age.init.orbax = workdir
    model = models.from_config(age.model)
    x = np.zeros((1, *SHAPE, 1), np.float32)
    start = flax.traverse_util.flatten_dict(jax.device_get(
        loop.initial_variables(age, model, x, jax.random.key(5))["params"]))
    trained = flax.traverse_util.flatten_dict(
        jax.device_get(runs.load_run(workdir).variables["params"]))
    encoder = [k for k in start if k[0] == "encoder"]
    assert encoder
    for k in encoder:
        np.testing.assert_array_equal(start[k], trained[k])


# --- contrastive --------------------------------------------------------------------------


def test_contrastive_views_differ():
    obj = objectives.create("contrastive", crop=0.75)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 16, 1)), jnp.float32)
    v = obj.views(x, jax.random.key(0))
    assert v.shape == (2, 2, 12, 12, 12, 1)
    for i in range(2):
        assert float(jnp.abs(v[i, 0] - v[i, 1]).mean()) > 0.1
    np.testing.assert_array_equal(v, obj.views(x, jax.random.key(0)))
    assert not np.allclose(v, obj.views(x, jax.random.key(1)))


def test_contrastive_loss_falls(tmp_path):
    c = _config("contrastive,demo", steps=24)
    c.model.update(block_inplanes=(4, 8, 8, 16))
    workdir = str(tmp_path / "simclr")
    loop.train_and_evaluate(c, workdir)
    _falls(_losses(workdir))
    params = runs.load_run(workdir).variables["params"]
    assert set(params) == {"encoder", "projection"}  # the ResNet's trunk name


# --- synthetic multitask ------------------------------------------------------------------


def test_multitask_targets_come_from_the_table_columns(tmp_path):
    c = _config("synthetic,demo", steps=1, n=6)
    train, val = data_lib.cases(c.data, str(tmp_path))
    assert not val and len(train) == 6
    table = tables.load_table(os.path.join(str(tmp_path), "data", "cohort"), task=None)
    rows = {case.id: case.meta for case in table.cases}
    for case in train:
        meta = rows[case.id]
        age, sex, dx = case.target
        assert age == pytest.approx(meta["age"])
        assert sex == ("F", "M").index(meta["sex"])
        assert dx == ("CN", "MCI", "AD").index(meta["diagnosis"])
    obj = data_lib.fit_objective(objectives.create(**c.objective), train)
    ages = np.asarray([case.target[0] for case in train])
    assert obj.target_mean[0] == pytest.approx(ages.mean())
    assert obj.target_std[0] == pytest.approx(ages.std())


def test_multitask_loss_falls(tmp_path):
    c = _config("synthetic,demo", steps=24, n=8)
    c.model.update(block_inplanes=(4, 8, 8, 16))
    workdir = str(tmp_path / "synthetic")
    loop.train_and_evaluate(c, workdir)
    _falls(_losses(workdir))
    for task in ("age_loss", "sex_loss", "diagnosis_loss"):
        assert np.all(np.isfinite(_losses(workdir, f"train/{task}")))
