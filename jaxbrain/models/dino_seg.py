"""BrainDINO slice segmentation: a 2D ViT encoder read at several depths, and a
transposed-convolution decoder back to the input resolution, in Flax Linen.

The network of BrainDINO's brain-tumour trainer (a multi-scale Primus-style decoder on
DINOv3's ``get_intermediate_layers``), on 2D slices:

1. Fusion: the modalities (up to 4 for BraTS; ``in_channels``) are mixed into the encoder's
   ``fused_channels`` (3, the RGB input of a DINOv3 backbone) by a bias-free 1x1 convolution
   ``fuse`` whose weights start at ``fusion_init`` = 1/4 (the mean of 4 modalities, the
   original's initialisation of its 4-modality convolution, of which a scan with fewer
   modalities uses the first ``in_channels`` input rows). ``fused_channels=0``: no fusion,
   the modalities go to the patch embedding directly.
2. Encoder: :class:`jaxbrain.models.vit.ViTEncoder` under ``encoder`` (every ViTEncoder field
   is a field of this model and means the same), run with ``layers`` (blocks 2, 5, 8 and 11 of
   ViT-B): the tokens after each of those blocks, each through the final norm, prefix tokens
   (CLS, registers) dropped, reshaped to the 1/patch grid and concatenated along channels,
   (B, H/16, W/16, 4 * hidden) in the layers' order.
3. Decoder: log2(patch) stages (4 for patch 16), each a 2x2 stride-2 transposed convolution
   (with bias) halving the channels, a LayerNorm over channels (eps 1e-6, the mean and
   biased variance of ``LayerNormNd``) and exact (erf) GELU: 3072 -> 1536 -> 768 -> 384 -> 192
   at ViT-B; then a 1x1 convolution (with bias) to ``out_channels`` logits. Decoder weights
   start as the original's ``InitWeights_He(1e-2)``: Kaiming-normal with negative slope 0.01
   over PyTorch's fan-in (for a transposed convolution that is out_channels x 4), zero
   biases. At ViT-B with 4 storage tokens and 3 outputs the decoder and fusion are 25.08M of
   110.72M parameters (22.6%).

Layout: channels-last, input (B, H, W, in_channels) with H and W multiples of the patch
size, output (B, H, W, out_channels) float32 logits. The model is 2D (``spatial_dims = 2``):
whole volumes are predicted slice by slice across ``eval.slice_axis`` by the shared
predictor (:mod:`jaxbrain.inference.predictor`). PyTorch layouts, for reading the original's
weights: ``to3.weight`` (3, 4, 1, 1) is ``fuse/kernel`` (4, 3) transposed;
``up_projection.decode.{i}.0.weight`` (in, out, 2, 2) is ``decoder_{i}/kernel``
(2, 2, in, out); ``decode.{i}.1.{weight,bias}`` is ``decoder_{i}/norm/{scale,bias}``;
``decode.4.weight`` (K, 192, 1, 1) is ``head/kernel`` (192, K).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbrain.models.blocks import partitioned, stats_dtype
from jaxbrain.models.vit import ENCODER_FIELDS, ViTEncoder

Dtype = Any

# InitWeights_He(1e-2): kaiming_normal_(a=0.01), gain**2 = 2 / (1 + a**2), untruncated normal.
_HE_SCALE = 2.0 / (1.0 + 1e-2 ** 2)
he_normal = nn.initializers.variance_scaling(_HE_SCALE, "fan_in", "normal")
# PyTorch's fan-in of a ConvTranspose weight (in, out, k, k) is out * k * k: here the last axis.
he_normal_transposed = nn.initializers.variance_scaling(_HE_SCALE, "fan_in", "normal",
                                                        in_axis=-1, out_axis=-2)


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of a feature map (``LayerNormNd``): mean and biased
    variance per position, ``(x - mean) / sqrt(var + eps) * scale + bias``, statistics in at
    least float32."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", partitioned(nn.initializers.ones, ("norm",)), (c,), self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("norm",)), (c,), self.param_dtype)
        acc = stats_dtype(self.dtype)
        xf = x.astype(acc)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(acc) + bias.astype(acc)
        return y.astype(self.dtype)


class UpStage(nn.Module):
    """ConvTranspose2d(k=2, s=2) with bias -> ChannelNorm -> exact GELU. The transposed
    convolution is one matrix product and a reshape (each input pixel becomes a 2x2 block);
    kernel layout (2, 2, in, out)."""

    features: int
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, cin = x.shape
        kernel = self.param("kernel", partitioned(he_normal_transposed,
                                                  ("conv_kernel", "conv_kernel", "conv_in", "conv_out")),
                            (2, 2, cin, self.features), self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)), (self.features,),
                          self.param_dtype)
        y = jnp.einsum("bhwi,xyio->bhxwyo", x.astype(self.dtype), kernel.astype(self.dtype))
        y = y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)
        y = ChannelNorm(self.eps, self.dtype, self.param_dtype, name="norm")(y)
        return nn.gelu(y, approximate=False)


def decoder_widths(hidden: int, num_layers: int, patch: int) -> tuple[int, ...]:
    """Output channels of the decoder's stages: ``num_layers * hidden`` halved log2(patch)
    times (ViT-B, 4 layers, patch 16: 1536, 768, 384, 192)."""
    stages = int(round(math.log2(patch))) if patch > 1 else 0
    if patch < 2 or 2 ** stages != patch:
        raise ValueError(f"DinoSeg: patch_size={patch}: the decoder doubles the resolution per "
                         "stage, so the patch size must be a power of 2 (e.g. 16)")
    width = num_layers * hidden
    if width % (2 ** stages):
        raise ValueError(f"DinoSeg: {num_layers} layers x hidden_size {hidden} = {width} channels "
                         f"cannot be halved {stages} times")
    return tuple(width // 2 ** (i + 1) for i in range(stages))


class DinoSeg(ViTEncoder):
    """ViT encoder features of several blocks + transposed-convolution decoder (see the module
    docstring).

    ``in_channels``: the input modalities; ``out_channels``: logits per pixel; ``layers``: the
    encoder blocks read (negative indices count from the end); ``fused_channels``: the
    encoder's input channels after the 1x1 fusion (0: no fusion); ``fusion_init``: the fusion
    weights' initial value; ``decoder_eps``: the decoder norms' eps. Every other field is the
    encoder's (:class:`jaxbrain.models.vit.ViTEncoder`), ``spatial_dims`` 2 by default.
    """

    spatial_dims: int = 2
    out_channels: int = 3
    layers: Sequence[int] = (2, 5, 8, 11)
    fused_channels: int = 3
    fusion_init: float = 0.25
    decoder_eps: float = 1e-6

    encoder_name = "encoder"  # init.encoder_only takes this subtree (a ViT's or a DINO run's)

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        """Path of the layer that reads the input channels."""
        return ("fuse",) if self.fused_channels else ("encoder", "patch_embedding")

    @nn.nowrap
    def encoder_kwargs(self) -> dict:
        """Arguments of ``ViTEncoder(**kwargs)``, which has this model's ``encoder`` subtree."""
        kwargs = {f: getattr(self, f) for f in ENCODER_FIELDS}
        if self.fused_channels:
            kwargs["in_channels"] = self.fused_channels
        return kwargs

    @nn.nowrap
    def decoder_widths(self) -> tuple[int, ...]:
        patch = self.patch()
        if len(set(patch)) != 1:
            raise ValueError(f"DinoSeg: patch_size={self.patch_size}: the decoder needs the same "
                             "patch size on both axes")
        return decoder_widths(self.hidden_size, len(tuple(self.layers)), patch[0])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> jax.Array:
        """Logits (B, H, W, out_channels); ``return_features``: the feature map the decoder
        reads instead, (B, H / patch, W / patch, len(layers) * hidden_size)."""
        if self.dims() != 2:
            raise ValueError(f"DinoSeg is a 2D model: spatial_dims={self.spatial_dims}, "
                             f"img_size={self.img_size}, patch_size={self.patch_size}")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"DinoSeg: expected input (batch, H, W, {self.in_channels}) "
                             f"channels-last, got shape {x.shape}")
        patch = self.patch()
        if any(s % p for s, p in zip(x.shape[1:3], patch)):
            raise ValueError(f"DinoSeg: input slices {x.shape[1:3]} are not multiples of the "
                             f"patch size {patch} (crop or pad them to a multiple, e.g. data.roi)")
        if not self.layers:
            raise ValueError("DinoSeg: layers=() names no encoder block to read")
        widths = self.decoder_widths()
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.fused_channels:
            x = nn.Dense(self.fused_channels, use_bias=False, name="fuse", **args,
                         kernel_init=partitioned(nn.initializers.constant(self.fusion_init),
                                                 ("conv_in", "conv_out")))(x.astype(self.dtype))
        encoder = ViTEncoder(**self.encoder_kwargs(), name="encoder")
        outs = encoder(x, train, layers=tuple(self.layers))
        b = x.shape[0]
        grid = tuple(s // p for s, p in zip(x.shape[1:3], patch))
        prefix = self.num_prefix()
        feats = [o[:, prefix:].reshape(b, *grid, self.hidden_size) for o in outs]
        y = jnp.concatenate(feats, axis=-1).astype(self.dtype)
        if return_features:
            return y
        for i, width in enumerate(widths):
            y = UpStage(width, self.decoder_eps, name=f"decoder_{i}", **args)(y)
        logits = nn.Dense(self.out_channels, name="head", **args,
                          kernel_init=partitioned(he_normal, ("conv_in", "classes")),
                          bias_init=partitioned(nn.initializers.zeros, ("classes",)))(y)
        return logits.astype(stats_dtype(self.dtype))


def decoder_fraction(params) -> float:
    """The share of parameters outside the encoder (fusion, decoder, head)."""
    sizes = {k: sum(int(v.size) for v in jax.tree_util.tree_leaves(sub)) for k, sub in params.items()}
    return 1.0 - sizes.get("encoder", 0) / sum(sizes.values())
