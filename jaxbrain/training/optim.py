"""Optimizers and learning-rate schedules from a config.

    optim.name          "adamw" | "adam" | "sgd"
    optim.lr            peak learning rate
    optim.schedule      "warmup_cosine" | "constant" | "step" | "poly" | "dino_cosine"
    optim.warmup_steps  linear warm-up from 0 (warmup_cosine, poly)
    optim.end_lr        final learning rate of the cosine (and of the poly decay; default 0)
    optim.power         exponent of the poly decay (default 0.9, nnU-Net's):
                        ``lr * (1 - t / T) ** power`` with t the steps since the warm-up and T
                        the steps after it (``end_lr + (lr - end_lr) * ...`` with an end_lr)
    optim.decay_steps / optim.decay_rate   step decay: lr * rate ** (step // decay_steps)
                        "dino_cosine": DINOv2 / DINOv3's ``CosineScheduler`` (warm-up
                        ``linspace(0, lr, warmup_steps)`` including its end point, then a
                        cosine to end_lr over the remaining steps;
                        :func:`jaxbrain.objectives.dino.cosine_schedule`)
    optim.weight_decay, optim.b1, optim.b2, optim.momentum
    optim.weight_decay_end  (adamw) weight decay follows the same CosineScheduler from
                        weight_decay to this over the run (DINO: 0.04 -> 0.4); None: constant
    optim.decay_mask    (adamw) "all" (default) or "dino": no weight decay on parameters whose
                        path ends in "bias" or contains "norm" or "gamma" (biases, LayerNorms,
                        LayerScale), DINOv2 / DINOv3's ``get_params_groups_with_decay``;
                        tokens (CLS, registers, mask token, positions) are decayed there too
    optim.grad_clip     clip by global norm (0: off)
    optim.clip_per_subtree  clip each top-level subtree (e.g. encoder, dino_head, ibot_head)
                        by its own norm, as DINOv2 / DINOv3 clip each student module
    optim.freeze_last_layer_steps  the updates of parameters under a path component named
                        "last_layer" (the DINO / iBOT heads' prototypes) are zero for the first
                        this many steps (their lr is 0, weight decay included; the optimizer
                        moments still accumulate, as the originals' zero learning rate)
    optim.grad_accum    accumulate this many micro-batches per update (1: off)

Fine-tuning options:

    optim.freeze        parameter path prefixes kept fixed (not differentiated by the train
                        step, zero updates, no weight decay, no optimizer state of their
                        own; :func:`freeze_rule`), e.g. ("encoder/blocks_0", "encoder/
                        patch_embedding"); the entry "encoder" stands for the model's encoder
                        subtree (its ``encoder_name``: "encoder" for the ViT and ResNets,
                        "features" for the DenseNets); a string is one prefix. Paths are the
                        parameter tree's keys joined by "/". Running statistics (BatchNorm)
                        of frozen layers are still updated by training-mode forward passes.
    optim.unfreeze      ``fnmatch`` patterns of parameter paths trained even under a frozen
                        prefix, e.g. ("*/lora_*",) with freeze="encoder": a LoRA-adapted
                        encoder whose adapters alone train. A pattern matching no frozen
                        parameter is an error naming it.
    optim.layer_decay   layer-wise learning-rate decay (0 or 1: off): the update of a
                        parameter in layer i is scaled by ``layer_decay ** (L + 1 - i)``, i.e.
                        its learning rate is ``lr * layer_decay ** (L + 1 - i)`` (the
                        schedule's lr times that factor, weight decay included), with
                        :func:`layer_id`: ViT: patch embedding, CLS token, registers
                        (storage tokens), mask token and position table 0, ``blocks_k`` k + 1, the rest (final norms, head,
                        decoders) L + 1 where L is the number of blocks; CNNs by stage: the
                        stem 0 (DenseNet conv0 / norm0, ResNet conv1 / bn1), DenseNet
                        ``denseblock{s}`` and ``transition{s}`` s, ResNet ``layer{s}_*`` s, the
                        rest (norm5, classifier, fc, projection heads) L + 1 with L stages.

Per-parameter learning rates:

    optim.lr_scale      {path prefix: factor}: the update of every parameter under the prefix
                        is multiplied by the factor, i.e. its learning rate is
                        ``lr * factor`` (weight decay included, as a PyTorch parameter group's
                        lr); when several prefixes match a path the longest one applies,
                        parameters under none keep factor 1. Combines multiplicatively with
                        layer_decay. E.g. {"encoder": 0.1} trains a pretrained encoder at a
                        tenth of a new decoder's rate, {"encoder/patch_embedding": 0.2} the
                        patch embedding at 0.2 x. A prefix matching no parameter is an error
                        naming it. Paths as for freeze (joined by "/").

Step counts (warm-up, decay, total) are training-loop steps, i.e. micro-batches: with
``grad_accum=k`` the update made after loop step ``n*k`` uses the learning rate of step
``n*k``, so changing k keeps the schedule's shape over the run.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Sequence

import jax
import numpy as np
import optax

from jaxbrain.objectives.dino import cosine_schedule

# Path components that number a layer: (pattern, layer id of its group(1)).
_NUMBERED = ((re.compile(r"blocks_(\d+)$"), lambda k: int(k) + 1),   # ViT blocks
             (re.compile(r"denseblock(\d+)$"), int),                # DenseNet stages
             (re.compile(r"transition(\d+)$"), int),
             (re.compile(r"layer(\d+)_\d+$"), int))                 # ResNet stages
# Components of the input layer (layer 0) when no numbered component comes first.
_STEM = ("patch_embedding", "cls_token", "registers", "mask_token", "position_embeddings", "conv0",
         "norm0", "conv1", "bn1")


def schedule(cfg, total_steps: int) -> optax.Schedule:
    kind = cfg.get("schedule", "warmup_cosine")
    if kind == "constant":
        return optax.constant_schedule(cfg.lr)
    if kind == "warmup_cosine":
        warmup = int(cfg.get("warmup_steps", 0))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=cfg.get("end_lr", 0.0))
    if kind == "step":
        return optax.exponential_decay(cfg.lr, transition_steps=int(cfg.decay_steps),
                                       decay_rate=cfg.get("decay_rate", 0.5), staircase=True)
    if kind == "dino_cosine":
        warmup, end = int(cfg.get("warmup_steps", 0)), cfg.get("end_lr", 0.0)
        return lambda step: cosine_schedule(step, cfg.lr, end, total_steps, warmup=warmup)
    if kind == "poly":
        warmup = int(cfg.get("warmup_steps", 0))
        decay = optax.polynomial_schedule(
            init_value=cfg.lr, end_value=cfg.get("end_lr", 0.0), power=cfg.get("power", 0.9),
            transition_steps=max(total_steps - warmup, 1))
        if not warmup:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])
    raise ValueError(f"optim.schedule: unknown schedule {kind!r} "
                     "(warmup_cosine, constant, step, poly or dino_cosine)")


def path_of(key_path) -> str:
    """A tree path (JAX key entries) as "a/b/c"."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in key_path)


def _numbered(parts: Sequence[str]) -> int | None:
    for part in parts:
        for pattern, layer in _NUMBERED:
            m = pattern.match(part)
            if m:
                return layer(m.group(1))
        if part in _STEM:
            return 0
    return None


def num_layers(paths: Sequence[str]) -> int:
    """L: the largest layer number among ``paths`` (ViT blocks, CNN stages)."""
    ids = [_numbered(p.split("/")) for p in paths]
    return max([i for i in ids if i is not None], default=0)


def layer_id(path: str, num: int) -> int:
    """The layer of parameter ``path`` (see the module docstring) in a model of ``num``
    layers: 0 (input layer) .. num + 1 (everything after the last block or stage)."""
    found = _numbered(path.split("/"))
    return num + 1 if found is None else found


def layer_scales(params, decay: float) -> dict:
    """{parameter path: learning-rate factor ``decay ** (L + 1 - layer_id)``}. The stacked
    blocks of a scanned ViT (``scan_blocks=True``: a path component ``blocks``, block k at
    index k of the leading axis) get an array of one factor per block, broadcasting."""
    flat = [(path_of(kp), leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    stacked = {p: leaf.shape[0] for p, leaf in flat if "blocks" in p.split("/")}
    num = max(num_layers([p for p, _ in flat]), max(stacked.values(), default=0))
    out = {}
    for p, leaf in flat:
        if p in stacked:
            ids = np.arange(1, stacked[p] + 1).reshape((-1,) + (1,) * (len(leaf.shape) - 1))
            out[p] = float(decay) ** (num + 1 - ids)
        else:
            out[p] = float(decay) ** (num + 1 - layer_id(p, num))
    return out


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its layer's factor (:func:`layer_scales`); stateless."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        scales = layer_scales(updates, decay)
        scaled = jax.tree_util.tree_map_with_path(
            lambda kp, u: u * jax.numpy.asarray(scales[path_of(kp)], u.dtype), updates)
        return scaled, state

    return optax.GradientTransformation(init, update)


def _lr_scale_table(table) -> dict[str, float]:
    out = {}
    for prefix, factor in dict(table or {}).items():
        prefix = str(prefix).strip("/")
        if not prefix:
            raise ValueError("optim.lr_scale: an empty path prefix (use optim.lr for every "
                             "parameter)")
        out[prefix] = float(factor)
    return out


def prefix_scales(params, table) -> dict[str, float]:
    """{parameter path: factor of the longest ``optim.lr_scale`` prefix above it (1 for
    none)}; a prefix matching no parameter is an error naming it."""
    table = _lr_scale_table(table)
    paths = [path_of(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    unused = [p for p in table if not any(_is_under(q, p) for q in paths)]
    if unused:
        tops = sorted({q.split("/")[0] for q in paths})
        raise ValueError(f"optim.lr_scale: {unused[0]!r} matches no parameter path (top-level "
                         f"names: {tops}; paths are joined by '/')")
    out = {}
    for q in paths:
        matches = [p for p in table if _is_under(q, p)]
        out[q] = table[max(matches, key=len)] if matches else 1.0
    return out


def scale_by_prefix(table) -> optax.GradientTransformation:
    """Multiplies each update by its ``optim.lr_scale`` factor (:func:`prefix_scales`); the
    prefixes are checked against the parameters when the state is initialised."""

    def init(params):
        prefix_scales(params, table)
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        scales = prefix_scales(updates, table)
        return jax.tree_util.tree_map_with_path(
            lambda kp, u: u * jax.numpy.asarray(scales[path_of(kp)], u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def frozen_prefixes(freeze, encoder_name: str | None = None) -> tuple[str, ...]:
    """``optim.freeze`` as path prefixes ("encoder" becomes the model's encoder subtree)."""
    if not freeze:
        return ()
    items = (freeze,) if isinstance(freeze, str) else tuple(freeze)
    out = []
    for item in items:
        item = str(item).strip("/")
        if item == "encoder" and encoder_name:
            item = encoder_name
        if not item:
            raise ValueError("optim.freeze: an empty path prefix would freeze every parameter")
        out.append(item)
    return tuple(out)


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def freeze_labels(params, prefixes: Sequence[str], unfreeze: Sequence[str] = ()):
    """The tree of "frozen" / "train" labels of ``params``: frozen under one of
    ``prefixes`` unless the path matches an ``unfreeze`` pattern. A prefix or pattern
    matching nothing is an error naming it (a typo would otherwise train everything)."""
    paths = [path_of(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    unused = [p for p in prefixes if not any(_is_under(q, p) for q in paths)]
    if unused:
        tops = sorted({q.split("/")[0] for q in paths})
        raise ValueError(f"optim.freeze: {unused[0]!r} matches no parameter path (top-level "
                         f"names: {tops}; paths are joined by '/')")

    def frozen(path: str) -> bool:
        return any(_is_under(path, p) for p in prefixes)

    for pattern in unfreeze:
        if not any(frozen(q) and fnmatch.fnmatchcase(q, pattern) for q in paths):
            raise ValueError(f"optim.unfreeze: {pattern!r} matches no frozen parameter path "
                             f"(e.g. {paths[0]!r}; fnmatch patterns over paths joined by '/')")
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: "frozen" if frozen(path_of(kp)) and not any(
            fnmatch.fnmatchcase(path_of(kp), u) for u in unfreeze) else "train", params)


def freeze_rule(cfg, encoder_name: str | None = None):
    """``optim.freeze`` / ``optim.unfreeze`` as a function ``params -> tree of "train" /
    "frozen" labels`` (:func:`freeze_labels`), or None when nothing is frozen: the labels the
    optimizer zeroes by and the train step differentiates by."""
    prefixes = frozen_prefixes(cfg.get("freeze"), encoder_name)
    unfreeze = cfg.get("unfreeze") or ()
    unfreeze = (unfreeze,) if isinstance(unfreeze, str) else tuple(str(u) for u in unfreeze)
    if unfreeze and not prefixes:
        raise ValueError("optim.unfreeze names parameters trained under optim.freeze, which "
                         "is not set")
    if not prefixes:
        return None
    return lambda params: freeze_labels(params, prefixes, unfreeze)


def no_decay(path: str) -> bool:
    """DINOv2 / DINOv3's rule: no weight decay on biases, norms and LayerScale gammas."""
    return path.endswith("bias") or "norm" in path or "gamma" in path


def scheduled_weight_decay(rate, mask: str = "all") -> optax.GradientTransformation:
    """Adds ``rate(count) * param`` (``rate`` a schedule of the update count or a float) to
    the update of every parameter the mask decays ("all", or "dino": :func:`no_decay`)."""
    if mask not in ("all", "dino"):
        raise ValueError(f"optim.decay_mask: unknown mask {mask!r} (all or dino)")
    rate_fn = rate if callable(rate) else (lambda count: rate)

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jax.numpy.zeros([], jax.numpy.int32))

    def update(updates, state, params=None):
        wd = rate_fn(state.count)
        def add(kp, u, p):
            if mask == "dino" and no_decay(path_of(kp)):
                return u
            return u + jax.numpy.asarray(wd, u.dtype) * p
        updates = jax.tree_util.tree_map_with_path(add, updates, params)
        return updates, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def hold_last_layer(steps: int, accum: int = 1) -> optax.GradientTransformation:
    """Zero updates of parameters under a "last_layer" path component for the first
    ``steps`` loop steps (``accum`` loop steps per update)."""

    def init(params):
        paths = [path_of(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        if not any("last_layer" in p.split("/") for p in paths):
            raise ValueError("optim.freeze_last_layer_steps: no parameter path has a "
                             "'last_layer' component (the DINO / iBOT heads' prototypes)")
        return optax.ScaleByScheduleState(count=jax.numpy.zeros([], jax.numpy.int32))

    def update(updates, state, params=None):
        del params
        held = state.count * accum < steps
        updates = jax.tree_util.tree_map_with_path(
            lambda kp, u: jax.numpy.where(held, jax.numpy.zeros_like(u), u)
            if "last_layer" in path_of(kp).split("/") else u, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def clip_by_subtree_norm(max_norm: float) -> optax.GradientTransformation:
    """``clip_by_global_norm`` applied to each top-level subtree separately."""
    clip = optax.clip_by_global_norm(max_norm)

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        if not isinstance(updates, dict):
            return clip.update(updates, optax.EmptyState())[0], state
        return {k: clip.update(v, optax.EmptyState())[0] for k, v in updates.items()}, state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg, total_steps: int, *, encoder_name: str | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer described by ``cfg`` (see module docstring) and its schedule.
    ``encoder_name`` is the model's encoder subtree, what ``optim.freeze="encoder"`` means."""
    lr = schedule(cfg, total_steps)
    accum = int(cfg.get("grad_accum", 1))
    if accum < 1:
        raise ValueError(f"optim.grad_accum must be >= 1, got {accum}")
    # The inner optimizer counts updates; its schedule is read at the loop step of the update.
    inner_lr = lr if accum == 1 else (lambda count: lr(count * accum))
    name = cfg.get("name", "adamw")
    wd_end = cfg.get("weight_decay_end")
    mask = cfg.get("decay_mask") or "all"
    if name == "adamw" and (wd_end is not None or mask != "all"):
        wd = float(cfg.get("weight_decay", 0.0))
        if wd_end is not None:
            rate = lambda count: cosine_schedule(count * accum, wd, float(wd_end), total_steps)  # noqa: E731
        else:
            rate = wd
        tx = optax.chain(optax.scale_by_adam(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999)),
                         scheduled_weight_decay(rate, mask), optax.scale_by_learning_rate(inner_lr))
    elif name == "adamw":
        tx = optax.adamw(inner_lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                         weight_decay=cfg.get("weight_decay", 0.0))
    elif name == "adam":
        # Adam with L2 weight decay added to the gradient (PyTorch's Adam(weight_decay=...)).
        tx = optax.chain(optax.add_decayed_weights(cfg.get("weight_decay", 0.0)),
                         optax.adam(inner_lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999)))
    elif name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(cfg.get("weight_decay", 0.0)),
                         optax.sgd(inner_lr, momentum=cfg.get("momentum", 0.9) or None))
    else:
        raise ValueError(f"optim.name: unknown optimizer {name!r} (adamw, adam or sgd)")
    if name != "adamw" and (wd_end is not None or mask != "all"):
        raise ValueError("optim.weight_decay_end / optim.decay_mask apply to adamw only")
    if cfg.get("grad_clip", 0):
        clip = (clip_by_subtree_norm if cfg.get("clip_per_subtree") else
                optax.clip_by_global_norm)(cfg.grad_clip)
        tx = optax.chain(clip, tx)
    labels = freeze_rule(cfg, encoder_name)
    if labels is not None:  # clipping and the optimizer see the trained parameters only
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    decay = float(cfg.get("layer_decay") or 0.0)
    if decay and decay != 1.0:  # on the whole tree: L counts frozen blocks too
        if not 0.0 < decay < 1.0:
            raise ValueError(f"optim.layer_decay must be in (0, 1] (0: off), got {decay}")
        tx = optax.chain(tx, scale_by_layer(decay))
    if cfg.get("lr_scale"):
        tx = optax.chain(tx, scale_by_prefix(cfg.lr_scale))
    if cfg.get("freeze_last_layer_steps"):
        tx = optax.chain(tx, hold_last_layer(int(cfg.freeze_last_layer_steps), accum))
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return tx, lr
