"""Whole-scan heads over per-slice features of a frozen 2D slice encoder (BrainDINO's
volume-level probes).

Input: ``(batch, S, D)``, one normalised CLS feature per axial slice (S slices, width D; see
:mod:`jaxbrain.inference.features`). The slices are pooled to one ``(batch, D)`` vector, then
``LayerNorm(D) -> Linear(D, D) -> GELU -> Linear(D, K)`` gives the logits (K classes, or K = 1
for a regression). Pooling (``pool``):

- ``"mean"``: the mean over slices (BrainDINO's default);
- ``"attention"``: ``Linear(D, 1)`` scores per slice, softmax over slices, the weighted sum;
- ``"transformer"``: ``depth`` (2) pre-norm transformer blocks over the slices (learned slice
  positions, ``num_heads`` heads, MLP ``mlp_ratio * D`` with GELU, no dropout), then the mean.
  BrainDINO defines a 2-layer slice transformer without publishing its code; this is the
  standard block.

LayerNorms use PyTorch's eps 1e-5, GELU is the exact one, Linear layers PyTorch's default
initialisation is not copied: kernels are truncated normal (std 0.02), biases zero.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbrain.models.blocks import partitioned, trunc_normal_002
from jaxbrain.models.dino import DinoViT
from jaxbrain.models.vit import WrapsEncoder

POOLS = ("mean", "attention", "transformer")


def _dense(features: int, name: str, axes=("embed", "mlp"), dtype=jnp.float32) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=partitioned(trunc_normal_002, axes),
                    bias_init=partitioned(nn.initializers.zeros, axes[1:]))


class _SliceBlock(nn.Module):
    num_heads: int
    mlp_ratio: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            name="attn")(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x)
        y = _dense(int(self.mlp_ratio * d), "fc1", dtype=self.dtype)(y)
        y = _dense(d, "fc2", ("mlp", "embed"), dtype=self.dtype)(nn.gelu(y, approximate=False))
        return x + y


class SliceHead(nn.Module):
    """(batch, S, D) slice features -> (batch, num_classes) logits; see the module docstring.
    ``pooled(x)`` gives the pooled (batch, D) features."""

    in_channels: int | None = None  # the features' width D (checked when given)
    num_classes: int = 2
    pool: str = "mean"
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: float = 4.0
    max_slices: int = 512
    dtype: Any = jnp.float32

    def input_layer(self) -> tuple[str, ...]:
        return ("head_norm",)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.pool not in POOLS:
            raise ValueError(f"SliceHead.pool must be one of {POOLS}, got {self.pool!r}")
        if x.ndim != 3:
            raise ValueError(f"SliceHead expects slice features (batch, slices, width), got "
                             f"shape {tuple(x.shape)}")
        if self.in_channels is not None and x.shape[-1] != self.in_channels:
            raise ValueError(f"SliceHead built for features of width {self.in_channels} "
                             f"(model.in_channels) but got width {x.shape[-1]}")
        x = x.astype(self.dtype)
        d = x.shape[-1]
        if self.pool == "mean":
            pooled = x.mean(axis=1)
        elif self.pool == "attention":
            scores = _dense(1, "attn_score", ("embed", None), self.dtype)(x)[..., 0]
            weights = jax.nn.softmax(scores.astype(jnp.float32), axis=1).astype(x.dtype)
            pooled = jnp.einsum("bs,bsd->bd", weights, x)
        else:
            if x.shape[1] > self.max_slices:
                raise ValueError(f"SliceHead: {x.shape[1]} slices, max_slices is "
                                 f"{self.max_slices}")
            positions = self.param("slice_pos", partitioned(trunc_normal_002, (None, "embed")),
                                   (self.max_slices, d))
            y = x + positions[: x.shape[1]].astype(x.dtype)
            for i in range(self.depth):
                y = _SliceBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"block{i}")(y)
            pooled = y.mean(axis=1)
        y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="head_norm")(pooled)
        y = _dense(d, "head_fc1", dtype=self.dtype)(y)
        y = nn.gelu(y, approximate=False)
        return _dense(self.num_classes, "head", ("mlp", "classes"), self.dtype)(y).astype(
            jnp.float32)


class SliceScanViT(WrapsEncoder, DinoViT):
    """A slice encoder and a whole-scan head trained end to end: ``(batch, S, H, W)`` (or
    ``(batch, S, H, W, 1 | 3)``) stacks of robust-scaled axial slices -> ``(batch,
    num_classes)`` logits. Every slice goes through the :class:`DinoViT` under ``encoder``
    (every DinoViT field is a field of this model; grey slices are repeated to 3 channels),
    its normalised CLS token is the slice's feature, and the :class:`SliceHead` under
    ``head`` pools and classifies them, as the frozen-feature probes do.

    It is how the encoder is adapted rather than frozen: with ``lora_rank=8`` every block's q
    and v get LoRA adapters (:class:`jaxbrain.models.vit.QKV`), and
    ``optim.freeze="encoder"`` with ``optim.unfreeze=("*/lora_*",)`` trains those and the head
    only (BrainDINO's LoRA option, rank 8 on q and v). A step runs the encoder on ``batch *
    S`` slices (4 x 128 at BrainDINO's sizes): set ``remat=True`` so the backward pass keeps
    only each block's input."""

    num_classes: int = 2
    head_pool: str = "mean"  # SliceHead.pool (ViTEncoder has its own pool field)
    head_depth: int = 2
    head_num_heads: int = 8
    head_mlp_ratio: float = 4.0
    max_slices: int = 512

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim == 4:
            x = x[..., None]
        if x.ndim != 5 or x.shape[-1] not in (1, self.in_channels):
            raise ValueError(f"SliceScanViT expects slice stacks (batch, slices, H, W) or "
                             f"(batch, slices, H, W, 1 or {self.in_channels}), got shape "
                             f"{tuple(x.shape)}")
        b, s = x.shape[:2]
        flat = x.reshape(b * s, *x.shape[2:])
        if flat.shape[-1] == 1 and self.in_channels != 1:
            flat = jnp.repeat(flat, self.in_channels, axis=-1)
        cls = DinoViT(**self.encoder_kwargs(), name="encoder")(flat, train)[:, 0]
        feats = cls.astype(jnp.float32).reshape(b, s, -1)
        return SliceHead(in_channels=self.hidden_size, num_classes=self.num_classes,
                         pool=self.head_pool, depth=self.head_depth, num_heads=self.head_num_heads,
                         mlp_ratio=self.head_mlp_ratio, max_slices=self.max_slices,
                         dtype=self.dtype, name="head")(feats, train)
