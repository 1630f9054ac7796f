"""The training loop: one loop for every objective.

``train_and_evaluate(config, workdir)`` builds the data pipeline, the model on a device mesh
(parameters and optimizer state placed by logical-axis rules, the batch sharded over the data
axes), a jitted and donated train step, Orbax checkpoints and logs, then trains; running it
again on the same workdir resumes exactly (parameters, optimizer state, RNG and data
position). SIGTERM saves a checkpoint and returns; a NaN/Inf loss raises
:class:`NonFiniteLossError` without saving the bad state.
"""

from __future__ import annotations

import functools
import math
import os
import signal
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from jaxbrain import models, objectives, parallel
from jaxbrain.data import pipeline
from jaxbrain.training import data as data_lib
from jaxbrain.training.checkpoint import Checkpoints, abstract_like
from jaxbrain.training.metrics_log import MetricWriter, Progress
from jaxbrain.training.optim import make_optimizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PROGRESS_METRICS = ("loss", "dice_mean", "rotation_acc", "reconstruction_loss")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is left as it was."""


def build_model(cfg):
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    for key in ("dtype", "param_dtype"):
        if key in kwargs:
            kwargs[key] = DTYPES[kwargs[key]]
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return models.create(name, **kwargs)


def adapt_channels(kernel: np.ndarray, channels: int, mode: str) -> np.ndarray:
    """A pretrained input-layer kernel (..., C_old, F) for ``channels`` input channels.

    ``average``: every new channel gets the mean kernel over the old channels; ``repeat``: new
    channel j gets old channel j mod C_old. Both are scaled by C_old / channels, so that inputs
    whose channels look alike give the layer the pretrained magnitude.
    """
    old = kernel.shape[-2]
    if mode == "average":
        out = np.repeat(kernel.mean(-2, keepdims=True), channels, axis=-2)
    elif mode == "repeat":
        out = np.take(kernel, np.arange(channels) % old, axis=-2)
    else:
        raise ValueError(f"init.channels: expected 'fresh', 'average' or 'repeat', got {mode!r}")
    return (out * (old / channels)).astype(kernel.dtype)


def _merge_pretrained(found: dict, like: dict, source: str, *, encoder: tuple | None,
                      input_layer: tuple, channels: str, new_head: bool) -> dict:
    """``like`` (freshly initialised variables, {"params": ..., "batch_stats": ...}) with the
    values of ``found`` (a flat {(collection, *path): array}).

    ``encoder``: take only variables under this path (the rest stays fresh). An input layer
    (``input_layer``) for another channel count is adapted (``channels``) or left fresh;
    with ``new_head``, output layers whose last axis (the class count) differs stay fresh.
    Anything else that does not fit is an error naming the variables.
    """
    flat_like = flax.traverse_util.flatten_dict(nn.unbox(like))
    found = dict(found)
    kpath = input_layer + ("kernel",)
    have, want = found.get(kpath), flat_like.get(kpath)
    if have is not None and want is not None and np.shape(have)[-2] != want.shape[-2] \
            and np.shape(have)[:-2] == want.shape[:-2] and np.shape(have)[-1] == want.shape[-1]:
        if channels == "fresh":  # the originals: a new, randomly initialised input layer
            bias = input_layer + ("bias",)
            found.update({kpath: np.asarray(want), bias: np.asarray(flat_like[bias])})
        else:
            found[kpath] = adapt_channels(np.asarray(have), want.shape[-2], channels)
        if jax.process_index() == 0:
            print(f"{'/'.join(input_layer[1:])}: {np.shape(have)[-2]} -> {want.shape[-2]} input "
                  f"channels ({channels})")
    out, missing, bad, heads = {}, [], [], []
    for key, value in flat_like.items():
        got = found.get(key)
        if encoder is not None and key[:len(encoder)] != encoder:
            out[key] = np.asarray(value)
        elif got is None:
            missing.append("/".join(key))
        elif np.shape(got) != value.shape:
            if new_head and np.shape(got)[:-1] == value.shape[:-1]:
                heads.append(f"{'/'.join(key)} {np.shape(got)} -> {value.shape}")
                out[key] = np.asarray(value)
            else:
                bad.append(f"{'/'.join(key)}: {np.shape(got)} vs {value.shape}")
        else:
            out[key] = np.asarray(got).astype(value.dtype)
    if missing or bad:
        hint = (" (another class count: set init.new_head=True to start the output layers "
                "fresh)" if bad and not new_head else "")
        raise ValueError(f"{source}: variables do not fit the model: missing {missing[:5]}, "
                         f"shape mismatches {bad[:5]}{hint}")
    if heads and jax.process_index() == 0:
        print(f"new output layers (init.new_head): {', '.join(heads)}")
    return flax.traverse_util.unflatten_dict(out)


def _init_variables(config, model, dummy, shardings, key) -> dict:
    """The model's variables ({"params": ..., and e.g. "batch_stats"}): initialised, or from
    pretrained weights (``init.torch`` / ``init.orbax``; ``init.encoder_only``,
    ``init.channels``, ``init.new_head``)."""
    init = config.get("init", {})
    if init.get("required") and not (init.get("torch") or init.get("orbax")):
        raise ValueError("this config starts from pretrained weights: set --config.init.orbax="
                         "<previous run or converted model> or --config.init.torch=<.pt file>")
    variables = jax.jit(lambda k: nn.unbox(model.init(k, dummy)), out_shardings=shardings)(key)
    source = init.get("torch") or init.get("orbax")
    if not source:
        return variables
    encoder_only = bool(init.get("encoder_only", False))
    if init.get("torch"):
        from jaxbrain.convert import family_of
        from jaxbrain.convert.core import to_flax
        family = family_of(model)
        found, report, _ = to_flax(init.torch, model, family, encoder_only=encoder_only)
        if not report.ok and init.get("strict", True):
            raise ValueError(f"{init.torch} does not fit {type(model).__name__}:\n"
                             f"{report.problems()}\n(init.strict=False loads what fits)")
        if family.collections == ("params",):
            found = {("params",) + k: v for k, v in found.items()}
    else:
        found = _orbax_variables(init.orbax)
    if encoder_only and not hasattr(model, "encoder_kwargs"):
        raise ValueError(f"init.encoder_only: {type(model).__name__} has no separate encoder")
    merged = _merge_pretrained(found, jax.device_get(variables), source,
                               encoder=("params", "swinViT") if encoder_only else None,
                               input_layer=("params",) + model.input_layer(),
                               channels=init.get("channels", "average"),
                               new_head=bool(init.get("new_head", False)))
    if jax.process_index() == 0:
        print(f"initialised {'the encoder ' if encoder_only else ''}from {source}")
    return jax.device_put(merged, shardings) if shardings is not None else merged


def _orbax_variables(path: str) -> dict:
    """Variables (flat {(collection, *path): array}) of another run (its latest checkpoint)
    or of ``convert from-torch`` output."""
    import orbax.checkpoint as ocp
    path = os.path.abspath(path)
    ckpts = os.path.join(path, "checkpoints")
    if os.path.isdir(ckpts):
        step = ocp.CheckpointManager(ckpts, item_names=("state", "data")).latest_step()
        if step is None:
            raise FileNotFoundError(f"{ckpts}: no checkpoint to initialise from")
        tree = ocp.StandardCheckpointer().restore(os.path.join(ckpts, str(step), "state"))
        found = {"params": tree["params"], **tree.get("model_state", {})}
    elif os.path.isdir(os.path.join(path, "params")):
        tree = ocp.StandardCheckpointer().restore(os.path.join(path, "params"))
        found = tree if "params" in tree and "batch_stats" in tree else {"params": tree}
    else:
        raise FileNotFoundError(f"{path}: neither a training run (checkpoints/) nor a converted "
                                "model (params/)")
    return flax.traverse_util.flatten_dict(found)


def _orbax_params(path: str) -> dict:
    """The parameters alone (flat {path: array}) of ``_orbax_variables``."""
    return {k[1:]: v for k, v in _orbax_variables(path).items() if k[0] == "params"}


def variables_of(state: dict) -> dict:
    """The model variables held in a train state: params and any other collections."""
    return {"params": state["params"], **state.get("model_state", {})}


def _save_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


class _Stop:
    """SIGTERM (preemption) becomes a flag checked between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handler(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def check(self) -> bool:
        if jax.process_count() > 1:  # every process must agree to stop at the same step
            flags = multihost_utils.process_allgather(np.array(self.requested))
            return bool(np.any(flags))
        return self.requested


def make_train_step(model, objective, tx, lr_fn, dtype):
    def train_step(state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        augment_key = jax.random.fold_in(key, 1)

        model_state = state.get("model_state", {})

        def loss_fn(params):
            updated = {}

            def apply(x):
                variables = {"params": params, **model_state}
                if not model_state:
                    return model.apply(variables, x.astype(dtype), train=True,
                                       rngs={"dropout": key})
                # Running statistics (BatchNorm) are updated by the forward pass.
                out, new = model.apply(variables, x.astype(dtype), train=True,
                                       rngs={"dropout": key}, mutable=list(model_state))
                updated.update(new)
                return out

            loss, metrics = objective.compute(apply, batch, augment_key)
            return loss, (metrics, dict(updated))

        (_, (metrics, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics, lr=lr_fn(state["step"]), grad_norm=optax.global_norm(grads))
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        if model_state:
            new_state["model_state"] = {**model_state, **updated}
        return new_state, metrics

    return train_step


def opt_state_shardings(tx, params, param_shardings, replicated):
    """Optimizer-state leaves that mirror a parameter (moments) take its sharding; the rest
    (step counts) are replicated."""
    by_path = {tuple(map(str, k)): s for k, s in
               jax.tree_util.tree_flatten_with_path(param_shardings)[0]}
    shapes = {tuple(map(str, k)): v.shape for k, v in
              jax.tree_util.tree_flatten_with_path(params)[0]}

    def pick(path, leaf):
        keys = tuple(map(str, path))
        for i in range(len(keys)):
            if keys[i:] in by_path and shapes[keys[i:]] == leaf.shape:
                return by_path[keys[i:]]
        return replicated

    abstract = jax.eval_shape(tx.init, params)
    return jax.tree_util.tree_map_with_path(pick, abstract)


def _global_batch(local: dict, mesh) -> dict:
    return {k: jax.make_array_from_process_local_data(parallel.batch_sharding(mesh, v.ndim), v)
            for k, v in local.items()}


def train_and_evaluate(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the last logged metrics.

    ``stop_after`` ends this invocation after that many steps, saving a checkpoint as a
    preemption would (the run resumes from it when called again).
    """
    dist = config.get("distributed", {})
    parallel.initialize_distributed(dist.get("coordinator"), dist.get("num_processes"),
                                    dist.get("process_id"))
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    _save_config(config, workdir)

    # Data.
    dcfg = config.data
    train_cases, val_cases = data_lib.cases(dcfg, workdir)
    train_source = data_lib.cached(dcfg, train_cases, dcfg.preprocess, "train")
    train_ds = pipeline.training_dataset(
        train_source, preprocess=dcfg.preprocess, augment=dcfg.augment,
        global_batch_size=config.batch_size, seed=config.seed,
        crops_per_volume=dcfg.get("crops_per_volume", 1))
    train_iter = iter(pipeline.loader(train_ds, workers=dcfg.get("workers", 0),
                                      threads=dcfg.get("threads", 2)))

    # Model, mesh, state.
    model = build_model(config.model)
    objective = objectives.create(**config.objective)
    dtype = DTYPES[config.get("compute_dtype", "float32")]
    mesh = parallel.make_mesh(dict(config.mesh))
    if hasattr(objective, "for_mesh"):
        objective = objective.for_mesh(math.prod(mesh.shape[a] for a in parallel.BATCH_AXES
                                                  if a in mesh.shape))
    rules = parallel.RULES[config.get("sharding", "replicate")]
    roi = tuple(dcfg.roi)
    dummy = jnp.zeros((1, *roi, config.model.in_channels), jnp.float32)
    init_key, state_key = jax.random.split(jax.random.key(config.seed))
    abstract = jax.eval_shape(lambda: model.init(init_key, dummy))
    p_shardings = parallel.param_shardings(abstract["params"], mesh, rules)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    v_shardings = {c: p_shardings if c == "params" else
                   jax.tree_util.tree_map(lambda _: replicated, nn.unbox(tree))
                   for c, tree in abstract.items()}
    total_steps = int(config.total_steps)
    tx, lr_fn = make_optimizer(config.optim, total_steps)

    ckpt = Checkpoints(workdir, keep=config.get("keep_checkpoints", 3),
                       best_metric=config.get("best_metric"),
                       best_mode=config.get("best_mode", "max"))
    variables = _init_variables(config, model, dummy, v_shardings, init_key)
    params = variables.pop("params")
    opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params, p_shardings,
                                                                   replicated))(params)
    state = {"step": jax.device_put(jnp.zeros((), jnp.int32), replicated), "params": params,
             "opt_state": opt_state,
             "rng": jax.device_put(jax.random.key_data(state_key), replicated)}
    if variables:  # collections besides params, e.g. BatchNorm's running statistics
        state["model_state"] = variables
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract_like(state), train_iter)
        if is_main:
            print(f"resumed from {ckpt.directory}/{latest}")
    state_shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
    step_fn = jax.jit(make_train_step(model, objective, tx, lr_fn, dtype),
                      in_shardings=(state_shardings, None), out_shardings=(state_shardings, None),
                      donate_argnums=(0,))

    writer = MetricWriter(workdir, enabled=is_main)
    start = int(jax.device_get(state["step"]))
    progress = Progress(total_steps, start, enabled=is_main and config.get("progress", True))
    log_every, ckpt_every = int(config.log_every), int(config.ckpt_every)
    eval_every = int(config.get("eval_every", 0))
    validator = (_Validator(config, model, objective, dtype, val_cases, mesh)
                 if val_cases and eval_every and hasattr(objective, "probabilities") else None)
    history, last = [], {}
    pending = None  # (step, metrics) of the previous step: checked while the next one runs

    def check(step_metrics):
        step, metrics = step_metrics
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(host["loss"]):
            ckpt.wait()
            raise NonFiniteLossError(
                f"step {step}: loss is {host['loss']}; stopped without saving this state (last "
                f"good checkpoint: step {ckpt.latest_step()}); lower optim.lr, enable "
                "optim.grad_clip, or check the data")
        history.append(host)

    with _Stop() as stop:
        step = start
        while step < total_steps:
            batch = _global_batch(next(train_iter), mesh)
            if step == start:
                # Compile first, then line the processes up: the first step's collectives
                # must not wait on a process that is still compiling.
                step_fn = step_fn.lower(state, batch).compile()
                parallel.barrier("train step compiled")
                progress.restart(start)
            state, metrics = step_fn(state, batch)
            if pending is not None:
                check(pending)
            pending = (step + 1, metrics)
            step += 1
            if step % log_every == 0 or step == total_steps:
                check(pending)
                pending = None
                last = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
                last["steps_per_s"] = progress.rate(step)
                history.clear()
                writer.write(step, {f"train/{k}": v for k, v in last.items()})
                progress.update(step, {k: last[k] for k in PROGRESS_METRICS if k in last})
            val = None
            if validator and eval_every and (step % eval_every == 0 or step == total_steps):
                val = validator(variables_of(state))
                writer.write(step, {f"val/{k}": v for k, v in val.items()})
                last.update({f"val_{k}": v for k, v in val.items()})
            stopping = stop.check() or (stop_after is not None and step - start >= stop_after)
            if step % ckpt_every == 0 or step == total_steps or stopping:
                if pending is not None:
                    check(pending)
                    pending = None
                ckpt.save(step, state, train_iter,
                          metrics={f"val_{k}": v for k, v in val.items()} if val else None)
            if stopping:
                if is_main:
                    print(f"\nstopped: saved step {step} to {ckpt.directory}; rerun to resume")
                break
    ckpt.close()
    writer.close()
    return last


class _Validator:
    """Sliding-window validation on whole volumes: mean hard Dice per output channel."""

    def __init__(self, config, model, objective, dtype, cases, mesh):
        from jaxbrain.evaluation.sliding_window import sliding_window_inference
        ecfg = config.eval
        preprocess = config.data.preprocess + (", " + ecfg.label_transform
                                               if ecfg.get("label_transform") else "")
        limit = ecfg.get("max_cases")
        self.dataset = pipeline.eval_dataset(cases[:limit] if limit else cases,
                                             preprocess=preprocess, shard=(0, 1))
        self.objective = objective
        self.mesh = mesh
        self.infer = functools.partial(sliding_window_inference, roi_size=tuple(ecfg.roi),
                                       overlap=ecfg.get("overlap", 0.5),
                                       mode=ecfg.get("mode", "gaussian"),
                                       sw_batch_size=ecfg.get("sw_batch_size", 2))
        def predict(variables, windows):
            logits = model.apply(variables, windows.astype(dtype))
            return objective.probabilities(logits)

        self.predict = predict  # one function object: the compiled pass is reused

    def __call__(self, variables) -> dict:
        rows = []
        for record in self.dataset:
            image = jax.device_put(record["image"][None], jax.sharding.NamedSharding(
                self.mesh, jax.sharding.PartitionSpec()))
            probs = self.infer(jax.tree_util.Partial(self.predict, variables), image)
            probs = jnp.asarray(jax.device_get(probs))
            target = self.objective.targets(probs, jnp.asarray(np.asarray(record["label"]))[None])
            m = self.objective.metrics(probs, target)
            rows.append({k: float(v) for k, v in m.items()})
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
