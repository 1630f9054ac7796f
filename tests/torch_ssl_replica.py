"""A PyTorch replica of BrainSegFounder's SSL model, written from the published architecture
on MONAI's SwinTransformer: rotation / contrastive heads on the first two tokens of the last
normalised hidden state, reconstruction decoder 5 x [conv3 -> IN -> LeakyReLU -> trilinear x2]
then a 1x1 conv."""

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
