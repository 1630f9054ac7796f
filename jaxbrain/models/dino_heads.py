"""The self-distillation student of DINOv2 / DINOv3 / BrainDINO pretraining: a slice encoder
with its DINO (CLS) head and iBOT (masked patch) head, in Flax Linen.

:class:`DinoStudent` is a :class:`~jaxbrain.models.dino.DinoViT` (every encoder field, e.g.
``**dino_preset("braindino_vitb16")``) whose encoder sits under ``encoder`` and whose heads
are :class:`~jaxbrain.models.dino.DINOHead` modules under ``dino_head`` and, with
``ibot_separate_head=True`` (DINOv3's default), ``ibot_head``; with ``False`` the iBOT loss
reads the DINO head (DINOv2's default). The teacher is the same module with the EMA copy of
these parameters, kept by the objective (:mod:`jaxbrain.objectives.dino`); the checkpoint
layout is the originals' ``backbone.*`` / ``dino_head.*`` / ``ibot_head.*``.

Heads, as the originals' configs (``dino.head_*`` / ``ibot.head_*``): 3 Linear layers
(hidden 2048, GELU between), bottleneck 256, L2 normalisation, a bias-free last layer to
``head_prototypes`` (65536) prototypes, weight-normalised with ``head_weight_norm=True``
(DINOv2's ``DINOHead``), plain otherwise (DINOv3).

Call: ``model(x, train, masks=None, patch_index=None)`` on ``(B, H, W, 3)`` crops returns

    cls           (B, D)     the CLS token after the final norm (``x_norm_clstoken``)
    patches       (B, N, D)  the patch tokens after the final norm (``x_norm_patchtokens``)
    cls_logits    (B, K)     the DINO head of ``cls``
    patch_logits  (M, K')    with ``patch_index`` (M,) indices into the flattened (B * N)
                             patches: the iBOT head of those patches (the originals gather
                             the masked patches before the head, so it runs on M rows only)

``masks`` (B, N) bool replaces those patch embeddings by the mask token (iBOT's student).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbrain.models.dino import DINOHead, DinoViT
from jaxbrain.models.vit import WrapsEncoder

_HEAD_FIELDS = ("head_prototypes", "head_hidden", "head_bottleneck", "head_nlayers",
                "head_weight_norm", "ibot_separate_head", "ibot_prototypes")


class DinoStudent(WrapsEncoder, DinoViT):
    """Encoder (under ``encoder``) + DINO head + iBOT head; see the module docstring."""

    head_prototypes: int = 65536
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_nlayers: int = 3
    head_weight_norm: bool = False
    ibot_separate_head: bool = True
    ibot_prototypes: int | None = None  # None: head_prototypes

    def _head(self, name: str, prototypes: int) -> DINOHead:
        return DINOHead(prototypes, hidden=self.head_hidden, bottleneck=self.head_bottleneck,
                        nlayers=self.head_nlayers, weight_norm=self.head_weight_norm,
                        dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, masks: jax.Array | None = None,
                 patch_index: jax.Array | None = None) -> dict:
        tokens = DinoViT(**self.encoder_kwargs(), name="encoder")(x, train, masks=masks)
        prefix = self.num_prefix()
        cls, patches = tokens[:, 0], tokens[:, prefix:]
        dino_head = self._head("dino_head", self.head_prototypes)
        if self.ibot_separate_head:
            ibot_head = self._head("ibot_head", self.ibot_prototypes or self.head_prototypes)
        else:
            if self.ibot_prototypes not in (None, self.head_prototypes):
                raise ValueError("DinoStudent: ibot_prototypes differs from head_prototypes but "
                                 "the iBOT loss shares the DINO head (ibot_separate_head=False)")
            ibot_head = dino_head
        out = {"cls": cls.astype(jnp.float32), "patches": patches.astype(jnp.float32),
               "cls_logits": dino_head(cls)}
        if patch_index is not None:
            flat = patches.reshape(-1, patches.shape[-1])
            out["patch_logits"] = ibot_head(jnp.take(flat, patch_index.astype(jnp.int32), axis=0))
        elif self.is_initializing() and self.ibot_separate_head:
            ibot_head(patches[:, :1])
        return out
