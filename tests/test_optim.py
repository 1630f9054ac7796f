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
