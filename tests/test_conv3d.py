"""The CPU 3x3x3 convolution equals XLA's convolution, forward and backward, on every path
(depth-folded conv2d, few-input-channel rows, few-output-channel rows; both kernel-gradient
branches), odd and non-cubic sizes, batch > 1."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from jaxbrain.models.conv3d import conv3x3x3_cpu, conv3x3x3_xla

from _util import rel_l2


@pytest.mark.parametrize("shape,cin,cout", [
    ((1, 9, 7, 11), 12, 24),    # fold-depth forward; dk shifts x
    ((2, 16, 12, 20), 24, 12),  # fold-depth forward; dk shifts dy
    ((1, 70, 6, 5), 24, 48),    # deep enough to chunk the depth slabs when large
    ((2, 8, 10, 6), 4, 24),     # few input channels: row im2col
    ((1, 10, 8, 12), 40, 2),    # few output channels: multiply first
])
def test_matches_xla_forward_and_gradients(shape, cin, cout):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(*shape, cin)).astype(np.float32))
    k = jnp.asarray((0.05 * rng.normal(size=(3, 3, 3, cin, cout))).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(*shape, cout)).astype(np.float32))
    y_ref, vjp_ref = jax.vjp(conv3x3x3_xla, x, k)
    y, vjp = jax.vjp(jax.jit(conv3x3x3_cpu), x, k)
    assert y.shape == y_ref.shape and rel_l2(y, y_ref) < 1e-5
    for a, b in zip(jax.jit(vjp)(g), vjp_ref(g)):
        assert rel_l2(a, b) < 1e-5


def test_large_depth_takes_the_chunked_path_and_stays_exact():
    # (1, 64, 64, 64) with 3 * 96 output channels: a 302 MB temporary, above the 256 MB at
    # which the depth slabs are processed in chunks of 16 slices.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 64, 64, 64, 16)).astype(np.float32))
    k = jnp.asarray((0.05 * rng.normal(size=(3, 3, 3, 16, 96))).astype(np.float32))
    hlo = jax.jit(conv3x3x3_cpu).lower(x, k).as_text()
    assert "while" in hlo  # lax.map over chunks
    assert rel_l2(jax.jit(conv3x3x3_cpu)(x, k), conv3x3x3_xla(x, k)) < 1e-5


def test_empty_grids_give_empty_outputs_and_a_too_small_densenet_says_so():
    """An empty depth (a feature map pooled away) gives lax.conv's empty output and zero
    kernel gradient instead of failing inside the depth-slab split; a DenseNet whose input is
    too small for its transitions (block_config (1, 1, 1, 1) at 16^3: 16 -> 4 after the stem,
    2, 1, 0 after the transitions) raises an error naming the shape and the minimum (29)."""
    from jaxbrain.models.cnn3d import DenseNet
    x = jnp.zeros((2, 0, 3, 4, 16))
    k = jnp.ones((3, 3, 3, 16, 24))
    y, vjp = jax.vjp(conv3x3x3_cpu, x, k)
    assert y.shape == conv3x3x3_xla(x, k).shape == (2, 0, 3, 4, 24)
    dx, dk = vjp(jnp.zeros_like(y))
    assert dx.shape == x.shape and dk.shape == k.shape and not dk.any()
    model = DenseNet(1, 2, init_features=8, growth_rate=4, block_config=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\(16, 16, 16\) is too small.*transition3.*at least 29"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 29, 32, 29, 1)))
    assert "denseblock4" in shapes["params"]["features"]
