"""Model-level training properties: remat gives the same gradients, bf16 stays close, dropout
needs a key, every parameter has logical axis names. (The training loop, its loss curve and
multi-device runs are tested in test_train.py.)"""

from __future__ import annotations


import numpy as np
import jax
import jax.numpy as jnp
import optax
import flax.linen as nn

from jaxbrain.models import SwinUNETR

from _util import head_volume, random_params, rel_l2

SHAPE = (32, 32, 32)


def _data():
    x = np.concatenate([head_volume(SHAPE, 1, seed=s) for s in range(2)])
    return x, (x[..., 0] > 0.4).astype(np.int32)


def _loss(model, params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_remat_gives_the_same_gradients_and_bf16_stays_close():
    x, y = _data()
    with jax.enable_x64(True):  # exact comparison: float64 leaves no rounding noise
        base = SwinUNETR(1, 2, feature_size=12, depths=(1, 1, 1, 1), dtype=jnp.float64,
                         param_dtype=jnp.float64)
        x64 = x.astype(np.float64)
        params = jax.tree_util.tree_map(lambda a: a.astype(np.float64), random_params(base, seed=1))
        grad = jax.jit(jax.grad(lambda p, m: _loss(m, p, x64, y)), static_argnums=1)
        g0 = grad(params, base)
        g1 = grad(params, base.clone(remat=True))
        for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
            # (at 32^3 the bottleneck is one voxel, so encoder10's gradient is exactly zero)
            assert a.dtype == jnp.float64
            assert np.linalg.norm(np.asarray(b) - np.asarray(a)) <= 1e-10 * np.linalg.norm(a)
    base = SwinUNETR(1, 2, feature_size=12, depths=(1, 1, 1, 1))
    params = random_params(base, seed=1)
    f32 = jax.jit(lambda p: base.apply({"params": p}, x))(params)
    bf16 = jax.jit(lambda p: base.clone(dtype=jnp.bfloat16).apply({"params": p}, x))(params)
    assert bf16.dtype == jnp.float32 and rel_l2(bf16, f32) < 5e-2


def test_dropout_and_drop_path_need_a_key_and_change_outputs():
    x, _ = _data()
    model = SwinUNETR(1, 2, feature_size=12, drop_rate=0.1, dropout_path_rate=0.2)
    from jaxbrain.training.loop import init_variables  # only the initialisers are compiled
    params = init_variables(model, jax.ShapeDtypeStruct(x[:1].shape, jnp.float32),
                            jax.random.key(2), None)["params"]
    train = jax.jit(lambda key: model.apply({"params": params}, x, train=True, rngs={"dropout": key}))
    assert rel_l2(train(jax.random.key(0)), train(jax.random.key(1))) > 1e-3
    infer = jax.jit(lambda: model.apply({"params": params}, x))
    np.testing.assert_array_equal(infer(), infer())


def test_every_parameter_has_logical_axis_names():
    model = SwinUNETR(1, 2, feature_size=12, use_v2=True)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *SHAPE, 1))))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda l: isinstance(l, nn.Partitioned))
    assert leaves and all(isinstance(l, nn.Partitioned) and len(l.names) == l.value.ndim for l in leaves)
