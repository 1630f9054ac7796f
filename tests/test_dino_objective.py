"""BrainDINO / DINOv3-style self-distillation (objective 'dino', model 'dino_student', the
optimizer's DINO options) against the originals.

Losses: the DINO CLS loss (centring and Sinkhorn-Knopp), the iBOT masked-patch loss, KoLeo
and the centre updates are compared with the dinov2 package's ``DINOLoss``,
``iBOTPatchLoss`` and ``KoLeoLoss`` on the same inputs, through the objective's own
``compute`` (an ``apply`` that returns fixed random outputs). DINOv3's weighting of the
global / local terms is its ``compute_losses`` formula. Gram anchoring is compared with
DINOv3's ``GramLoss`` formula written out in PyTorch here (the loss is not in an installed
package): normalise, ``x @ x^T``, ``MSELoss``. Schedules against dinov2's
``CosineScheduler``; crop geometry against the bounds of torchvision's RandomResizedCrop;
solarisation against torchvision's ``solarize`` rule written out in numpy (torchvision is
not installed).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from ml_collections import ConfigDict

from jaxbrain.objectives.dino import (Dino, block_mask, cosine_schedule, crop_box, gram_loss,
                                      sinkhorn_knopp, solarize)
from jaxbrain.training import loop
from jaxbrain.training.config import load_config_file
from jaxbrain.training.optim import layer_id, make_optimizer, num_layers, path_of

dinov2_loss = pytest.importorskip("dinov2.loss")
from dinov2.utils.utils import CosineScheduler  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "braindino_pretrain.py")
B, N, K, D, NL = 6, 16, 32, 8, 3  # samples, patches, prototypes, width, local crops


@pytest.fixture(scope="module", autouse=True)
def _process_group(tmp_path_factory):
    """iBOT's Sinkhorn-Knopp all-reduces unconditionally: a one-process gloo group,
    rendezvous through a file (no port to collide with other jobs on the machine)."""
    import torch.distributed as dist
    created = not dist.is_initialized()
    if created:
        store = tmp_path_factory.mktemp("gloo") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    if created:
        dist.destroy_process_group()


def _outputs(seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return {"s_g": f(2 * B, K), "s_l": f(NL * B, K), "t_g": f(2 * B, K),
            "s_cls": f(2 * B, D), "s_patch": f(2 * B * N, K), "t_patch": f(2 * B * N, K),
            "patches": f(2 * B, N, D)}


def _fake_apply(out):
    """An ``apply`` (the loop's signature) returning fixed outputs: the teacher when given
    variables, the student otherwise; patch logits gathered by ``patch_index``."""
    def apply(x, variables=None, *, train=True, masks=None, patch_index=None):
        teacher = variables is not None
        n = x.shape[0]
        if n == NL * B:
            return {"cls_logits": jnp.asarray(out["s_l"]), "cls": jnp.zeros((n, D)),
                    "patches": jnp.zeros((n, N, D))}
        res = {"cls_logits": jnp.asarray(out["t_g" if teacher else "s_g"]),
               "cls": jnp.asarray(out["s_cls"]), "patches": jnp.asarray(out["patches"])}
        if patch_index is not None:
            table = jnp.asarray(out["t_patch" if teacher else "s_patch"])
            res["patch_logits"] = table[patch_index]
        return res
    return apply


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_losses_and_centres_equal_dinov2(centering):
    out = _outputs(0)
    obj = Dino(total_steps=100, global_size=16, local_size=8, local_crops=NL, centering=centering,
               teacher_temp_warmup_steps=10, koleo_weight=0.1)
    rng = np.random.default_rng(1)
    state = {"teacher": {}, "center": jnp.asarray(rng.normal(size=K), jnp.float32) * 0.1,
             "ibot_center": jnp.asarray(rng.normal(size=K), jnp.float32) * 0.1}
    images = jnp.asarray(rng.normal(size=(B, 20, 20, 3)), jnp.float32)
    key, step = jax.random.key(3), 4
    loss, m, aux = obj.compute(_fake_apply(out), {"image": images}, key, state=state, step=step)
    masks, index, weight = obj.masks(jax.random.split(key)[1], 2 * B, N)
    masks, n_masked = np.asarray(masks), int(np.asarray(masks).sum())
    temp = float(CosineScheduler(0.07, 0.07, 100, warmup_iters=10, start_warmup_value=0.04)[step])
    assert float(m["teacher_temp"]) == pytest.approx(temp, rel=1e-6)

    dino, ibot = dinov2_loss.DINOLoss(K), dinov2_loss.iBOTPatchLoss(K)
    dino.center = torch.tensor(np.asarray(state["center"]))[None]
    ibot.center = torch.tensor(np.asarray(state["ibot_center"]))[None, None]
    t = torch.tensor(out["t_g"])
    t_masked = torch.tensor(out["t_patch"])[torch.tensor(masks.reshape(-1)).nonzero().flatten()]
    if centering == "centering":
        t_cls = dino.softmax_center_teacher(t, temp)
        t_patch = ibot.softmax_center_teacher(t_masked[None], temp)[0]
    else:
        t_cls = dino.sinkhorn_knopp_teacher(t, temp)
        t_patch = ibot.sinkhorn_knopp_teacher(t_masked, temp, torch.tensor(n_masked))
    s_g, s_l = torch.tensor(out["s_g"]).chunk(2), torch.tensor(out["s_l"]).chunk(NL)
    t_chunks = t_cls.chunk(2)
    local = dino(list(s_l), list(t_chunks)) / (NL * 2)
    glob = (dino([s_g[0]], [t_chunks[1]]) + dino([s_g[1]], [t_chunks[0]])) / 2
    np.testing.assert_allclose(float(m["dino_local"]), float(local), rtol=1e-5)
    np.testing.assert_allclose(float(m["dino_global"]), float(glob), rtol=1e-5)
    s_masked = torch.tensor(out["s_patch"])[torch.tensor(masks.reshape(-1)).nonzero().flatten()]
    ibot_ref = ibot.forward_masked(s_masked, t_patch, student_masks_flat=torch.tensor(masks))
    np.testing.assert_allclose(float(m["ibot"]), float(ibot_ref), rtol=1e-5)
    koleo = dinov2_loss.KoLeoLoss()
    koleo_ref = sum(koleo(c) for c in torch.tensor(out["s_cls"]).chunk(2))
    np.testing.assert_allclose(float(m["koleo"]) * 2, float(koleo_ref), rtol=1e-5)
    share = 2 * NL / (2 + 2 * NL)  # DINOv3's local share n_g n_l / (n_g (n_g - 1) + n_g n_l)
    total = share * local + (1 - share) * glob + ibot_ref + 0.1 * koleo_ref
    np.testing.assert_allclose(float(loss), float(total), rtol=1e-5)

    # Centre updates (applied after the step): DINOLoss / iBOTPatchLoss update_center.
    new = obj.update_state(state, params={}, aux=aux, step=step)
    dino.update_center(t)
    dino.apply_center_update()
    ibot.update_center(t_masked[None])
    ibot.apply_center_update()
    np.testing.assert_allclose(np.asarray(new["center"]), dino.center[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new["ibot_center"]), ibot.center[0, 0].numpy(),
                               rtol=1e-5, atol=1e-6)


def _sinkhorn_float64(logits, temp, iterations=3):
    """The originals' ``sinkhorn_knopp_teacher`` step by step in float64 (one process)."""
    q = np.exp(np.asarray(logits, np.float64) / temp).T  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(1, keepdims=True)
        q /= k
        q /= q.sum(0, keepdims=True)
        q /= b
    return (q * b).T


def test_sinkhorn_keeps_prototypes_far_below_the_maximum():
    temp, rng = 0.07, np.random.default_rng(7)
    ordinary = rng.normal(size=(12, K)).astype(np.float32)
    ordinary[3, 0] = 4.0  # the maximum
    # 6.15-6.3 below it: exp(-88) and less, 0 in float32 once shifted by the maximum; the
    # original keeps them (denormal after its division by the sum) and gives them their share.
    ordinary[:, 5] = rng.uniform(-2.3, -2.15, 12)
    ref = dinov2_loss.DINOLoss(K).sinkhorn_knopp_teacher(torch.tensor(ordinary), temp).numpy()
    assert ref[:, 5].sum() > 0.5
    ours = np.asarray(jax.jit(sinkhorn_knopp, static_argnums=2)(jnp.asarray(ordinary), temp, 3))
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ours, _sinkhorn_float64(ordinary, temp), rtol=2e-5, atol=1e-7)

    # Beyond the original's float32 range (10+ below the maximum: its row sums underflow to
    # 0, NaN; exp(9 / 0.07) overflows): the same algorithm in float64.
    extreme = ordinary.copy()
    extreme[:, 5] = rng.uniform(-12.0, -10.0, 12)
    extreme[:, 9] = rng.uniform(8.0, 9.0, 12)
    want = _sinkhorn_float64(extreme, temp)
    assert want[:, 5].sum() > 0.1 and np.isfinite(want).all()
    np.testing.assert_allclose(np.asarray(sinkhorn_knopp(jnp.asarray(extreme), temp)), want,
                               rtol=1e-4, atol=1e-7)

    # iBOT's padded buffer: padding rows (weight 0) whatever their logits leave the real ones
    # as the original computes them on the masked patches alone (and come out 0).
    valid = np.arange(16) < 11
    padded = np.concatenate([ordinary[:11], np.full((5, K), 30.0, np.float32)])
    out = np.asarray(sinkhorn_knopp(jnp.asarray(padded), temp, 3, jnp.asarray(valid)))
    ibot_ref = dinov2_loss.iBOTPatchLoss(K).sinkhorn_knopp_teacher(
        torch.tensor(padded[:11]), temp, torch.tensor(11)).numpy()
    assert np.isfinite(out).all() and not out[11:].any()
    np.testing.assert_allclose(out[:11], ibot_ref, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(out[:11], _sinkhorn_float64(padded[:11], temp), rtol=2e-5,
                               atol=1e-7)



@pytest.mark.parametrize("mode", ["random", "block"])
def test_masks_follow_dinov2_collate(mode):
    """int(p * n) crops masked, ratios stratified in mask_ratio, int(N * ratio) patches each
    (block masking: at most that many, the generator may stall); the buffer holds DINOv2's
    upper bound, weights 1 / count of the crop."""
    obj = Dino(total_steps=10, mask_probability=0.5, mask_ratio=(0.1, 0.5), mask_mode=mode)
    n_img, n = 12, 64
    for seed in range(3):
        masks, index, weight = (np.asarray(a) for a in obj.masks(jax.random.key(seed), n_img, n))
        counts = masks.sum(1)
        assert (counts > 0).sum() <= 6 and (counts == 0).sum() >= 6
        edges = np.linspace(0.1, 0.5, 7)
        got = np.sort(counts[counts > 0])
        lows = [int(n * lo) if mode == "random" else 1 for lo in edges[:-1]]
        assert all(lo <= c <= int(n * hi) for c, lo, hi in zip(got, lows, edges[1:]))
        assert len(index) == sum(int(n * e) for e in edges[1:])
        valid = weight > 0
        assert valid.sum() == counts.sum()
        np.testing.assert_array_equal(np.sort(index[valid]), np.flatnonzero(masks.reshape(-1)))
        np.testing.assert_allclose(weight[valid], 1.0 / counts[index[valid] // n])


def test_block_masks_match_dinov2_masking_generator():
    """The on-device generator against dinov2's MaskingGenerator (8 x 8 grid, at most 32
    patches a rectangle) over 300 draws of 20 patches: how often the target is reached and
    how many rows / columns the mask spans."""
    import importlib.util
    import random
    import dinov2
    path = os.path.join(os.path.dirname(dinov2.__file__), "data", "masking.py")
    spec = importlib.util.spec_from_file_location("dinov2_masking", path)  # without dinov2.data's
    masking = importlib.util.module_from_spec(spec)  # torchvision imports
    spec.loader.exec_module(masking)
    gen = masking.MaskingGenerator((8, 8), max_num_patches=32)
    random.seed(0)
    ref = np.stack([gen(20) for _ in range(300)])
    ours = np.asarray(jax.jit(jax.vmap(lambda k: block_mask(k, 20, 8, 8)))(
        jax.random.split(jax.random.key(0), 300)))
    assert ours.sum((1, 2)).max() <= 20
    stats = lambda m: np.array([(m.sum((1, 2)) == 20).mean(), m.any(2).sum(1).mean(),  # noqa: E731
                                m.any(1).sum(1).mean()])
    np.testing.assert_allclose(stats(ours), stats(ref), atol=0.3)
    assert abs(stats(ours)[0] - stats(ref)[0]) < 0.05


@pytest.mark.parametrize("img_level", [True, False])
def test_gram_equals_dinov3_formula(img_level):
    rng = np.random.default_rng(2)
    s, t = (rng.normal(size=(4, N, D)).astype(np.float32) for _ in range(2))
    obj = Dino(total_steps=10, gram_weight=1.0, gram_every=5, gram_img_level=img_level,
               batch_shards=2)
    got = float(obj.gram(jnp.asarray(s), jnp.asarray(t), 2))  # n_g = 2 crops of 2 samples

    def ref(a, b):  # DINOv3 GramLoss(apply_norm=True, remove_neg=False)
        a, b = F.normalize(torch.tensor(a), dim=-1), F.normalize(torch.tensor(b), dim=-1)
        return torch.nn.MSELoss()(a @ a.transpose(-1, -2), b @ b.transpose(-1, -2))

    if img_level:
        want = ref(s, t)
    else:  # per device: device d holds sample d of both crops
        group = lambda x, d: x.reshape(2, 2, N, D)[:, d].reshape(-1, D)  # noqa: E731
        want = (ref(group(s, 0), group(t, 0)) + ref(group(s, 1), group(t, 1))) / 2
    assert got == pytest.approx(float(want), rel=1e-5)
    assert float(gram_loss(jnp.asarray(s), jnp.asarray(s))) == 0.0


def test_teacher_ema_and_schedules_match_cosine_scheduler():
    total = 50
    obj = Dino(total_steps=total, teacher_temp_warmup_steps=20, gram_weight=1.0, gram_every=7,
               gram_start=3)
    mom = CosineScheduler(0.992, 1.0, total)
    temp = CosineScheduler(0.07, 0.07, total, warmup_iters=20, start_warmup_value=0.04)
    lr = CosineScheduler(1e-3, 1e-6, total, warmup_iters=5)
    wd = CosineScheduler(0.04, 0.4, total)
    frozen = CosineScheduler(1e-3, 1e-6, total, warmup_iters=5, freeze_iters=3)
    for s in range(0, total + 3):
        assert float(obj.momentum_at(s)) == pytest.approx(mom[s], abs=1e-7)
        assert float(obj.teacher_temp_at(s)) == pytest.approx(temp[s], abs=1e-7)
        assert float(cosine_schedule(s, 1e-3, 1e-6, total, warmup=5)) == pytest.approx(lr[s], abs=1e-9)
        assert float(cosine_schedule(s, 0.04, 0.4, total)) == pytest.approx(wd[s], abs=1e-7)
        assert float(cosine_schedule(s, 1e-3, 1e-6, total, 5, 0.0, 3)) == pytest.approx(frozen[s], abs=1e-9)
    params = {"w": jnp.ones(3)}
    state = {"teacher": {"w": jnp.zeros(3)}, "center": jnp.zeros(2), "ibot_center": jnp.zeros(2),
             "gram": {"w": jnp.full(3, 5.0)}}
    aux = {"center": jnp.ones(2), "ibot_center": jnp.ones(2)}
    new = obj.update_state(state, params=params, aux=aux, step=10)
    m = mom[10]
    np.testing.assert_allclose(new["teacher"]["w"], (1 - m) * np.ones(3), rtol=1e-5)
    np.testing.assert_allclose(new["gram"]["w"], 5.0)  # refreshed after steps 3, 10, 17, ...
    new = obj.update_state(state, params=params, aux=aux, step=9)
    np.testing.assert_allclose(new["gram"]["w"], new["teacher"]["w"])


def test_optimizer_dino_options():
    """AdamW with zero gradients moves each parameter by -lr * wd(t) * p: wd the cosine
    0.04 -> 0.4, none on biases / norms / LayerScale gammas; the last layer is held for
    its frozen steps; the patch embedding at 0.2 x lr; clipping per top-level subtree."""
    params = {"encoder": {"patch_embedding": {"kernel": jnp.ones(2), "bias": jnp.ones(2)},
                          "blocks_0": {"norm1": {"scale": jnp.ones(2)}, "ls1": {"gamma": jnp.ones(2)},
                                       "mlp": {"kernel": jnp.ones(2)}}},
              "dino_head": {"last_layer": {"kernel": jnp.ones(2)}, "mlp_0": {"kernel": jnp.ones(2)}}}
    total, lr = 20, 0.5
    cfg = ConfigDict(dict(name="adamw", lr=lr, schedule="constant", weight_decay=0.04,
                          weight_decay_end=0.4, decay_mask="dino", freeze_last_layer_steps=3,
                          lr_scale={"encoder/patch_embedding": 0.2}, grad_clip=3.0,
                          clip_per_subtree=True))
    tx, _ = make_optimizer(cfg, total)
    state = tx.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    wd = CosineScheduler(0.04, 0.4, total)
    for step in range(5):
        upd, state = tx.update(zeros, state, params)
        flat = {path_of(kp): float(v[0]) for kp, v in jax.tree_util.tree_flatten_with_path(upd)[0]}
        assert flat["encoder/blocks_0/mlp/kernel"] == pytest.approx(-lr * wd[step], rel=1e-5)
        assert flat["encoder/patch_embedding/kernel"] == pytest.approx(-0.2 * lr * wd[step], rel=1e-5)
        for p in ("encoder/patch_embedding/bias", "encoder/blocks_0/norm1/scale",
                  "encoder/blocks_0/ls1/gamma"):
            assert flat[p] == 0.0
        held = flat["dino_head/last_layer/kernel"]
        assert held == (0.0 if step < 3 else pytest.approx(-lr * wd[step], rel=1e-5))
    # Clipping per subtree: each top-level subtree's gradient norm is capped at 3 by itself.
    clip_tx, _ = make_optimizer(ConfigDict(dict(name="sgd", lr=1.0, momentum=0.0, schedule="constant",
                                                grad_clip=3.0, clip_per_subtree=True)), 10)
    grads = {"a": {"w": jnp.full(4, 10.0)}, "b": {"w": jnp.full(4, 0.1)}}
    upd, _ = clip_tx.update(grads, clip_tx.init(grads), grads)
    assert float(optax.global_norm(upd["a"])) == pytest.approx(3.0, rel=1e-5)
    np.testing.assert_allclose(upd["b"]["w"], -0.1, rtol=1e-6)
    with pytest.raises(ValueError, match="last_layer"):
        make_optimizer(ConfigDict(dict(name="adamw", lr=1.0, freeze_last_layer_steps=2)), 10)[0].init(
            {"w": jnp.ones(2)})


def test_layer_ids_of_the_student_follow_dinov2_param_groups():
    """Tokens (CLS, storage, mask) and the patch embedding are layer 0, block k is k + 1,
    the heads and the final norm L + 1 (factor 1), as get_vit_lr_decay_rate."""
    paths = ["encoder/cls_token", "encoder/registers", "encoder/mask_token",
             "encoder/patch_embedding/kernel", "encoder/blocks_0/attn/qkv/kernel",
             "encoder/blocks_1/mlp/fc1/kernel", "encoder/norm/scale", "dino_head/mlp_0/kernel",
             "ibot_head/last_layer/kernel"]
    L = num_layers(paths)
    assert L == 2
    assert [layer_id(p, L) for p in paths] == [0, 0, 0, 0, 1, 2, 3, 3, 3]


def test_crop_geometry_within_bounds():
    """Over many keys: the crop lies in the image, its area fraction in the scale range and
    its aspect ratio in (3/4, 4/3) up to the rounding of the sides; torchvision's central
    fallback when no draw fits."""
    h, w = 40, 48
    keys = jax.random.split(jax.random.key(0), 400)
    for scale in ((0.32, 1.0), (0.05, 0.32)):
        top, left, ch, cw = (np.asarray(a) for a in jax.vmap(
            lambda k: crop_box(k, h, w, scale, (3 / 4, 4 / 3)))(keys))
        assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
        frac = ch * cw / (h * w)
        tol = (ch + cw + 1) / (h * w)  # sides rounded to integers
        assert (frac >= scale[0] - tol).all() and (frac <= scale[1] + tol).all()
        ratio = cw / ch
        assert (ratio >= 3 / 4 * (1 - 1 / ch.min()) - 0.05).all()
        assert (ratio <= 4 / 3 * (1 + 1 / ch.min()) + 0.05).all()
        assert len(set(zip(top.tolist(), left.tolist(), ch.tolist()))) > 50
    # A 10 x 100 image cannot hold 90-100% of its area at ratio <= 4/3: central 10 x 13 crop.
    top, left, ch, cw = (int(a) for a in crop_box(jax.random.key(1), 10, 100, (0.9, 1.0), (3 / 4, 4 / 3)))
    assert (top, left, ch, cw) == (0, (100 - 13) // 2, 10, 13)
    obj = Dino(total_steps=10, global_size=16, local_size=8, local_crops=3)
    g, loc = obj.crops(jnp.asarray(np.random.default_rng(0).normal(size=(2, h, w, 3)), jnp.float32),
                       jax.random.key(2))
    assert g.shape == (2, 2, 16, 16, 3) and loc.shape == (3, 2, 8, 8, 3)
    assert not np.allclose(g[0], g[1]) and np.isfinite(np.asarray(loc)).all()


def _torchvision_solarize(x):
    """torchvision's ``solarize(img, 128)`` on uint8 (``255 - x`` where ``x >= 128``) after
    mapping the range of ``x`` onto 0-255, mapped back."""
    lo, hi = x.min(), x.max()
    u = (x - lo) / (hi - lo) * 255
    return lo + np.where(u >= 128, 255 - u, u) / 255 * (hi - lo)


def test_solarize_is_torchvision_rule_on_the_crop_range():
    ramp = np.arange(256, dtype=np.float32).reshape(16, 16, 1)  # every uint8 value, 128 included
    got = np.asarray(solarize(jnp.asarray(ramp)))
    np.testing.assert_array_equal(got, np.where(ramp >= 128, 255 - ramp, ramp))
    z = np.random.default_rng(0).normal(size=(12, 12, 3)).astype(np.float32)  # z-scored slice
    got = np.asarray(solarize(jnp.asarray(z)))
    np.testing.assert_allclose(got, _torchvision_solarize(z.astype(np.float64)), atol=1e-5)
    assert got.min() >= z.min() and got.max() <= z.max() and not np.allclose(got, z)
    flat = jnp.full((4, 4, 3), 1.5)
    np.testing.assert_array_equal(np.asarray(solarize(flat)), 1.5)
    with pytest.raises(ValueError, match="solarize_p"):
        Dino(total_steps=10, solarize_p=(0.0, 0.2))
    with pytest.raises(ValueError, match="solarize_threshold"):
        Dino(total_steps=10, solarize_threshold=128)


def _crop_fn(obj, images):
    return jax.jit(jax.vmap(lambda k: obj.crops(images, k)))


def test_solarisation_of_the_crops():
    """p = 1 solarises a crop by its own range after the other augmentations, p = 0 leaves
    it as without solarisation; over many keys the originals' (0, 0.2, 0) solarises about
    a fifth of the second global crops and nothing else."""
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 20, 20, 3)), jnp.float32)
    base = dict(total_steps=10, global_size=16, local_size=8, local_crops=2)
    keys = jax.random.split(jax.random.key(0), 300)
    g0, l0 = (np.asarray(a) for a in _crop_fn(Dino(**base), images)(keys[:4]))
    g1, l1 = (np.asarray(a) for a in _crop_fn(Dino(**base, solarize_p=(0.0, 1.0, 0.0)),
                                               images)(keys[:4]))
    np.testing.assert_array_equal(g1[:, 0], g0[:, 0])
    np.testing.assert_array_equal(l1, l0)
    want = np.stack([[_torchvision_solarize(c.astype(np.float64)) for c in k] for k in g0[:, 1]])
    np.testing.assert_allclose(g1[:, 1], want, atol=1e-5)

    g0, l0 = (np.asarray(a) for a in _crop_fn(Dino(**base), images)(keys))
    g, loc = (np.asarray(a) for a in _crop_fn(Dino(**base, solarize_p=(0.0, 0.2, 0.0)),
                                              images)(keys))
    changed = lambda a, b: np.abs(a - b).reshape(*a.shape[:3], -1).max(-1) > 0  # noqa: E731
    rate = changed(g, g0).mean((0, 2))  # per global crop over keys and images
    assert rate[0] == 0.0 and abs(rate[1] - 0.2) < 0.05, rate
    assert not changed(loc, l0).any()


def _losses(workdir, key="train/loss"):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


def test_demo_config_trains_and_resumes(tmp_path):
    """The demo config at test size: finite losses that fall, the DINO metrics logged, and a
    run stopped half-way resumes to the same teacher as an uninterrupted one."""
    from jaxbrain import runs  # noqa: F401
    c = load_config_file(CONFIG, "demo")
    c.data.update(slice_size=32, slices_per_volume=4, volumes_in_memory=2)
    c.data.collections[0]["synthetic"].update(n=2, shape=(32, 36, 32))
    c.model.update(img_size=32, hidden_size=32, mlp_dim=64)
    c.objective.update(global_size=32, local_size=16, local_crops=2)
    c.batch_size, c.total_steps, c.log_every, c.ckpt_every = 4, 24, 1, 24
    c.optim.update(lr=2e-3, warmup_steps=2, freeze_last_layer_steps=2)
    c.progress = False
    full = str(tmp_path / "full")
    loop.train_and_evaluate(c, full)
    losses = _losses(full)
    assert len(losses) == 24 and np.isfinite(losses).all()
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    for k in ("dino_local", "dino_global", "ibot", "koleo", "teacher_temp", "momentum"):
        assert np.isfinite(_losses(full, f"train/{k}")).all()
    half = str(tmp_path / "half")
    loop.train_and_evaluate(c, half, stop_after=12)
    loop.train_and_evaluate(c, half)
    np.testing.assert_allclose(_losses(half)[-12:], losses[-12:], rtol=1e-5)
