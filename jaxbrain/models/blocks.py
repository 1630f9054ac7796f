"""Building blocks shared by the 3D models: normalisation, convolutions with logical axis
names, stochastic depth and the UNETR residual conv blocks.

Every tensor is channels-last: (batch, D, H, W, channels).

Parameters are created through ``nn.with_logical_partitioning`` so that a rule table
(``jaxbrain.parallel``) can place them on a device mesh. The logical names used are:

- ``embed``: a transformer's model width;  ``mlp``: its hidden MLP width;
  ``qkv``: the fused query/key/value width;  ``heads``: attention heads;
  ``rel_pos``: rows of a relative-position bias table;  ``merge``: PatchMerging's 8C input;
- ``conv_in`` / ``conv_out``: a convolution's input / output channels and
  ``conv_kernel``: its spatial kernel axes;  ``norm``: a normalisation's channels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbrain.models.conv3d import conv3x3x3

Dtype = Any

# PyTorch's default initialisation of Conv and Linear weights (kaiming_uniform with a=sqrt(5))
# is uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1/(3 fan_in).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
trunc_normal_002 = nn.initializers.truncated_normal(stddev=0.02)


def partitioned(init, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(init, tuple(axes))


def layer_norm(name: str, axis_name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    """PyTorch-compatible LayerNorm: eps 1e-5, two-pass variance, statistics in float32."""
    return nn.LayerNorm(
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(nn.initializers.ones, (axis_name,)),
        bias_init=partitioned(nn.initializers.zeros, (axis_name,)),
        name=name,
    )


def stats_dtype(dtype: Dtype) -> Dtype:
    """The dtype normalisation statistics and softmax are computed in: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def layer_norm_no_affine(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the channel axis without scale or bias (``F.layer_norm(x, [C])``)."""
    xf = x.astype(stats_dtype(x.dtype))
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """InstanceNorm without affine parameters, instance statistics in training and inference
    alike (PyTorch's ``InstanceNorm3d`` defaults). Statistics in at least float32."""
    axes = tuple(range(1, x.ndim - 1))
    xf = x.astype(stats_dtype(x.dtype))
    mean = xf.mean(axes, keepdims=True)
    var = jnp.square(xf - mean).mean(axes, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm{1,2,3}d`` over the last (channel) axis, running statistics in the
    ``batch_stats`` collection (``mean``, ``var``, ``count``).

    Training (``train=True``, applied with ``mutable=["batch_stats"]``): normalisation by the
    batch mean and biased variance over every axis but the channels; the running averages move
    by PyTorch's ``momentum`` (the weight of the new batch: 0.1, Flax's 0.9) towards the batch
    mean and the unbiased variance, and ``count`` (PyTorch's ``num_batches_tracked``) grows
    by one. Evaluation: the running statistics. Statistics, running ones included, are kept in
    at least float32 whatever ``dtype``; under data parallelism the batch statistics are those
    of the global batch (as synchronised BatchNorm)."""

    momentum: float = 0.1
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", partitioned(nn.initializers.ones, ("norm",)), (c,),
                           self.param_dtype)
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("norm",)), (c,),
                          self.param_dtype)
        acc = stats_dtype(self.dtype)
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), acc))
        var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), acc))
        count = self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32))
        xf = x.astype(acc)
        if train:
            axes = tuple(range(x.ndim - 1))
            m = xf.mean(axes)
            v = jnp.square(xf - m).mean(axes)
            if not self.is_initializing():
                n = int(np.prod(x.shape[:-1]))
                mean.value = (1 - self.momentum) * mean.value + self.momentum * m
                var.value = (1 - self.momentum) * var.value + self.momentum * v * (n / max(n - 1, 1))
                count.value = count.value + 1
        else:
            m, v = mean.value, var.value
        y = (xf - m) * jax.lax.rsqrt(v + self.eps) * scale.astype(acc) + bias.astype(acc)
        return y.astype(self.dtype)


def dense(features: int, axes: tuple[str, str], name: str, dtype: Dtype, param_dtype: Dtype,
          use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(trunc_normal_002, axes),
        bias_init=partitioned(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


class Conv(nn.Module):
    """Stride-1 3D convolution with 'same' zero padding, kernel layout (k0, k1, k2, in, out) as
    ``nn.Conv``. ``kernel`` is an int (cubic) or a per-axis triple of odd sizes. 3x3x3 goes
    through ``conv3d.conv3x3x3`` (fast on CPU too), 1x1x1 is a matrix product, other shapes
    (e.g. the in-plane (1, 3, 3)) use XLA's convolution."""

    features: int
    kernel: int | tuple[int, int, int] = 3
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ks = (self.kernel,) * 3 if isinstance(self.kernel, int) else tuple(self.kernel)
        if len(ks) != 3 or any(k % 2 == 0 for k in ks):
            raise ValueError(f"kernel={self.kernel}: expected odd sizes for 3 spatial axes")
        k = self.param("kernel", partitioned(torch_default_init, ("conv_kernel",) * 3 + ("conv_in", "conv_out")),
                       ks + (x.shape[-1], self.features), self.param_dtype)
        x, k = x.astype(self.dtype), k.astype(self.dtype)
        if ks == (3, 3, 3):
            y = conv3x3x3(x, k)
        elif ks == (1, 1, 1):
            y = x @ k.reshape(x.shape[-1], self.features)
        else:
            y = jax.lax.conv_general_dilated(x, k, (1, 1, 1), [(s // 2, s // 2) for s in ks],
                                             dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def conv3d(features: int, kernel: int | tuple[int, int, int], name: str, dtype: Dtype, param_dtype: Dtype,
           use_bias: bool = False) -> Conv:
    return Conv(features, kernel, use_bias, dtype, param_dtype, name=name)


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
    """(B, D, H, W, C) -> (B, D/p0, H/p1, W/p2, p0*p1*p2*C), patch offsets major, channels minor."""
    b, d, h, w, c = x.shape
    p0, p1, p2 = patch
    x = x.reshape(b, d // p0, p0, h // p1, p1, w // p2, p2, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, d // p0, h // p1, w // p2, p0 * p1 * p2 * c)


class PatchConv(nn.Module):
    """Convolution whose kernel equals its stride (non-overlapping patches), computed as one
    matrix product over patchified input. Kernel layout (p0, p1, p2, in, out) as nn.Conv."""

    features: int
    patch: tuple[int, int, int]
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        kernel = self.param(
            "kernel",
            partitioned(torch_default_init, ("conv_kernel",) * 3 + ("conv_in", "conv_out")),
            (*self.patch, cin, self.features),
            self.param_dtype,
        )
        x = patchify(x, self.patch).astype(self.dtype)
        y = x @ kernel.reshape(-1, self.features).astype(self.dtype)
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class UpConv2x(nn.Module):
    """ConvTranspose3d with kernel = stride = ``factor`` (default 2 on every axis): each input
    voxel becomes a factor-shaped block. Computed as one matrix product and a reshape. Kernel
    layout (f0, f1, f2, in, out)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    factor: tuple[int, int, int] = (2, 2, 2)
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, d, h, w, cin = x.shape
        f = tuple(self.factor)
        kernel = self.param(
            "kernel",
            partitioned(torch_default_init, ("conv_kernel",) * 3 + ("conv_in", "conv_out")),
            (*f, cin, self.features),
            self.param_dtype,
        )
        y = jnp.einsum("bdhwi,xyzio->bdxhywzo", x.astype(self.dtype), kernel.astype(self.dtype))
        y = y.reshape(b, f[0] * d, f[1] * h, f[2] * w, self.features)
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, rescaling survivors."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class ResBlock(nn.Module):
    """MONAI's UnetResBlock (kernel 3, stride 1, instance norm, LeakyReLU 0.01):
    conv-IN-lrelu-conv-IN, plus a 1x1 conv + IN projection of the input when the channel
    count changes, then LeakyReLU."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = conv3d(self.features, 3, "conv1", **args)(x)
        y = nn.leaky_relu(instance_norm(y), 0.01)
        y = instance_norm(conv3d(self.features, 3, "conv2", **args)(y))
        if x.shape[-1] != self.features:
            x = instance_norm(conv3d(self.features, 1, "conv3", **args)(x))
        return nn.leaky_relu(y + x.astype(y.dtype), 0.01)


class UpBlock(nn.Module):
    """MONAI's UnetrUpBlock: 2x transposed conv, concatenation with the skip, ResBlock."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        up = UpConv2x(self.features, name="transp_conv", **args)(x)
        return ResBlock(self.features, name="conv_block", **args)(
            jnp.concatenate([up, skip.astype(up.dtype)], axis=-1))


def upsample2x_linear(x: jax.Array) -> jax.Array:
    """Doubles every spatial axis of (B, D, H, W, C) by linear interpolation with half-pixel
    centres: ``nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)``. Separable:
    out[2i] = x[i] - (x[i] - x[i-1]) / 4, out[2i+1] = x[i] + (x[i+1] - x[i]) / 4, with the
    edge voxel repeated outside the volume."""
    for axis in range(1, x.ndim - 1):
        n = x.shape[axis]
        prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis),
                                jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis),
                               jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
        even = 0.75 * x + 0.25 * prev
        odd = 0.75 * x + 0.25 * nxt
        x = jnp.stack([even, odd], axis + 1)
        x = x.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 2:])
    return x
