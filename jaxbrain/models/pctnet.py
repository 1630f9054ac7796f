"""PCT-Net (MIS-FM, Wang et al., 2023): parallel convolution and Swin-transformer branches in
a U-shaped network, in Flax Linen.

Numerically this is MIS-FM's ``PCTNet`` (verified against a PyTorch replica with the same
state-dict keys in ``tests/test_pctnet.py``):

- a convolutional stem (``embedding``; the original's ``embeddings.{mode}``) takes the input
  to a quarter of its size through two ConvBlocks and two max-pool downsamplings. The
  ``resolution_mode`` 0 / 1 / 2 downsamples (4, 4, 4) / (2, 4, 4) / (1, 4, 4): the
  depth-preserving steps use in-plane (1, 3, 3) kernels and (1, 2, 2) pooling. The original
  holds all three stems and heads and runs one; this model holds only the selected one, and
  ``jaxbrain.convert`` reads and writes the others;
- the pyramid (``pyramid_ct``): ConvTrans blocks e2 -> down -> e3 -> down -> e4 -> up-cat -> d3
  -> up-cat -> d2, each block the sum of a ConvBlock branch and a 3D Swin branch (two blocks,
  plain and shifted windows, relative position bias);
- the prediction head (``pred_head``; the original's ``pred_heads.{mode}``): two up-cat steps
  back to full size, with ConvBlocks; with ``multiscale_pred`` four outputs (full, 1/2, 1/4
  and 1/8 of the input), the two coarse ones from the pyramid, for deep supervision.

ConvBlock = BN-PReLU-Conv-BN-PReLU-Dropout-Conv (no residual); DownSample = MaxPool then
BN-PReLU-Conv; up-cat = BN-PReLU-ConvTranspose (kernel = stride), concatenation with the
skip, BN-PReLU-Conv3. The Swin branch is MIS-FM's: the window shrinks to a cube of the
smallest axis when that axis is no longer than the window (no shift then), padded tokens
are attended to, and the relative position index is the original's (``corrected_index=True``
gives the standard Swin index; checkpoints trained with one do not fit the other).

The Swin blocks are built for one input size (``input_size``, fixed at construction as in
the original); other sizes are refused; segment larger volumes with a sliding window of that
size. Layout: channels-last, ``(batch, D, H, W, in_channels)``.

BatchNorm keeps running statistics in the ``batch_stats`` collection with PyTorch's
semantics: in training, normalisation by the batch mean and biased variance, and running
averages updated with PyTorch's momentum 0.1 (Flax's convention: 0.9) using the unbiased
variance; in evaluation, the running statistics. Under data parallelism the batch statistics
are those of the global batch (as synchronised BatchNorm). Train with
``model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbrain.models.blocks import BatchNorm, Conv, Dtype, UpConv2x, partitioned, stats_dtype
from jaxbrain.models.swin_unetr import SwinBlock

# resolution_mode -> (stem convolution dims, downsampling dims): 3 = cubic, 2 = in-plane.
MODES = {0: ((3, 3), (3, 3)), 1: ((2, 3), (2, 3)), 2: ((2, 2), (2, 2))}
SCALES = {0: (4, 4, 4), 1: (2, 4, 4), 2: (1, 4, 4)}


def _kernel(dim: int) -> tuple[int, int, int]:
    return (3, 3, 3) if dim == 3 else (1, 3, 3)


def _pool(dim: int) -> tuple[int, int, int]:
    return (2, 2, 2) if dim == 3 else (1, 2, 2)


class PReLU(nn.Module):
    """``torch.nn.PReLU()``: one learned negative slope, initially 0.25."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.param("alpha", nn.initializers.constant(0.25), (1,), self.param_dtype)
        return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


class _Module(nn.Module):
    """Shared fields and the BN-PReLU-Conv triple that most blocks are made of (named as the
    original's ``nn.Sequential`` entries ``{prefix}.0/1/2``)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def _args(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    @nn.nowrap
    def _bn_act(self, x, prefix: str, first: int, train: bool):
        x = BatchNorm(name=f"{prefix}_{first}", **self._args())(x, train)
        return PReLU(self.param_dtype, name=f"{prefix}_{first + 1}")(x)

    @nn.nowrap
    def _bn_act_conv(self, x, prefix: str, features: int, kernel, train: bool):
        x = self._bn_act(x, prefix, 0, train)
        return Conv(features, kernel, True, name=f"{prefix}_2", **self._args())(x)


class ConvBlock(_Module):
    features: int = 0
    dim: int = 3
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k = _kernel(self.dim)
        x = self._bn_act(x, "conv_conv", 0, train)
        x = Conv(self.features, k, True, name="conv_conv_2", **self._args())(x)
        x = self._bn_act(x, "conv_conv", 3, train)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return Conv(self.features, k, True, name="conv_conv_6", **self._args())(x)


class DownSample(_Module):
    features: int = 0
    down_dim: int = 3
    conv_dim: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        p = _pool(self.down_dim)
        x = nn.max_pool(x, p, strides=p, padding="VALID")
        return self._bn_act_conv(x, "conv", self.features, _kernel(self.conv_dim), train)


class UpCat(_Module):
    """Upsamples the coarse input, concatenates it after the skip, BN-PReLU-Conv."""

    features: int = 0
    up_dim: int = 3
    conv_dim: int = 3

    @nn.compact
    def __call__(self, skip: jax.Array, coarse: jax.Array, train: bool) -> jax.Array:
        up = self._bn_act(coarse, "up", 0, train)
        up = UpConv2x(self.features, factor=_pool(self.up_dim), use_bias=True, name="up_2",
                      **self._args())(up)
        y = jnp.concatenate([skip.astype(up.dtype), up], axis=-1)
        return self._bn_act_conv(y, "conv", self.features, _kernel(self.conv_dim), train)


class OutConv(_Module):
    """BN-PReLU-1x1 conv to class logits (the original's ``ConvLayer``)."""

    features: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self._bn_act_conv(x, "conv", self.features, 1, train)


class SwinLayer(nn.Module):
    """MIS-FM's Swin branch (its ``BasicLayer`` without downsampling): ``depth`` blocks
    alternating plain and shifted windows at the fixed ``input_resolution``."""

    input_resolution: tuple[int, int, int]
    depth: int
    num_heads: int
    window_size: int
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    corrected_index: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        block = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
        for i in range(self.depth):
            x = block(self.num_heads, (self.window_size,) * 3, shift=i % 2 == 1, drop=self.drop,
                      attn_drop=self.attn_drop, drop_path=self.drop_path, dtype=self.dtype,
                      param_dtype=self.param_dtype, window_rule="cubic",
                      relative_index="swin" if self.corrected_index else "misfm",
                      name=f"blocks_{i}")(x, not train)
        return x


class ConvTransBlock(_Module):
    """ConvBlock branch + Swin branch, summed."""

    input_resolution: tuple[int, int, int] = (0, 0, 0)
    depth: int = 2
    num_heads: int = 4
    window_size: int = 6
    dropout: float = 0.0
    drop_path: float = 0.2
    corrected_index: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if tuple(x.shape[1:4]) != tuple(self.input_resolution):
            raise ValueError(
                f"{self.name}: the Swin branch was built for a {tuple(self.input_resolution)} "
                f"grid and got {tuple(x.shape[1:4])} (PCT-Net's transformer blocks are fixed "
                "to the input_size given at construction)")
        c = x.shape[-1]
        conv = ConvBlock(features=c, dim=3, dropout=self.dropout, name="conv", **self._args())(x, train)
        tokens = nn.Dropout(self.dropout)(x, deterministic=not train)
        trans = SwinLayer(tuple(self.input_resolution), self.depth, self.num_heads,
                          self.window_size, self.dropout, self.dropout, self.drop_path,
                          self.corrected_index, self.remat, name="trans", **self._args())(tokens, train)
        return conv + trans.astype(conv.dtype)


class PatchEmbedding(_Module):
    """The convolutional stem: full, 1/2 and 1/4 resolution features (x0, x1, x2)."""

    features: tuple[int, int, int] = (32, 64, 128)
    conv_dims: tuple[int, int] = (3, 3)
    down_dims: tuple[int, int] = (3, 3)
    dropout: tuple[float, float] = (0.0, 0.0)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool):
        f, cd, dd = self.features, self.conv_dims, self.down_dims
        args = self._args()
        x = Conv(f[0], _kernel(cd[0]), True, name="proj", **args)(x)
        x0 = ConvBlock(features=f[0], dim=cd[0], dropout=self.dropout[0], name="conv0", **args)(x, train)
        x1 = DownSample(features=f[1], down_dim=dd[0], conv_dim=cd[1], name="down1", **args)(x0, train)
        x1 = ConvBlock(features=f[1], dim=cd[1], dropout=self.dropout[1], name="conv1", **args)(x1, train)
        x2 = DownSample(features=f[2], down_dim=dd[1], conv_dim=3, name="down2", **args)(x1, train)
        return x0, x1, x2


class PyramidConvTrans(_Module):
    """e2 -> e3 -> e4 -> d3 -> d2 at 1/4, 1/8 and 1/16 of the input (for mode 0)."""

    input_size: tuple[int, int, int] = (16, 32, 32)
    features: tuple[int, int, int] = (128, 256, 512)
    dropout: tuple[float, float, float] = (0.2, 0.2, 0.2)
    depths: tuple[int, int, int] = (2, 2, 2)
    num_heads: tuple[int, int, int] = (4, 8, 16)
    window_sizes: tuple[int, int, int] = (6, 6, 6)
    drop_path: float = 0.2
    class_num: int = 2
    multiscale_pred: bool = False
    corrected_index: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool):
        f, args = self.features, self._args()
        r2 = tuple(self.input_size)
        r3 = tuple(s // 2 for s in r2)
        r4 = tuple(s // 2 for s in r3)

        def block(i, res, name):
            return ConvTransBlock(input_resolution=res, depth=self.depths[i],
                                  num_heads=self.num_heads[i], window_size=self.window_sizes[i],
                                  dropout=self.dropout[i], drop_path=self.drop_path,
                                  corrected_index=self.corrected_index,
                                  remat=self.remat, name=name, **args)

        x2 = block(0, r2, "convtrans_e2")(x, train)
        x3 = DownSample(features=f[1], name="down3", **args)(x2, train)
        x3 = block(1, r3, "convtrans_e3")(x3, train)
        x4 = DownSample(features=f[2], name="down4", **args)(x3, train)
        x4 = block(2, r4, "convtrans_e4")(x4, train)
        d3 = block(1, r3, "convtrans_d3")(UpCat(features=f[1], name="up4", **args)(x3, x4, train), train)
        d2 = block(0, r2, "convtrans_d2")(UpCat(features=f[0], name="up3", **args)(x2, d3, train), train)
        if not self.multiscale_pred:
            return d2, ()
        out2 = OutConv(features=self.class_num, name="out_conv2", **args)(d2, train)
        out3 = OutConv(features=self.class_num, name="out_conv3", **args)(d3, train)
        return d2, (out2, out3)


class PredictionHead(_Module):
    features: tuple[int, int, int] = (32, 64, 128)
    conv_dims: tuple[int, int] = (3, 3)
    down_dims: tuple[int, int] = (3, 3)
    dropout: tuple[float, float] = (0.0, 0.0)
    class_num: int = 2
    multiscale_pred: bool = False

    @nn.compact
    def __call__(self, x0, x1, x2, train: bool):
        f, cd, dd, args = self.features, self.conv_dims, self.down_dims, self._args()
        d1 = UpCat(features=f[1], up_dim=dd[1], conv_dim=cd[1], name="up2", **args)(x1, x2, train)
        d1 = ConvBlock(features=f[1], dim=cd[1], dropout=self.dropout[1], name="conv1", **args)(d1, train)
        d0 = UpCat(features=f[0], up_dim=dd[0], conv_dim=cd[0], name="up1", **args)(x0, d1, train)
        d0 = ConvBlock(features=f[0], dim=cd[0], dropout=self.dropout[0], name="conv0", **args)(d0, train)
        out = OutConv(features=self.class_num, name="out_conv0", **args)(d0, train)
        if not self.multiscale_pred:
            return out, ()
        return out, (OutConv(features=self.class_num, name="out_conv1", **args)(d1, train),)


class PCTNet(nn.Module):
    """PCT-Net with MIS-FM's parameter vocabulary (``in_chns`` -> ``in_channels``,
    ``class_num`` -> ``out_channels``, ``feature_chns`` -> ``features``).

    ``__call__(x, train=False, all_scales=None)`` returns the full-resolution logits, or with
    ``multiscale_pred`` and ``all_scales`` (default: ``train``) the tuple (full, 1/2, 1/4, 1/8)
    as the original's deep-supervision output. Logits are float32 whatever ``dtype``.
    """

    in_channels: int = 1
    out_channels: int = 2
    input_size: Sequence[int] = (64, 128, 128)
    features: Sequence[int] = (32, 64, 128, 256, 512)
    dropout: Sequence[float] = (0.0, 0.0, 0.2, 0.2, 0.2)
    depths: Sequence[int] = (2, 2, 2)
    num_heads: Sequence[int] = (4, 8, 16)
    window_sizes: Sequence[int] = (6, 6, 6)
    drop_path: float = 0.2
    multiscale_pred: bool = False
    resolution_mode: int = 0
    corrected_index: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        """Path of the layer that reads the input channels."""
        return ("embedding", "proj")

    @nn.nowrap
    def pyramid_size(self) -> tuple[int, int, int]:
        """The grid of the first ConvTrans block (the input size over the stem's scale)."""
        if self.resolution_mode not in SCALES:
            raise ValueError(f"resolution_mode={self.resolution_mode}: expected 0, 1 or 2")
        if len(self.input_size) != 3:
            raise ValueError(f"input_size={tuple(self.input_size)}: expected (D, H, W)")
        return tuple(s // k for s, k in zip(self.input_size, SCALES[self.resolution_mode]))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, all_scales: bool | None = None):
        if len(self.features) != 5 or len(self.dropout) != 5:
            raise ValueError(f"features and dropout need 5 levels, got {tuple(self.features)}, "
                             f"{tuple(self.dropout)}")
        size = self.pyramid_size()
        if x.ndim != 5 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected input (batch, D, H, W, {self.in_channels}), got {x.shape}")
        if tuple(x.shape[1:4]) != tuple(self.input_size):
            raise ValueError(
                f"PCTNet was built for input_size {tuple(self.input_size)} and got spatial shape "
                f"{tuple(x.shape[1:4])}: its Swin blocks are fixed to the construction-time "
                "size, as in the original; segment larger volumes with a sliding window of "
                "input_size (data.roi / eval.roi) or build the model with another input_size")
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        f, drop = tuple(self.features), tuple(self.dropout)
        conv_dims, down_dims = MODES[self.resolution_mode]
        x0, x1, x2 = PatchEmbedding(features=f[:3], conv_dims=conv_dims, down_dims=down_dims,
                                    dropout=drop[:2], name="embedding", **args)(x, train)
        x2, coarse = PyramidConvTrans(
            input_size=size, features=f[2:], dropout=drop[2:], depths=tuple(self.depths),
            num_heads=tuple(self.num_heads), window_sizes=tuple(self.window_sizes),
            drop_path=self.drop_path, class_num=self.out_channels, multiscale_pred=self.multiscale_pred,
            corrected_index=self.corrected_index, remat=self.remat, name="pyramid_ct",
            **args)(x2, train)
        out, out1 = PredictionHead(features=f[:3], conv_dims=conv_dims, down_dims=down_dims,
                                   dropout=drop[:2], class_num=self.out_channels,
                                   multiscale_pred=self.multiscale_pred, name="pred_head",
                                   **args)(x0, x1, x2, train)
        acc = stats_dtype(self.dtype)
        if self.multiscale_pred and (train if all_scales is None else all_scales):
            return tuple(o.astype(acc) for o in (out, *out1, *coarse))
        return out.astype(acc)
