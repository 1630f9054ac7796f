"""3D convolutional classifiers with MONAI's parameter layouts, in Flax Linen: DenseNet
(121/169/201/264) and ResNet (10/18/34/50/101/152/200, the MedicalNet backbones).

Numerically these are ``monai.networks.nets.DenseNet`` and ``monai.networks.nets.ResNet``
(verified against MONAI 1.6 in ``tests/test_cnn3d.py``), and ``jaxbrain.convert`` exchanges
their state dicts, MedicalNet's pretrained backbones included:

- DenseNet: ``features`` = conv0 (7^3, stride 2, padding 3) -> norm0 -> ReLU -> max pool
  (3, stride 2, padding 1) -> dense blocks, each layer BN-ReLU-conv1 1^3 (``bn_size *
  growth_rate`` channels) - BN-ReLU-conv2 3^3 (``growth_rate``) - channel dropout, its output
  concatenated after its input; between blocks a transition BN-ReLU-conv 1^3 (half the
  channels) - average pool 2; then norm5. ``class_layers``: ReLU -> global average pool ->
  Linear (``class_layers_out``).
- ResNet: ``encoder`` = conv1 (``conv1_t_size``, ``conv1_t_stride``) -> bn1 -> ReLU -> max pool
  (unless ``no_max_pool``) -> layer1..4 of basic (3^3, 3^3) or bottleneck (1^3, 3^3, 1^3 x4)
  blocks, the stride-2 convolution first in basic blocks and in the middle of bottlenecks;
  then global average pool -> Linear (``fc``). Where a block changes shape its shortcut is
  type "B" (1^3 strided convolution, bias per ``bias_downsample``, + BN) or type "A" (the
  strided identity, zero-padded to the new channel count; as in MONAI and MedicalNet, which
  concatenate ``out.data``, it passes no gradient).

Layout: channels-last, inputs ``(batch, D, H, W, in_channels)`` (MONAI's ``(B, C, D, H, W)``
with the channel axis moved last); outputs ``(batch, num_classes)`` logits, or with
``num_classes=None`` (MONAI's ``feed_forward=False``) or ``return_features=True`` the pooled
features ``(batch, C)``; float32 whatever ``dtype``. The modules take 2D and 1D inputs too
(MONAI's ``spatial_dims``); the converters speak the 3D layouts.

BatchNorm is :class:`jaxbrain.models.blocks.BatchNorm` (PyTorch's running statistics in
``batch_stats``). Train with ``model.apply(variables, x, train=True, mutable=["batch_stats"],
rngs={"dropout": key})``. ``remat`` rematerialises every dense layer / residual block in the
backward pass. Initialisation follows MONAI: convolutions Kaiming-normal (fan-in for
DenseNet, fan-out for ResNet), BatchNorm 1 / 0, Linear PyTorch's default weights, zero bias.

Constructor vocabulary: MONAI's, with ``in_channels`` for DenseNet's ``in_channels`` and
ResNet's ``n_input_channels`` and ``num_classes`` for DenseNet's ``out_channels`` and
ResNet's ``num_classes``. ``DenseNet121`` ... and ``ResNet10`` ... fix the depth by default
(registry names ``densenet121`` ..., ``resnet10`` ...; ``densenet`` and ``resnet`` take any
``block_config`` / ``block`` and ``layers``). ``ResNet10`` ... default to MedicalNet's choices
(MONAI's ``resnet_params``: shortcut A for 18 and 34, B otherwise; ``bias_downsample`` only
for 18 and 34); ``ResNet`` keeps MONAI's shortcut B with a biased downsample. All default to
``conv1_t_stride`` 2 (MedicalNet, MONAI's ``ResNetFeatures``), where MONAI's ``ResNet`` class
and ``resnetN()`` functions default to 1: set it (and the shortcut) to match a network
trained with those.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbrain.models.blocks import BatchNorm, Dtype, partitioned, stats_dtype, torch_default_init
from jaxbrain.models.conv3d import conv3x3x3
from jaxbrain.parallel import platform

kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (v,) * n if isinstance(v, int) else tuple(v)


def patches_conv(x: jax.Array, k: jax.Array, stride: Sequence[int]) -> jax.Array:
    """Convolution with zero padding kernel // 2 as one matrix product (im2col): axis by
    axis, the kernel's shifted, strided views go side by side along the channels (first
    axis's offset major, channels minor, as the (*kernel, in, out) kernel flattens)."""
    n, ks = x.ndim - 2, k.shape[:-2]
    x = jnp.pad(x, ((0, 0),) + tuple((s // 2, s // 2) for s in ks) + ((0, 0),))
    for axis in reversed(range(1, n + 1)):
        size, s = ks[axis - 1], stride[axis - 1]
        out = (x.shape[axis] - size) // s + 1
        x = jnp.concatenate([jax.lax.slice_in_dim(x, o, o + s * (out - 1) + 1, s, axis)
                             for o in range(size)], -1)
    return x @ k.reshape(-1, k.shape[-1])


# On the CPU, wide convolutions (>= 128 outputs) on grids of at most 64 output voxels per
# sample (deep ResNet stages) run 3-40x faster as one matrix product than through conv3x3x3's
# depth slabs or XLA's convolution (measured on 2 x86 cores); narrower ones gain nothing.
SMALL_GRID, WIDE = 64, 128


class Conv(nn.Module):
    """PyTorch's ``ConvNd(kernel, stride, padding=kernel // 2)`` without dilation, kernel
    layout (*kernel, in, out), 1 to 3 spatial axes. 1^n kernels are a strided slice and a
    matrix product; on the CPU wide convolutions on small output grids are
    :func:`patches_conv`; the stride-1 3^3 kernel goes through ``conv3d.conv3x3x3``; the rest
    through XLA."""

    features: int
    kernel: int | Sequence[int]
    stride: int | Sequence[int] = 1
    use_bias: bool = False
    kernel_init: Callable = kaiming_fan_in
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, cin = x.ndim - 2, x.shape[-1]
        if not 1 <= n <= 3:
            raise ValueError(f"input shape {tuple(x.shape)}: expected 1 to 3 spatial axes")
        ks, st = _tuple(self.kernel, n), _tuple(self.stride, n)
        axes = ("conv_kernel",) * n + ("conv_in", "conv_out")
        k = self.param("kernel", partitioned(self.kernel_init, axes), ks + (cin, self.features),
                       self.param_dtype)
        x, k = x.astype(self.dtype), k.astype(self.dtype)
        grid = np.prod([-(-d // s) for d, s in zip(x.shape[1:-1], st)])
        if all(s == 1 for s in ks):
            x = x[(slice(None),) + tuple(slice(None, None, s) for s in st)]
            y = x @ k.reshape(cin, self.features)
        elif grid <= SMALL_GRID and self.features >= WIDE and platform() == "cpu":
            y = patches_conv(x, k, st)
        elif ks == (3, 3, 3) and st == (1, 1, 1):
            y = conv3x3x3(x, k)
        else:
            spatial = "DHW"[3 - n:]
            y = jax.lax.conv_general_dilated(
                x, k, st, [(s // 2, s // 2) for s in ks],
                dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
        if self.use_bias:
            bias = self.param("bias", partitioned(nn.initializers.zeros, ("conv_out",)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def max_pool_3s2(x: jax.Array) -> jax.Array:
    """``MaxPoolNd(kernel_size=3, stride=2, padding=1)`` (padding never wins)."""
    n = x.ndim - 2
    return nn.max_pool(x, (3,) * n, strides=(2,) * n, padding=((1, 1),) * n)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``AdaptiveAvgPoolNd(1)`` then ``Flatten``: (B, *spatial, C) -> (B, C), in float32."""
    return x.astype(stats_dtype(x.dtype)).mean(tuple(range(1, x.ndim - 1)))


def head(features: int, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
    """``nn.Linear`` as MONAI initialises it: PyTorch's default weights, zero bias."""
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=partitioned(torch_default_init, ("embed", None)),
                    bias_init=partitioned(nn.initializers.zeros, (None,)), name=name)


def _check_input(x: jax.Array, in_channels: int) -> None:
    if x.ndim < 3 or x.shape[-1] != in_channels:
        raise ValueError(f"expected input (batch, D, H, W, {in_channels}) (channels last), got "
                         f"shape {tuple(x.shape)}")


class _Module(nn.Module):
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def _bn(self, name: str) -> BatchNorm:
        return BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    @nn.nowrap
    def _conv(self, features: int, kernel, name: str, stride=1, use_bias: bool = False,
              init: Callable = kaiming_fan_in) -> Conv:
        return Conv(features, kernel, stride, use_bias, init, self.dtype, self.param_dtype, name=name)


# ----------------------------------------------------------------------------------------
# DenseNet


class DenseLayer(_Module):
    growth_rate: int = 32
    bn_size: int = 4
    dropout_prob: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(self._bn("norm1")(x, train))
        y = self._conv(self.bn_size * self.growth_rate, 1, "conv1")(y)
        y = nn.relu(self._bn("norm2")(y, train))
        y = self._conv(self.growth_rate, 3, "conv2")(y)
        # DropoutNd: whole channels of a sample are dropped
        y = nn.Dropout(self.dropout_prob, broadcast_dims=tuple(range(1, y.ndim - 1)))(
            y, deterministic=not train)
        return jnp.concatenate([x.astype(y.dtype), y], axis=-1)


class DenseBlock(_Module):
    layers: int = 6
    growth_rate: int = 32
    bn_size: int = 4
    dropout_prob: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        layer = nn.remat(DenseLayer, static_argnums=(2,)) if self.remat else DenseLayer
        for j in range(self.layers):
            x = layer(self.dtype, self.param_dtype, self.growth_rate, self.bn_size,
                      self.dropout_prob, name=f"denselayer{j + 1}")(x, train)
        return x


class Transition(_Module):
    features: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = self._conv(self.features, 1, "conv")(nn.relu(self._bn("norm")(x, train)))
        n = y.ndim - 2
        return nn.avg_pool(y, (2,) * n, strides=(2,) * n)


def _too_small(name: str, shape, transition: int, transitions: int) -> str:
    """Why a DenseNet input is too small: the stem quarters each axis (rounding up), each
    transition halves it (rounding down, as AvgPool), so ``transitions`` of them need
    ``4 * (2 ** transitions - 1) + 1`` voxels an axis."""
    need = 4 * (2 ** transitions - 1) + 1
    return (f"{name}: the input's spatial shape {shape} is too small: the feature map after "
            f"transition{transition} is empty (the stem quarters each axis, each of the "
            f"{transitions} transitions halves it: at least {need} voxels an axis; fewer "
            f"blocks in block_config need fewer)")


class DenseNetFeatures(_Module):
    """MONAI's ``DenseNet.features``: stem, dense blocks with transitions, norm5 (no ReLU)."""

    init_features: int = 64
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    bn_size: int = 4
    dropout_prob: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        shape = tuple(x.shape[1:-1])
        x = self._conv(self.init_features, 7, "conv0", stride=2)(x)
        x = max_pool_3s2(nn.relu(self._bn("norm0")(x, train)))
        channels = self.init_features
        for i, layers in enumerate(self.block_config):
            x = DenseBlock(self.dtype, self.param_dtype, layers, self.growth_rate, self.bn_size,
                           self.dropout_prob, self.remat, name=f"denseblock{i + 1}")(x, train)
            channels += layers * self.growth_rate
            if i < len(self.block_config) - 1:
                channels //= 2
                x = Transition(self.dtype, self.param_dtype, channels,
                               name=f"transition{i + 1}")(x, train)
                if 0 in x.shape[1:-1]:
                    raise ValueError(_too_small("DenseNet", shape, i + 1, len(self.block_config) - 1))
        return self._bn("norm5")(x, train)


class DenseNet(nn.Module):
    """MONAI's ``DenseNet`` (``out_channels`` -> ``num_classes``; None: pooled features)."""

    in_channels: int
    num_classes: int | None
    init_features: int = 64
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    bn_size: int = 4
    dropout_prob: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    encoder_name = "features"  # the trunk, without the classifier

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        """Path of the layer that reads the input channels."""
        return ("features", "conv0")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> jax.Array:
        _check_input(x, self.in_channels)
        h = DenseNetFeatures(self.dtype, self.param_dtype, self.init_features, self.growth_rate,
                             tuple(self.block_config), self.bn_size, self.dropout_prob,
                             self.remat, name="features")(x, train)
        pooled = global_avg_pool(nn.relu(h))
        if return_features or self.num_classes is None:
            return pooled
        logits = head(self.num_classes, "class_layers_out", self.dtype, self.param_dtype)(pooled)
        return logits.astype(stats_dtype(self.dtype))


class DenseNet121(DenseNet):
    block_config: Sequence[int] = (6, 12, 24, 16)


class DenseNet169(DenseNet):
    block_config: Sequence[int] = (6, 12, 32, 32)


class DenseNet201(DenseNet):
    block_config: Sequence[int] = (6, 12, 48, 32)


class DenseNet264(DenseNet):
    block_config: Sequence[int] = (6, 12, 64, 48)


# ----------------------------------------------------------------------------------------
# ResNet


class _ResidualBlock(_Module):
    planes: int = 64
    stride: int = 1
    shortcut: str | None = None  # None (identity), "A" or "B": set where the shape changes
    bias_downsample: bool = True

    expansion = 1

    @nn.nowrap
    def _conv_out(self, features, kernel, name, stride=1):
        return self._conv(features, kernel, name, stride, init=kaiming_fan_out)

    @nn.nowrap
    def _residual(self, x: jax.Array, train: bool) -> jax.Array:
        out = self.planes * self.expansion
        if self.shortcut is None:
            return x
        n = x.ndim - 2
        if self.shortcut == "A":  # AvgPool(kernel 1, stride) = a strided slice; zero channels
            x = x[(slice(None),) + (slice(None, None, self.stride),) * n]
            x = jnp.pad(x, ((0, 0),) * (n + 1) + ((0, out - x.shape[-1]),))
            return jax.lax.stop_gradient(x)
        x = self._conv(out, 1, "downsample_0", self.stride, self.bias_downsample, kaiming_fan_out)(x)
        return self._bn("downsample_1")(x, train)


class BasicBlock(_ResidualBlock):
    """MONAI's ``ResNetBlock``: conv1 3^3 (stride) - bn1 - ReLU - conv2 3^3 - bn2, + shortcut,
    ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(self._bn("bn1")(self._conv_out(self.planes, 3, "conv1", self.stride)(x), train))
        y = self._bn("bn2")(self._conv_out(self.planes, 3, "conv2")(y), train)
        return nn.relu(y + self._residual(x, train).astype(y.dtype))


class Bottleneck(_ResidualBlock):
    """MONAI's ``ResNetBottleneck``: 1^3 - 3^3 (stride) - 1^3 to 4x planes, each with BN, ReLU
    between, + shortcut, ReLU."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(self._bn("bn1")(self._conv_out(self.planes, 1, "conv1")(x), train))
        y = nn.relu(self._bn("bn2")(self._conv_out(self.planes, 3, "conv2", self.stride)(y), train))
        y = self._bn("bn3")(self._conv_out(4 * self.planes, 1, "conv3")(y), train)
        return nn.relu(y + self._residual(x, train).astype(y.dtype))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetEncoder(_Module):
    """MONAI's ``ResNet`` up to layer4 (its ``ResNetFeatures`` trunk): the last feature map."""

    block: str = "basic"
    layers: Sequence[int] = (2, 2, 2, 2)
    block_inplanes: Sequence[int] = (64, 128, 256, 512)
    conv1_t_size: int | Sequence[int] = 7
    conv1_t_stride: int | Sequence[int] = 2
    no_max_pool: bool = False
    shortcut_type: str = "B"
    widen_factor: float = 1.0
    bias_downsample: bool = True
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.block not in BLOCKS:
            raise ValueError(f"block={self.block!r}: expected one of {sorted(BLOCKS)}")
        if self.shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type={self.shortcut_type!r}: expected 'A' (zero-padded "
                             "identity) or 'B' (1x1x1 convolution + BatchNorm)")
        if len(self.layers) != 4 or len(self.block_inplanes) != 4:
            raise ValueError(f"layers {tuple(self.layers)} and block_inplanes "
                             f"{tuple(self.block_inplanes)}: expected 4 stages each")
        cls = BLOCKS[self.block]
        block = nn.remat(cls, static_argnums=(2,)) if self.remat else cls
        planes = [int(p * self.widen_factor) for p in self.block_inplanes]
        x = self._conv(planes[0], self.conv1_t_size, "conv1", self.conv1_t_stride,
                       init=kaiming_fan_out)(x)
        x = nn.relu(self._bn("bn1")(x, train))
        if not self.no_max_pool:
            x = max_pool_3s2(x)
        in_planes = planes[0]
        for s, (width, count) in enumerate(zip(planes, self.layers)):
            stride = 1 if s == 0 else 2
            for k in range(count):
                first = k == 0 and (stride != 1 or in_planes != width * cls.expansion)
                x = block(self.dtype, self.param_dtype, width, stride if k == 0 else 1,
                          self.shortcut_type if first else None, self.bias_downsample,
                          name=f"layer{s + 1}_{k}")(x, train)
                in_planes = width * cls.expansion
        return x


class ResNet(nn.Module):
    """MONAI's ``ResNet`` (``n_input_channels`` -> ``in_channels``; ``num_classes=None`` is
    ``feed_forward=False``: pooled features, no ``fc``). ``block`` is "basic" or
    "bottleneck", ``layers`` the blocks per stage (``ResNet18`` ... fix both)."""

    in_channels: int
    num_classes: int | None
    block: str
    layers: Sequence[int]
    block_inplanes: Sequence[int] = (64, 128, 256, 512)
    conv1_t_size: int | Sequence[int] = 7
    conv1_t_stride: int | Sequence[int] = 2
    no_max_pool: bool = False
    shortcut_type: str = "B"
    widen_factor: float = 1.0
    bias_downsample: bool = True
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    encoder_name = "encoder"  # conv1 .. layer4, without fc

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        """Path of the layer that reads the input channels."""
        return ("encoder", "conv1")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> jax.Array:
        _check_input(x, self.in_channels)
        h = ResNetEncoder(self.dtype, self.param_dtype, self.block, tuple(self.layers),
                          tuple(self.block_inplanes), self.conv1_t_size, self.conv1_t_stride,
                          self.no_max_pool, self.shortcut_type, self.widen_factor,
                          self.bias_downsample, self.remat, name="encoder")(x, train)
        pooled = global_avg_pool(h)
        if return_features or self.num_classes is None:
            return pooled
        logits = head(self.num_classes, "fc", self.dtype, self.param_dtype)(pooled)
        return logits.astype(stats_dtype(self.dtype))


class ResNet10(ResNet):
    block: str = "basic"
    layers: Sequence[int] = (1, 1, 1, 1)
    bias_downsample: bool = False


class ResNet18(ResNet):
    block: str = "basic"
    layers: Sequence[int] = (2, 2, 2, 2)
    shortcut_type: str = "A"


class ResNet34(ResNet):
    block: str = "basic"
    layers: Sequence[int] = (3, 4, 6, 3)
    shortcut_type: str = "A"


class ResNet50(ResNet):
    block: str = "bottleneck"
    layers: Sequence[int] = (3, 4, 6, 3)
    bias_downsample: bool = False


class ResNet101(ResNet50):
    layers: Sequence[int] = (3, 4, 23, 3)


class ResNet152(ResNet50):
    layers: Sequence[int] = (3, 8, 36, 3)


class ResNet200(ResNet50):
    layers: Sequence[int] = (3, 24, 36, 3)


DENSENETS = {"densenet": DenseNet, "densenet121": DenseNet121, "densenet169": DenseNet169,
             "densenet201": DenseNet201, "densenet264": DenseNet264}
RESNETS = {"resnet": ResNet, "resnet10": ResNet10, "resnet18": ResNet18, "resnet34": ResNet34,
           "resnet50": ResNet50, "resnet101": ResNet101, "resnet152": ResNet152,
           "resnet200": ResNet200}
