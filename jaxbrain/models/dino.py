"""DINO-family slice encoders (BrainDINO, DINOv3, DINOv2) and the DINO projection head.

:class:`DinoViT` is a :class:`~jaxbrain.models.vit.ViTEncoder` (2D, channels-last images
``(batch, H, W, 3)``; MRI slices are repeated to 3 channels) whose defaults are DINOv3's and
whose PyTorch layout is the originals' (``jaxbrain.convert.dino``). It returns every token,
``(batch, 1 + registers + patches, hidden)``, ordered [CLS, storage / register tokens,
patches row-major], through the final norm; ``layers=`` and ``masks=`` as the encoder.

:func:`dino_preset` gives the constructor arguments of the published backbones:

- ``braindino_vitb16``: BrainDINO's backbone, DINOv3's ``vit_base(drop_path_rate=0.2,
  layerscale_init=1e-5, n_storage_tokens=4, qkv_bias=False, mask_k_bias=True)``: patch 16,
  768 wide, 12 blocks of 12 heads, MLP 3072, 4 storage tokens, LayerScale 1e-5, no qkv bias
  (so DINOv3's k-bias mask has no bias to act on), LayerNorm eps 1e-6, axial RoPE (base 100,
  "separate" coordinates) in bfloat16 (``rope_dtype="bf16"``: ``vit_base`` keeps
  ``DinoVisionTransformer``'s default ``pos_embed_rope_dtype="bf16"``), stochastic depth 0.2
  in every block on a random batch subset.
- ``dinov3_vit{s,b,l}16``: DINOv3's hub backbones: qkv bias with the k third masked
  (``bias_mask``), LayerNorm eps 1e-5 ("layernormbf16"), RoPE in float32
  (``pos_embed_rope_dtype="fp32"``), ``rope_rescale=2`` in training, no stochastic depth.
- ``dinov2_vit{s,b,l}14`` (``_reg``: 4 registers): DINOv2's hub backbones: patch 14, image 518,
  learned positions for CLS and patches (bicubic resize with DINOv2's 0.1 offset; the
  register models' antialiased resize without offset), registers after the CLS without
  positions, qkv bias, LayerScale (1.0 at initialisation), eps 1e-6, DINOv2's stochastic
  depth rule (per sample up to rate 0.1, batch subset above, linear over blocks).

Sizes: S 384 wide / 6 heads / MLP 1536, B 768 / 12 / 3072, L 1024 / 16 / 4096 with 24 blocks
(S and B: 12). Any field can be overridden: ``dino_preset("dinov2_vitb14", img_size=224)``.

:class:`DINOHead` is the DINO / iBOT projection head of both originals: an MLP (``nlayers``
Linear layers, GELU between, hidden 2048, bottleneck 256), L2 normalisation (eps 1e-12), and
a bias-free last layer to ``out_dim`` prototypes, weight-normalised in DINOv2
(``weight_norm=True``: PyTorch's ``weight_norm`` with ``weight_g`` (out, 1) and the direction
``last_layer/kernel``), plain in DINOv3.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbrain.models.blocks import partitioned, trunc_normal_002
from jaxbrain.models.vit import ViTEncoder

SIZES = {  # name: (hidden, depth, heads, mlp)
    "vits": (384, 12, 6, 1536),
    "vitb": (768, 12, 12, 3072),
    "vitl": (1024, 24, 16, 4096),
}

_DINOV3 = dict(patch_size=16, img_size=224, pos_embed="rope", rope_base=100.0,
               rope_normalize="separate", num_registers=4, layer_scale_init=1e-5,
               drop_path_mode="subset", drop_path_uniform=True)
_DINOV2 = dict(patch_size=14, img_size=518, pos_embed="learned", pos_embed_cls=True,
               pos_interp="bicubic", pos_interp_offset=0.1, qkv_bias=True, layer_scale_init=1.0,
               norm_eps=1e-6, drop_path_mode="dinov2")


def _presets() -> dict[str, dict]:
    out = {}
    for size, (hidden, depth, heads, mlp) in SIZES.items():
        dims = dict(hidden_size=hidden, depth=depth, num_heads=heads, mlp_dim=mlp)
        out[f"dinov3_{size}16"] = dict(_DINOV3, **dims, qkv_bias=True, mask_k_bias=True,
                                       norm_eps=1e-5, rope_rescale=2.0, rope_dtype="fp32",
                                       drop_path=0.0)
        out[f"dinov2_{size}14"] = dict(_DINOV2, **dims)
        out[f"dinov2_{size}14_reg"] = dict(_DINOV2, **dims, num_registers=4,
                                           pos_interp="bicubic_aa", pos_interp_offset=0.0)
    out["braindino_vitb16"] = dict(_DINOV3, **dict(zip(("hidden_size", "depth", "num_heads", "mlp_dim"),
                                                       SIZES["vitb"])),
                                   qkv_bias=False, mask_k_bias=False, norm_eps=1e-6, drop_path=0.2,
                                   rope_dtype="bf16")
    return out


PRESETS = _presets()


def dino_preset(name: str, **overrides) -> dict:
    """Constructor arguments of :class:`DinoViT` for a published backbone (see the module
    docstring), with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown DINO preset {name!r}; known: {sorted(PRESETS)}")
    fields = set(DinoViT.__dataclass_fields__)
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"dino_preset({name!r}): unknown fields {bad}")
    return {**PRESETS[name], **overrides}


class DinoViT(ViTEncoder):
    """The DINO slice encoder: :class:`ViTEncoder` with DINOv3's defaults (2D, 3 channels,
    224 px, patch 16, RoPE, mask token, final norm on every token, eps 1e-6). The RoPE is
    float32 unless ``rope_dtype="bf16"`` (``DinoVisionTransformer``'s own default, and the
    ``braindino_vitb16`` preset's). Build a published one with
    ``DinoViT(**dino_preset(name))``."""

    in_channels: int = 3
    img_size: int = 224
    patch_size: int = 16
    spatial_dims: int = 2
    pos_embed: str = "rope"
    mask_token: bool = True
    norm_eps: float = 1e-6
    final_norm: bool | None = True
    fc_norm: bool | None = False


class DINOHead(nn.Module):
    """DINO / iBOT head: (..., in) -> (..., out_dim); see the module docstring. Parameter
    paths ``mlp_{i}/{kernel,bias}`` and ``last_layer/kernel`` (+ ``last_layer/weight_g``)."""

    out_dim: int
    hidden: int = 2048
    bottleneck: int = 256
    nlayers: int = 3
    weight_norm: bool = False
    mlp_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, no_last_layer: bool = False) -> jax.Array:
        n = max(self.nlayers, 1)
        widths = [self.bottleneck] if n == 1 else [self.hidden] * (n - 1) + [self.bottleneck]
        for i, width in enumerate(widths):
            x = nn.Dense(width, use_bias=self.mlp_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                         kernel_init=partitioned(trunc_normal_002, ("embed", "mlp")),
                         bias_init=partitioned(nn.initializers.zeros, ("mlp",)), name=f"mlp_{i}")(x)
            if i < len(widths) - 1:
                x = nn.gelu(x, approximate=False)
        x = x.astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        if no_last_layer:
            return x
        return LastLayer(self.out_dim, self.weight_norm, self.param_dtype, name="last_layer")(x)


class LastLayer(nn.Module):
    """Bias-free Linear (in -> out); with ``weight_norm`` its weight is g v / |v| per output
    (``weight_g`` (out, 1), ``kernel`` = v transposed), as PyTorch's ``weight_norm(dim=0)``."""

    features: int
    weight_norm: bool = False
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", partitioned(trunc_normal_002, ("mlp", "classes")),
                            (x.shape[-1], self.features), self.param_dtype).astype(jnp.float32)
        if self.weight_norm:
            g = self.param("weight_g", partitioned(nn.initializers.ones, ("classes", None)),
                           (self.features, 1), self.param_dtype).astype(jnp.float32)
            kernel = kernel * (g[:, 0] / jnp.linalg.norm(kernel, axis=0))
        return x @ kernel
