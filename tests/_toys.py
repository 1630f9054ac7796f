"""Toy families for the loop's tests: a convolutional model for 2D or 3D inputs and an
objective that keeps an EMA copy of the parameters (with a momentum schedule by step), each
registered the way a new family would be."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbrain import models, objectives
from jaxbrain.objectives.segmentation import Segmentation


@models.register("toy_conv")
class ToyConv(nn.Module):
    """Two convolutions over as many spatial axes as the input has (2D slices or 3D); with
    ``norm``, BatchNorm between them (running statistics in the ``batch_stats`` collection)."""

    in_channels: int = 4
    out_channels: int = 3
    features: int = 8
    norm: bool = False

    def input_layer(self):
        return ("stem",)

    @nn.compact
    def __call__(self, x, train: bool = False):
        k = (3,) * (x.ndim - 2)
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                            (None,) * len(k) + ("conv_in", "conv_out"))
        h = nn.Conv(self.features, k, kernel_init=init, name="stem")(x)
        if self.norm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(h)
        h = nn.relu(h)
        return nn.Conv(self.out_channels, (1,) * len(k), name="head")(h)


@objectives.register("ema_segmentation")
@dataclasses.dataclass(frozen=True)
class EMASegmentation(Segmentation):
    """Segmentation whose state is an exponential moving average of the parameters: the
    momentum follows a cosine schedule from ``momentum`` to 1 over ``momentum_steps``; the
    EMA model's loss on the batch is reported (run through ``apply`` with other weights)."""

    momentum: float = 0.9
    momentum_steps: int = 100

    def init_state(self, params):
        return {"ema": jax.tree_util.tree_map(jnp.array, params), "updates": jnp.zeros((), jnp.int32)}

    def momentum_at(self, step):
        t = jnp.clip(step / self.momentum_steps, 0.0, 1.0)
        return 1.0 - (1.0 - self.momentum) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

    def compute(self, apply, batch, key, *, state, step):
        loss, metrics = super().compute(apply, batch, key)
        ema_logits = apply(batch["image"], {"params": state["ema"]}, train=False)
        ema_loss, _ = self.loss(ema_logits, batch["label"])
        return loss, {**metrics, "ema_loss": ema_loss}, {"momentum": self.momentum_at(step)}

    def update_state(self, state, *, params, aux, step):
        m = aux["momentum"]
        ema = jax.tree_util.tree_map(lambda e, p: m * e + (1 - m) * p, state["ema"], params)
        return {"ema": ema, "updates": state["updates"] + 1}

