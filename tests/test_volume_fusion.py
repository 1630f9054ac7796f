"""Volume Fusion: label maps against per-sample NumPy restatements of PyMIC's loops, their
distributions over many seeds, the fusion identity, foreground partners, and the loss against
a PyTorch restatement of PyMIC's (Dice + CE) / 2 with deep supervision."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen

from jaxbrain.objectives import create
from jaxbrain.objectives.segmentation import upsampled_outputs
from jaxbrain.objectives.volume_fusion import (VolumeFusion, block_layout, box_layout,
                                               render_blocks, render_boxes)

SPATIAL = (24, 40, 36)
SEEDS = 200


def _blocks_numpy(layout, spatial):
    """PyMIC's VolumeFusion loop over blocks, given the drawn sizes, offsets and classes."""
    (db, hb, wb), (od, oh, ow), (dn, hn, wn) = (np.asarray(layout[k]) for k in
                                                 ("sizes", "offsets", "counts"))
    table = np.asarray(layout["table"])
    mask = np.zeros(spatial, np.int32)
    for d in range(dn):
        for h in range(hn):
            for w in range(wn):
                k = table[d * hn * wn + h * wn + w]
                if k > 0:
                    mask[d * db + od:(d + 1) * db + od, h * hb + oh:(h + 1) * hb + oh,
                         w * wb + ow:(w + 1) * wb + ow] = k
    return mask


def _boxes_numpy(layout, spatial):
    """The paper-era volume_fusion loop: boxes painted in order, later ones on top."""
    mask = np.zeros(spatial, np.int32)
    starts, ends, k = (np.asarray(layout[n]) for n in ("starts", "ends", "k"))
    for j in range(int(layout["count"])):
        (d0, h0, w0), (d1, h1, w1) = starts[j], ends[j]
        mask[d0:d1, h0:h1, w0:w1] = k[j]
    return mask


def test_block_grid_matches_pymic_loop_and_its_distributions():
    lo, hi = (4, 6, 5), (12, 16, 14)
    draw = jax.jit(jax.vmap(lambda k: block_layout(k, SPATIAL, classes=5, fg_ratio=0.7,
                                                   block_min=lo, block_max=hi)))
    layouts = jax.device_get(draw(jax.random.split(jax.random.key(0), SEEDS)))
    maps = np.asarray(jax.jit(jax.vmap(lambda l: render_blocks(l, SPATIAL)))(layouts))
    sizes = layouts["sizes"]
    for s in range(SEEDS):
        one = {k: v[s] for k, v in layouts.items()}
        np.testing.assert_array_equal(maps[s], _blocks_numpy(one, SPATIAL))
        n = int(np.prod(one["counts"]))
        assert tuple(one["counts"]) == tuple(n_ // b for n_, b in zip(SPATIAL, one["sizes"]))
        assert np.all(one["offsets"] <= np.array(SPATIAL) % one["sizes"]) and np.all(one["offsets"] >= 0)
        fg = one["table"][:n] > 0
        assert fg.sum() == int(n * 0.7 + 1e-9)  # exactly floor(70%) of the blocks
        assert not one["table"][n:].any()
    # block sides uniform over [lo, hi] per axis; classes uniform over 1..4
    for a in range(3):
        values = np.bincount(sizes[:, a], minlength=hi[a] + 1)[lo[a]:]
        assert sizes[:, a].min() >= lo[a] and sizes[:, a].max() <= hi[a]
        assert np.all(values > 0)
        assert abs(sizes[:, a].mean() - (lo[a] + hi[a]) / 2) < 0.6
    classes = np.bincount(layouts["table"][layouts["table"] > 0], minlength=5)[1:]
    assert np.all(np.abs(classes / classes.sum() - 0.25) < 0.03)


def test_random_boxes_match_the_paper_loop_and_their_distributions():
    lo, hi, count = (3, 4, 4), (10, 20, 18), (2, 9)
    draw = jax.jit(jax.vmap(lambda k: box_layout(k, SPATIAL, classes=5, box_count=count,
                                                 box_min=lo, box_max=hi)))
    layouts = jax.device_get(draw(jax.random.split(jax.random.key(1), SEEDS)))
    maps = np.asarray(jax.jit(jax.vmap(lambda l: render_boxes(l, SPATIAL)))(layouts))
    for s in range(SEEDS):
        one = {k: v[s] for k, v in layouts.items()}
        np.testing.assert_array_equal(maps[s], _boxes_numpy(one, SPATIAL))
    assert layouts["count"].min() == count[0] and layouts["count"].max() == count[1]
    sides = layouts["sides"]
    for a in range(3):
        assert sides[:, :, a].min() == lo[a] and sides[:, :, a].max() == hi[a]
        assert abs(sides[:, :, a].mean() - (lo[a] + hi[a]) / 2) < 0.5
    assert np.all(layouts["starts"] >= 0) and np.all(layouts["ends"] <= np.array(SPATIAL))
    assert set(np.unique(layouts["k"])) == {1, 2, 3, 4}


@pytest.mark.parametrize("variant", ["blocks", "boxes"])
def test_fused_image_is_alpha_blend_and_label_is_k(variant):
    vf = VolumeFusion(variant=variant, block_min=(4, 4, 4), block_max=(12, 12, 12),
                      box_min=(4, 4, 4), box_max=(12, 20, 20))
    images = jax.random.normal(jax.random.key(2), (4, *SPATIAL, 2))
    fuse = jax.jit(vf.fuse_batch)
    fractions = []
    for seed in range(20):
        fused, labels = jax.device_get(fuse(jax.random.key(seed), images))
        x = np.asarray(images)
        fg = x.reshape(2, 2, *x.shape[1:])[:, ::-1].reshape(x.shape)  # the other crop of the pair
        alpha = labels.astype(np.float32)[..., None] / 4
        # equal to float32 rounding (XLA may fuse the blend into multiply-adds)
        np.testing.assert_allclose(fused, alpha * fg + (1 - alpha) * x, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(fused[labels == 0], x[labels == 0])
        np.testing.assert_array_equal(fused[labels == 4], fg[labels == 4])
        assert labels.min() >= 0 and labels.max() <= 4 and labels.dtype == np.int32
        np.testing.assert_array_equal(4 * alpha[..., 0], labels)
        fractions.append((labels > 0).mean())
    assert 0.05 < np.mean(fractions) < 0.95


def test_foreground_partners_stay_on_their_device():
    x = jnp.arange(8.0).reshape(8, 1, 1, 1, 1)
    pair = VolumeFusion(foreground="pair").for_mesh(2)
    roll = VolumeFusion(foreground="roll").for_mesh(2)
    assert np.asarray(pair.partners(x)).ravel().tolist() == [1, 0, 3, 2, 5, 4, 7, 6]
    assert np.asarray(roll.partners(x)).ravel().tolist() == [3, 0, 1, 2, 7, 4, 5, 6]
    with pytest.raises(ValueError, match="even number"):
        VolumeFusion(foreground="pair").for_mesh(8).partners(x)
    with pytest.raises(ValueError, match="variant"):
        create("volume_fusion", variant="cubes")
    with pytest.raises(ValueError, match="min <= max"):
        create("volume_fusion", block_min=(8, 8, 8), block_max=(4, 8, 8))


def test_loss_matches_pymic_dice_ce_with_deep_supervision():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    shapes = [(2, 8, 16, 16, 5), (2, 4, 8, 8, 5), (2, 2, 4, 4, 5), (2, 1, 2, 2, 5)]
    outputs = [rng.normal(size=s).astype(np.float32) for s in shapes]
    labels = rng.integers(0, 5, (2, 8, 16, 16)).astype(np.int32)
    loss, metrics = VolumeFusion().loss(tuple(jnp.asarray(o) for o in outputs), jnp.asarray(labels))

    # PyMIC: prediction upsampled to the label size (trilinear), softmax, Dice per class over
    # the batch (+1e-5), CE averaged over voxels, 0.5 each; scale weights 1/2^i normalised.
    y = F.one_hot(torch.from_numpy(labels).long(), 5).permute(0, 4, 1, 2, 3).float()
    total, weights = 0.0, [1.0, 0.5, 0.25, 0.125]
    for w, o in zip(weights, outputs):
        p = torch.from_numpy(o).permute(0, 4, 1, 2, 3)
        p = F.interpolate(p, size=labels.shape[1:], mode="trilinear")
        p = torch.softmax(p, 1).permute(0, 2, 3, 4, 1).reshape(-1, 5)
        g = y.permute(0, 2, 3, 4, 1).reshape(-1, 5)
        dice = (2 * (p * g).sum(0) + 1e-5) / (p.sum(0) + g.sum(0) + 1e-5)
        ce = (-(g * torch.log(p)).sum(1)).mean()
        total += w * (0.5 * (1 - dice.mean()) + 0.5 * ce)
    expected = float(total / sum(weights))
    assert abs(float(loss) - expected) < 1e-5 * max(1.0, abs(expected))
    assert set(metrics) >= {"loss", "dice_loss", "ce_loss", "dice_mean", "fused_fraction"}


def test_upsampling_equals_torch_trilinear():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(1, 2, 3, 5, 4)).astype(np.float32)
    for size in [(4, 6, 10), (8, 12, 20), (16, 24, 40)]:
        (_, up), = [upsampled_outputs((jnp.zeros((1, *size, 4)), jnp.asarray(x)), size)]
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 4, 1, 2, 3),
                                              size=size, mode="trilinear")
        np.testing.assert_allclose(np.asarray(up), ref.permute(0, 2, 3, 4, 1).numpy(), atol=1e-6)


@pytest.mark.parametrize("config", ["misfm_vf_swinunetr.py", "misfm_vf_pctnet.py"])
def test_vf_configs_wire_model_and_objective(config):
    """Each VF config's model, objective and train step fit together (traced, not run)."""
    import os
    from jaxbrain import models
    from jaxbrain.training import loop
    from jaxbrain.training.config import load_config_file
    from jaxbrain.training.optim import make_optimizer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = load_config_file(os.path.join(root, "configs", config), "demo")
    model, objective = models.from_config(c.model), create(**c.objective)
    tx, lr_fn = make_optimizer(c.optim, c.total_steps)
    x = jnp.zeros((4, *c.data.roi, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))
    variables = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                       flax.linen.unbox(variables))
    params = variables.pop("params")
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    if variables:
        state["model_state"] = variables
    step = loop.make_train_step(model, objective, tx, lr_fn, jnp.float32)
    new, metrics = jax.eval_shape(step, state, {"image": x})
    assert set(new) == set(state) and metrics["loss"].shape == ()
    assert {"dice_loss", "ce_loss", "dice_mean", "fused_fraction"} <= set(metrics)
