"""SwinUNETR (Hatamizadeh et al., 2022) and its 3D Swin transformer encoder, in Flax Linen.

Numerically this is MONAI's ``monai.networks.nets.SwinUNETR`` (verified against MONAI 1.6 in
``tests/test_swin_unetr_parity.py``), with the choice of PatchMerging order that separates old
checkpoints from new ones (``downsample``):

- ``"merging_legacy"``: MONAI < 1.5's order, with two duplicated slices. Every checkpoint
  trained before MONAI 1.5, BrainSegFounder's included, needs this to give its original outputs.
- ``"merging"``: MONAI >= 1.5's corrected order.
- ``"mergingv2"``: ``itertools.product`` order.

Layout: inputs are channels-last, ``(batch, D, H, W, in_channels)``, i.e. MONAI's
``(batch, C, D, H, W)`` with the channel axis moved last (``x.transpose(0, 2, 3, 4, 1)``); outputs
are ``(batch, D, H, W, out_channels)``. Each spatial size must be a multiple of
``patch_size ** 5`` (32 for the usual patch 2); sizes may differ per axis.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbrain.parallel import constrain, platform
from jaxbrain.models.blocks import (
    Dtype, DropPath, PatchConv, ResBlock, UpBlock, conv3d, dense, layer_norm,
    layer_norm_no_affine, partitioned, stats_dtype, trunc_normal_002)

# BrainSegFounder model sizes (4 in, 3 out): depths, feature size, heads; 62.19M / 64.08M
# (BF-S, the headline) / 69.73M / 277.12M parameters.
BRAINSEGFOUNDER_SIZES: dict[str, tuple[tuple[int, ...], int, tuple[int, ...]]] = {
    "62m": ((2, 2, 2, 2), 48, (3, 6, 12, 24)),
    "64m": ((2, 2, 6, 2), 48, (3, 6, 12, 24)),
    "69m": ((2, 2, 18, 2), 48, (3, 6, 12, 24)),
    "277m": ((2, 2, 18, 2), 96, (4, 8, 16, 32)),
}

MERGE_ORDERS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "merging_legacy": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1),
                       (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)),
    "merging": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1),
                (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)),
    "mergingv2": tuple(itertools.product(range(2), repeat=3)),
}


# ----------------------------------------------------------------------------------------
# Static geometry, computed once per shape in NumPy (it becomes a compile-time constant).


def effective_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int],
                     rule: str = "per_axis"):
    """Window and shift actually used on a grid.

    ``per_axis`` (MONAI): an axis no longer than the window uses the whole axis as its window
    and is not shifted. ``cubic`` (MIS-FM): when the smallest axis is no longer than the
    window, every axis gets a cubic window of that smallest size and nothing is shifted.
    """
    if rule == "cubic":
        m = min(size)
        if m <= min(window):
            return (m,) * 3, (0, 0, 0)
        return tuple(window), tuple(shift)
    if rule != "per_axis":
        raise ValueError(f"window rule {rule!r}: expected 'per_axis' or 'cubic'")
    ws = tuple(s if s <= w else w for s, w in zip(size, window))
    ss = tuple(0 if s <= w else sh for s, w, sh in zip(size, window, shift))
    return ws, ss


@functools.lru_cache(maxsize=None)
def relative_position_index(window: tuple[int, int, int], variant: str = "swin") -> np.ndarray:
    """(n, n) index into the (2w0-1)(2w1-1)(2w2-1)-row bias table, n = w0*w1*w2; the buffer
    MONAI stores as ``attn.relative_position_index``.

    ``variant="misfm"`` is MIS-FM's (PCT-Net's) index, which strides the first relative
    coordinate by 3*w1 - 1 instead of (2*w1 - 1)(2*w2 - 1) and the second by 2*w1 - 1: distinct
    offsets share table rows and most of the table is never read. Its checkpoints were trained
    with it, so it is the default there.
    """
    if variant not in ("swin", "misfm"):
        raise ValueError(f"relative position index {variant!r}: expected 'swin' or 'misfm'")
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(3, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    rel = rel + np.array(window) - 1
    if variant == "misfm":
        rel[..., 0] *= 3 * window[1] - 1
        rel[..., 1] *= 2 * window[1] - 1
    else:
        rel[..., 0] *= (2 * window[1] - 1) * (2 * window[2] - 1)
        rel[..., 1] *= 2 * window[2] - 1
    return rel.sum(-1).astype(np.int64)


def window_partition(x: jax.Array, ws: Sequence[int]) -> jax.Array:
    """(B, D, H, W, C) -> (B * num_windows, w0*w1*w2, C), windows in raster order."""
    b, d, h, w, c = x.shape
    x = x.reshape(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws[0] * ws[1] * ws[2], c)


def window_reverse(windows: jax.Array, ws: Sequence[int], b: int, dims: Sequence[int]) -> jax.Array:
    d, h, w = dims
    c = windows.shape[-1]
    x = windows.reshape(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], c)
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


@functools.lru_cache(maxsize=None)
def shifted_window_regions(dims: tuple[int, int, int], ws: tuple[int, int, int],
                           ss: tuple[int, int, int]) -> np.ndarray:
    """Region label of every token of every window, (num_windows, n) int32. Two tokens of a
    window may attend to each other only when their labels agree (MONAI's ``compute_mask``
    marks the others with -100). The slices follow the original exactly, including their
    behaviour on unshifted axes."""
    img = np.zeros((1, *dims, 1), np.int32)
    cnt = 0
    cuts = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(ws, ss)]
    for sd in cuts[0]:
        for sh in cuts[1]:
            for sw in cuts[2]:
                img[:, sd, sh, sw, :] = cnt
                cnt += 1
    b, d, h, w, _ = img.shape
    x = img.reshape(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2])
    return x.transpose(0, 1, 3, 5, 2, 4, 6).reshape(-1, ws[0] * ws[1] * ws[2])


# ----------------------------------------------------------------------------------------
# Transformer modules.


def use_window_scan() -> bool:
    """Attention window by window (``window_attention_core``) on CPU, where memory traffic
    dominates; whole-batch matrix products on GPU and TPU."""
    return platform() == "cpu"


@functools.lru_cache(maxsize=None)
def shift_mask_patterns(dims: tuple[int, int, int], ws: tuple[int, int, int],
                        ss: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's additive shifted-window mask (-100 between tokens of different regions, 0
    elsewhere) as its distinct (n, n) patterns and each window's pattern: per axis a window is
    either interior or the last one, so there are at most 8 patterns whatever the grid size
    (the dense (num_windows, n, n) mask would be 470 MB at a 128^3 input)."""
    # A window's mask depends only on its tokens' region labels: deduplicate those (small
    # integer rows) before building any (n, n) mask.
    rows, index = np.unique(shifted_window_regions(dims, ws, ss), axis=0, return_inverse=True)
    patterns = np.where(rows[:, :, None] != rows[:, None, :], -100.0, 0.0).astype(np.float32)
    return patterns, index.reshape(-1).astype(np.int32)


# Windows per scan step: the largest divisor of the window count whose (chunk, heads, n, n)
# float32 logits fit in this many bytes (at least one window). Small enough to stay in cache.
_CHUNK_BYTES = 2 << 20


def _chunk_windows(num_windows: int, per_window_bytes: int) -> int:
    budget = max(1, _CHUNK_BYTES // per_window_bytes)
    return max(c for c in range(1, num_windows + 1) if num_windows % c == 0 and c <= budget)


def _chunk_logits(q, k, bias, mask):
    """q k^T + bias (+ mask) of one chunk: q, k (c, h, n, d), bias (h, n, n), mask (c, n, n)."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=bias.dtype) + bias[None]
    return logits if mask is None else logits + mask[:, None]


def _split(a, c):
    return a.reshape(a.shape[0] // c, c, *a.shape[1:])


def _mask_chunk(mask, i, c):
    """The additive mask of scan step i's c windows, (c, n, n), from (patterns, index)."""
    if mask is None:
        return None
    patterns, index = mask
    start = (i % (index.shape[0] // c)) * c  # windows are batch-major: the mask repeats per image
    return patterns[jax.lax.dynamic_slice_in_dim(index, start, c)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def window_attention_core(q, k, v, bias, mask, chunk):
    """softmax(q k^T + bias + mask) v over windows, ``chunk`` windows per scan step.

    q, k, v: (bw, h, n, d), q already scaled; bias: (h, n, n) float32; mask: None or
    ``(patterns, index)`` from ``shift_mask_patterns`` (num_windows = len(index) dividing bw,
    windows batch-major). The (bw, h, n, n) attention matrix is never materialised: each step
    keeps its chunk's logits in cache, and the backward pass recomputes a chunk's probabilities
    (bitwise as in the forward, from the saved row maxima) instead of reading them back from
    memory. Softmax is normalised on the (n, d) product (FlashAttention's order), which is why
    the backward pass needs only the output and the row sums. Same numerics as
    softmax-then-matmul up to float32 rounding.
    """
    return _core_fwd(q, k, v, bias, mask, chunk)[0]


def _core_fwd(q, k, v, bias, mask, chunk):
    acc = bias.dtype

    def step(_, xs):
        i, qc, kc, vc = xs
        logits = _chunk_logits(qc, kc, bias, _mask_chunk(mask, i, chunk))
        m = logits.max(-1, keepdims=True)
        p = jnp.exp(logits - m)
        r = 1.0 / p.sum(-1, keepdims=True)
        o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(vc.dtype), vc, preferred_element_type=acc) * r
        return None, (o.astype(vc.dtype), m, r)

    steps = jnp.arange(q.shape[0] // chunk)
    _, (o, m, r) = jax.lax.scan(step, None, (steps, _split(q, chunk), _split(k, chunk),
                                             _split(v, chunk)))
    out = o.reshape(q.shape)
    return out, (q, k, v, bias, mask, out, m, r)


def _core_bwd(chunk, res, g):
    q, k, v, bias, mask, out, m, r = res
    acc = bias.dtype

    def step(dbias, xs):
        i, qc, kc, vc, oc, mc, rc, gc = xs
        p = jnp.exp(_chunk_logits(qc, kc, bias, _mask_chunk(mask, i, chunk)) - mc)  # as forward
        gf = gc.astype(acc)
        gr = gf * rc  # d(out) / row sum
        # rowsum(dattn * attn) = rowsum(g * out)
        dsum = (gf * oc.astype(acc)).sum(-1, keepdims=True) * rc
        dl = p * (jnp.einsum("bhqd,bhkd->bhqk", gr.astype(vc.dtype), vc,
                             preferred_element_type=acc) - dsum)
        dlc = dl.astype(qc.dtype)
        dq = jnp.einsum("bhqk,bhkd->bhqd", dlc, kc, preferred_element_type=acc)
        dk = jnp.einsum("bhqk,bhqd->bhkd", dlc, qc, preferred_element_type=acc)
        dv = jnp.einsum("bhqk,bhqd->bhkd", p.astype(vc.dtype), gr.astype(vc.dtype),
                        preferred_element_type=acc)
        # Sum over the chunk's windows as a (1, c) x (c, h*n*n) product: XLA's CPU reduce
        # over a leading axis is several times slower.
        ones = jnp.ones((dl.shape[0],), acc)
        dbias = dbias + jax.lax.dot_general(ones, dl, (((0,), (0,)), ((), ())),
                                            precision=jax.lax.Precision.HIGHEST)
        return dbias, (dq.astype(qc.dtype), dk.astype(kc.dtype), dv.astype(vc.dtype))

    steps = jnp.arange(q.shape[0] // chunk)
    xs = (steps, _split(q, chunk), _split(k, chunk), _split(v, chunk), _split(out, chunk), m, r,
          _split(g, chunk))
    dbias, (dq, dk, dv) = jax.lax.scan(step, jnp.zeros(bias.shape, acc), xs)
    no_grad = None if mask is None else (None, None)  # the mask is a constant
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape), dbias, no_grad


window_attention_core.defvjp(_core_fwd, _core_bwd)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    dim: int
    num_heads: int
    window_size: tuple[int, int, int]  # as configured; fixes the bias table's size
    qkv_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    relative_index: str = "swin"  # or "misfm": see relative_position_index

    @nn.compact
    def __call__(self, x: jax.Array, mask: tuple[np.ndarray, np.ndarray] | None,
                 deterministic: bool) -> jax.Array:
        """``mask``: None or the shifted-window mask as ``shift_mask_patterns`` gives it."""
        bw, n, c = x.shape
        h = self.num_heads
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        rows = int(np.prod([2 * w - 1 for w in self.window_size]))
        table = self.param("relative_position_bias_table",
                           partitioned(trunc_normal_002, ("rel_pos", "heads")), (rows, h),
                           self.param_dtype)
        qkv = dense(3 * c, ("embed", "qkv"), "qkv", use_bias=self.qkv_bias, **args)(x)
        qkv = qkv.reshape(bw, n, 3, h, c // h).transpose(2, 0, 3, 1, 4)  # (3, bw, h, n, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * jnp.asarray((c // h) ** -0.5, q.dtype)
        acc = stats_dtype(self.dtype)
        # MONAI slices the configured window's index even when the window has shrunk.
        index = relative_position_index(self.window_size, self.relative_index)[:n, :n].reshape(-1)
        bias = table.astype(acc).T[:, index].reshape(h, n, n)
        mask = None if mask is None else (jnp.asarray(mask[0], acc), jnp.asarray(mask[1]))
        dropout = self.attn_drop > 0.0 and not deterministic
        if use_window_scan() and not dropout:
            # Window by window in cache; see window_attention_core.
            chunk = _chunk_windows(bw if mask is None else mask[1].shape[0], h * n * n * 4)
            y = window_attention_core(q.astype(self.dtype), k.astype(self.dtype),
                                      v.astype(self.dtype), bias, mask, chunk)
        else:  # accelerators: whole-batch matrix products; also attention dropout
            logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(acc) + bias[None]
            if mask is not None:
                nw = mask[1].shape[0]
                logits = (logits.reshape(bw // nw, nw, h, n, n)
                          + mask[0][mask[1]][None, :, None]).reshape(bw, h, n, n)
            attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
            attn = nn.Dropout(self.attn_drop)(attn, deterministic=deterministic)
            y = jnp.einsum("bhqk,bhkd->bhqd", attn, v.astype(self.dtype))
        y = y.transpose(0, 2, 1, 3).reshape(bw, n, c)
        y = dense(c, ("qkv", "embed"), "proj", **args)(y)
        return nn.Dropout(self.proj_drop)(y, deterministic=deterministic)


class Mlp(nn.Module):
    dim: int
    hidden: int
    drop: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.gelu(dense(self.hidden, ("embed", "mlp"), "linear1", **args)(x), approximate=False)
        x = nn.Dropout(self.drop)(x, deterministic=deterministic)
        x = dense(self.dim, ("mlp", "embed"), "linear2", **args)(x)
        return nn.Dropout(self.drop)(x, deterministic=deterministic)


def _batch(x: jax.Array) -> jax.Array:
    """``x`` kept on its batch shard when a step is traced for a device mesh
    (:func:`jaxbrain.parallel.constrain`)."""
    return constrain(x, ("batch",))


class SwinBlock(nn.Module):
    """Pre-norm Swin transformer block on a (B, D, H, W, C) grid; shifted when ``shift``."""

    num_heads: int
    window_size: tuple[int, int, int]
    shift: bool
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # MIS-FM's blocks: the "cubic" window rule, a bias table sized by the window in use, and
    # its relative position index ("misfm").
    window_rule: str = "per_axis"
    relative_index: str = "swin"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        b, d, h, w, c = x.shape
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        shift = tuple(s // 2 for s in self.window_size) if self.shift else (0, 0, 0)
        ws, ss = effective_window((d, h, w), self.window_size, shift, self.window_rule)
        # MONAI sizes the bias table by the configured window, MIS-FM by the window in use.
        table_window = self.window_size if self.window_rule == "per_axis" else ws
        pads = [(-s) % win for s, win in zip((d, h, w), ws)]
        dims = (d + pads[0], h + pads[1], w + pads[2])

        y = layer_norm("norm1", "embed", **args)(x)
        if any(pads):  # MONAI pads after the norm: padded tokens are zeros and are attended to
            y = jnp.pad(y, ((0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)))
        shifted = any(s > 0 for s in ss)
        if shifted:
            y = jnp.roll(y, shift=tuple(-s for s in ss), axis=(1, 2, 3))
        mask = shift_mask_patterns(dims, ws, ss) if shifted else None
        # Windows of one volume stay on its batch shard (the batch is the windows' major axis).
        y = WindowAttention(c, self.num_heads, table_window, self.qkv_bias, self.attn_drop,
                            self.drop, relative_index=self.relative_index, name="attn", **args)(
            _batch(window_partition(y, ws)), mask, deterministic)
        y = _batch(window_reverse(_batch(y), ws, b, dims))
        if shifted:
            y = jnp.roll(y, shift=ss, axis=(1, 2, 3))
        y = y[:, :d, :h, :w]
        drop_path = DropPath(self.drop_path)
        x = x + drop_path(y, deterministic).astype(x.dtype)
        y = layer_norm("norm2", "embed", **args)(x)
        y = Mlp(c, int(c * self.mlp_ratio), self.drop, name="mlp", **args)(y, deterministic)
        return _batch(x + drop_path(y, deterministic).astype(x.dtype))


class PatchMerging(nn.Module):
    """Halves each spatial axis: concatenates the 8 sub-grids along channels in ``order``,
    then LayerNorm(8C) and a bias-free Linear(8C -> 2C)."""

    order: str = "merging"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if any(s % 2 for s in x.shape[1:4]):
            x = jnp.pad(x, [(0, 0)] + [(0, s % 2) for s in x.shape[1:4]] + [(0, 0)])
        x = jnp.concatenate([x[:, i::2, j::2, k::2] for i, j, k in MERGE_ORDERS[self.order]], -1)
        x = layer_norm("norm", "merge", self.dtype, self.param_dtype)(x)
        return _batch(dense(2 * c, ("merge", "embed"), "reduction", self.dtype,
                            self.param_dtype, use_bias=False)(_batch(x)))


class SwinStage(nn.Module):
    """One Swin stage: ``depth`` blocks alternating plain and shifted windows, then merging.
    (MONAI's ``BasicLayer``.)"""

    depth: int
    num_heads: int
    window_size: tuple[int, int, int]
    drop_paths: tuple[float, ...]
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop: float = 0.0
    attn_drop: float = 0.0
    downsample: str = "merging"
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        block = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
        for i in range(self.depth):
            x = block(self.num_heads, self.window_size, shift=i % 2 == 1,
                      mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, drop=self.drop,
                      attn_drop=self.attn_drop, drop_path=self.drop_paths[i], dtype=self.dtype,
                      param_dtype=self.param_dtype, name=f"blocks_{i}")(x, deterministic)
        return PatchMerging(self.downsample, self.dtype, self.param_dtype, name="downsample")(x)


def _check_spatial(shape: Sequence[int], patch: int) -> None:
    unit = patch ** 5
    bad = [i for i, s in enumerate(shape) if s % unit]
    if bad:
        raise ValueError(
            f"spatial axes {bad} of the input (spatial shape {tuple(shape)}, layout "
            f"(batch, D, H, W, channels)) must be multiples of patch_size**5 = {unit}")


class SwinTransformer(nn.Module):
    """The 3D Swin encoder of SwinUNETR (MONAI's ``SwinTransformer``, ``swinViT``).

    Returns the 5 hidden states: after the patch embedding and after each stage's merging, at
    strides 2, 4, 8, 16, 32 with 1, 2, 4, 8, 16 times ``embed_dim`` channels. With ``normalize``
    each returned state goes through a channel LayerNorm without affine parameters; the
    un-normalised tensor feeds the next stage.
    """

    in_channels: int
    embed_dim: int = 48
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int | Sequence[int] = 7
    patch_size: int = 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    downsample: str = "merging"
    use_v2: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        """Path of the layer that reads the input channels."""
        return ("patch_embed",)

    def _windows(self) -> tuple[int, int, int]:
        w = self.window_size
        return (w,) * 3 if isinstance(w, int) else tuple(w)

    @nn.compact
    def __call__(self, x: jax.Array, normalize: bool = True, train: bool = False) -> list[jax.Array]:
        if self.downsample not in MERGE_ORDERS:
            raise ValueError(f"downsample={self.downsample!r}: expected one of {sorted(MERGE_ORDERS)}")
        if x.ndim != 5 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected input (batch, D, H, W, {self.in_channels}), got {x.shape}")
        _check_spatial(x.shape[1:4], self.patch_size)
        deterministic = not train
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()

        x = _batch(PatchConv(self.embed_dim, (self.patch_size,) * 3, name="patch_embed",
                             **args)(_batch(x)))
        x = nn.Dropout(self.drop_rate)(x, deterministic=deterministic)
        hidden = [x]
        for i, depth in enumerate(self.depths):
            if self.use_v2:
                x = res_block(x.shape[-1], name=f"layers{i + 1}c", **args)(x)
            start = sum(self.depths[:i])
            x = SwinStage(depth, self.num_heads[i], self._windows(), tuple(dpr[start:start + depth]),
                          self.mlp_ratio, self.qkv_bias, self.drop_rate, self.attn_drop_rate,
                          self.downsample, self.remat, name=f"layers{i + 1}", **args)(x, deterministic)
            hidden.append(x)
        return [layer_norm_no_affine(h) for h in hidden] if normalize else hidden


class SwinUNETR(nn.Module):
    """SwinUNETR with MONAI's constructor vocabulary; see the module docstring for layout.

    ``dtype`` is the compute dtype (``jnp.bfloat16`` for mixed precision; normalisation
    statistics and softmax stay in float32), ``param_dtype`` the storage dtype, ``remat``
    rematerialises every Swin block and residual conv block in the backward pass.
    """

    in_channels: int
    out_channels: int
    feature_size: int = 24
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int | Sequence[int] = 7
    patch_size: int = 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dropout_path_rate: float = 0.0
    normalize: bool = True
    use_v2: bool = False
    downsample: str = "merging"
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    encoder_name = "swinViT"  # the encoder subtree (init.encoder_only takes it alone)

    @nn.nowrap
    def input_layer(self) -> tuple[str, ...]:
        """Path of the layer that reads the input channels."""
        return ("swinViT", "patch_embed")

    @nn.nowrap
    def encoder_kwargs(self) -> dict:
        """Constructor arguments of this model's encoder: ``SwinTransformer(**kwargs)`` builds
        it stand-alone, with the same parameter tree as this model's ``swinViT``."""
        return dict(
            in_channels=self.in_channels, embed_dim=self.feature_size, depths=tuple(self.depths),
            num_heads=tuple(self.num_heads), window_size=self.window_size,
            patch_size=self.patch_size, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
            drop_rate=self.drop_rate, attn_drop_rate=self.attn_drop_rate,
            drop_path_rate=self.dropout_path_rate, downsample=self.downsample,
            use_v2=self.use_v2, remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.feature_size % 12:
            raise ValueError(f"feature_size={self.feature_size}: must be divisible by 12")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(f"depths and num_heads need 4 stages, got {self.depths}, {self.num_heads}")
        hidden = SwinTransformer(**self.encoder_kwargs(), name="swinViT")(x, self.normalize, train)
        f = self.feature_size
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res_block = nn.remat(ResBlock) if self.remat else ResBlock
        up_block = nn.remat(UpBlock) if self.remat else UpBlock
        hidden = [_batch(h) for h in hidden]
        enc0 = _batch(res_block(f, name="encoder1", **args)(_batch(x)))
        enc1 = _batch(res_block(f, name="encoder2", **args)(hidden[0]))
        enc2 = _batch(res_block(2 * f, name="encoder3", **args)(hidden[1]))
        enc3 = _batch(res_block(4 * f, name="encoder4", **args)(hidden[2]))
        dec4 = _batch(res_block(16 * f, name="encoder10", **args)(hidden[4]))
        dec3 = _batch(up_block(8 * f, name="decoder5", **args)(dec4, hidden[3]))
        dec2 = _batch(up_block(4 * f, name="decoder4", **args)(dec3, enc3))
        dec1 = _batch(up_block(2 * f, name="decoder3", **args)(dec2, enc2))
        dec0 = _batch(up_block(f, name="decoder2", **args)(dec1, enc1))
        out = _batch(up_block(f, name="decoder1", **args)(dec0, enc0))
        logits = _batch(conv3d(self.out_channels, 1, "out", use_bias=True, **args)(out))
        return logits.astype(stats_dtype(self.dtype))


def count_params(params: Any) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
