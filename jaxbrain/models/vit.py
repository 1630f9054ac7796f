"""Vision transformer (Dosovitskiy et al., 2021) over 2D images, 3D volumes and video
tubelets, in Flax Linen.

One module covers the published variants through its fields:

- MONAI ``monai.networks.nets.ViT`` (3D): ``cls_token=True``, learned positions for the patch
  tokens only (``pos_embed_cls=False``), LayerNorm eps 1e-5, no qkv bias, classification on
  the CLS token with an optional Tanh (``post_activation="tanh"``); parity in
  ``tests/test_vit.py``.
- transformers / MCG-NJU VideoMAE: 2x16x16 tubelets (frames are the depth axis),
  ``pos_embed="sincos"`` (VideoMAE's fixed 1D table over the flattened patch sequence),
  ``cls_token=False``, q and v biases with the k bias held at zero
  (``qkv_bias=True, mask_k_bias=True``), eps 1e-12, ``pool="mean"`` with ``fc_norm`` (eps 1e-5,
  ``head_norm_eps``) instead of a final norm on the tokens.
- timm / DINOv2-style 2D ViTs: ``pos_embed_cls=True`` (the CLS token has a row of the learned
  table), ``qkv_bias=True``, ``layer_scale_init``, ``num_registers`` (registers placed after
  CLS, without positions: timm's ``no_embed_class=True``), eps 1e-6; parity with timm's
  ``VisionTransformer`` in ``tests/test_vit.py``.
- DINOv2 / DINOv3 (BrainDINO) slice encoders, presets in :mod:`jaxbrain.models.dino`: DINOv2
  keeps the learned table with a CLS row, resized as its ``interpolate_pos_encoding``
  (bicubic, ``pos_interp_offset=0.1``: scale factor (new + 0.1) / old, no antialiasing;
  ``pos_interp="bicubic_aa"`` is the antialiased resize of transformers' and of the
  register models); DINOv3 uses ``pos_embed="rope"``: axial rotary positions on the q and k
  of the patch tokens (``rope_*`` fields, :func:`rope_periods` .. :func:`rope_rotary`; base
  100, coordinates of the patch centres in [-1, 1], optional training-time shift / jitter /
  rescale of the coordinates drawn once per batch from the "dropout" stream, computed in
  ``rope_dtype``: "fp32", or "bf16" as DINOv3's ``RopePositionEmbedding(dtype=bfloat16)``,
  its ``DinoVisionTransformer``'s default, see :func:`rope_round`). ``mask_token=True`` adds the learned token that ``masks=`` puts in place of
  patch embeddings; ``drop_path_mode`` / ``drop_path_uniform`` give their stochastic depth
  (DINOv3: the same rate in every block, applied to a random subset of the batch).

Layout: inputs are channels-last, ``(batch, D, H, W, C)`` or ``(batch, H, W, C)``; a video
``(batch, T, H, W, C)`` is a volume with frames on the depth axis. The patch embedding is a
convolution whose kernel equals its stride (``patch_size``, any shape), computed as one
matrix product over non-overlapping patches; remainders of a size that the patch does not
divide are dropped, as by the strided convolution. Tokens are ``[CLS, registers, patches]``,
patches in row-major order of the grid. A learned table is trained for the grid
``img_size // patch_size``; other grids get the table resized (:func:`resize_pos_embed`,
``pos_interp``), the sin-cos table is regenerated for the new length.

Attention is ``jax.nn.dot_product_attention`` (``attn_impl=None`` lets JAX choose, which in
JAX 0.10 is its XLA implementation, softmax in float32; "cudnn" asks for the fused flash
kernel on GPUs, bf16/fp16 only), except with attention dropout in
training, which takes the explicit softmax path. ``Attention`` takes a ``rotary`` function
applied to the queries and keys of the patch tokens only (prefix tokens unrotated, passed
through the function's ``prefix`` where it has one), the hook for axial RoPE.

The k-bias mask (``mask_k_bias``): the qkv bias is one (3 * hidden,) parameter, multiplied by
a constant mask that is 0 on its k third. The masked entries get zero gradient and start at
zero, so under SGD or Adam(W) they stay zero; whatever a checkpoint stores there (DINOv3's
``bias_mask`` convention) has no effect.

Outputs: ``ViT(...)(x)`` gives logits ``(batch, num_classes)`` (float32); ``num_classes=0`` gives
the pooled features ``(batch, hidden_size)``; ``return_tokens=True`` gives every token
``(batch, prefix + patches, hidden_size)`` after the final norm (by default none with
``fc_norm``: the norm comes after pooling, as in VideoMAE and timm). ``pool="cls"`` takes token
0 (without a CLS token that is the first patch, as transformers' VideoMAE does without mean
pooling), "mean" the mean of the patch tokens. Regression is a head
with one output (``num_classes=1``) read as the prediction. The parameters of everything but
the pooling norm and the head sit under ``encoder`` (:class:`ViTEncoder`, ``encoder_name``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbrain.models.blocks import DropPath, partitioned, stats_dtype, torch_default_init, trunc_normal_002
from jaxbrain.models.swin_unetr import Mlp

Dtype = Any
Rotary = Callable[[jax.Array], jax.Array]  # (B, N, heads, head_dim) -> same, patch tokens only

POS_EMBEDS = ("learned", "sincos", "rope", "none")
POOLS = ("cls", "mean")
INTERPOLATIONS = ("linear", "bicubic", "bicubic_aa")
ROPE_NORMALIZE = ("separate", "max", "min")
ROPE_DTYPES = ("fp32", "bf16")
DROP_PATH_MODES = ("sample", "subset", "dinov2")


# ----------------------------------------------------------------------------------------
# Position tables.


@functools.lru_cache(maxsize=None)
def sincos_table(n: int, dim: int) -> np.ndarray:
    """VideoMAE's fixed table (``get_sinusoid_encoding_table``), (n, dim) float32: entry
    (p, j) is sin (even j) or cos (odd j) of p / 10000 ** (2 * (j // 2) / dim), computed in
    float64."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return table.astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Cubic convolution weights (Keys, a = -0.75 as PyTorch) of the 4 neighbours at offsets
    -1, 0, 1, 2 for fractional positions t, shape (..., 4)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def _antialiased_cubic(old: int, new: int, step: float) -> np.ndarray:
    """PyTorch's ``F.interpolate(mode="bicubic", antialias=True)`` along one axis: output i
    centred at (i + 0.5) * step in input pixels, a cubic kernel with a = -0.5 widened by
    ``step`` when downsampling (support 2 * max(step, 1)), taps clipped to the axis and the
    weights renormalised."""
    m = np.zeros((new, old), np.float64)
    support = 2.0 * max(step, 1.0)
    inv = 1.0 / step if step >= 1.0 else 1.0

    def cubic(t):
        t, a = np.abs(t), -0.5
        return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                        np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))

    for i in range(new):
        centre = step * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), old)
        j = np.arange(lo, hi)
        w = cubic((j - centre + 0.5) * inv)
        m[i, lo:hi] = w / w.sum()
    return m


@functools.lru_cache(maxsize=None)
def interpolation_matrix(old: int, new: int, method: str, offset: float = 0.0) -> np.ndarray:
    """(new, old) matrix resampling one axis as ``F.interpolate(..., align_corners=False)``:
    half-pixel centres, source x = (i + 0.5) * step - 0.5 with step = old / new; linear
    clamps x at 0 and uses the 2 neighbours, bicubic the 4 (a = -0.75) with indices clamped
    to the axis; "bicubic_aa" is ``antialias=True`` (:func:`_antialiased_cubic`).

    ``offset``: DINOv2's ``interpolate_offset``: the original calls interpolate with
    ``scale_factor=(new + offset) / old``, which yields ``new`` outputs but samples with
    step = old / (new + offset)."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"interpolation {method!r}: expected one of {INTERPOLATIONS}")
    step = old / (new + offset)
    if method == "bicubic_aa":
        return _antialiased_cubic(old, new, step)
    m = np.zeros((new, old), np.float64)
    x = (np.arange(new) + 0.5) * step - 0.5
    rows = np.arange(new)
    if method == "linear":
        x = np.maximum(x, 0.0)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, old - 1)
        frac = x - i0
        np.add.at(m, (rows, i0), 1 - frac)
        np.add.at(m, (rows, i1), frac)
    else:
        i0 = np.floor(x).astype(int)
        w = _cubic_weights(x - i0)
        for k in range(4):
            np.add.at(m, (rows, np.clip(i0 - 1 + k, 0, old - 1)), w[:, k])
    return m


def resize_pos_embed(table: jax.Array, old_grid: Sequence[int], new_grid: Sequence[int],
                     method: str = "bicubic", offset: float = 0.0) -> jax.Array:
    """A position table for the patch tokens, ``(..., prod(old_grid), dim)`` in row-major grid
    order, resampled to ``new_grid`` one spatial axis at a time (``method`` "linear",
    "bicubic" or "bicubic_aa", as PyTorch's ``F.interpolate`` with ``align_corners=False``;
    ``offset`` as :func:`interpolation_matrix`). Prefix-token rows (CLS) are not part of
    ``table``. The same grid returns the table unchanged."""
    old_grid, new_grid = tuple(int(g) for g in old_grid), tuple(int(g) for g in new_grid)
    if len(old_grid) != len(new_grid):
        raise ValueError(f"resize_pos_embed: grids {old_grid} and {new_grid} differ in rank")
    if table.shape[-2] != int(np.prod(old_grid)):
        raise ValueError(f"resize_pos_embed: table has {table.shape[-2]} rows, grid {old_grid} "
                         f"needs {int(np.prod(old_grid))}")
    if old_grid == new_grid:
        return table
    lead, dim = table.shape[:-2], table.shape[-1]
    x = jnp.asarray(table).reshape(*lead, *old_grid, dim)
    k = len(lead)
    for axis, (o, n) in enumerate(zip(old_grid, new_grid)):
        if o != n:
            m = jnp.asarray(interpolation_matrix(o, n, method, float(offset)), x.dtype)
            x = jnp.moveaxis(jnp.tensordot(m, x, axes=([1], [k + axis])), 0, k + axis)
    return x.reshape(*lead, int(np.prod(new_grid)), dim)


# ----------------------------------------------------------------------------------------
# Axial rotary positions (DINOv3 RopePositionEmbedding).


def rope_round(x, dtype: str = "fp32"):
    """``x`` rounded to the RoPE dtype, as PyTorch rounds the result of each bfloat16 op
    (computed in float32, rounded to nearest even): identity for "fp32"; numpy arrays through
    numpy's bfloat16 (ml_dtypes), jax arrays by ``lax.reduce_precision`` (an op XLA keeps)."""
    if dtype not in ROPE_DTYPES:
        raise ValueError(f"rope_dtype={dtype!r}: expected one of {ROPE_DTYPES}")
    if dtype == "fp32":
        return x
    if isinstance(x, (np.ndarray, np.generic, float)):
        return np.asarray(x, np.float32).astype(jnp.bfloat16).astype(np.float32)
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)


def rope_periods(head_dim: int, base: float, dtype: str = "fp32") -> np.ndarray:
    """(head_dim // 4,) float32: base ** (2 k / (head_dim / 2)), k = 0 .. head_dim / 4 - 1;
    with ``dtype="bf16"`` DINOv3's bfloat16 buffer: the base, 2 k, the exponent and the power
    each rounded to bfloat16."""
    if dtype == "fp32":
        k = np.arange(head_dim // 4, dtype=np.float64)
        return (float(base) ** (2.0 * k / (head_dim // 2))).astype(np.float32)
    k = np.arange(head_dim // 4, dtype=np.float32)
    exponent = rope_round(rope_round(2 * k, dtype) / np.float32(head_dim // 2), dtype)
    return rope_round(np.power(rope_round(np.float32(base), dtype), exponent), dtype)


def rope_coords(grid: Sequence[int], normalize: str = "separate", dtype: str = "fp32") -> np.ndarray:
    """(H * W, 2) float32 patch centres in [-1, 1]: (arange(0.5, n) / d) per axis, d = the
    axis' own length ("separate"), the longer ("max") or the shorter ("min"); row-major
    (ij) grid order; then 2 c - 1 (each op rounded to ``dtype``)."""
    if normalize not in ROPE_NORMALIZE:
        raise ValueError(f"rope_normalize={normalize!r}: expected one of {ROPE_NORMALIZE}")
    h, w = (int(g) for g in grid)
    div = {"separate": (h, w), "max": (max(h, w),) * 2, "min": (min(h, w),) * 2}[normalize]
    ch = rope_round(rope_round(np.arange(0.5, h, dtype=np.float32), dtype) / np.float32(div[0]), dtype)
    cw = rope_round(rope_round(np.arange(0.5, w, dtype=np.float32), dtype) / np.float32(div[1]), dtype)
    coords = np.stack(np.meshgrid(ch, cw, indexing="ij"), -1).reshape(-1, 2)
    return rope_round(rope_round(np.float32(2.0) * coords, dtype) - np.float32(1.0), dtype)


def rope_augment(coords: jax.Array, key: jax.Array, shift: float | None = None,
                 jitter: float | None = None, rescale: float | None = None) -> jax.Array:
    """DINOv3's training-time coordinate augmentation, one draw for the whole batch: add a
    uniform (2,) shift in [-shift, shift], multiply by a log-uniform (2,) factor in
    [1/jitter, jitter], then by one log-uniform factor in [1/rescale, rescale]."""
    k_shift, k_jitter, k_rescale = jax.random.split(key, 3)
    if shift is not None:
        coords = coords + jax.random.uniform(k_shift, (2,), jnp.float32, -shift, shift)
    if jitter is not None:
        lim = float(np.log(jitter))
        coords = coords * jnp.exp(jax.random.uniform(k_jitter, (2,), jnp.float32, -lim, lim))
    if rescale is not None:
        lim = float(np.log(rescale))
        coords = coords * jnp.exp(jax.random.uniform(k_rescale, (1,), jnp.float32, -lim, lim))
    return coords


def rope_sincos(coords, periods, dtype: str = "fp32") -> tuple[jax.Array, jax.Array]:
    """(sin, cos), each (N, head_dim) float32: angles 2 pi coord / period for the 2 axes
    (axis major), flattened to head_dim / 2 and tiled twice. ``dtype="bf16"``: 2 pi coord,
    the angle, sin and cos each rounded to bfloat16 (numpy inputs are computed in numpy)."""
    xp = np if isinstance(coords, np.ndarray) and isinstance(periods, np.ndarray) else jnp
    if dtype == "fp32":
        angles = 2.0 * np.pi * coords[:, :, None] / periods[None, None, :]
    else:
        scaled = rope_round(np.float32(2.0 * np.pi) * coords[:, :, None], dtype)
        angles = rope_round(scaled / periods[None, None, :], dtype)
    angles = xp.tile(angles.reshape(angles.shape[0], -1), (1, 2))
    return rope_round(xp.sin(angles), dtype), rope_round(xp.cos(angles), dtype)


def rope_rotary(sin: jax.Array, cos: jax.Array, dtype: str = "fp32") -> Rotary:
    """The ``rotary`` hook for :class:`Attention`: x cos + rotate_half(x) sin in float32,
    rotate_half([a, b]) = [-b, a] on the halves of the head dimension; x (B, N, heads,
    head_dim), cast back to its dtype. ``dtype="bf16"``: DINOv3's ``apply_rope`` with
    bfloat16 tables: x rounded to bfloat16, each product and the sum rounded too; the
    function's ``prefix`` rounds the prefix tokens' q and k (the original casts all of q and
    k to the tables' dtype and back)."""
    sin, cos = jnp.asarray(sin), jnp.asarray(cos)

    def apply(x: jax.Array) -> jax.Array:
        t = rope_round(x.astype(jnp.float32), dtype)
        a, b = jnp.split(t, 2, axis=-1)
        half = jnp.concatenate([-b, a], axis=-1)
        out = (rope_round(t * cos[None, :, None], dtype)
               + rope_round(half * sin[None, :, None], dtype))
        return rope_round(out, dtype).astype(x.dtype)
    if dtype != "fp32":
        apply.prefix = lambda x: rope_round(x.astype(jnp.float32), dtype).astype(x.dtype)
    return apply


# ----------------------------------------------------------------------------------------
# Layers.


def layer_norm(name: str, eps: float, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    """LayerNorm over the model width with PyTorch's two-pass variance and a given eps."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                        scale_init=partitioned(nn.initializers.ones, ("embed",)),
                        bias_init=partitioned(nn.initializers.zeros, ("embed",)), name=name)


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
    """(B, *spatial, C) -> (B, *grid, prod(patch) * C): patch offsets major, channels minor;
    spatial remainders the patch does not divide are dropped."""
    b, *spatial, c = x.shape
    k = len(patch)
    grid = [s // p for s, p in zip(spatial, patch)]
    x = x[(slice(None),) + tuple(slice(0, g * p) for g, p in zip(grid, patch))]
    x = x.reshape(b, *[v for g, p in zip(grid, patch) for v in (g, p)], c)
    order = [0] + [1 + 2 * i for i in range(k)] + [2 + 2 * i for i in range(k)] + [2 * k + 1]
    return x.transpose(order).reshape(b, *grid, int(np.prod(patch)) * c)


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = ``patch`` over 2 or 3 spatial axes, as one matrix product.
    Kernel layout (*patch, in, hidden) as ``nn.Conv``."""

    features: int
    patch: tuple[int, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = len(self.patch)
        kernel = self.param("kernel", partitioned(torch_default_init, ("conv_kernel",) * k + ("conv_in", "embed")),
                            (*self.patch, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("embed",)), (self.features,),
                          self.param_dtype)
        y = patchify(x.astype(self.dtype), self.patch) @ kernel.reshape(-1, self.features).astype(self.dtype)
        return y + bias.astype(self.dtype)


# LoRA's down projections start as PyTorch's kaiming_uniform_(a=sqrt(5)) of an (r, in) weight:
# uniform with bound 1 / sqrt(in), i.e. variance 1 / (3 in).
lora_down_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class QKV(nn.Module):
    """The fused query/key/value projection (hidden -> 3 * hidden, thirds q | k | v, heads
    major within each). ``use_bias`` with ``mask_k_bias``: the k third of the bias is masked
    to zero (see the module docstring).

    ``lora_rank`` r > 0 adds low-rank adapters to the q and v thirds (LoRA on q and v, as
    BrainDINO's downstream encoders): q += x A_q B_q * s and v += x A_v B_v * s, with the
    bias-free ``lora_a_q`` / ``lora_a_v`` (hidden -> r) initialised as PyTorch's Linear
    default (kaiming-uniform, a = sqrt(5)) and ``lora_b_q`` / ``lora_b_v`` (r -> hidden) zero
    (BrainDINO's ``linear_a_q`` ... ``linear_b_v``), so the
    adapted layer starts as the plain one, and s = ``lora_alpha`` / r (``lora_alpha`` None:
    s = 1, BrainDINO's unscaled adapters). :func:`merge_lora` folds them into ``kernel``."""

    features: int
    use_bias: bool = False
    mask_k_bias: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", partitioned(trunc_normal_002, ("embed", "qkv")),
                            (x.shape[-1], self.features), self.param_dtype)
        y = x.astype(self.dtype) @ kernel.astype(self.dtype)
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros, ("qkv",)), (self.features,),
                              self.param_dtype)
            if self.mask_k_bias:
                third = self.features // 3
                keep = np.ones(self.features, np.float32)
                keep[third:2 * third] = 0.0
                bias = bias * jnp.asarray(keep, bias.dtype)
            y = y + bias.astype(self.dtype)
        if self.lora_rank:
            c, r = self.features // 3, int(self.lora_rank)

            def adapter(name):
                down = nn.Dense(r, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                kernel_init=partitioned(lora_down_init, ("embed", None)),
                                name=f"lora_a_{name}")
                up = nn.Dense(c, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=partitioned(nn.initializers.zeros, (None, "qkv")),
                              name=f"lora_b_{name}")
                return up(down(x))

            dq, dv = adapter("q"), adapter("v")
            scale = jnp.asarray(lora_scale(r, self.lora_alpha), self.dtype)
            y = y + jnp.concatenate([dq, jnp.zeros_like(dq), dv], axis=-1) * scale
        return y


def lora_scale(rank: int, alpha: float | None) -> float:
    """The LoRA output scale s = alpha / rank (alpha None: 1)."""
    return 1.0 if alpha is None else float(alpha) / float(rank)


LORA_MODULES = ("lora_a_q", "lora_b_q", "lora_a_v", "lora_b_v")  # under each qkv


def merge_lora(params, alpha: float | None = None):
    """``params`` with every QKV's LoRA adapters folded into its ``kernel`` (q third +=
    s A_q B_q, v third += s A_v B_v, in float32) and the adapters removed: the tree of the
    same encoder built with ``lora_rank=0``, giving the same outputs (up to float rounding).
    ``alpha``: the model's ``lora_alpha``. A tree without adapters is returned unchanged."""
    def walk(node):
        if not isinstance(node, Mapping):
            return node
        if "lora_a_q" in node:
            missing = [n for n in (*LORA_MODULES, "kernel") if n not in node]
            if missing:
                raise ValueError(f"merge_lora: a qkv entry with adapters lacks {missing}")
            w = {n: np.asarray(node[n]["kernel"], np.float32) for n in LORA_MODULES}
            kernel = np.asarray(node["kernel"])  # (hidden, 3 c), or (layers, hidden, 3 c) scanned
            c = kernel.shape[-1] // 3
            s = lora_scale(w["lora_a_q"].shape[-1], alpha)
            merged = kernel.astype(np.float32)
            merged[..., :c] += s * (w["lora_a_q"] @ w["lora_b_q"])
            merged[..., 2 * c:] += s * (w["lora_a_v"] @ w["lora_b_v"])
            out = {k: v for k, v in node.items() if k not in LORA_MODULES}
            out["kernel"] = merged.astype(kernel.dtype)
            return out
        return {k: walk(v) for k, v in node.items()}
    return walk(params)


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv, scaled dot product (scale head_dim ** -0.5),
    output projection ``out_proj``."""

    num_heads: int
    qkv_bias: bool = False
    mask_k_bias: bool = False
    attn_dropout: float = 0.0
    dropout: float = 0.0
    attn_impl: str | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool, num_prefix: int = 0,
                 rotary: Rotary | None = None) -> jax.Array:
        b, n, c = x.shape
        h = self.num_heads
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = QKV(3 * c, self.qkv_bias, self.mask_k_bias, self.lora_rank, self.lora_alpha,
                  name="qkv", **args)(x)
        qkv = qkv.reshape(b, n, 3, h, c // h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, head_dim)
        if rotary is not None:
            keep = getattr(rotary, "prefix", lambda t: t)  # prefix tokens: unrotated
            q = jnp.concatenate([keep(q[:, :num_prefix]), rotary(q[:, num_prefix:])], axis=1)
            k = jnp.concatenate([keep(k[:, :num_prefix]), rotary(k[:, num_prefix:])], axis=1)
        scale = (c // h) ** -0.5
        if self.attn_dropout > 0.0 and not deterministic:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=stats_dtype(self.dtype))
            attn = jax.nn.softmax(logits * scale, axis=-1).astype(self.dtype)
            attn = nn.Dropout(self.attn_dropout)(attn, deterministic=False)
            y = jnp.einsum("bhqk,bkhd->bqhd", attn, v)
        else:
            y = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=self.attn_impl)
        y = y.reshape(b, n, c)
        y = nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="out_proj",
                     kernel_init=partitioned(trunc_normal_002, ("qkv", "embed")),
                     bias_init=partitioned(nn.initializers.zeros, ("embed",)))(y)
        return nn.Dropout(self.dropout)(y, deterministic=deterministic)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``gamma``, initially ``init``."""

    init: float
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", partitioned(nn.initializers.constant(self.init), ("embed",)),
                           (x.shape[-1],), self.param_dtype)
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); each branch
    optionally LayerScaled (``ls1``/``ls2``) and dropped in training (stochastic depth).

    ``drop_path_mode``: "sample" drops each sample's branch with probability ``drop_path``
    and rescales the kept ones by 1 / (1 - rate) (timm); "subset" is DINOv2/DINOv3's batch
    subset: each branch is computed for k = max(int(B * (1 - rate)), 1) samples drawn
    without replacement (a new draw per branch) and added to those samples only, scaled by
    B / k; "dinov2" is "subset" above rate 0.1 and "sample" up to it (DINOv2's Block). The
    originals draw the subset per GPU; here B is the batch the module sees, under ``jit`` with
    a data-sharded batch the global one (the gather of the subset then crosses devices)."""

    num_heads: int
    mlp_dim: int
    qkv_bias: bool = False
    mask_k_bias: bool = False
    layer_scale_init: float | None = None
    norm_eps: float = 1e-5
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    attn_impl: str | None = None
    drop_path_mode: str = "sample"
    lora_rank: int = 0
    lora_alpha: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True, num_prefix: int = 0,
                 rotary: Rotary | None = None, rate: jax.Array | None = None) -> jax.Array:
        """``rate``: a traced drop-path rate replacing ``drop_path`` (per-sample drops, the
        scanned blocks of :class:`ViTEncoder`, where each layer's rate is a scanned input)."""
        if self.drop_path_mode not in DROP_PATH_MODES:
            raise ValueError(f"drop_path_mode={self.drop_path_mode!r}: expected one of {DROP_PATH_MODES}")
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm1 = layer_norm("norm1", self.norm_eps, **args)
        attn = Attention(self.num_heads, self.qkv_bias, self.mask_k_bias, self.attn_dropout,
                         self.dropout, self.attn_impl, self.lora_rank, self.lora_alpha,
                         name="attn", **args)
        norm2 = layer_norm("norm2", self.norm_eps, **args)
        mlp = Mlp(x.shape[-1], self.mlp_dim, self.dropout, name="mlp", **args)
        scale = self.layer_scale_init is not None
        ls1 = LayerScale(self.layer_scale_init, self.param_dtype, name="ls1") if scale else (lambda t: t)
        ls2 = LayerScale(self.layer_scale_init, self.param_dtype, name="ls2") if scale else (lambda t: t)

        def branch1(t):
            return ls1(attn(norm1(t), deterministic, num_prefix, rotary))

        def branch2(t):
            return ls2(mlp(norm2(t), deterministic))

        if rate is not None and not deterministic:
            keep = 1.0 - rate

            def drop(t):
                mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (t.shape[0],) + (1,) * (t.ndim - 1))
                return jnp.where(mask, t / keep.astype(t.dtype), jnp.zeros_like(t)).astype(x.dtype)

            x = x + drop(branch1(x))
            return x + drop(branch2(x))
        subset = self.drop_path_mode == "subset" or (self.drop_path_mode == "dinov2" and self.drop_path > 0.1)
        if deterministic or self.drop_path == 0.0 or not subset:
            drop_path = DropPath(self.drop_path)
            x = x + drop_path(branch1(x), deterministic).astype(x.dtype)
            return x + drop_path(branch2(x), deterministic).astype(x.dtype)
        b = x.shape[0]
        k = max(int(b * (1.0 - self.drop_path)), 1)
        for fn in (branch1, branch2):
            rows = jax.random.permutation(self.make_rng("dropout"), b)[:k]
            x = x.at[rows].add(fn(x[rows]).astype(x.dtype) * (b / k))
        return x


# ----------------------------------------------------------------------------------------
# Scanned blocks.

REMAT_POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable",
                  "dots_with_no_batch_dims_saveable", "checkpoint_dots", "checkpoint_dots_with_no_batch_dims")


def remat_policy(name: str | None):
    """The ``jax.checkpoint_policies`` member named ``name`` (None: JAX's default, save
    nothing but the block inputs)."""
    if name is None:
        return None
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={name!r}: expected None or one of {REMAT_POLICIES}")
    return getattr(jax.checkpoint_policies, name)


def _block_index(key: Any) -> int | None:
    key = str(key)
    if key.startswith("blocks_") and key[len("blocks_"):].isdigit():
        return int(key[len("blocks_"):])
    return None


def _is_encoder(node: Any) -> bool:
    return isinstance(node, Mapping) and "patch_embedding" in node


def _stack_leaves(leaves: list) -> Any:
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype)
    if all(isinstance(v, (np.ndarray, np.generic)) for v in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _unstack_leaf(leaf: Any, i: int) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[i]


def stack_blocks(tree: Any) -> Any:
    """``tree`` (parameters, a variable collection, or a tree that mirrors them such as
    optimizer moments) with every ViT encoder's ``blocks_0`` .. ``blocks_{n-1}`` replaced by
    one ``blocks`` subtree whose leaves are the blocks' stacked on a leading axis: the layout
    of ``scan_blocks=True``. Encoders are the dicts holding ``patch_embedding``; trees already
    stacked are returned unchanged."""
    if not isinstance(tree, Mapping):
        return tree
    if _is_encoder(tree) and "blocks_0" in tree:
        numbered = sorted(i for i in map(_block_index, tree) if i is not None)
        if numbered != list(range(len(numbered))):
            raise ValueError(f"stack_blocks: the encoder's blocks are numbered {numbered}; "
                             f"expected 0 .. {len(numbered) - 1}")
        blocks = [tree[f"blocks_{i}"] for i in numbered]
        structure = jax.tree_util.tree_structure(blocks[0])
        for i, b in enumerate(blocks[1:], 1):
            if jax.tree_util.tree_structure(b) != structure:
                raise ValueError(f"stack_blocks: blocks_{i} has other entries than blocks_0")
        out = {k: stack_blocks(v) for k, v in tree.items() if _block_index(k) is None}
        out["blocks"] = jax.tree_util.tree_map(lambda *v: _stack_leaves(list(v)), *blocks)
        return out
    return {k: stack_blocks(v) for k, v in tree.items()}


def unstack_blocks(tree: Any) -> Any:
    """The inverse of :func:`stack_blocks`: every ViT encoder's stacked ``blocks`` subtree
    split into ``blocks_0`` .. ``blocks_{n-1}`` (the layout of ``scan_blocks=False``)."""
    if not isinstance(tree, Mapping):
        return tree
    if _is_encoder(tree) and "blocks" in tree:
        leaves = jax.tree_util.tree_leaves(tree["blocks"])
        depths = {int(np.shape(v)[0]) if not isinstance(v, jax.ShapeDtypeStruct) else v.shape[0]
                  for v in leaves}
        if len(depths) != 1:
            raise ValueError(f"unstack_blocks: the stacked blocks' leading axes differ: {sorted(depths)}")
        n = depths.pop()
        out = {k: unstack_blocks(v) for k, v in tree.items() if k != "blocks"}
        for i in range(n):
            out[f"blocks_{i}"] = jax.tree_util.tree_map(lambda v: _unstack_leaf(v, i), tree["blocks"])
        return out
    return {k: unstack_blocks(v) for k, v in tree.items()}


def blocks_layout(tree: Any, scanned: bool) -> Any:
    """``tree`` in the block layout of ``scan_blocks=scanned`` (either layout accepted)."""
    return stack_blocks(tree) if scanned else unstack_blocks(tree)


def scans_blocks(model: Any) -> bool:
    """Whether ``model`` (any model) runs ViT blocks under ``nn.scan``."""
    return bool(getattr(model, "scan_blocks", False))


# ----------------------------------------------------------------------------------------
# Models.


def _as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * n if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"{name}={value}: expected {n} values (one per spatial axis)")
    return out


class ViTEncoder(nn.Module):
    """Patch embedding, prefix tokens, positions and the transformer blocks: ``(B, *spatial,
    in_channels)`` -> tokens ``(B, prefix + patches, hidden_size)``. See the module docstring.

    ``img_size`` and ``patch_size`` are ints (the same on ``spatial_dims`` axes) or one value
    per spatial axis. ``pool`` and ``fc_norm`` say how :class:`ViT` pools (``fc_norm``, a
    LayerNorm after pooling, is on by default with ``pool="mean"``); ``final_norm`` (the
    LayerNorm of the tokens) is by default on exactly when ``fc_norm`` is off (timm,
    VideoMAE); VideoMAEModel with mean pooling has neither (``final_norm=False,
    fc_norm=False``). ``drop_path`` is the last block's stochastic-depth rate (linearly
    increasing from 0); ``dropout`` acts after the prefix tokens are prepended (timm; MONAI
    drops the patch tokens only), on attention outputs and in the MLP, ``attn_dropout`` on
    the attention weights. ``remat`` rematerialises every block. ``lora_rank`` (0: off) and
    ``lora_alpha``: LoRA adapters on every block's q and v (:class:`QKV`); with
    ``optim.freeze="encoder"`` and ``optim.unfreeze=("*/lora_*",)`` only they train.

    ``drop_path_uniform``: every block gets ``drop_path`` (DINOv3, DINOv2's
    ``drop_path_uniform``); ``drop_path_mode`` as :class:`Block`. ``pos_embed="rope"``: axial
    RoPE (2D only), ``rope_base`` (periods ``rope_base ** (2 k / (head_dim / 2))``),
    ``rope_normalize`` ("separate", "max", "min": the divisor of the patch centres), and in
    training ``rope_shift``, ``rope_jitter``, ``rope_rescale`` (None: off; DINOv3's hub
    models use ``rope_rescale=2``), ``rope_dtype`` ("fp32"; "bf16": periods, coordinates,
    angles, sin / cos and the rotated q and k rounded to bfloat16 as DINOv3's
    ``pos_embed_rope_dtype="bf16"``). ``pos_interp_offset``: DINOv2's ``interpolate_offset``.
    ``mask_token``: a learned (1, hidden) token used by ``masks=``.
    """

    in_channels: int
    img_size: int | Sequence[int]
    patch_size: int | Sequence[int] = 16
    spatial_dims: int = 3
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    cls_token: bool = True
    num_registers: int = 0
    pos_embed: str = "learned"
    pos_embed_cls: bool = False
    pos_interp: str = "bicubic"
    pos_interp_offset: float = 0.0
    rope_base: float = 100.0
    rope_normalize: str = "separate"
    rope_shift: float | None = None
    rope_jitter: float | None = None
    rope_rescale: float | None = None
    rope_dtype: str = "fp32"
    mask_token: bool = False
    qkv_bias: bool = False
    mask_k_bias: bool = False
    layer_scale_init: float | None = None
    norm_eps: float = 1e-5
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    drop_path_mode: str = "sample"
    drop_path_uniform: bool = False
    pool: str = "cls"
    fc_norm: bool | None = None
    final_norm: bool | None = None
    attn_impl: str | None = None
    remat: bool = False
    remat_policy: str | None = None
    scan_blocks: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        """Path of the layer that reads the input channels."""
        return ("patch_embedding",)

    @nn.nowrap
    def dims(self) -> int:
        for v in (self.img_size, self.patch_size):
            if not isinstance(v, (int, np.integer)):
                return len(v)
        return self.spatial_dims

    @nn.nowrap
    def patch(self) -> tuple[int, ...]:
        return _as_tuple(self.patch_size, self.dims(), "patch_size")

    @nn.nowrap
    def grid(self) -> tuple[int, ...]:
        """The patch grid of ``img_size`` (the one a learned table is trained for)."""
        size = _as_tuple(self.img_size, self.dims(), "img_size")
        return tuple(s // p for s, p in zip(size, self.patch()))

    @nn.nowrap
    def num_prefix(self) -> int:
        return int(self.cls_token) + self.num_registers

    @nn.nowrap
    def uses_fc_norm(self) -> bool:
        return self.pool == "mean" if self.fc_norm is None else bool(self.fc_norm)

    @nn.nowrap
    def uses_final_norm(self) -> bool:
        return not self.uses_fc_norm() if self.final_norm is None else bool(self.final_norm)

    @nn.nowrap
    def check(self) -> None:
        for name, value, allowed in (("pos_embed", self.pos_embed, POS_EMBEDS), ("pool", self.pool, POOLS),
                                     ("pos_interp", self.pos_interp, INTERPOLATIONS),
                                     ("rope_normalize", self.rope_normalize, ROPE_NORMALIZE),
                                     ("rope_dtype", self.rope_dtype, ROPE_DTYPES),
                                     ("drop_path_mode", self.drop_path_mode, DROP_PATH_MODES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {allowed}")
        if self.dims() not in (2, 3):
            raise ValueError(f"ViT: {self.dims()} spatial axes; expected 2 (images) or 3 (volumes, videos)")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.pos_embed_cls and not (self.cls_token and self.pos_embed == "learned"):
            raise ValueError("pos_embed_cls=True needs cls_token=True and pos_embed='learned'")
        if self.pos_embed == "rope":
            head_dim = self.hidden_size // self.num_heads
            if self.dims() != 2:
                raise ValueError(f"pos_embed='rope' is axial over 2 spatial axes; this ViT has {self.dims()}")
            if head_dim % 4:
                raise ValueError(f"pos_embed='rope' needs a head dimension divisible by 4, got "
                                 f"{self.hidden_size} / {self.num_heads} = {head_dim}")
        if self.mask_k_bias and not self.qkv_bias:
            raise ValueError("mask_k_bias=True needs qkv_bias=True")
        if min(self.grid()) < 1:
            raise ValueError(f"img_size={self.img_size} is smaller than patch_size={self.patch_size}")
        remat_policy(self.remat_policy)
        if self.scan_blocks and self.depth < 1:
            raise ValueError(f"scan_blocks=True needs depth >= 1, got {self.depth}")

    @nn.nowrap
    def drop_rates(self) -> list[float]:
        """Each block's stochastic-depth rate."""
        return ([float(self.drop_path)] * self.depth if self.drop_path_uniform
                else np.linspace(0.0, self.drop_path, self.depth).tolist())

    def _positions(self, grid: tuple[int, ...]) -> tuple[jax.Array | None, jax.Array | None]:
        """(rows for the patch tokens (1, N, D), row for the CLS token (1, 1, D) or None)."""
        d = self.hidden_size
        n = int(np.prod(grid))
        if self.pos_embed in ("none", "rope"):
            return None, None
        if self.pos_embed == "sincos":
            return jnp.asarray(sincos_table(n, d), self.dtype)[None], None
        trained = self.grid()
        rows = int(np.prod(trained)) + int(self.pos_embed_cls)
        table = self.param("position_embeddings", partitioned(trunc_normal_002, (None, None, "embed")),
                           (1, rows, d), self.param_dtype).astype(self.dtype)
        cls_row = table[:, :1] if self.pos_embed_cls else None
        patches = table[:, int(self.pos_embed_cls):]
        return resize_pos_embed(patches, trained, grid, self.pos_interp, self.pos_interp_offset), cls_row

    @nn.nowrap
    def rope_tables(self, grid: tuple[int, ...], key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(sin, cos) of the axial RoPE for a patch grid, each (N, head_dim) float32 (values
        of ``rope_dtype``); ``key`` draws the training-time coordinate augmentation
        (``rope_shift`` / ``rope_jitter`` / ``rope_rescale``; in float32, the augmented
        coordinates rounded to ``rope_dtype``)."""
        head_dim = self.hidden_size // self.num_heads
        dtype = self.rope_dtype
        coords = rope_coords(grid, self.rope_normalize, dtype)
        periods = rope_periods(head_dim, self.rope_base, dtype)
        if key is not None:
            coords = rope_augment(jnp.asarray(coords), key, self.rope_shift, self.rope_jitter,
                                  self.rope_rescale)
            coords, periods = rope_round(coords, dtype), jnp.asarray(periods)
        elif dtype == "fp32":
            coords, periods = jnp.asarray(coords), jnp.asarray(periods)
        sin, cos = rope_sincos(coords, periods, dtype)
        return jnp.asarray(sin), jnp.asarray(cos)

    @nn.nowrap
    def _layer_indices(self, layers: Sequence[int]) -> tuple[int, ...]:
        out = []
        for i in layers:
            if not isinstance(i, (int, np.integer)) or not -self.depth <= int(i) < self.depth:
                raise ValueError(f"layers={tuple(layers)}: expected block indices in "
                                 f"[-{self.depth}, {self.depth}) (depth {self.depth})")
            out.append(int(i) % self.depth)
        return tuple(out)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, rotary: Rotary | None = None,
                 keep: jax.Array | None = None, layers: Sequence[int] | None = None,
                 masks: jax.Array | None = None) -> jax.Array | list[jax.Array]:
        """``keep`` (B, K) int: indices (row-major in the patch grid) of the patch tokens to
        keep, after positions are added (a masked autoencoder's visible patches); the output
        then has ``prefix + K`` tokens, in ``keep``'s order.

        ``masks`` (B, num_patches) bool: patches whose embedding is replaced by the learned
        ``mask_token`` (needs ``mask_token=True``) right after the patch embedding, before
        positions are added (DINOv2 / DINOv3 ``prepare_tokens_with_masks``).

        ``layers``: block indices (negative counts from the end); the result is then a list,
        in the order given, of the tokens after each of those blocks, each through the final
        norm when the encoder has one (DINOv3 ``get_intermediate_layers(norm=True)``)."""
        self.check()
        if x.ndim != self.dims() + 2 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected input (batch, {self.dims()} spatial axes, {self.in_channels}) "
                             f"channels-last, got shape {x.shape}")
        patch = self.patch()
        grid = tuple(s // p for s, p in zip(x.shape[1:-1], patch))
        if min(grid) < 1:
            raise ValueError(f"input spatial shape {x.shape[1:-1]} is smaller than patch_size {patch}")
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        deterministic = not train
        b, d = x.shape[0], self.hidden_size
        wanted = None if layers is None else self._layer_indices(layers)

        tokens = PatchEmbed(d, patch, name="patch_embedding", **args)(x).reshape(b, -1, d)
        if self.mask_token:
            mask_token = self.param("mask_token", partitioned(nn.initializers.zeros, (None, "embed")),
                                    (1, d), self.param_dtype).astype(self.dtype)
        if masks is not None:
            if not self.mask_token:
                raise ValueError("ViTEncoder: masks= needs an encoder built with mask_token=True")
            if masks.shape != tokens.shape[:2]:
                raise ValueError(f"masks must be (batch={b}, num_patches={tokens.shape[1]}) bool, "
                                 f"got shape {tuple(masks.shape)}")
            tokens = jnp.where(masks.astype(bool)[..., None], mask_token[None], tokens)
        pos, cls_pos = self._positions(grid)
        if pos is not None:
            tokens = tokens + pos
        if self.pos_embed == "rope":
            if rotary is not None:
                raise ValueError("ViTEncoder: pos_embed='rope' computes its own rotary positions; "
                                 "rotary= is for encoders without them")
            augment = train and any(v is not None for v in (self.rope_shift, self.rope_jitter, self.rope_rescale))
            rotary = rope_rotary(*self.rope_tables(grid, self.make_rng("dropout") if augment else None),
                                 self.rope_dtype)
        if keep is not None:
            if rotary is not None:
                raise ValueError("ViTEncoder: rotary positions with keep= (a subset of the "
                                 "patch tokens) are not supported")
            if keep.ndim != 2 or keep.shape[0] != b:
                raise ValueError(f"keep must be (batch={b}, K) patch indices, got shape "
                                 f"{tuple(keep.shape)}")
            tokens = jnp.take_along_axis(tokens, keep[..., None].astype(jnp.int32), axis=1)
        prefix = []
        if self.cls_token:
            cls = self.param("cls_token", partitioned(trunc_normal_002, (None, None, "embed")),
                             (1, 1, d), self.param_dtype).astype(self.dtype)
            prefix.append(cls if cls_pos is None else cls + cls_pos)
        if self.num_registers:
            prefix.append(self.param("registers", partitioned(trunc_normal_002, (None, None, "embed")),
                                     (1, self.num_registers, d), self.param_dtype).astype(self.dtype))
        if prefix:
            tokens = jnp.concatenate([jnp.broadcast_to(p, (b, *p.shape[1:])) for p in prefix] + [tokens], 1)
        tokens = nn.Dropout(self.dropout)(tokens, deterministic=deterministic)

        policy = remat_policy(self.remat_policy)
        block = (nn.remat(Block, static_argnums=(2, 3, 4), policy=policy, prevent_cse=not self.scan_blocks)
                 if self.remat else Block)
        rates = self.drop_rates()
        norm = layer_norm("norm", self.norm_eps, **args) if self.uses_final_norm() else (lambda t: t)
        block_args = (self.num_heads, self.mlp_dim, self.qkv_bias, self.mask_k_bias, self.layer_scale_init,
                      self.norm_eps, self.dropout, self.attn_dropout)
        block_kwargs = dict(attn_impl=self.attn_impl, drop_path_mode=self.drop_path_mode,
                            lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, **args)
        taken = {}
        if self.scan_blocks:
            # One block traced once, run depth times (nn.scan); weights stacked on a leading
            # "layers" axis under ``blocks``. Every block runs, also past the last one asked for.
            static = len(set(rates)) == 1
            if not (static or deterministic or self.drop_path_mode == "sample"
                    or (self.drop_path_mode == "dinov2" and max(rates) <= 0.1)):
                raise ValueError(f"scan_blocks=True with drop_path_mode={self.drop_path_mode!r} "
                                 f"needs the same rate in every block (drop_path_uniform=True) or "
                                 f"drop_path <= 0.1 for 'dinov2': the batch subset size is fixed per block")
            collect = wanted is not None

            def body(mdl, t, rate):
                t = mdl(t, deterministic, self.num_prefix(), rotary, rate)
                return t, (t if collect else None)

            scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                              length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
            xs = None if static or deterministic else jnp.asarray(rates, jnp.float32)
            tokens, every = scanned(block(*block_args, rates[0] if static else max(rates), name="blocks",
                                          **block_kwargs), tokens, xs)
            if collect:
                taken = {i: norm(every[i]) for i in wanted}
        else:
            # Blocks past the last one asked for are skipped, except at initialisation.
            last = self.depth - 1 if wanted is None or self.is_initializing() else max(wanted)
            for i in range(last + 1):
                tokens = block(*block_args, rates[i], name=f"blocks_{i}", **block_kwargs)(
                    tokens, deterministic, self.num_prefix(), rotary)
                if wanted is not None and i in wanted:
                    taken[i] = norm(tokens)
        if wanted is not None:
            return [taken[i] for i in wanted]
        return norm(tokens)


ENCODER_FIELDS = tuple(f.name for f in dataclasses.fields(ViTEncoder) if f.name not in ("parent", "name"))


class WrapsEncoder:
    """For a model whose fields include every :class:`ViTEncoder` field and which holds that
    encoder under ``encoder``: its ``encoder_name``, ``input_layer`` and ``encoder_kwargs``."""

    encoder_name = "encoder"

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        return ("encoder", "patch_embedding")

    @nn.nowrap
    def encoder_kwargs(self) -> dict:
        """Arguments of the encoder (this model's ViTEncoder fields)."""
        return {f: getattr(self, f) for f in ENCODER_FIELDS}


class ViT(WrapsEncoder, ViTEncoder):
    """:class:`ViTEncoder` (under ``encoder``), pooling and a classification head.

    ``num_classes``: head outputs (0: no head, the pooled features are returned);
    ``post_activation``: None or "tanh" (MONAI's ``classification_head = Sequential(Linear,
    Tanh)``); ``head_norm_eps``: eps of ``fc_norm`` (None: ``norm_eps``; VideoMAE uses 1e-5).
    """

    num_classes: int = 0
    post_activation: str | None = None
    head_norm_eps: float | None = None


    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_tokens: bool = False,
                 rotary: Rotary | None = None) -> jax.Array:
        if self.post_activation not in (None, "tanh"):
            raise ValueError(f"post_activation={self.post_activation!r}: expected None or 'tanh'")
        encoder = ViTEncoder(**self.encoder_kwargs(), name="encoder")
        tokens = encoder(x, train, rotary)
        if return_tokens:
            return tokens
        if self.pool == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = tokens[:, self.num_prefix():].astype(stats_dtype(self.dtype)).mean(1).astype(self.dtype)
        if self.uses_fc_norm():
            eps = self.norm_eps if self.head_norm_eps is None else self.head_norm_eps
            pooled = layer_norm("fc_norm", eps, self.dtype, self.param_dtype)(pooled)
        if self.num_classes == 0:
            return pooled.astype(stats_dtype(self.dtype))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head",
                          kernel_init=partitioned(trunc_normal_002, ("embed", "classes")),
                          bias_init=partitioned(nn.initializers.zeros, ("classes",)))(pooled)
        logits = logits.astype(stats_dtype(self.dtype))
        return jnp.tanh(logits) if self.post_activation == "tanh" else logits
