"""PCT-Net (MIS-FM) in PyTorch, written from the published architecture, for the parity tests
and the benchmark.

``PCTNet(params)`` takes the original's ``params`` dict (``in_chns``, ``class_num``,
``input_size``, ``feature_chns``, ``dropout``, ``depths``, ``num_heads``, ``window_sizes``,
``multiscale_pred``, ``resolution_mode``) and has the original's state-dict keys and shapes, so
MIS-FM checkpoints load with ``strict=True``. One extra key, ``corrected_index`` (default
``False``), picks the relative-position index: ``False`` is the published one (the first
coordinate is multiplied by ``3 * ws - 1``, the second by ``2 * ws - 1``, so several offsets share
a bias entry and most of the table is never read); ``True`` is the standard Swin index
(``(2 * ws - 1) ** 2`` and ``2 * ws - 1``). The index is a persistent buffer, as in the original,
so loading a state dict overwrites it with the checkpoint's.

Layout: three patch embeddings and three prediction heads (one per ``resolution_mode``: 3D,
2.5D, 2D near the input) around one three-level pyramid of conv + shifted-window transformer
blocks, whose first level is the input down-sampled by [4, 4, 4], [2, 4, 4] or [1, 4, 4]
(modes 0, 1, 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicLayer",
    "ConvBlock",
    "ConvLayer",
    "ConvTransBlock",
    "DownSample",
    "DropPath",
    "Mlp",
    "PCTNet",
    "PatchEmbedding",
    "PredictionHead",
    "PyramidConvTrans",
    "SwinTransformerBlock",
    "UpCatBlock",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]


def _conv_geometry(dim):
    """Kernel and padding of a 3x3 convolution: in-plane only (``dim == 2``) or 3D."""
    assert dim in (2, 3)
    return ([1, 3, 3], [0, 1, 1]) if dim == 2 else (3, 1)


def _pool_geometry(dim):
    """Kernel (= stride) of a 2x down/up-sampling: in-plane only (``dim == 2``) or 3D."""
    assert dim in (2, 3)
    return [1, 2, 2] if dim == 2 else 2


# ---------------------------------------------------------------------------------------------
# Convolutional parts
# ---------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """BN -> PReLU -> conv -> BN -> PReLU -> dropout -> conv (no residual)."""

    def __init__(self, in_channels, out_channels, dim=2, dropout_p=0.0):
        super().__init__()
        kernel, pad = _conv_geometry(dim)
        self.conv_conv = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.PReLU(),
            nn.Conv3d(in_channels, out_channels, kernel_size=kernel, padding=pad),
            nn.BatchNorm3d(out_channels),
            nn.PReLU(),
            nn.Dropout(dropout_p),
            nn.Conv3d(out_channels, out_channels, kernel_size=kernel, padding=pad),
        )

    def forward(self, x):
        return self.conv_conv(x)


class DownSample(nn.Module):
    """Max-pool by 2 (in-plane or 3D), then BN -> PReLU -> conv."""

    def __init__(self, in_channels, out_channels, down_dim=3, conv_dim=3):
        super().__init__()
        self.pool = nn.MaxPool3d(_pool_geometry(down_dim))
        kernel, pad = _conv_geometry(conv_dim)
        self.conv = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.PReLU(),
            nn.Conv3d(in_channels, out_channels, kernel_size=kernel, padding=pad),
        )

    def forward(self, x):
        return self.conv(self.pool(x))


class ConvLayer(nn.Module):
    """BN -> PReLU -> conv (1x1x1 by default): the output heads."""

    def __init__(self, in_channels, out_channels, kernel=1, padding=0):
        super().__init__()
        self.conv = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.PReLU(),
            nn.Conv3d(in_channels, out_channels, kernel_size=kernel, padding=padding),
        )

    def forward(self, x):
        return self.conv(x)


class UpCatBlock(nn.Module):
    """BN -> PReLU -> transposed conv (x2) on the coarse map, concatenated after the fine map,
    then BN -> PReLU -> conv."""

    def __init__(self, chns_l, chns_h, up_dim=3, conv_dim=3):
        super().__init__()
        up = _pool_geometry(up_dim)
        self.up = nn.Sequential(
            nn.BatchNorm3d(chns_h),
            nn.PReLU(),
            nn.ConvTranspose3d(chns_h, chns_l, kernel_size=up, stride=up),
        )
        kernel, pad = _conv_geometry(conv_dim)
        self.conv = nn.Sequential(
            nn.BatchNorm3d(chns_l * 2),
            nn.PReLU(),
            nn.Conv3d(chns_l * 2, chns_l, kernel_size=kernel, padding=pad),
        )

    def forward(self, x_l, x_h):
        return self.conv(torch.cat([x_l, self.up(x_h)], dim=1))


# ---------------------------------------------------------------------------------------------
# Shifted-window transformer
# ---------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Per-sample stochastic depth: in training, each sample's branch is kept with probability
    ``1 - drop_prob`` and rescaled by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            mask.div_(keep_prob)
        return x * mask

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU,
                 drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x, ws):
    """(B, S, H, W, C) -> (B * nW, ws, ws, ws, C); windows in (b, s, h, w) order."""
    b, s, h, w, c = x.shape
    x = x.view(b, s // ws, ws, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, ws, ws, ws, c)


def window_reverse(windows, ws, s, h, w):
    """Inverse of ``window_partition`` for a (padded) grid of size (s, h, w)."""
    b = int(windows.shape[0] / (s * h * w / ws / ws / ws))
    x = windows.view(b, s // ws, h // ws, w // ws, ws, ws, ws, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(b, s, h, w, -1)


def relative_position_index(ws, corrected=False):
    """(ws**3, ws**3) index into the (2ws-1)**3 bias table for a cubic window.

    The published index weights the (shifted) offsets along the three axes by
    ``3 * ws - 1``, ``2 * ws - 1`` and 1; ``corrected=True`` gives the standard, one-to-one
    ``(2 * ws - 1) ** 2``, ``2 * ws - 1``, 1.
    """
    ar = torch.arange(ws)
    coords = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij")).flatten(1)  # (3, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous() + (ws - 1)
    first = (2 * ws - 1) ** 2 if corrected else 3 * ws - 1
    return rel[:, :, 0] * first + rel[:, :, 1] * (2 * ws - 1) + rel[:, :, 2]


def shifted_window_mask(padded_size, ws, shift, device=None, dtype=torch.float32):
    """(nW, ws**3, ws**3) additive mask for shifted windows on a padded grid: -100 between
    tokens of different regions (regions cut at -ws and -shift along each axis), 0 within."""
    img = torch.zeros((1, *padded_size, 1), device=device, dtype=dtype)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    region = 0
    for cs in cuts:
        for ch in cuts:
            for cw in cuts:
                img[:, cs, ch, cw, :] = region
                region += 1
    ids = window_partition(img, ws).view(-1, ws * ws * ws)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside cubic windows, with a learnt relative-position bias."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, corrected_index=False):
        super().__init__()
        ws = window_size
        self.dim = dim
        self.window_size = (ws, ws, ws)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * ws - 1) ** 3, num_heads))
        self.register_buffer("relative_position_index",
                             relative_position_index(ws, corrected_index))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous()
        attn = (q * self.scale) @ k.transpose(-2, -1).contiguous()
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP on a fixed token grid ``input_resolution``.

    If ``min(input_resolution) <= window_size`` the window becomes the cube of that minimum
    and the shift is dropped. Tokens are padded (after ``norm1``, with zeros that are attended
    to) to multiples of the window.
    """

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0,
                 mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 corrected_index=False):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= self.window_size:
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        assert 0 <= self.shift_size < self.window_size, "shift_size must in 0-window_size"

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias=qkv_bias,
                                    qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop,
                                    corrected_index=corrected_index)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x, mask_matrix):
        b, l, c = x.shape
        s, h, w = self.input_resolution
        assert l == s * h * w, "input feature has wrong size"
        ws, shift = self.window_size, self.shift_size

        shortcut = x
        x = self.norm1(x).view(b, s, h, w, c)
        pad_w = (ws - w % ws) % ws
        pad_h = (ws - h % ws) % ws
        pad_s = (ws - s % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h, 0, pad_s))
        _, sp, hp, wp, _ = x.shape

        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift, -shift), dims=(1, 2, 3))
            mask = mask_matrix
        else:
            mask = None
        windows = window_partition(x, ws).view(-1, ws * ws * ws, c)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, ws, ws, ws, c), ws, sp, hp, wp)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift, shift), dims=(1, 2, 3))
        if pad_w > 0 or pad_h > 0 or pad_s > 0:
            x = x[:, :s, :h, :w, :].contiguous()
        x = x.view(b, s * h * w, c)

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """``depth`` blocks alternating plain and shifted (``window_size // 2``) windows; the
    shifted-window mask is built here from the layer's window size and shift."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm, corrected_index=False):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.depth = depth
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(
                dim=dim, input_resolution=input_resolution, num_heads=num_heads,
                window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                norm_layer=norm_layer, corrected_index=corrected_index)
            for i in range(depth)])

    def forward(self, x, s, h, w):
        mask = None
        if any(blk.shift_size > 0 for blk in self.blocks):
            # Blocks that shift keep the layer's window, so the layer's mask is theirs.
            ws = self.window_size
            padded = tuple(int(math.ceil(d / ws)) * ws for d in (s, h, w))
            mask = shifted_window_mask(padded, ws, self.shift_size, device=x.device,
                                       dtype=x.dtype)
        for blk in self.blocks:
            x = blk(x, mask)
        return x


class ConvTransBlock(nn.Module):
    """Sum of a ConvBlock and a BasicLayer applied to the same input. ``norm_layer`` is
    created but never used (it is in the state dict)."""

    def __init__(self, input_resolution=(32, 32, 32), chns=96, depth=2, num_head=4,
                 window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.2, norm_layer=nn.LayerNorm,
                 corrected_index=False):
        super().__init__()
        self.conv = ConvBlock(chns, chns, dim=3, dropout_p=drop_rate)
        self.trans = BasicLayer(dim=chns, input_resolution=input_resolution, depth=depth,
                                num_heads=num_head, window_size=window_size,
                                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                drop=drop_rate, attn_drop=attn_drop_rate,
                                drop_path=drop_path_rate, norm_layer=norm_layer,
                                corrected_index=corrected_index)
        self.norm_layer = nn.LayerNorm(chns)
        self.pos_drop = nn.Dropout(p=drop_rate)

    def forward(self, x):
        x_conv = self.conv(x)
        c, s, h, w = x.shape[1:]
        tokens = self.pos_drop(x.flatten(2).transpose(1, 2).contiguous())
        tokens = self.trans(tokens, s, h, w)
        x_trans = tokens.view(-1, s, h, w, c).permute(0, 4, 1, 2, 3).contiguous()
        return x_conv + x_trans


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class PatchEmbedding(nn.Module):
    """proj conv -> ConvBlock (x0) -> DownSample -> ConvBlock (x1) -> DownSample (x2)."""

    def __init__(self, in_chns=1, ft_chns=(16, 32, 64), conv_dims=(3, 3), down_dims=(3, 3),
                 dropout=(0, 0)):
        super().__init__()
        kernel, pad = _conv_geometry(conv_dims[0])
        self.proj = nn.Conv3d(in_chns, ft_chns[0], kernel_size=kernel, padding=pad)
        self.conv0 = ConvBlock(ft_chns[0], ft_chns[0], conv_dims[0], dropout[0])
        self.conv1 = ConvBlock(ft_chns[1], ft_chns[1], conv_dims[1], dropout[1])
        self.down1 = DownSample(ft_chns[0], ft_chns[1], down_dims[0], conv_dims[1])
        self.down2 = DownSample(ft_chns[1], ft_chns[2], down_dims[1], 3)

    def forward(self, x):
        x0 = self.conv0(self.proj(x))
        x1 = self.conv1(self.down1(x0))
        return x0, x1, self.down2(x1)


class PyramidConvTrans(nn.Module):
    """Three-level U-shaped pyramid of ConvTransBlocks (encoder e2, e3, e4; decoder d3, d2)."""

    def __init__(self, in_chns=1, input_size=(32, 32, 32), ft_chns=(192, 384, 768),
                 dropout=(0.2, 0.2, 0.2), depths=(2, 2, 2), num_heads=(4, 8, 16),
                 window_sizes=(6, 6, 6), class_num=2, multiscale_pred=False,
                 corrected_index=False):
        super().__init__()
        self.down3 = DownSample(ft_chns[0], ft_chns[1], 3, 3)
        self.down4 = DownSample(ft_chns[1], ft_chns[2], 3, 3)
        self.up3 = UpCatBlock(ft_chns[0], ft_chns[1], 3, 3)
        self.up4 = UpCatBlock(ft_chns[1], ft_chns[2], 3, 3)

        res2 = list(input_size)
        res3 = [d // 2 for d in res2]
        res4 = [d // 2 for d in res3]

        def block(level, res):
            return ConvTransBlock(chns=ft_chns[level], input_resolution=res,
                                  window_size=window_sizes[level], depth=depths[level],
                                  num_head=num_heads[level], drop_rate=dropout[level],
                                  attn_drop_rate=dropout[level], corrected_index=corrected_index)

        self.convtrans_e2 = block(0, res2)
        self.convtrans_d2 = block(0, res2)
        self.convtrans_e3 = block(1, res3)
        self.convtrans_d3 = block(1, res3)
        self.convtrans_e4 = block(2, res4)

        self.multiscale_pred = multiscale_pred
        self.out_conv2 = ConvLayer(ft_chns[0], class_num)
        self.out_conv3 = ConvLayer(ft_chns[1], class_num)

    def forward(self, x):
        x2 = self.convtrans_e2(x)
        x3 = self.convtrans_e3(self.down3(x2))
        x4 = self.convtrans_e4(self.down4(x3))
        x_d3 = self.convtrans_d3(self.up4(x3, x4))
        x_d2 = self.convtrans_d2(self.up3(x2, x_d3))
        if self.multiscale_pred:
            return x_d2, self.out_conv2(x_d2), self.out_conv3(x_d3)
        return x_d2


class PredictionHead(nn.Module):
    """Decoder from the pyramid's output back to the input resolution."""

    def __init__(self, ft_chns=(16, 32, 64), conv_dims=(3, 3), down_dims=(3, 3), dropout=(0, 0),
                 class_num=2, multiscale_pred=False):
        super().__init__()
        self.up1 = UpCatBlock(ft_chns[0], ft_chns[1], down_dims[0], conv_dims[0])
        self.up2 = UpCatBlock(ft_chns[1], ft_chns[2], down_dims[1], conv_dims[1])
        self.conv0 = ConvBlock(ft_chns[0], ft_chns[0], conv_dims[0], dropout[0])
        self.conv1 = ConvBlock(ft_chns[1], ft_chns[1], conv_dims[1], dropout[1])
        self.out_conv0 = ConvLayer(ft_chns[0], class_num)
        self.multiscale_pred = multiscale_pred
        self.out_conv1 = ConvLayer(ft_chns[1], class_num)

    def forward(self, x0, x1, x2):
        if self.multiscale_pred:
            x2, output2, output3 = x2
        x_d1 = self.conv1(self.up2(x1, x2))
        x_d0 = self.conv0(self.up1(x0, x_d1))
        output = self.out_conv0(x_d0)
        if self.multiscale_pred:
            output = [output, self.out_conv1(x_d1), output2, output3]
        return output


class PCTNet(nn.Module):
    """PCT-Net. ``resolution_mode`` 0, 1, 2 selects the embedding/head pair (3D; 2D first
    stage; 2D first two stages), whose total down-sampling is [4, 4, 4], [2, 4, 4], [1, 4, 4].
    All three pairs exist in the model (and the state dict) whatever the mode. The input's
    spatial size must be ``input_size``. With ``multiscale_pred`` the output is the list
    [full, 1/2, 1/4, 1/8] (relative to the pyramid's factors), else the full-size logits.
    """

    def __init__(self, params):
        super().__init__()
        in_chns = params["in_chns"]
        class_num = params["class_num"]
        input_size = params["input_size"]
        ft_chns = params.get("feature_chns", [32, 64, 128, 256, 512])
        dropout = params.get("dropout", [0, 0, 0.2, 0.2, 0.2])
        depths = params.get("depths", [2, 2, 2])
        num_heads = params.get("num_heads", [4, 8, 16])
        window_sizes = params.get("window_sizes", [6, 6, 6])
        multiscale_pred = params.get("multiscale_pred", False)
        corrected_index = params.get("corrected_index", False)
        self.resolution_mode = params.get("resolution_mode", 0)
        scales = {0: [4, 4, 4], 1: [2, 4, 4], 2: [1, 4, 4]}
        if self.resolution_mode not in scales:
            raise ValueError(f"Undefined resolution_mode (0, 1, 2): {self.resolution_mode}")
        scale = scales[self.resolution_mode]
        pyramid_size = [input_size[i] // scale[i] for i in range(3)]

        self.embeddings = nn.ModuleList([
            PatchEmbedding(in_chns, ft_chns[:3], [3, 3], [3, 3], dropout[:3]),
            PatchEmbedding(in_chns, ft_chns[:3], [2, 3], [2, 3], dropout[:3]),
            PatchEmbedding(in_chns, ft_chns[:3], [2, 2], [2, 2], dropout[:3])])
        self.pyramid_ct = PyramidConvTrans(ft_chns[2], pyramid_size, ft_chns[2:], dropout[2:],
                                           depths, num_heads, window_sizes, class_num,
                                           multiscale_pred, corrected_index)
        self.pred_heads = nn.ModuleList([
            PredictionHead(ft_chns[:3], [3, 3], [3, 3], dropout[:3], class_num, multiscale_pred),
            PredictionHead(ft_chns[:3], [2, 3], [2, 3], dropout[:3], class_num, multiscale_pred),
            PredictionHead(ft_chns[:3], [2, 2], [2, 2], dropout[:3], class_num, multiscale_pred)])
        self.multiscale_pred = multiscale_pred

    def forward(self, x):
        x0, x1, x2 = self.embeddings[self.resolution_mode](x)
        x2 = self.pyramid_ct(x2)
        return self.pred_heads[self.resolution_mode](x0, x1, x2)


if __name__ == "__main__":
    torch.manual_seed(0)
    for mode in (0, 1, 2):
        tiny = PCTNet({"in_chns": 1, "class_num": 3, "input_size": [16, 32, 32],
                       "feature_chns": [4, 8, 16, 32, 64], "num_heads": [2, 2, 4],
                       "multiscale_pred": True, "resolution_mode": mode})
        x = torch.randn(2, 1, 16, 32, 32)
        for train in (True, False):
            tiny.train(train)
            with torch.no_grad():
                outs = tiny(x)
            shapes = [tuple(o.shape) for o in outs]
            print(f"mode {mode} {'train' if train else 'eval '}: {shapes}")
    demo = PCTNet({"in_chns": 1, "class_num": 5, "input_size": [64, 128, 128],
                   "feature_chns": [24, 48, 128, 256, 512]})
    n_params = sum(p.numel() for p in demo.parameters())
    print(f"demo config (resolution_mode 0) parameters: {n_params} ({n_params / 1e6:.2f}M)")
