"""Per-slice features of whole scans from a frozen 2D slice encoder, computed once and cached.

BrainDINO's volume-level protocol (arXiv 2604.27277, its downstream runners): each scan is read
in canonical orientation, robust-scaled (1st / 99th percentile clip of the voxels > 0, z-score
over them), the axial axis put first, resized trilinearly to 128 slices of 224 x 224, each slice
repeated to 3 channels (no ImageNet normalisation) and passed through the frozen encoder; the
scan's features are the slices' normalised CLS tokens (DINOv2 / DINOv3 ``x_norm_clstoken``:
token 0 after the final LayerNorm), ``(S, D)``. Heads (:mod:`jaxbrain.models.slice_heads`) and
kNN probes then train from these features in seconds.

Config::

    probe.encoder    the encoder's model section (e.g. {"name": "dino_vit",
                     **dino_preset("braindino_vitb16")}), used without probe.orbax and with
                     a probe.subtree; a probe.orbax run's model is the encoder, or names it
    probe.orbax      the encoder's weights: a training run (a pretraining run of the slice
                     encoder) or a converted directory (DINOv2 / DINOv3 / BrainDINO files
                     through python -m jaxbrain.convert from-torch)
    probe.torch, probe.family, probe.strict   or a PyTorch file, its family (init.from's
                     names; None: its keys decide), read into probe.encoder
    (none of the three: the encoder keeps its random initialisation, probe.seed)
    probe.subtree    where the encoder sits in a probe.orbax run ("a/b" under its params;
                     "objective/teacher/..." under its objective state, e.g. an EMA
                     teacher); None: a self-distillation run's (dino_student) EMA teacher
                     encoder, objective/teacher/encoder (the student's without a teacher),
                     else the run's whole model
    probe.n_slices, probe.slice_size   128, 224
    probe.channel    which image of a case (default 0: the T1w)
    probe.batch      slices per encoder call (default 32)
    probe.cache      the cache folder (default <workdir>/features)
    probe.seed       the initialisation of an encoder without pretrained weights

(The run's own ``init`` section is the head's, as in every config.)

Cache layout: ``<cache>/<key>/`` with ``key`` a hash of the encoder (model section, weights:
the source path with its checkpoint step or file size and time, or the random seed) and of
the preprocessing (slice count and size, channel); ``info.json`` says what the key stands
for; one folder per scan (its id and a hash of its file's path, size and time) holding
``image.npy`` (S, D) float32 and ``entry.json``, in the layout of
:class:`jaxbrain.data.pipeline.CachedCase`, so the loop's batches, its validation and eval.py
read features exactly as they read cached volumes (``data.source = "features"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from tqdm import tqdm

from jaxbrain import models, parallel, runs
from jaxbrain.convert.pretrained import load_pretrained
from jaxbrain.data import nifti, pipeline, slices
from jaxbrain.data.nifti import DataError
from jaxbrain.models.dino import DinoViT

FORMAT = 1
DEFAULTS = {"encoder": None, "orbax": None, "torch": None, "family": None, "strict": True,
            "subtree": None, "n_slices": 128, "slice_size": 224, "channel": 0, "batch": 32,
            "cache": None, "seed": 0}


def _plain(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def settings(config) -> dict:
    """``probe`` with its defaults filled in."""
    probe = dict(_plain(config.get("probe")) or {})
    unknown = sorted(set(probe) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config.probe: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **probe}


@dataclasses.dataclass(frozen=True)
class FeatureCase(pipeline.CachedCase):
    """A scan's cached features, read as the pipeline reads a cached case; ``target`` as the
    label table gave it."""

    @property
    def target(self):
        return self.entry["case"].get("target")


@dataclasses.dataclass
class Encoder:
    """A frozen slice encoder: ``model``, ``variables`` and ``identity`` (what the cache key
    says of its weights)."""

    model: Any
    variables: dict
    model_config: dict
    identity: dict

    def __post_init__(self):
        model = self.model

        def cls_tokens(variables, x):
            tokens = model.apply(variables, x, train=False)
            if tokens.ndim != 3:
                raise ValueError(f"the probe's encoder {type(model).__name__} returns shape "
                                 f"{tuple(tokens.shape)}; expected tokens (batch, tokens, width) "
                                 "after the final norm (e.g. dino_vit)")
            return tokens[:, 0].astype(jnp.float32)

        self._cls = jax.jit(cls_tokens)
        self.calls = 0

    def __call__(self, stack: np.ndarray, batch: int) -> np.ndarray:
        """(S, H, W, 3) slices -> (S, D) normalised CLS features, ``batch`` slices a call
        (the last call padded, so one program serves every scan)."""
        out = []
        for start in range(0, len(stack), batch):
            chunk = stack[start:start + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]),
                                                        chunk.dtype)])
            out.append(np.asarray(self._cls(self.variables, jnp.asarray(chunk)))[:n])
            self.calls += 1
        return np.concatenate(out)


def _file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": int(st.st_mtime)}


def _get(tree, path: Sequence[str], where: str):
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise ValueError(f"probe.subtree: {'/'.join(path[:i + 1])} is not in {where} "
                             f"(there: {have})")
        node = node[key]
    return node


def _checked(model, x, variables: dict, source: str) -> dict:
    """``variables`` when their paths and shapes are the model's; else a named error."""
    want = traverse_util.flatten_dict(nn.meta.unbox(jax.eval_shape(
        lambda: model.init(jax.random.key(0), x))))
    have = traverse_util.flatten_dict(dict(variables))
    missing = sorted("/".join(k) for k in want.keys() - have.keys())
    unused = sorted("/".join(k) for k in have.keys() - want.keys())
    wrong = sorted(f"{'/'.join(k)} {tuple(np.shape(have[k]))} vs {tuple(want[k].shape)}"
                   for k in want.keys() & have.keys()
                   if tuple(np.shape(have[k])) != tuple(want[k].shape))
    if missing or unused or wrong:
        raise ValueError(f"{source} does not fit the probe's encoder {type(model).__name__}: "
                         f"missing {missing[:5]}, unused {unused[:5]}, shapes {wrong[:5]}")
    return {k: v for k, v in variables.items() if k in {p[0] for p in want}}


def _state_dir(run) -> str:
    return os.path.join(run.path, runs.CHECKPOINTS, str(run.step), runs.STATE_ITEM)


def _has_teacher(run) -> bool:
    if run.kind != "training":
        return False
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(_state_dir(run)))
    tree = getattr(meta, "tree", meta)
    objective = tree.get("objective") if hasattr(tree, "get") else None
    return hasattr(objective, "get") and objective.get("teacher") is not None


def load_encoder(config) -> Encoder:
    """The frozen encoder of a probe config (see the module docstring)."""
    probe = settings(config)
    orbax, torch_file = probe["orbax"], probe["torch"]
    if orbax and torch_file:
        raise ValueError("config.probe: give probe.orbax or probe.torch, not both")
    size = int(probe["slice_size"])
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    model_config = _plain(probe["encoder"])
    if orbax:
        run = runs.load_run(orbax)
        subtree = probe["subtree"]
        run_model = run.model
        inner = models.encoder_name(run_model)
        if not subtree and inner and isinstance(run_model, DinoViT) \
                and hasattr(run_model, "encoder_kwargs"):
            # a self-distillation run: its EMA teacher's encoder (else the student's)
            model_config = {"name": "dino_vit", **run_model.encoder_kwargs()}
            subtree = f"objective/teacher/{inner}" if run.kind == "training" and \
                _has_teacher(run) else inner
        elif not subtree:
            model_config = run.model_config  # the run's model is the encoder
        if subtree:
            if not model_config:
                raise ValueError("config.probe.subtree needs config.probe.encoder (the model "
                                 "section of the encoder found there)")
            path = [p for p in str(subtree).split("/") if p]
            if path[0] == "objective":
                tree = runs.restore_tree(_state_dir(run), ("objective",))
                params = _get(tree, path, f"{orbax} (step {run.step})")
            else:
                params = _get(run.variables["params"], path, f"{orbax} params")
            variables = {"params": params}
        else:
            variables = run.variables
        model_config = dict(model_config)
        model = models.from_config(model_config)
        variables = _checked(model, x, variables, orbax)
        identity = {"orbax": os.path.abspath(orbax), "step": run.step, "subtree": subtree}
    else:
        if not model_config:
            raise ValueError("config.probe.encoder: the encoder's model section is needed "
                             "(e.g. {'name': 'dino_vit', ...}) without probe.orbax")
        model_config = dict(model_config)
        model = models.from_config(model_config)
        variables = jax.jit(lambda k: nn.meta.unbox(model.init(k, x)))(
            jax.random.key(int(probe["seed"])))
        if torch_file:
            variables, report = load_pretrained(torch_file, model, jax.device_get(variables),
                                                source_family=probe["family"],
                                                strict=bool(probe["strict"]))
            if jax.process_index() == 0:
                print(report)
            identity = {"torch": _file_identity(torch_file), "from": probe["family"]}
        else:
            identity = {"random": int(probe["seed"])}
    return Encoder(model, jax.device_put(variables), model_config, identity)


def cache_key(encoder: Encoder, probe: dict) -> tuple[str, dict]:
    """(hash, what it stands for) of the encoder's weights and the preprocessing."""
    info = {"format": FORMAT, "encoder": encoder.model_config, "weights": encoder.identity,
            "n_slices": int(probe["n_slices"]), "slice_size": int(probe["slice_size"]),
            "channel": int(probe["channel"])}
    text = json.dumps(info, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], info


def _scan_dir(case, channel: int) -> str:
    if channel >= len(case.images):
        raise DataError(f"scan {case.id}: probe.channel {channel} but it has "
                        f"{len(case.images)} images")
    path = case.images[channel]
    if not os.path.exists(path):
        where = (case.meta or {}).get("line")
        raise DataError(f"{path}: file not found (scan {case.id}"
                        + (f", table line {where})" if where is not None else ")"))
    digest = hashlib.sha256(json.dumps(_file_identity(path)).encode()).hexdigest()[:12]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", case.id) + "-" + digest


def scan_stack(case, probe: dict) -> np.ndarray:
    """(S, H, W, 3) slices of one scan as the encoder sees them."""
    x, _ = nifti.read_volume(case.images[int(probe["channel"])])
    size = int(probe["slice_size"])
    return slices.scan_slices(x, int(probe["n_slices"]), (size, size))


def scan_features(case, encoder: Encoder, probe: dict) -> np.ndarray:
    """(S, D) features of one scan (no cache)."""
    return encoder(scan_stack(case, probe), int(probe["batch"]))


def _entry(case, folder: str, features: np.ndarray) -> dict:
    target = case.target
    if isinstance(target, tuple):
        target = list(target)
    return {"case": {"id": case.id, "labels": case.labels, "target": target}, "dir": folder,
            "arrays": {"image": [list(features.shape), str(features.dtype)]}}


def cached_features(config, workdir: str, case_lists: Sequence[Sequence], *,
                    encoder: Encoder | None = None) -> list[list[FeatureCase]]:
    """Each list of cases as :class:`FeatureCase` records of the cache, computing (process 0,
    with a progress bar) the scans that are not there yet."""
    probe = settings(config)
    if encoder is None:
        encoder = load_encoder(config)
    key, info = cache_key(encoder, probe)
    return _cached(probe, workdir, case_lists, key, info,
                   lambda case: scan_features(case, encoder, probe), "slice features")


def cached_slices(config, workdir: str, case_lists: Sequence[Sequence]
                  ) -> list[list[FeatureCase]]:
    """Each list of cases as :class:`FeatureCase` records whose ``image`` is the scan's
    preprocessed slice stack, (S, H, W) float32 (the grey slices before their repeat to 3
    channels; ``probe.n_slices``, ``probe.slice_size``, ``probe.channel``), computed once
    (process 0, with a progress bar) under ``probe.cache`` (default <workdir>/features) in a
    folder keyed by the preprocessing alone. ``data.source = "scan_slices"``: the input of a
    model that trains through the encoder (``slice_scan``, e.g. with LoRA). A stack of 128
    slices of 224 x 224 is 25.7 MB."""
    probe = settings(config)
    info = {"format": FORMAT, "stack": "float32 (S, H, W)", "n_slices": int(probe["n_slices"]),
            "slice_size": int(probe["slice_size"]), "channel": int(probe["channel"])}
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return _cached(probe, workdir, case_lists, key, info,
                   lambda case: scan_stack(case, probe)[..., 0], "slice stacks")


def _cached(probe: dict, workdir: str, case_lists, key: str, info: dict, compute, what: str
            ) -> list[list[FeatureCase]]:
    """The cache of ``compute(case)`` arrays (float32) under ``<probe.cache>/<key>``."""
    root = probe["cache"] or os.path.join(workdir, "features")
    folder = os.path.join(root, key)
    channel = int(probe["channel"])
    unique = {}
    for cases in case_lists:
        for case in cases:
            unique.setdefault(case.id, case)
    dirs = {i: _scan_dir(c, channel) for i, c in unique.items()}
    todo = [i for i in unique if not os.path.exists(os.path.join(folder, dirs[i], "entry.json"))]
    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f, indent=1, default=str)
        for i in tqdm(todo, desc=what, unit="scan", disable=not todo):
            case = unique[i]
            try:
                feats = compute(case)
            except DataError as e:
                where = (case.meta or {}).get("line")
                raise DataError(f"scan {case.id}" + (f" (table line {where})" if where else "")
                                + f": {e}") from e
            out = os.path.join(folder, dirs[i])
            os.makedirs(out, exist_ok=True)
            np.save(os.path.join(out, "image.npy"), feats.astype(np.float32))
            tmp = os.path.join(out, "entry.json.tmp")
            with open(tmp, "w") as f:
                json.dump(_entry(case, dirs[i], feats), f)
            os.replace(tmp, os.path.join(out, "entry.json"))
        print(f"{what}: {len(todo)} scans computed, {len(unique) - len(todo)} read from "
              f"{folder}", flush=True)
    parallel.barrier("slice features written")
    out = []
    for cases in case_lists:
        rows = []
        for case in cases:
            with open(os.path.join(folder, dirs[case.id], "entry.json")) as f:
                entry = json.load(f)
            entry["case"]["target"] = case.target if not isinstance(case.target, tuple) \
                else list(case.target)
            rows.append(FeatureCase(folder, entry))
        out.append(rows)
    return out


# data.source values whose cases are records of a cache standing for the scans' volumes:
# {name: (config, workdir, [cases, ...]) -> [[records], ...]}
CASE_CACHES = {"features": cached_features, "scan_slices": cached_slices}
