"""Optimizer construction: gradient accumulation against single large-batch updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from jaxbrain.training.optim import make_optimizer


def _grads(seed):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_grad_accum_equals_mean_gradient_update(name):
    """k micro-steps with accumulation == one update on the mean gradient; the schedule is
    counted in loop steps, so the reference counts updates with warm-up and length / k."""
    k, updates = 3, 4
    base = dict(name=name, lr=0.1, weight_decay=0.01, schedule="warmup_cosine", grad_clip=1.0)
    acc_tx, lr_fn = make_optimizer(ConfigDict(dict(base, warmup_steps=6, grad_accum=k)),
                                   k * updates)
    ref_tx, _ = make_optimizer(ConfigDict(dict(base, warmup_steps=6 // k)), updates)
    params0 = _grads(100)
    acc_p, acc_s = params0, acc_tx.init(params0)
    ref_p, ref_s = params0, ref_tx.init(params0)
    for u in range(updates):
        micro = [_grads(10 * u + i) for i in range(k)]
        for i, g in enumerate(micro):
            before = acc_p
            upd, acc_s = acc_tx.update(g, acc_s, acc_p)
            acc_p = optax.apply_updates(acc_p, upd)
            if i < k - 1:  # no update until the k-th micro-batch
                jax.tree_util.tree_map(np.testing.assert_array_equal, acc_p, before)
        mean = jax.tree_util.tree_map(lambda *xs: sum(xs) / k, *micro)
        upd, ref_s = ref_tx.update(mean, ref_s, ref_p)
        ref_p = optax.apply_updates(ref_p, upd)
        for key in params0:
            np.testing.assert_allclose(acc_p[key], ref_p[key], rtol=1e-5, atol=1e-6)
    assert float(lr_fn(6)) == pytest.approx(0.1)
    assert not np.allclose(acc_p["w"], params0["w"])


def test_grad_accum_rejects_zero():
    with pytest.raises(ValueError, match="grad_accum"):
        make_optimizer(ConfigDict(dict(name="adamw", lr=1e-3, grad_accum=0)), 10)


# --- fine-tuning: frozen prefixes and layer-wise learning-rate decay -------------------------

from flax import traverse_util  # noqa: E402

from jaxbrain import models  # noqa: E402
from jaxbrain.training.optim import layer_id, num_layers, path_of  # noqa: E402


def _random_params(model, shape, seed=0):
    """Random parameters of ``model`` for inputs ``shape`` (shapes only traced, not compiled)."""
    abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape)), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype),
                                  abstract["params"])


def _flat(tree):
    return {path_of(kp): v for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


TINY_VIT = dict(name="vit", in_channels=1, img_size=16, patch_size=8, hidden_size=16, depth=3,
                num_heads=2, mlp_dim=32, num_classes=2)
TINY_RESNET = dict(name="resnet", in_channels=1, block="basic", layers=(1, 1, 1, 1),
                   block_inplanes=(4, 4, 4, 4), conv1_t_size=3, conv1_t_stride=2, num_classes=2)


@pytest.mark.parametrize("freeze", ["encoder", ("encoder/blocks_0", "encoder/patch_embedding")])
def test_freeze_keeps_parameters_bitwise(freeze):
    """Frozen prefixes get zero updates (AdamW with weight decay and clipping: bitwise the
    same after steps); the rest trains."""
    model = models.from_config(TINY_VIT)
    params = _random_params(model, (1, 16, 16, 16, 1))
    cfg = ConfigDict(dict(name="adamw", lr=0.1, weight_decay=0.1, schedule="constant",
                          grad_clip=1.0, freeze=freeze))
    tx, _ = make_optimizer(cfg, 10, encoder_name=models.encoder_name(model))
    state = tx.init(params)
    p = params
    for step in range(3):
        grads = jax.tree_util.tree_map(jnp.ones_like, p)
        upd, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, upd)
    before, after = _flat(params), _flat(p)
    prefixes = ("encoder",) if freeze == "encoder" else freeze
    frozen = [k for k in before if any(k.startswith(f + "/") for f in prefixes)]
    assert frozen and len(frozen) < len(before)
    for k in before:
        if k in frozen:
            assert np.asarray(after[k]).tobytes() == np.asarray(before[k]).tobytes(), k
        else:
            assert not np.array_equal(after[k], before[k]), k


def test_freeze_unknown_prefix_names_it():
    model = models.from_config(TINY_VIT)
    params = _random_params(model, (1, 16, 16, 16, 1))
    tx, _ = make_optimizer(ConfigDict(dict(name="sgd", lr=0.1, freeze=["encoder/blocks_9"])), 10)
    with pytest.raises(ValueError, match="blocks_9"):
        tx.init(params)


@pytest.mark.parametrize("config,shape,expected", [
    (TINY_VIT, (1, 16, 16, 16, 1),  # L = 3 blocks
     {"encoder/patch_embedding": 0, "encoder/cls_token": 0, "encoder/position_embeddings": 0,
      "encoder/blocks_0": 1, "encoder/blocks_2": 3, "encoder/norm": 4, "head": 4}),
    (TINY_RESNET, (1, 16, 16, 16, 1),  # L = 4 stages
     {"encoder/conv1": 0, "encoder/bn1": 0, "encoder/layer1_0": 1, "encoder/layer4_0": 4,
      "fc": 5}),
])
def test_layer_decay_scales_each_leaf(config, shape, expected):
    """SGD without momentum, constant lr: each leaf moves by -lr * decay ** (L + 1 - id) * g."""
    decay, lr = 0.5, 0.1
    model = models.from_config(config)
    params = _random_params(model, shape)
    flat = _flat(params)
    num = num_layers(list(flat))
    assert num == max(expected.values()) - 1
    tx, _ = make_optimizer(ConfigDict(dict(name="sgd", lr=lr, momentum=0.0, schedule="constant",
                                           layer_decay=decay)), 10)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    seen = set()
    for path, u in _flat(upd).items():
        lid = layer_id(path, num)
        for prefix, want in expected.items():
            if path.startswith(prefix + "/") or path == prefix:
                assert lid == want, path
                seen.add(prefix)
        np.testing.assert_allclose(np.asarray(u), -lr * decay ** (num + 1 - lid), rtol=1e-6,
                                   err_msg=path)
    assert seen == set(expected)


# --- per-parameter learning-rate factors and the poly schedule ------------------------------


def test_lr_scale_multiplies_updates_by_longest_prefix():
    """Plain SGD: each leaf moves by -lr * factor * grad, the factor of the longest matching
    prefix ({"encoder": 0.1, "encoder/patch": 0.2}), 1 outside every prefix."""
    params = {"encoder": {"patch": {"w": jnp.ones((2, 3))}, "blocks_0": {"w": jnp.ones(3)}},
              "decoder": {"w": jnp.ones(4)}}
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 2.0), params)
    cfg = ConfigDict(dict(name="sgd", lr=0.5, momentum=0.0, schedule="constant",
                          lr_scale={"encoder": 0.1, "encoder/patch": 0.2}))
    tx, _ = make_optimizer(cfg, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["encoder"]["patch"]["w"], -0.5 * 0.2 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["encoder"]["blocks_0"]["w"], -0.5 * 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["decoder"]["w"], -0.5 * 2.0, rtol=1e-6)


def test_lr_scale_names_unknown_prefix():
    tx, _ = make_optimizer(ConfigDict(dict(name="adamw", lr=1e-3, lr_scale={"encodr": 0.1})), 10)
    with pytest.raises(ValueError, match="lr_scale: 'encodr' matches no parameter"):
        tx.init({"encoder": {"w": jnp.ones(2)}})


def test_poly_schedule_closed_form():
    """nnU-Net's poly decay lr * (1 - t / T) ** 0.9, after an optional linear warm-up."""
    from jaxbrain.training.optim import schedule
    lr = schedule(ConfigDict(dict(lr=0.01, schedule="poly")), 100)
    for t in (0, 1, 37, 99, 100):
        assert float(lr(t)) == pytest.approx(0.01 * (1 - t / 100) ** 0.9, rel=1e-5, abs=1e-9)
    warm = schedule(ConfigDict(dict(lr=0.01, schedule="poly", warmup_steps=10, power=2.0)), 110)
    assert float(warm(5)) == pytest.approx(0.005)
    for t in (10, 60, 110):
        assert float(warm(t)) == pytest.approx(0.01 * (1 - (t - 10) / 100) ** 2, rel=1e-5, abs=1e-9)
