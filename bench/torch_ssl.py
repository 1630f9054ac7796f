"""The PyTorch side of BrainSegFounder's SSL recipe, for the parity tests and the benchmark.

``SSLReplica``: the published SSL model written from its architecture on MONAI's
SwinTransformer (rotation / contrastive heads on the first two tokens of the last normalised
hidden state; reconstruction decoder 5 x [conv3 -> IN -> LeakyReLU -> trilinear x2], then a
1x1 conv). ``ssl_loss``: the original training step's augmentation (host-side loops per
sample) and losses.
"""

from __future__ import annotations

import torch
from monai.networks.nets.swin_unetr import SwinTransformer


class SSLReplica(torch.nn.Module):
    def __init__(self, in_channels, feature_size=48, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24),
                 downsample="merging"):
        super().__init__()
        self.swinViT = SwinTransformer(in_chans=in_channels, embed_dim=feature_size,
                                       window_size=(7, 7, 7), patch_size=(2, 2, 2),
                                       depths=depths, num_heads=heads, mlp_ratio=4.0,
                                       qkv_bias=True, spatial_dims=3, downsample=downsample)
        dim = 16 * feature_size
        self.rotation_pre = torch.nn.Identity()
        self.rotation_head = torch.nn.Linear(dim, 4)
        self.contrastive_pre = torch.nn.Identity()
        self.contrastive_head = torch.nn.Linear(dim, 512)
        layers, c = [], dim
        for out in (dim // 2, dim // 4, dim // 8, dim // 16, dim // 16):
            layers += [torch.nn.Conv3d(c, out, 3, padding=1), torch.nn.InstanceNorm3d(out),
                       torch.nn.LeakyReLU(),
                       torch.nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
            c = out
        layers.append(torch.nn.Conv3d(c, in_channels, 1))
        self.conv = torch.nn.Sequential(*layers)

    def forward(self, x):
        top = self.swinViT(x.contiguous())[4]
        tokens = top.flatten(2).transpose(1, 2)
        rot = self.rotation_head(self.rotation_pre(tokens[:, 0]))
        con = self.contrastive_head(self.contrastive_pre(tokens[:, 1]))
        return rot, con, self.conv(top)


class DataParallelLike(torch.nn.Module):
    """Holds the model as ``module``, so its state dict has the ``module.`` prefix that the
    original (DistributedDataParallel) checkpoints carry."""

    def __init__(self, module):
        super().__init__()
        self.module = module


# The original recipe's host-side augmentation and losses, restated in PyTorch: per-sample
# Python loops, as the published training script runs them.


def _noise_boxes(x, source=None, max_drop=0.3, box_max=0.25, tol=0.05):
    """Boxes of min-max rescaled Gaussian noise (or of ``source``) painted on one sample
    (C, D, H, W) until their summed volume reaches a uniform fraction below ``max_drop``."""
    import numpy as np
    rng = np.random
    c, *dims = x.shape
    target = rng.uniform(0, max_drop) * dims[0] * dims[1] * dims[2]
    tols = [int(tol * n) for n in dims]
    highs = [int(box_max * n) for n in dims]
    covered = 0
    while covered < target:
        lo = [rng.randint(0, n - t) for n, t in zip(dims, tols)]
        hi = [min(rng.randint(t, h) + s, n) for s, t, h, n in zip(lo, tols, highs, dims)]
        box = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))
        if source is None:
            noise = torch.empty_like(x[box]).normal_()
            x[box] = (noise - noise.min()) / (noise.max() - noise.min())
        else:
            x[box] = source[box]
        covered += (hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2])
    return x


def rotate_batch(x):
    """Each sample rotated by k x 90 degrees in the plane of its last two spatial axes."""
    import numpy as np
    out, labels = x.detach().clone(), torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for i in range(x.shape[0]):
        k = int(np.random.randint(0, 4))
        out[i] = x[i].rot90(k, (2, 3))
        labels[i] = k
    return out, labels


def cutout_batch(x):
    """Noise boxes on each sample, then boxes pasted from a random other sample."""
    import numpy as np
    out = x.detach().clone()
    n = x.shape[0]
    for i in range(n):
        out[i] = _noise_boxes(out[i])
        j = int(np.random.randint(0, n))
        if j != i:
            out[i] = _noise_boxes(out[i], source=out[j])
    return out


def nt_xent(a, b, temperature=0.5):
    import torch.nn.functional as F
    n = a.shape[0]
    z = torch.cat([F.normalize(a, dim=1), F.normalize(b, dim=1)], 0)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
    pos = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)], 0)
    others = (~torch.eye(2 * n, dtype=torch.bool, device=a.device)).float()
    denom = (others * torch.exp(sim / temperature)).sum(1)
    return (-torch.log(torch.exp(pos / temperature) / denom)).sum() / (2 * n)


def ssl_loss(net, x):
    """One step's loss as the original computes it: two rotated, cut-out views per crop."""
    x1, r1 = rotate_batch(x)
    x2, r2 = rotate_batch(x)
    a1, a2 = cutout_batch(x1), cutout_batch(x2)
    rot1, con1, rec1 = net(a1)
    rot2, con2, rec2 = net(a2)
    rot = torch.nn.functional.cross_entropy(torch.cat([rot1, rot2]), torch.cat([r1, r2]))
    con = nt_xent(con1, con2)
    rec = torch.nn.functional.l1_loss(torch.cat([rec1, rec2]), torch.cat([x1, x2]))
    return rot + con + rec
