"""One way into a run: the config, model and variables of a ``train.py`` workdir or of a
``python -m jaxbrain.convert from-torch`` directory.

    run = runs.load_run("runs/demo")              # best checkpoint (by validation), else latest
    run = runs.load_run("runs/demo", step=200)
    run = runs.load_run("ckpt/")                  # from-torch output: model.json + params/
    run = runs.load_run("runs/dino", weights="student")
    run.model, run.variables, run.step, run.config, run.weights

Which weights: a run whose objective keeps an EMA teacher of the parameters (objective state
``teacher``, as the DINO self-distillation keeps it) is read, by default (``weights="auto"``),
as its teacher: the network DINO-style methods evaluate and release (DINOv2 / DINOv3 /
BrainDINO checkpoints are read as ``["teacher"]``). ``weights="student"`` (= "params") reads
the optimised parameters, ``"teacher"`` requires a teacher. Every other run has only its
parameters. Fine-tuning (``init.orbax``), eval.py, the probes and ``convert to-torch`` all come
through here, so they agree on which network a run is.

Layouts read here:

    <workdir>/config.json                  the resolved training config
    <workdir>/checkpoints/<step>/state     Orbax PyTree: step, params, opt_state, rng,
                                           model_state (e.g. batch_stats), objective state
    <workdir>/checkpoints/<step>/data      the grain iterator position
    <converted>/model.json                 {"model": name, "kwargs": {...}}
    <converted>/params                     Orbax PyTree of the variables

Variables are restored through Orbax against abstract targets built from the checkpoint's own
metadata, and only the parts asked for: the model's collections are read, the optimizer
state is not.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from jaxbrain import models

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"
MODEL_JSON = "model.json"
PARAMS_DIR = "params"
# Items of the train state that hold model variables ("params" plus "model_state", the other
# collections: {"batch_stats": ...}).
MODEL_ITEMS = ("params", "model_state")
TEACHER = ("objective", "teacher")  # where an objective keeps an EMA teacher of the params
WEIGHTS = ("auto", "teacher", "student", "params")


class RunError(FileNotFoundError):
    """A path that is not a training run or converted model, or lacks what was asked for."""


@dataclasses.dataclass
class Run:
    path: str
    kind: str                       # "training" or "converted"
    model_config: dict              # {"name": ..., constructor arguments}
    variables: dict                 # {"params": ..., and e.g. "batch_stats": ...}
    step: int | None
    config: ml_collections.ConfigDict | None = None
    weights: str = "params"         # "params" or "teacher": which network ``variables`` holds

    @property
    def model(self):
        return models.from_config(self.model_config)


def kind_of(path: str) -> str | None:
    """"training" (a train.py workdir), "converted" (from-torch output) or None."""
    if os.path.isdir(os.path.join(path, CHECKPOINTS)) and os.path.exists(os.path.join(path, CONFIG)):
        return "training"
    if os.path.isdir(os.path.join(path, PARAMS_DIR)):
        return "converted"
    return None


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (``<workdir>/config.json``), with the migrations of
    older runs applied (see :func:`migrate`)."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        raise RunError(f"{path}: not a training run (no saved config); pass --config")
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise RunError(f"{path}: not valid JSON ({e})") from e
    return migrate(ml_collections.ConfigDict(raw))


def migrate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Configs saved by earlier versions, in today's vocabulary: ``eval.label_transform =
    "brats_regions"`` became the segmentation objective's ``regions = "brats"``."""
    ev, obj = config.get("eval"), config.get("objective")
    if ev is not None and ev.get("label_transform") == "brats_regions" and obj is not None \
            and obj.get("name") == "segmentation" and not obj.get("regions"):
        with obj.unlocked():
            obj.regions = "brats"
    return config


def best_rule(workdir: str) -> tuple[str | None, str]:
    """(metric, "max" | "min") that chose the run's best checkpoint: its config's
    ``best_metric`` / ``best_mode``, else its objective's (e.g. "auc" -> "val_auc")."""
    try:
        config = load_config(workdir)
    except RunError:  # no readable config.json: no best, the latest is used
        return None, "max"
    metric = config.get("best_metric")
    if metric:
        return metric, config.get("best_mode") or "max"
    from jaxbrain import objectives  # floor 0
    cls = objectives.OBJECTIVES.get(config.get("objective", {}).get("name"))
    metric = getattr(cls, "best_metric", None)
    return (f"val_{metric}" if metric else None), getattr(cls, "best_mode", "max")


def checkpoint_manager(workdir: str) -> ocp.CheckpointManager:
    metric, mode = best_rule(workdir)
    options = None
    if metric:
        options = ocp.CheckpointManagerOptions(
            best_fn=lambda m: m[metric], best_mode=mode, create=False)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS),
                                 options=options, item_names=(STATE_ITEM, DATA_ITEM))


def latest_step(workdir: str) -> int | None:
    """The run's latest checkpoint step (None: no checkpoint yet)."""
    if not os.path.isdir(os.path.join(os.path.abspath(workdir), CHECKPOINTS)):
        return None
    step = checkpoint_manager(workdir).latest_step()
    return None if step is None else int(step)


def choose_step(workdir: str, step: int | None = None) -> int:
    """``step`` if that checkpoint exists; by default the best (by the run's validation
    metric), else the latest."""
    manager = checkpoint_manager(workdir)
    steps = manager.all_steps()
    directory = manager.directory
    if step is not None:
        if step not in steps:
            raise RunError(f"{directory}: no checkpoint at step {step}; have {sorted(steps)}")
        return int(step)
    best = manager.best_step()
    chosen = best if best is not None else manager.latest_step()
    if chosen is None:
        raise RunError(f"{directory}: no checkpoint")
    return int(chosen)


def _abstract(metadata_tree: Any, sharding) -> Any:
    def leaf(m):
        return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)
    return jax.tree_util.tree_map(leaf, metadata_tree,
                                  is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def _metadata_tree(path: str) -> dict:
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path))
    return dict(getattr(meta, "tree", meta))


def _select(tree: dict, key) -> dict:
    """``{key: tree[key]}`` for a top-level name, or the nested entry alone for a path tuple
    (``("objective", "teacher")``); {} when absent."""
    path = (key,) if isinstance(key, str) else tuple(key)
    node = tree
    for name in path:
        if not hasattr(node, "keys") or name not in node:
            return {}
        node = node[name]
    for name in reversed(path):
        node = {name: node}
    return node


def restore_tree(path: str, keys: tuple | None = None, *, sharding=None) -> dict:
    """The entries ``keys`` (all by default; each a top-level name or a path tuple such as
    ``("objective", "teacher")``) of the Orbax PyTree checkpoint at ``path``, restored
    against abstract targets read from its metadata (placed on ``sharding``, default the
    first local device)."""
    if not os.path.isdir(path):
        raise RunError(f"{path}: not an Orbax checkpoint directory")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    checkpointer = ocp.PyTreeCheckpointer()
    tree = _metadata_tree(path)
    if keys is not None:
        chosen: dict = {}
        for key in keys:
            part = _select(tree, key)
            for name, value in part.items():
                if name in chosen and isinstance(value, dict):
                    chosen[name] = {**chosen[name], **value}
                else:
                    chosen[name] = value
        tree = chosen
    abstract = _abstract(dict(tree), sharding)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=keys is not None))
    return dict(restored)


def load_run(path: str, step: int | None = None, *, sharding=None, weights: str = "auto") -> Run:
    """The model and variables of a training run (its best, else latest, checkpoint, or
    ``step``) or of a converted model directory; ``weights`` (a run with an EMA teacher):
    "auto" (the teacher) | "teacher" | "student" (= "params"), see the module docstring."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: expected one of {', '.join(WEIGHTS)}")
    path = os.path.abspath(path)
    kind = kind_of(path)
    if kind == "training":
        config = load_config(path)
        step = choose_step(path, step)
        state_dir = os.path.join(path, CHECKPOINTS, str(step), STATE_ITEM)
        has_teacher = bool(_select(_metadata_tree(state_dir), TEACHER)) if os.path.isdir(state_dir) else False
        if weights == "teacher" and not has_teacher:
            raise RunError(f"{path}: weights='teacher', but step {step}'s objective state has no "
                           "EMA teacher (objective/teacher); use weights='student'")
        use_teacher = has_teacher and weights in ("auto", "teacher")
        keys = (*MODEL_ITEMS, TEACHER) if use_teacher else MODEL_ITEMS
        tree = restore_tree(state_dir, keys, sharding=sharding)
        params = tree["objective"]["teacher"] if use_teacher else tree["params"]
        variables = {"params": params, **tree.get("model_state", {})}
        return Run(path, kind, dict(config.model), variables, step, config,
                   weights="teacher" if use_teacher else "params")
    if kind == "converted":
        meta = os.path.join(path, MODEL_JSON)
        spec = {}
        if os.path.exists(meta):
            with open(meta) as f:
                spec = json.load(f)
        tree = restore_tree(os.path.join(path, PARAMS_DIR), sharding=sharding)
        variables = tree if "params" in tree else {"params": tree}
        model_config = {"name": spec["model"], **spec.get("kwargs", {})} if spec else {}
        return Run(path, kind, model_config, variables, None, None)
    raise RunError(f"{path}: neither a training run ({CONFIG} + {CHECKPOINTS}/) nor a converted "
                   f"model ({PARAMS_DIR}/, written by python -m jaxbrain.convert from-torch)")


def save_converted(path: str, model_config: dict, variables: dict) -> None:
    """Writes a converted model directory that :func:`load_run` reads back."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, PARAMS_DIR), variables, force=True)
    checkpointer.wait_until_finished()
    name = model_config["name"]
    kwargs = {k: v for k, v in model_config.items() if k != "name"}
    with open(os.path.join(path, MODEL_JSON), "w") as f:
        json.dump({"model": name, "kwargs": kwargs}, f, indent=1)
