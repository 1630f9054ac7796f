"""The training loop: one loop for every model, objective and data source.

``train_and_evaluate(config, workdir)`` builds the data pipeline, initialises the model from
the shapes the data produces, places parameters, optimizer state and objective state on a
device mesh by their logical axis names, jits and donates the train step, and trains with
Orbax checkpoints, logs and validation; running it again on the same workdir resumes exactly
(parameters, optimizer and objective state, RNG and data position). SIGTERM (preemption)
saves a checkpoint and returns; a NaN/Inf loss raises :class:`NonFiniteLossError` without
saving the bad state.

The objective protocol (everything but ``compute`` optional):

    compute(apply, batch, key[, state=..., step=...]) -> (loss, metrics) | (loss, metrics, aux)
        ``apply(x, variables=None, *, train=True, **inputs)`` runs the model; ``variables``
        replaces collections for that call (e.g. {"params": teacher}, which then runs without
        updating running statistics); ``inputs`` are further keyword arguments of the
        model's ``__call__`` (e.g. ``keep=`` indices of the visible patches that a masked
        autoencoder objective draws; the model is initialised without them, so each must
        have a default). ``key`` drives on-device augmentation. ``step`` is passed to an
        objective whose ``compute`` names it (schedules of hyper-parameters); ``state`` and
        ``step`` to one that keeps state.
    init_state(params) -> pytree
        State the objective keeps in the train state (an EMA teacher, a centre vector). Build
        it with tree maps over ``params`` so that copies of parameters keep their logical axis
        names: it is placed, checkpointed and restored exactly like the parameters.
    update_state(state, *, params, aux, step) -> pytree
        The new state after the optimizer step (``params`` already updated; ``aux`` as
        returned by ``compute``).
    model_input(spec) -> ShapeDtypeStruct
        The example input the model is initialised with, from the data's element spec (a
        dict of ShapeDtypeStructs, batch axis first). Default: ``spec["image"]``.
    for_mesh(batch_shards) -> objective
        The objective for a batch split over ``batch_shards`` devices.
    fit(train_targets) -> objective
        The objective with settings read off the training data (class weights, target
        standardisation), from the training cases' targets (N,) float64; called once, before
        training, and by eval.py on the same cases (:func:`jaxbrain.training.data.
        fit_objective`), so it must be a pure function of the targets.
    probabilities(logits), label_map(probs, convention), case_metrics(probs, label,
    convention, spacing)
        Whole-volume prediction: validation runs the shared predictor and these; without
        them validation is the objective's own loss on held-out cases.
    predict(outputs), scan_metrics(predictions, targets), best_metric, best_mode
        One prediction per whole scan (classification, regression): validation and eval.py
        run :class:`jaxbrain.inference.ScanPredictor` and score all held-out scans at once;
        ``best_metric`` ("auc", "mae") with ``best_mode`` picks the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import signal
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbrain import models, objectives, parallel, runs
from jaxbrain.convert.pretrained import load_pretrained
from jaxbrain.data import pipeline, slices
from jaxbrain.inference import features
from jaxbrain.training import data as data_lib
from jaxbrain.training.checkpoint import Checkpoints
from jaxbrain.training.metrics_log import MetricWriter, Progress
from jaxbrain.training.optim import freeze_rule, make_optimizer
from jaxbrain.training.validation import make_validator

PROGRESS_METRICS = ("loss", "dice_mean", "accuracy", "mae", "rotation_acc", "reconstruction_loss")
# Initialisation runs once: on the CPU its program is compiled without LLVM's expensive
# optimisations (several times faster to compile; the values are the same).
_CPU_INIT_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


_FINITE = "_state_finite"  # per-step flag: every parameter is finite after the update


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is left as it was."""


def element_spec(dataset) -> dict:
    """Shapes and dtypes of the dataset's batches (its first element, read without
    advancing any iterator)."""
    first = dataset[0]
    return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in first.items()
            if isinstance(v, np.ndarray) or np.isscalar(v)}


def model_input(objective, spec: dict) -> jax.ShapeDtypeStruct:
    """The example input (batch of one) the model is initialised with."""
    x = objective.model_input(spec) if hasattr(objective, "model_input") else spec.get("image")
    if x is None:
        raise ValueError(f"the data's batches have no 'image' field (fields: {sorted(spec)}); "
                         "the objective must say which field the model reads (model_input)")
    return jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)


def check_input_size(model, x: jax.ShapeDtypeStruct) -> None:
    """A model built for one input size refuses crops of another size, naming both."""
    size = getattr(model, "input_size", None)
    if size is not None and tuple(x.shape[1:1 + len(size)]) != tuple(size):
        raise ValueError(f"{type(model).__name__} is built for input_size {tuple(size)} but the "
                         f"data gives crops of {tuple(x.shape[1:1 + len(size)])}: set "
                         "model.input_size to data.roi (or data.roi to the model's size)")


def best_checkpoint_rule(config, objective) -> tuple[str | None, str]:
    """(metric, "max" | "min") choosing the best checkpoint: the config's ``best_metric`` /
    ``best_mode``, else the objective's (``best_metric``, a validation metric's name, e.g.
    "auc" -> "val_auc")."""
    metric = config.get("best_metric")
    if metric:
        return metric, config.get("best_mode") or "max"
    metric = getattr(objective, "best_metric", None)
    return (f"val_{metric}" if metric else None), getattr(objective, "best_mode", "max")


def init_variables(model, x: jax.ShapeDtypeStruct, key, shardings) -> dict:
    """The model's variables, placed by ``shardings``. Only the initialisers are computed
    (``lazy_init``: the forward pass is traced for shapes, never compiled)."""
    init = jax.jit(lambda k: nn.unbox(model.lazy_init(k, x)), out_shardings=shardings)
    lowered = init.lower(key)
    options = _CPU_INIT_COMPILE if jax.default_backend() == "cpu" else None
    return lowered.compile(options)(key)


def _pretrained_source(config) -> str | None:
    init = config.get("init", {})
    source = init.get("torch") or init.get("orbax")
    if init.get("required") and not source:
        raise ValueError("this config starts from pretrained weights: set --config.init.orbax="
                         "<previous run or converted model> or --config.init.torch=<.pt file>")
    return source


def initial_variables(config, model, x, key, shardings=None) -> dict:
    """The variables a new run starts from: initialised for the example input ``x`` (an
    array or ShapeDtypeStruct), then filled from pretrained weights when the config says so
    (``init.*``)."""
    _pretrained_source(config)
    x = jax.ShapeDtypeStruct(tuple(np.shape(x)), jnp.float32)
    return pretrained(config, model, init_variables(model, x, key, shardings), shardings)


def pretrained(config, model, variables, shardings) -> dict:
    """``variables`` with pretrained values (``init.torch`` / ``init.orbax``; see
    :mod:`jaxbrain.convert.pretrained`), or unchanged. ``init.from`` names a PyTorch file's
    family (``timm_vit``, ``torchvision_resnet``, ``torchvision_densenet``, ``videomae``,
    ``monai``; None: its keys decide) and ``init.inflate`` ("mean" / "centre") how a 2D or
    video network's kernels become 3D (:mod:`jaxbrain.convert.inflate`)."""
    init = config.get("init", {})
    source = _pretrained_source(config)
    if not source:
        return variables
    encoder_only = bool(init.get("encoder_only", False))
    merged, report = load_pretrained(
        source, model, jax.device_get(variables), encoder_only=encoder_only,
        channels=init.get("channels", "average"), new_head=bool(init.get("new_head", False)),
        strict=bool(init.get("strict", True)), source_family=init.get("from"),
        inflate=init.get("inflate") or "mean")
    if jax.process_index() == 0:
        print(report)
        print(f"initialised {'the encoder ' if encoder_only else ''}from {source}")
    return jax.device_put(merged, shardings)


def variables_of(state: dict) -> dict:
    """The model variables held in a train state: params and any other collections."""
    return {"params": state["params"], **state.get("model_state", {})}


def _save_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


class _Stop:
    """Preemption. One process: SIGTERM becomes a flag checked between steps. Several: JAX's
    distributed runtime receives the notice and every process stops at the same step
    (Orbax's preemption sync point; no collective per step)."""

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1:
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

    def check(self, step: int) -> bool:
        if jax.process_count() > 1:
            return bool(self.checkpoints.manager.reached_preemption(step))
        return self.requested


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def trained_mask(params, labels=None) -> list[bool]:
    """Per leaf of ``params`` (tree-flattening order): True where it trains. ``labels`` is
    :func:`jaxbrain.training.optim.freeze_rule` (params -> "train" / "frozen" labels, the
    optimizer's own); None: every leaf trains."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if labels is None:
        return [True] * len(leaves)
    return [label == "train" for label in treedef.flatten_up_to(labels(params))]


def partition(tree, mask: list[bool]) -> tuple[list, list]:
    """(trained leaves, frozen leaves) of ``tree`` by :func:`trained_mask`."""
    leaves = jax.tree_util.tree_leaves(tree)
    return ([v for v, t in zip(leaves, mask) if t], [v for v, t in zip(leaves, mask) if not t])


def combine(treedef, mask: list[bool], trained, frozen):
    """The tree of ``treedef`` from its trained and frozen leaves (inverse of :func:`partition`)."""
    trained, frozen = iter(trained), iter(frozen)
    return treedef.unflatten([next(trained) if t else next(frozen) for t in mask])


def make_gradients(model, objective, dtype, labels=None):
    """``gradients(state, batch) -> (grads, (loss, metrics, updated collections, aux))``: the
    objective's loss and its gradients with respect to the trained leaves of
    ``state["params"]`` alone (a list in :func:`partition` order); the frozen leaves
    (``labels``, :func:`trained_mask`) enter as constants, never differentiated."""
    stateful = hasattr(objective, "init_state")
    wants_step = stateful or _accepts(objective.compute, "step")

    def gradients(state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        augment_key = jax.random.fold_in(key, 1)
        model_state = state.get("model_state", {})
        kwargs = {"step": state["step"]} if wants_step else {}
        if stateful:
            kwargs["state"] = state["objective"]
        treedef = jax.tree_util.tree_structure(state["params"])
        mask = trained_mask(state["params"], labels)
        trained, frozen = partition(state["params"], mask)
        frozen = [jax.lax.stop_gradient(p) for p in frozen]

        def loss_fn(trained):
            params = combine(treedef, mask, trained, frozen)
            updated = {}

            def apply(x, variables=None, *, train=True, **inputs):
                base = {"params": params, **model_state}
                x = x.astype(dtype)
                if variables is not None:  # another set of weights (e.g. a teacher)
                    return model.apply({**base, **variables}, x, train=train,
                                       rngs={"dropout": key}, **inputs)
                if not model_state or not train:
                    return model.apply(base, x, train=train, rngs={"dropout": key}, **inputs)
                # Running statistics (BatchNorm) are updated by the training forward pass.
                out, new = model.apply(base, x, train=True, rngs={"dropout": key},
                                       mutable=list(model_state), **inputs)
                updated.update(new)
                return out

            out = objective.compute(apply, batch, augment_key, **kwargs)
            loss, metrics, aux = out if len(out) == 3 else (*out, None)
            return loss, (metrics, dict(updated), aux)

        (loss, (metrics, updated, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trained)
        return grads, (loss, metrics, updated, aux)

    return gradients


def make_train_step(model, objective, tx, lr_fn, dtype, labels=None):
    """The loop's step ``(state, batch) -> (state, metrics)``. ``labels``: the optimizer's
    freeze rule (:func:`jaxbrain.training.optim.freeze_rule` of the same ``optim`` config;
    None: every parameter trains): frozen parameters are neither differentiated nor
    updated, and ``grad_norm`` covers the trained ones."""
    stateful = hasattr(objective, "init_state")
    gradients = make_gradients(model, objective, dtype, labels)

    def train_step(state, batch):
        model_state = state.get("model_state", {})
        grads, (_, metrics, updated, aux) = gradients(state, batch)
        treedef = jax.tree_util.tree_structure(state["params"])
        mask = trained_mask(state["params"], labels)
        trained, frozen = partition(state["params"], mask)
        # The optimizer sees the whole tree (its state keeps its layout); the frozen leaves'
        # gradients are zeros it discards (optim: set_to_zero), their updates are not applied.
        full = combine(treedef, mask, grads, [jnp.zeros_like(p) for p in frozen])
        updates, opt_state = tx.update(full, state["opt_state"], state["params"])
        trained = optax.apply_updates(trained, partition(updates, mask)[0])
        params = combine(treedef, mask, trained, frozen)
        metrics = dict(metrics, lr=lr_fn(state["step"]), grad_norm=optax.global_norm(grads))
        # A finite loss can still give an update that overflows the parameters; such a state
        # must not be saved either (checked on the host with the loss; not logged).
        metrics[_FINITE] = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in trained]
                                             or [jnp.asarray(True)]))
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        if model_state:
            new_state["model_state"] = {**model_state, **updated}
        if stateful:
            new_state["objective"] = objective.update_state(
                state["objective"], params=params, aux=jax.lax.stop_gradient(aux),
                step=state["step"])
        return new_state, metrics

    return train_step


class _Metrics:
    """Per-step metrics stay on the device; they are fetched, checked and averaged only on log
    and checkpoint steps (no host synchronisation in between)."""

    def __init__(self, ckpt: Checkpoints):
        self.ckpt = ckpt
        self.pending: list[tuple[int, Any]] = []
        self.host: list[dict] = []

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))

    def fetch(self) -> None:
        """Moves pending metrics to the host; a non-finite loss raises."""
        if not self.pending:
            return
        steps, values = zip(*self.pending)
        self.pending = []
        for step, m in zip(steps, jax.device_get(list(values))):
            host = {k: float(v) for k, v in m.items()}
            finite = bool(host.pop(_FINITE, True))
            if not np.isfinite(host["loss"]) or not finite:
                self.ckpt.wait()
                what = (f"loss is {host['loss']}" if not np.isfinite(host["loss"]) else
                        f"loss is {host['loss']:.4g} but the update made parameters non-finite "
                        f"(grad_norm {host.get('grad_norm', float('nan')):.4g})")
                raise NonFiniteLossError(
                    f"step {step}: {what}; stopped without saving this state "
                    f"(last good checkpoint: step {self.ckpt.latest_step()}); lower optim.lr, "
                    "enable optim.grad_clip, or check the data")
            self.host.append(host)

    def mean(self) -> dict:
        self.fetch()
        out = {k: float(np.mean([h[k] for h in self.host])) for k in self.host[0]}
        self.host = []
        return out


def datasets(config, workdir: str):
    """(this process's training batches, validation cases) of the config's ``data``; crops
    are ``data.roi``."""
    _, val_cases, train_ds = training_data(config, workdir)
    return train_ds, val_cases


# data.source: "volumes" (default: the cases' volumes), "slices", or a cache of per-scan
# arrays standing for the cases' volumes (features.CASE_CACHES)
CASE_CACHES = features.CASE_CACHES
SOURCES = ("volumes", "slices", *CASE_CACHES)


def training_data(config, workdir: str) -> tuple[list, list, Any]:
    """(training cases, validation cases, this process's training batches) of the config's
    ``data``: ``data.source`` "volumes" (default), "slices" (2D axial slices streamed from
    ``data.collections``, :mod:`jaxbrain.data.slices`; no cases, no validation) or "features"
    (the cases' per-slice features from a frozen slice encoder, computed once and cached,
    :mod:`jaxbrain.inference.features`; training and validation read the cache) or
    "scan_slices" (the cases' preprocessed slice stacks, cached the same way, for a model
    that trains through the slice encoder)."""
    dcfg = config.data
    source = dcfg.get("source") or "volumes"
    if source not in SOURCES:
        raise ValueError(f"config.data.source: unknown source {source!r}; known: {SOURCES}")
    if source == "slices":
        return [], [], slices.from_config(config, workdir)
    data_lib.check_before_training(dcfg, workdir)  # every case read once, problems all at once
    train_cases, val_cases = data_lib.cases(dcfg, workdir)
    if source in CASE_CACHES:
        train_cases, val_cases = CASE_CACHES[source](config, workdir, [train_cases, val_cases])
    return train_cases, val_cases, training_batches(config, train_cases)


def training_batches(config, train_cases: list):
    """This process's training batches of ``train_cases`` (read from ``data.cache`` when set)."""
    dcfg = config.data
    roi = tuple(dcfg.roi) if dcfg.get("roi") else None
    train_source = data_lib.cached(dcfg, train_cases, dcfg.preprocess, "train")
    return pipeline.training_dataset(
        train_source, preprocess=dcfg.preprocess, augment=dcfg.augment,
        global_batch_size=config.batch_size, seed=config.seed,
        crops_per_volume=dcfg.get("crops_per_volume", 1), roi=roi)


@dataclasses.dataclass
class TrainSetup:
    """The train step of a config and the state it runs on, built from shapes alone.

    ``abstract_state``: ShapeDtypeStructs carrying their NamedShardings (step, params,
    opt_state, rng, model_state and objective where present); ``step_fn``: the jitted train
    step with those shardings, the state donated. :meth:`initial_state` materialises a new
    run's state; a resumed run restores into ``abstract_state``; ``python -m jaxbrain.aot``
    lowers ``step_fn`` on ``abstract_state`` and an abstract batch."""
    model: Any
    objective: Any
    mesh: jax.sharding.Mesh
    rules: Any
    dtype: Any
    x: jax.ShapeDtypeStruct
    tx: Any
    lr_fn: Any
    keys: tuple
    boxed: dict  # the model's variables as jax.eval_shape(model.init) gives them
    abstract_state: dict
    step_fn: Any

    @property
    def state_shardings(self) -> dict:
        return jax.tree_util.tree_map(lambda a: a.sharding, self.abstract_state)

    def initial_state(self, config) -> dict:
        """A new run's state, placed: initialised (and pretrained weights loaded, ``init.*``)."""
        shardings = self.state_shardings
        init_key, _ = self.keys
        v_shardings = {"params": shardings["params"], **shardings.get("model_state", {})}
        variables = initial_variables(config, self.model, self.x, init_key, v_shardings)
        params = variables.pop("params")
        state = {"step": jax.device_put(jnp.zeros((), jnp.int32), shardings["step"]),
                 "params": params,
                 "opt_state": jax.jit(self.tx.init, out_shardings=shardings["opt_state"])(params),
                 "rng": jax.device_put(jax.random.key_data(self.keys[1]), shardings["rng"])}
        if variables:  # collections besides params, e.g. BatchNorm's running statistics
            state["model_state"] = variables
        if "objective" in shardings:
            state["objective"] = jax.jit(self.objective.init_state,
                                         out_shardings=shardings["objective"])(params)
        return state


def _placed(tree, shardings):
    # ``shardings`` is a prefix of ``tree``: a sharding may stand for an empty subtree (an
    # optimizer's masked leaves, optax.MaskedNode, under optim.freeze).
    return jax.tree_util.tree_map(
        lambda s, sub: jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sub), shardings, tree)


def setup_training(config, spec: dict, *, train_cases=None, devices=None) -> TrainSetup:
    """Model, objective (fitted to ``train_cases``' targets when given), mesh over ``devices``
    (default: all), shardings by logical axis names, optimizer and the jitted train step of
    ``config`` for batches of ``spec`` (:func:`element_spec`, or
    :func:`jaxbrain.training.data.batch_spec` without data); nothing is materialised."""
    model = models.from_config(config.model, config.get("compute_dtype"))
    objective = objectives.create(**config.objective)
    if train_cases is not None:
        objective = data_lib.fit_objective(objective, train_cases)
    dtype = models.DTYPES[config.get("compute_dtype", "float32")]
    mesh = parallel.make_mesh(dict(config.mesh), devices)
    if hasattr(objective, "for_mesh"):
        objective = objective.for_mesh(math.prod(mesh.shape[a] for a in parallel.BATCH_AXES
                                                  if a in mesh.shape))
    rules = parallel.RULES[config.get("sharding", "replicate")]
    x = model_input(objective, spec)
    check_input_size(model, x)

    # State: variables, optimizer and objective state, placed by logical axis names.
    init_key, state_key = jax.random.split(jax.random.key(config.seed))
    boxed = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape, x.dtype)), init_key)
    v_shardings = parallel.logical_shardings(boxed, mesh, rules)
    if rules:
        parallel.replicated_large(boxed["params"], v_shardings["params"], mesh, rules)
    variables = nn.unbox(boxed)
    tx, lr_fn = make_optimizer(config.optim, int(config.total_steps),
                               encoder_name=models.encoder_name(model))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = _placed(variables.pop("params"), v_shardings["params"])
    opt_shardings = parallel.logical_shardings(jax.eval_shape(tx.init, boxed["params"]),
                                               mesh, rules)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), "params": params,
             "opt_state": _placed(jax.eval_shape(tx.init, params), opt_shardings),
             "rng": jax.ShapeDtypeStruct(jax.random.key_data(state_key).shape, jnp.uint32,
                                         sharding=replicated)}
    if variables:  # collections besides params, e.g. BatchNorm's running statistics
        state["model_state"] = _placed(variables, {k: v_shardings[k] for k in variables})
    if hasattr(objective, "init_state"):
        obj_shardings = parallel.logical_shardings(
            jax.eval_shape(objective.init_state, boxed["params"]), mesh, rules)
        state["objective"] = _placed(jax.eval_shape(objective.init_state, params), obj_shardings)
    shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
    labels = freeze_rule(config.optim, models.encoder_name(model))  # not differentiated
    step = make_train_step(model, objective, tx, lr_fn, dtype, labels)

    def train_step(state, batch):  # traced with activations pinned to their batch shards
        with parallel.activation_sharding(mesh):
            return step(state, batch)

    step_fn = jax.jit(train_step,
                      in_shardings=(shardings, None), out_shardings=(shardings, None),
                      donate_argnums=(0,))
    return TrainSetup(model, objective, mesh, rules, dtype, x, tx, lr_fn,
                      (init_key, state_key), boxed, state, step_fn)


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
    config = runs.migrate(config)
    data_lib.record_label_convention(config.data, workdir)  # BraTS 2021 or 2023, as found
    _save_config(config, workdir)

    # Data.
    dcfg = config.data
    train_cases, val_cases, train_ds = training_data(config, workdir)
    spec = element_spec(train_ds)
    train_iter = iter(pipeline.loader(train_ds, workers=dcfg.get("workers", 0),
                                      threads=dcfg.get("threads", 2)))

    setup = setup_training(config, spec, train_cases=train_cases)
    model, objective, mesh, dtype = setup.model, setup.objective, setup.mesh, setup.dtype
    total_steps = int(config.total_steps)

    best_metric, best_mode = best_checkpoint_rule(config, objective)
    ckpt = Checkpoints(workdir, keep=config.get("keep_checkpoints", 3),
                       best_metric=best_metric, best_mode=best_mode)
    latest = ckpt.latest_step()
    if latest is None:
        state = setup.initial_state(config)
    else:  # a resumed run takes everything from its checkpoint, restored in place
        state = ckpt.restore(latest, setup.abstract_state, train_iter)
        if is_main:
            print(f"resumed from {ckpt.directory}/{latest}")
    step_fn = setup.step_fn

    writer = MetricWriter(workdir, enabled=is_main)
    start = int(jax.device_get(state["step"]))
    progress = Progress(total_steps, start, enabled=is_main and config.get("progress", True))
    log_every, ckpt_every = int(config.log_every), int(config.ckpt_every)
    eval_every = int(config.get("eval_every", 0))
    validator = make_validator(config, model, objective, val_cases, mesh, dtype)
    history, last = _Metrics(ckpt), {}

    with _Stop(ckpt) as stop:
        step = start
        while step < total_steps:
            batch = parallel.global_batch(next(train_iter), mesh)
            if step == start:
                # Compile first, then line the processes up: the first step's collectives
                # must not wait on a process that is still compiling.
                step_fn = step_fn.lower(state, batch).compile()
                parallel.barrier("train step compiled")
                progress.restart(start)
            state, metrics = step_fn(state, batch)
            step += 1
            history.add(step, metrics)
            if step % log_every == 0 or step == total_steps:
                last = history.mean()
                last["steps_per_s"] = progress.rate(step)
                writer.write(step, {f"train/{k}": v for k, v in last.items()})
                progress.update(step, {k: last[k] for k in PROGRESS_METRICS if k in last})
            val = None
            if validator and (step % eval_every == 0 or step == total_steps):
                val = validator(variables_of(state), state.get("objective"))
                writer.write(step, {f"val/{k}": v for k, v in val.items()})
                last.update({f"val_{k}": v for k, v in val.items()})
            stopping = stop.check(step) or (stop_after is not None and step - start >= stop_after)
            if step % ckpt_every == 0 or step == total_steps or stopping:
                history.fetch()  # never save a state whose loss is not finite
                ckpt.save(step, state, train_iter,
                          metrics={f"val_{k}": v for k, v in val.items()} if val else None)
            if stopping:
                if is_main:
                    progress.close()
                    print(f"\nstopped: saved step {step} to {ckpt.directory}; rerun to resume")
                break
    progress.close()
    ckpt.close()
    writer.close()
    return last
