"""3D CNNs with a contrastive projection head (SimCLR, Chen et al., 2020), for
self-supervised pretraining with :mod:`jaxbrain.objectives.contrastive`.

``contrastive_<cnn>`` is the registered CNN ``<cnn>`` (``densenet121`` ... ``densenet264``,
``densenet``, ``resnet10`` ... ``resnet200``, ``resnet``) with its own fields and parameter
names (the trunk under its ``encoder_name``: ``features`` for the DenseNets, ``encoder`` for
the ResNets, so the CNN fine-tuned with ``init.encoder_only`` takes it), whose pooled
features ``(B, C)`` go through ``projection``: Dense(``projection_hidden``) -> ReLU ->
Dense(``projection_dim``) (``projection/hidden``, ``projection/out``). The CNN's
classification head (``num_classes``) is not built. Output: the projections
``(B, projection_dim)``, float32; ``return_features=True`` gives the pooled features.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbrain.models.blocks import partitioned
from jaxbrain.models.cnn3d import DENSENETS, RESNETS


class Projection(nn.Module):
    hidden: int
    out: int
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Dense(self.hidden, name="hidden", **args,
                     kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "mlp")),
                     bias_init=partitioned(nn.initializers.zeros, ("mlp",)))(h)
        h = nn.relu(h)
        return nn.Dense(self.out, name="out", **args,
                        kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp", None)),
                        bias_init=partitioned(nn.initializers.zeros, (None,)))(h)


def with_projection(cnn: type) -> type:
    """The subclass of ``cnn`` that projects its pooled features (see the module docstring)."""

    class Contrastive(cnn, kw_only=True):
        num_classes: int | None = None  # unused: no classification head
        projection_hidden: int = 512
        projection_dim: int = 128

        @nn.compact
        def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False
                     ) -> jax.Array:
            features = cnn.__call__(self, x, train, return_features=True)
            if return_features:
                return features
            z = Projection(self.projection_hidden, self.projection_dim, self.dtype,
                           self.param_dtype, name="projection")(features)
            return z.astype(jnp.float32)

    Contrastive.__name__ = Contrastive.__qualname__ = f"Contrastive{cnn.__name__}"
    return Contrastive


CONTRASTIVE = {f"contrastive_{name}": with_projection(cls)
               for name, cls in {**DENSENETS, **RESNETS}.items()}
