"""BrainSegFounder's SSL objective: on-device augmentation properties over many seeds, the
losses against PyTorch formulas of the original, and the loop on demo data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxbrain.objectives import ssl

SPATIAL = (32, 48, 48)
BOXES = dict(max_drop=0.3, box_min=0.05, box_max=0.25)


def test_rotation_matches_torch_rot90_on_the_original_layout():
    x = np.random.default_rng(0).normal(size=(8, 10, 10, 2)).astype(np.float32)
    for k in range(4):
        ours = np.asarray(ssl.rotate(jnp.asarray(x), jnp.int32(k)))
        # the original: x (C, D, H, W).rot90(k, (2, 3))
        ref = torch.from_numpy(x.transpose(3, 0, 1, 2)).rot90(k, (2, 3)).numpy().transpose(1, 2, 3, 0)
        np.testing.assert_array_equal(ours, ref)


def test_boxes_follow_the_configured_distribution():
    keys = jax.random.split(jax.random.key(0), 400)
    draw = jax.vmap(lambda k: ssl.draw_boxes(k, SPATIAL, max_boxes=ssl.boxes_needed(SPATIAL, 0.3, 0.05, 0.25), **BOXES))
    starts, ends, active, target = jax.device_get(draw(keys))
    n = np.asarray(SPATIAL)
    tol, hi = (0.05 * n).astype(int), (0.25 * n).astype(int)
    assert (starts >= 0).all() and (starts < n - tol).all()
    sides = ends - starts
    assert (sides <= hi - 1).all() and (ends <= n).all()
    unclipped = ends < n
    assert (sides[unclipped] >= np.broadcast_to(tol, sides.shape)[unclipped]).all()
    # painting stops once the summed volume reaches the target: the last box crosses it
    volume = sides.prod(-1)
    painted = (volume * active).sum(-1)
    last = np.array([v[a.sum() - 1] for v, a in zip(volume, active)])
    assert (painted >= target).all() and (painted - last < target).all()
    assert active[:, 0].all() and not active[:, -1].any()  # the bound is never reached
    frac = target / np.prod(SPATIAL)
    assert frac.min() >= 0 and frac.max() < 0.3 and abs(frac.mean() - 0.15) < 0.02


def _union(starts, ends, active):
    mask = np.zeros(SPATIAL, bool)
    for s, e, a in zip(starts, ends, active):
        if a:
            mask[s[0]:e[0], s[1]:e[1], s[2]:e[2]] = True
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_cutout_paints_exactly_the_drawn_boxes(seed):
    key = jax.random.key(seed)
    x = jnp.full(SPATIAL + (2,), 5.0)
    k_boxes, _ = jax.random.split(key)
    starts, ends, active, _ = jax.device_get(ssl.draw_boxes(
        k_boxes, SPATIAL, max_boxes=ssl.boxes_needed(SPATIAL, 0.3, 0.05, 0.25), **BOXES))
    union = _union(starts, ends, active)
    noise = np.asarray(ssl.cutout(x, key, **BOXES))
    changed = (noise != 5.0).any(-1)
    np.testing.assert_array_equal(changed, union)
    assert noise[union].min() >= 0 and noise[union].max() <= 1  # rescaled noise
    pasted = np.asarray(ssl.cutout(x, key, jnp.full_like(x, 7.0), **BOXES))
    np.testing.assert_array_equal(pasted[union], 7.0)
    np.testing.assert_array_equal(pasted[~union], 5.0)


def test_views_rotate_and_paste_only_within_a_device_group():
    b, groups = 8, 2
    x = jnp.broadcast_to(100.0 + jnp.arange(b, dtype=jnp.float32)[:, None, None, None, None],
                         (b,) + SPATIAL + (1,))
    seen_paste = 0
    for seed in range(10):
        rotated, aug, labels = jax.device_get(
            ssl.make_views(x, jax.random.key(seed), groups=groups, **BOXES))
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(rotated, np.asarray(x))  # constant crops: rotation-free
        for i in range(b):
            values = set(np.unique(aug[i][aug[i] >= 100]).tolist())
            group = {100.0 + j for j in range(b) if j // (b // groups) == i // (b // groups)}
            assert values <= group
            seen_paste += len(values - {100.0 + i}) > 0
    assert seen_paste > 0


def test_rotation_labels_match_the_rotated_targets():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4,) + SPATIAL + (1,)), jnp.float32)
    rotated, _, labels = ssl.make_views(x, jax.random.key(3), **BOXES)
    for i in range(4):
        np.testing.assert_array_equal(rotated[i], np.rot90(np.asarray(x[i]), int(labels[i]), axes=(1, 2)))


def _torch_contrast(x_i, x_j, temperature=0.5):
    from torch_ssl import nt_xent
    return nt_xent(x_i, x_j, temperature)


def test_nt_xent_matches_the_original_formula_global_and_local():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(8, 16)).astype(np.float32)
    ours = float(ssl.nt_xent(jnp.asarray(a), jnp.asarray(b), 0.5))
    ref = float(_torch_contrast(torch.from_numpy(a), torch.from_numpy(b)))
    assert ours == pytest.approx(ref, rel=1e-5)
    local = float(ssl.nt_xent(jnp.asarray(a), jnp.asarray(b), 0.5, groups=2))
    per_device = np.mean([float(_torch_contrast(torch.from_numpy(a[s]), torch.from_numpy(b[s])))
                          for s in (slice(0, 4), slice(4, 8))])
    assert local == pytest.approx(per_device, rel=1e-5)


def test_ssl_loss_terms():
    rng = np.random.default_rng(2)
    out = {"rotation": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
           "contrastive": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
           "reconstruction": jnp.asarray(rng.normal(size=(4, 8, 8, 8, 1)), jnp.float32)}
    target = jnp.asarray(rng.normal(size=(4, 8, 8, 8, 1)), jnp.float32)
    labels = jnp.asarray([0, 3, 1, 1])
    obj = ssl.SSL(rotation=0.5, contrastive=2.0, reconstruction=3.0)
    total, m = obj.loss(out, target, labels)
    ce = torch.nn.CrossEntropyLoss()(torch.tensor(np.asarray(out["rotation"])),
                                     torch.tensor(np.asarray(labels), dtype=torch.long))
    emb = np.asarray(out["contrastive"]).reshape(2, 2, 8)  # views of a crop adjacent
    con = _torch_contrast(torch.from_numpy(emb[:, 0]), torch.from_numpy(emb[:, 1]))
    l1 = np.abs(np.asarray(out["reconstruction"]) - np.asarray(target)).mean()
    assert float(m["rotation_loss"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(m["contrastive_loss"]) == pytest.approx(float(con), rel=1e-5)
    assert float(m["reconstruction_loss"]) == pytest.approx(l1, rel=1e-5)
    assert float(total) == pytest.approx(0.5 * float(ce) + 2 * float(con) + 3 * l1, rel=1e-5)
    with pytest.raises(ValueError, match="negatives"):
        ssl.SSL(negatives="everywhere")


def test_too_few_boxes_is_an_error():
    assert ssl.boxes_needed((96, 96, 96), 0.3, 0.05, 0.25) < 256
    with pytest.raises(ValueError, match="max_boxes"):
        ssl.cutout(jnp.zeros((96, 96, 96, 1)), jax.random.key(0), max_boxes=20)
