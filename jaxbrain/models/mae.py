"""Masked autoencoder (He et al., 2022; VideoMAE, Tong et al., 2022) over the 3D ViT.

The encoder is :class:`~jaxbrain.models.vit.ViTEncoder` under ``encoder`` (the subtree name
:class:`~jaxbrain.models.vit.ViT` uses), so a fine-tuning ViT with the same encoder fields
takes it with ``init.encoder_only``. It sees the prefix tokens (CLS, registers) and the
visible patch tokens only: ``keep`` (B, K) lists, per sample, the patches kept (indices in
row-major order of the patch grid), drawn by the objective (:mod:`jaxbrain.objectives.mae`).

The decoder is light and trained from scratch: the encoder's tokens (after the encoder's
final norm, or ``encoder_norm`` when the encoder has none, e.g. with ``pool="mean"``) are
projected to ``decoder_width`` (``decoder_embed``); a learned ``mask_token`` fills every
masked position, each patch position gets the decoder's own fixed sin-cos row (VideoMAE's
table over the flattened grid) and ``decoder_depth`` pre-norm blocks (``decoder_blocks_i``)
with ``decoder_norm`` and a linear ``decoder_pred`` give, per patch, its
``prod(patch_size) * in_channels`` pixels in :func:`~jaxbrain.models.vit.patchify`'s order
(patch offsets major, channels minor).

Output: predictions (B, N, prod(patch) * in_channels) for all N patches, float32; the loss
reads the masked ones. ``keep=None`` (initialisation, or using the model as a plain
autoencoder) keeps every patch.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbrain.models.blocks import partitioned
from jaxbrain.models.vit import Block, ViTEncoder, WrapsEncoder, layer_norm, sincos_table


class MAE(WrapsEncoder, ViTEncoder):
    """:class:`ViTEncoder` fields (the encoder) plus the decoder's: ``decoder_width``,
    ``decoder_depth``, ``decoder_heads``, ``decoder_mlp_dim`` (None: 4 x width)."""

    decoder_width: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 8
    decoder_mlp_dim: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, keep: jax.Array | None = None
                 ) -> jax.Array:
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"MAE: decoder_width={self.decoder_width} is not divisible by "
                             f"decoder_heads={self.decoder_heads}")
        args = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        patch = self.patch()
        grid = tuple(s // p for s, p in zip(x.shape[1:-1], patch))
        n, b = int(np.prod(grid)), x.shape[0]
        if keep is None:
            keep = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        elif keep.ndim != 2 or keep.shape[0] != b or not 0 < keep.shape[1] <= n:
            raise ValueError(f"MAE: keep must be (batch={b}, K) with 0 < K <= {n} patches, got "
                             f"shape {tuple(keep.shape)}")
        keep = keep.astype(jnp.int32)
        encoder = ViTEncoder(**self.encoder_kwargs(), name="encoder")
        latent = encoder(x, train, keep=keep)
        if not encoder.uses_final_norm():
            latent = layer_norm("encoder_norm", self.norm_eps, **args)(latent)

        w = self.decoder_width
        y = nn.Dense(w, name="decoder_embed", **args,
                     kernel_init=partitioned(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                     bias_init=partitioned(nn.initializers.zeros, ("mlp",)))(latent)
        prefix, visible = y[:, :self.num_prefix()], y[:, self.num_prefix():]
        mask_token = self.param("mask_token", partitioned(nn.initializers.normal(0.02),
                                                          (None, None, "mlp")),
                                (1, 1, w), self.param_dtype).astype(y.dtype)
        full = jnp.broadcast_to(mask_token, (b, n, w))
        full = jax.vmap(lambda f, k, v: f.at[k].set(v))(full, keep, visible)
        full = full + jnp.asarray(sincos_table(n, w), y.dtype)[None]
        tokens = jnp.concatenate([prefix, full], axis=1)
        mlp = self.decoder_mlp_dim or 4 * w
        for i in range(self.decoder_depth):
            tokens = Block(self.decoder_heads, mlp, qkv_bias=True, norm_eps=self.norm_eps,
                           attn_impl=self.attn_impl, name=f"decoder_blocks_{i}", **args)(
                tokens, not train, self.num_prefix())
        tokens = layer_norm("decoder_norm", self.norm_eps, **args)(tokens[:, self.num_prefix():])
        out = int(np.prod(patch)) * self.in_channels
        pred = nn.Dense(out, name="decoder_pred", **args,
                        kernel_init=partitioned(nn.initializers.xavier_uniform(), ("mlp", None)),
                        bias_init=partitioned(nn.initializers.zeros, (None,)))(tokens)
        return pred.astype(jnp.float32)


