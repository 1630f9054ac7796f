"""BrainSegFounder's self-supervised model: the Swin encoder with rotation, contrastive and
reconstruction heads (the research-contributions ``SSLHead`` design).

The encoder's last normalised hidden state (``16 * feature_size`` channels at stride 32) is
read as tokens in (D, H, W) raster order: token 0 feeds a linear rotation classifier (4
classes: 0, 90, 180, 270 degrees), token 1 a linear contrastive projection (512); the whole
map goes through the reconstruction decoder, 5 x [3x3x3 conv -> InstanceNorm -> LeakyReLU
0.01 -> trilinear x2] with ``16f -> 8f -> 4f -> 2f -> f -> f`` channels, then a 1x1x1 conv
back to the input channels. Parameter names follow the PyTorch module (``swinViT``,
``rotation_head``, ``contrastive_head``, ``conv_0`` ... ``conv_20`` for ``conv.0`` ...
``conv.20``), so checkpoints interchange through ``jaxbrain.convert``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbrain.models.blocks import dense, instance_norm, conv3d, upsample2x_linear
from jaxbrain.models.swin_unetr import SwinTransformer, SwinUNETR

Dtype = Any

DECODER_CONVS = (0, 4, 8, 12, 16)  # indices of the 3x3x3 convs in the PyTorch Sequential
OUTPUT_CONV = 20


class SSLHead(nn.Module):
    in_channels: int
    feature_size: int = 48
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dropout_path_rate: float = 0.0
    downsample: str = "merging"
    use_v2: bool = False
    rotation_classes: int = 4
    contrastive_dim: int = 512
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    # The same field names as SwinUNETR: its mapping to SwinTransformer arguments serves both.
    encoder_kwargs = nn.nowrap(SwinUNETR.encoder_kwargs)
    input_layer = nn.nowrap(SwinUNETR.input_layer)
    encoder_name = SwinUNETR.encoder_name

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """(B, D, H, W, in_channels) -> {"rotation": (B, 4), "contrastive": (B, 512),
        "reconstruction": (B, D, H, W, in_channels)} (D, H, W multiples of 32)."""
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        top = SwinTransformer(**self.encoder_kwargs(), name="swinViT")(x, True, train)[4]
        b, c = top.shape[0], top.shape[-1]
        if top.shape[1] * top.shape[2] * top.shape[3] < 2:
            raise ValueError(f"input {x.shape}: the encoder's last map has one token; the "
                             "rotation and contrastive heads need two (use >= 64 voxels on an axis)")
        tokens = top.reshape(b, -1, c)
        rotation = dense(self.rotation_classes, ("embed", None), "rotation_head", **args)(tokens[:, 0])
        contrastive = dense(self.contrastive_dim, ("embed", None), "contrastive_head",
                            **args)(tokens[:, 1])
        y = top
        widths = (c // 2, c // 4, c // 8, c // 16, c // 16)
        for index, width in zip(DECODER_CONVS, widths):
            y = conv3d(width, 3, f"conv_{index}", use_bias=True, **args)(y)
            y = nn.leaky_relu(instance_norm(y), 0.01)
            y = upsample2x_linear(y)
        y = conv3d(self.in_channels, 1, f"conv_{OUTPUT_CONV}", use_bias=True, **args)(y)
        return {"rotation": rotation.astype(jnp.float32),
                "contrastive": contrastive.astype(jnp.float32),
                "reconstruction": y.astype(jnp.float32)}
