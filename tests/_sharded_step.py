"""Run as a script with 8 fake CPU devices: a jitted, donated training step of SwinUNETR with
the batch sharded over ('data', 'fsdp') and parameters placed by the fsdp rules, checked
against the same step on one device. Prints one JSON line."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(__file__))
from _util import head_volume  # noqa: E402
from jaxbrain.models import SwinUNETR  # noqa: E402
from jaxbrain.parallel import RULES, batch_sharding, make_mesh, param_shardings  # noqa: E402


def main():
    assert jax.device_count() == 8, jax.devices()
    model = SwinUNETR(1, 2, feature_size=12)
    x = np.concatenate([head_volume((32, 32, 32), 1, seed=s) for s in range(8)])
    y = (x[..., 0] > 0.4).astype(np.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))["params"]
    params = nn.unbox(model.init(jax.random.key(0), x[:1])["params"])
    # SGD: updates proportional to gradients, so rounding-level differences stay that small
    # (Adam's first step is about lr * sign(g) and would turn them into sign flips).
    tx = optax.sgd(0.1, momentum=0.9)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(p, opt, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    # Reference: one device, no sharding.
    p1, o1 = params, tx.init(params)
    ref = []
    single = jax.jit(step)
    for _ in range(3):
        p1, o1, loss = single(p1, o1, x, y)
        ref.append(float(loss))

    mesh = make_mesh({"data": -1, "fsdp": 2})
    p_sh = param_shardings(boxed, mesh, RULES["fsdp"])
    params_s = jax.device_put(params, p_sh)
    opt_s = tx.init(params_s)  # moments follow the parameters; the step count is replicated
    o_sh = jax.tree_util.tree_map(
        lambda a: a.sharding if a.ndim else NamedSharding(mesh, P()), opt_s)
    opt_s = jax.device_put(opt_s, o_sh)
    b_sh = batch_sharding(mesh)
    xs, ys = jax.device_put(x, b_sh), jax.device_put(y, batch_sharding(mesh, ndim=4))
    sharded = jax.jit(step, in_shardings=(p_sh, o_sh, b_sh, batch_sharding(mesh, 4)),
                      out_shardings=(p_sh, o_sh, None), donate_argnums=(0, 1))
    got = []
    for _ in range(3):
        params_s, opt_s, loss = sharded(params_s, opt_s, xs, ys)
        got.append(float(loss))
    n_sharded = sum(1 for s in jax.tree_util.tree_leaves(p_sh) if any(a is not None for a in s.spec))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(params_s)))
    print(json.dumps({"ref": ref, "sharded": got, "mesh": dict(mesh.shape),
                      "batch_shards": len(xs.addressable_shards),
                      "sharded_params": n_sharded, "max_param_diff": diff}))


if __name__ == "__main__":
    main()
