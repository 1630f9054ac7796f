"""The DINO slice encoder: intermediate layers, mask tokens."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbrain.models.vit import ViTEncoder


def _tiny(**kw):
    args = dict(in_channels=3, img_size=32, patch_size=8, spatial_dims=2, hidden_size=32, depth=3,
                num_heads=4, mlp_dim=64, num_registers=2, layer_scale_init=1e-1, norm_eps=1e-6)
    args.update(kw)
    return ViTEncoder(**args)


def test_intermediate_layers_and_masks():
    model = _tiny(mask_token=True)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    params = nn.unbox(model.init(jax.random.key(1), x)["params"])
    assert params["mask_token"].shape == (1, 32)
    assert "mask_token" not in _tiny().init(jax.random.key(1), x)["params"]
    params = dict(params, mask_token=jax.random.normal(jax.random.key(2), (1, 32)))
    full = model.apply({"params": params}, x)
    outs = model.apply({"params": params}, x, layers=(0, -1, 1))
    assert len(outs) == 3 and all(o.shape == full.shape for o in outs)
    np.testing.assert_allclose(outs[1], full, atol=1e-6)
    assert not np.allclose(outs[0], outs[2])
    masks = jnp.zeros((2, 16), bool).at[0, 3].set(True).at[1, :5].set(True)
    masked = model.apply({"params": params}, x, masks=masks)
    assert not np.allclose(masked[0], full[0]) and not np.allclose(masked[1], full[1])
    none_masked = model.apply({"params": params}, x, masks=jnp.zeros((2, 16), bool))
    np.testing.assert_array_equal(none_masked, full)
    with pytest.raises(ValueError, match="mask_token=True"):
        _tiny().apply({"params": {k: v for k, v in params.items() if k != "mask_token"}}, x, masks=masks)
    with pytest.raises(ValueError, match="num_patches=16"):
        model.apply({"params": params}, x, masks=masks[:, :4])
    with pytest.raises(ValueError, match="layers="):
        model.apply({"params": params}, x, layers=(3,))
