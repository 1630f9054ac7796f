"""Optimizers and learning-rate schedules from a config.

    optim.name          "adamw" | "adam" | "sgd"
    optim.lr            peak learning rate
    optim.schedule      "warmup_cosine" | "constant" | "step"
    optim.warmup_steps  linear warm-up from 0 (warmup_cosine)
    optim.end_lr        final learning rate of the cosine
    optim.decay_steps / optim.decay_rate   step decay: lr * rate ** (step // decay_steps)
    optim.weight_decay, optim.b1, optim.b2, optim.momentum
    optim.grad_clip     clip by global norm (0: off)
    optim.grad_accum    accumulate this many micro-batches per update (1: off)

Step counts (warm-up, decay, total) are training-loop steps, i.e. micro-batches: with
``grad_accum=k`` the update made after loop step ``n*k`` uses the learning rate of step
``n*k``, so changing k keeps the schedule's shape over the run.
"""

from __future__ import annotations

import optax


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
    raise ValueError(f"optim.schedule: unknown schedule {kind!r} "
                     "(warmup_cosine, constant or step)")


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer described by ``cfg`` (see module docstring) and its schedule."""
    lr = schedule(cfg, total_steps)
    accum = int(cfg.get("grad_accum", 1))
    if accum < 1:
        raise ValueError(f"optim.grad_accum must be >= 1, got {accum}")
    # The inner optimizer counts updates; its schedule is read at the loop step of the update.
    inner_lr = lr if accum == 1 else (lambda count: lr(count * accum))
    name = cfg.get("name", "adamw")
    if name == "adamw":
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
    if cfg.get("grad_clip", 0):
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return tx, lr
