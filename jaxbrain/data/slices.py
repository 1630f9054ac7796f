"""2D axial slices streamed from 3D volumes: the pretraining source of slice encoders, and the
scan-to-slices preprocessing of whole-scan probes on a frozen slice encoder.

Facts followed (BrainDINO, arXiv 2604.27277, and its downstream runners): every volume is read
in canonical (RAS) voxel order, the axial axis (the third, S) is put first, intensities are
scaled robustly per volume (clipped to the 1st / 99th percentile of the voxels > 0, z-scored
over those voxels, std floor 1e-6; the voxels <= 0, background, are 0), each slice is resized
bilinearly (voxel centres aligned, as torch's ``align_corners=False``) and repeated to 3
channels, without ImageNet normalisation. Pretraining used about 128 axial slices of each of
51.5k volumes from 20 collections.

The pretraining stream (:func:`training_dataset`, config ``data.source = "slices"``)::

    collections (root, layout, weight, channels) -> volumes (one file = one volume: a BraTS
    case gives four) -> volume draw v: collection by weight (multinomial, seeded per block of
    draws), the collection's next volume in its per-epoch shuffled order -> read once, scale,
    keep the axial slices whose brain fraction (share of voxels > 0) reaches
    ``brain_fraction``, draw ``slices_per_volume`` of them -> groups of ``volumes_in_memory``
    volumes whose slices are shuffled together -> slice records -> batches -> this process's
    block of every global batch

Every slice is a pure function of (seed, global slice index): the stream is the same for any
number of processes, worker threads or restarts, and the grain iterator's position (saved in
the checkpoints with the rest of the train state) is all a resumed run needs. A volume's
slices are produced together and kept in a small in-process cache, so a volume is read once
per pass over its collection (per process), not once per slice.

Config (``data`` section)::

    source             "slices"
    collections        [{"root", "layout", "weight", "channels", ...}, ...]: root as the
                       layout wants it (folder, subject list, datalist JSON, label table);
                       layout "subjects" (default) | "brats" | "atlas" | "datalist" | "table";
                       weight (default 1) the share of volume draws; channels None (every
                       image of a case), names (BraTS modalities, a subject list's columns,
                       a table's image columns) or indices; also name, subject_list (a
                       folder's list file), synthetic ({"kind", "n", "shape", ...}: written
                       under workdir/data/<name> once, as data.synthetic)
    slice_size         output slice size (int or (H, W)), default 224
    brain_fraction     minimum share of brain voxels of a kept slice, default 0.1
    slices_per_volume  slices drawn from each volume read, default 16
    volumes_in_memory  volumes whose slices are shuffled together, default 8

Batches: ``{"image": (B, H, W, 3) float32, "collection": (B,) int32, "slice": (B,) int32}``
(``slice``: the axial index in the source volume).
"""

from __future__ import annotations

import collections as _collections
import dataclasses
import os
import threading
from typing import Mapping, Sequence

import grain
import jax
import numpy as np

from jaxbrain import parallel
from jaxbrain.data import layouts, nifti
from jaxbrain.data.nifti import DataError

DEFAULTS = {"slice_size": 224, "brain_fraction": 0.1, "slices_per_volume": 16,
            "volumes_in_memory": 8}
_MIX_BLOCK = 1024  # volume draws whose collections are drawn together
_ENDLESS = 2**40


# --- intensity and geometry ---------------------------------------------------------------


def robust_scale(volume: np.ndarray, lower: float = 1.0, upper: float = 99.0,
                 eps: float = 1e-6) -> np.ndarray:
    """``volume`` scaled over its voxels > 0: clipped to their ``lower`` / ``upper``
    percentiles, minus their mean, over their standard deviation (at least ``eps``); voxels
    <= 0 are 0. float32; a volume without a voxel > 0 is all zeros."""
    x = np.asarray(volume, np.float32)
    mask = x > 0
    out = np.zeros(x.shape, np.float32)
    if not mask.any():
        return out
    values = x[mask].astype(np.float64)
    lo, hi = np.percentile(values, [lower, upper])
    values = np.clip(values, lo, hi)
    out[mask] = ((values - values.mean()) / max(values.std(), eps)).astype(np.float32)
    return out


def linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a linear resize with voxel centres aligned (torch
    ``interpolate(..., align_corners=False)``, no antialiasing): ``out = W @ x``."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), 1 - w1)
    np.add.at(weights, (rows, i1), w1)
    return weights.astype(np.float32)


def resize_slices(stack: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(S, X, Y) slices -> (S, H, W), bilinear (separable, voxel centres aligned)."""
    h, w = size
    wx = linear_matrix(stack.shape[1], h)
    wy = linear_matrix(stack.shape[2], w)
    return np.einsum("hx,sxy,wy->shw", wx, stack.astype(np.float32), wy, optimize=True)


def axial_first(volume: np.ndarray) -> np.ndarray:
    """A canonical (X, Y, Z) volume as (Z, X, Y): axial slices along the first axis."""
    return np.moveaxis(np.asarray(volume), 2, 0)


def scan_slices(volume: np.ndarray, n_slices: int = 128, size: Sequence[int] = (224, 224)
                ) -> np.ndarray:
    """A whole scan as the slice encoder sees it: robust scaling, axial axis first, trilinear
    resize to ``n_slices`` slices of ``size`` (separable, so the same as BrainDINO's resize of
    the slice count, then of each slice), each slice repeated to 3 channels.
    (X, Y, Z) -> (n_slices, H, W, 3) float32."""
    x = axial_first(robust_scale(volume))
    wz = linear_matrix(x.shape[0], int(n_slices))
    x = np.einsum("sz,zxy->sxy", wz, x, optimize=True)
    x = resize_slices(x, tuple(int(s) for s in size))
    return np.repeat(x[..., None], 3, axis=-1)


def brain_fractions(volume: np.ndarray) -> np.ndarray:
    """(Z,): the share of voxels > 0 of each axial slice of a canonical (X, Y, Z) volume."""
    return (np.asarray(volume) > 0).mean(axis=(0, 1))


# --- collections ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Volume:
    """One image file of a collection; ``where`` says where it was listed (a table line)."""

    id: str
    path: str
    where: str = ""


@dataclasses.dataclass(frozen=True)
class Collection:
    name: str
    volumes: tuple[Volume, ...]
    weight: float


def _plain(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return tuple(value) if isinstance(value, list) else value


def _channel_indices(name: str, layout: str, case: layouts.Case, channels) -> list[int]:
    if channels is None:
        return list(range(len(case.images)))
    out = []
    for ch in channels:
        if isinstance(ch, (int, np.integer)):
            index = int(ch)
        elif layout == "brats" and ch in layouts.BRATS_CHANNELS:
            index = layouts.BRATS_CHANNELS.index(ch)
        elif layout in ("subjects", "table"):
            index = list(channels).index(ch)  # the layout was asked for these channels
        else:
            raise ValueError(f"collection {name}: channel {ch!r} is not known for layout "
                             f"{layout!r}; give indices into the case's images"
                             + (f" or names of {layouts.BRATS_CHANNELS}" if layout == "brats"
                                else ""))
        if not 0 <= index < len(case.images):
            raise ValueError(f"collection {name}: channel {ch!r} (index {index}) but case "
                             f"{case.id} has {len(case.images)} images")
        out.append(index)
    return out


def collection(spec: Mapping, index: int = 0, root: str | None = None) -> Collection:
    """The volumes of one collection of ``data.collections`` (see the module docstring);
    ``root`` replaces the spec's (a synthetic collection's folder). Every file must exist:
    a missing one is named with the collection (and the table line it is on)."""
    spec = {k: _plain(v) for k, v in dict(spec).items()}
    known = {"name", "root", "layout", "weight", "channels", "subject_list", "synthetic",
             "images", "datalist_key"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"data.collections[{index}]: unknown keys {unknown}; known: "
                         f"{sorted(known)}")
    root = root if root is not None else spec.get("root")
    layout = spec.get("layout") or "subjects"
    name = str(spec.get("name") or (os.path.basename(os.path.normpath(root)) if root
                                    else f"collection{index}"))
    if not root:
        raise ValueError(f"data.collections[{index}] ({name}): no root (nor synthetic)")
    weight = float(spec.get("weight", 1.0))
    if not np.isfinite(weight) or weight <= 0:
        raise ValueError(f"collection {name}: weight must be > 0, got {weight}")
    channels = spec.get("channels")
    if isinstance(channels, (str, int)):
        channels = (channels,)
    kwargs, source = {}, root
    if layout == "subjects":
        names = tuple(c for c in (channels or ("t1",)))
        kwargs["channels"] = names
        if os.path.isdir(root):
            source = os.path.join(root, spec.get("subject_list") or "subjects.csv")
    elif layout == "table":
        kwargs = {"task": None, "quiet": True}
        if channels is not None and not all(isinstance(c, int) for c in channels):
            kwargs["images"] = tuple(channels)
    elif layout in ("brats", "atlas"):
        kwargs["require_label"] = False
    try:
        found = layouts.find_cases(layout, source, **kwargs)
    except DataError as e:
        raise DataError(f"collection {name}: {e}") from e
    volumes = []
    for case in found:
        line = (case.meta or {}).get("line")
        where = f"{source}, line {line}" if line is not None else ""
        for c in _channel_indices(name, layout, case, channels if layout != "subjects"
                                  else kwargs["channels"]):
            path = case.images[c]
            if not os.path.exists(path):
                raise DataError(f"collection {name}: {path}: file not found"
                                + (f" ({where})" if where else ""))
            volumes.append(Volume(f"{case.id}/{c}", path, where))
    if not volumes:
        raise DataError(f"collection {name}: no volumes in {source} (layout {layout!r})")
    return Collection(name, tuple(volumes), weight)


def collection_roots(specs: Sequence[Mapping], workdir: str | None) -> list[str | None]:
    """Each collection's root; a ``synthetic`` one is written under ``workdir/data/<name>``
    by process 0 the first time (the project's synthetic writers)."""
    from jaxbrain.data import cohort, synthetic
    writers = {"brats": synthetic.write_brats, "atlas": synthetic.write_atlas,
               "unlabeled": synthetic.write_unlabeled, "cohort": cohort.write_cohort}
    roots = []
    for i, spec in enumerate(specs):
        syn = spec.get("synthetic")
        if not syn or spec.get("root"):
            roots.append(spec.get("root"))
            continue
        syn = {k: _plain(v) for k, v in dict(_plain(syn)).items()}
        if syn.get("kind") not in writers:
            raise ValueError(f"data.collections[{i}].synthetic.kind: expected one of "
                             f"{sorted(writers)}, got {syn.get('kind')!r}")
        if workdir is None:
            raise ValueError(f"data.collections[{i}]: a synthetic collection needs a workdir")
        root = os.path.join(workdir, "data", str(spec.get("name") or f"collection{i}"))
        done = os.path.join(root, ".complete")
        if jax.process_index() == 0 and not os.path.exists(done):
            kwargs = {k: v for k, v in syn.items() if k not in ("kind", "n")}
            kwargs["shape"] = tuple(kwargs.get("shape") or (64, 64, 64))
            writers[syn["kind"]](root, int(syn.get("n", 4)), **kwargs)
            open(done, "w").close()
        parallel.barrier("synthetic slice collection written")
        roots.append(root)
    return roots


def collections_of(specs: Sequence[Mapping], workdir: str | None = None) -> list[Collection]:
    """:func:`collection` for every entry of ``data.collections``."""
    if not specs:
        raise ValueError("data.collections: no collections (give a list of {root, layout, "
                         "weight, channels})")
    roots = collection_roots(specs, workdir)
    return [collection(spec, i, root) for i, (spec, root) in enumerate(zip(specs, roots))]


# --- the stream -----------------------------------------------------------------------------


def _rng(*words) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


class SlicePlan:
    """Which slice is global slice ``i``: a pure function of the seed and ``i``.

    Volume draw ``v`` takes a collection by weight and that collection's next volume of its
    per-epoch shuffled order; the slices of groups of ``volumes_in_memory`` draws are shuffled
    together. ``volume_slices`` reads a volume and draws its slices (counted in ``reads``).
    """

    def __init__(self, collections: Sequence[Collection], *, seed: int, slice_size=224,
                 brain_fraction: float = 0.1, slices_per_volume: int = 16,
                 volumes_in_memory: int = 8, cache_volumes: int | None = None):
        if not collections:
            raise ValueError("no collections")
        self.collections = list(collections)
        self.seed = int(seed)
        size = (slice_size, slice_size) if np.isscalar(slice_size) else tuple(slice_size)
        self.size = tuple(int(s) for s in size)
        self.brain_fraction = float(brain_fraction)
        if not 0 <= self.brain_fraction < 1:
            raise ValueError(f"brain_fraction must be in [0, 1), got {brain_fraction}")
        self.per_volume = int(slices_per_volume)
        self.group = int(volumes_in_memory)
        if self.per_volume < 1 or self.group < 1:
            raise ValueError("slices_per_volume and volumes_in_memory must be >= 1")
        weights = np.asarray([c.weight for c in self.collections], np.float64)
        self.weights = weights / weights.sum()
        self._counts = [np.zeros(len(self.collections), np.int64)]  # draws before block b
        self._lock = threading.Lock()
        self._cache: _collections.OrderedDict = _collections.OrderedDict()
        self._loading: dict[int, threading.Event] = {}
        self._capacity = cache_volumes or 3 * self.group
        self.reads = 0

    def __getstate__(self):  # worker processes get their own lock and cache
        state = dict(self.__dict__)
        for k in ("_lock", "_cache", "_loading"):
            state.pop(k)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache = _collections.OrderedDict()
        self._loading = {}

    def _block(self, b: int) -> np.ndarray:
        return _rng(self.seed, 1, b).choice(len(self.collections), _MIX_BLOCK, p=self.weights)

    def draw(self, v: int) -> tuple[int, int]:
        """(collection, volume index in it) of volume draw ``v``."""
        b, r = divmod(int(v), _MIX_BLOCK)
        with self._lock:
            while len(self._counts) <= b:
                block = self._block(len(self._counts) - 1)
                counts = np.bincount(block, minlength=len(self.collections))
                self._counts.append(self._counts[-1] + counts)
            before = self._counts[b]
        block = self._block(b)
        c = int(block[r])
        k = int(before[c] + np.count_nonzero(block[:r] == c))
        n = len(self.collections[c].volumes)
        epoch, pos = divmod(k, n)
        return c, int(_rng(self.seed, 2, c, epoch).permutation(n)[pos])

    def locate(self, i: int) -> tuple[int, int]:
        """(volume draw, slice of its draws) of global slice ``i``."""
        span = self.group * self.per_volume
        g, r = divmod(int(i), span)
        p = int(_rng(self.seed, 3, g).permutation(span)[r])
        return g * self.group + p // self.per_volume, p % self.per_volume

    def volume_slices(self, v: int) -> dict:
        """The drawn slices of volume draw ``v``: ``image`` (S, H, W) float32, ``slice`` (S,)
        axial indices, ``collection``; read from the cache when it is there."""
        with self._lock:
            if v in self._cache:
                self._cache.move_to_end(v)
                return self._cache[v]
            event = self._loading.get(v)
            if event is None:
                self._loading[v] = threading.Event()
        if event is not None:
            event.wait()
            return self.volume_slices(v)
        out = None
        try:
            out = self._read(v)
        finally:
            with self._lock:
                if out is not None:
                    self._cache[v] = out
                    while len(self._cache) > self._capacity:
                        self._cache.popitem(last=False)
                self._loading.pop(v).set()  # waiters read the cache (or fail themselves)
        return out

    def _read(self, v: int) -> dict:
        c, j = self.draw(v)
        col = self.collections[c]
        vol = col.volumes[j]
        try:
            x, _ = nifti.read_volume(vol.path, contiguous=False)
        except DataError as e:
            where = f", {vol.where}" if vol.where else ""
            raise DataError(f"collection {col.name}{where}: {e}") from e
        with self._lock:
            self.reads += 1
        fractions = brain_fractions(x)
        keep = np.flatnonzero(fractions >= max(self.brain_fraction, 1e-12))
        if keep.size == 0:
            raise DataError(f"collection {col.name}: {vol.path}: no axial slice has a brain "
                            f"fraction (voxels > 0) of at least {self.brain_fraction} (largest "
                            f"{fractions.max():.3g}); lower data.brain_fraction or drop the file")
        rng = _rng(self.seed, 4, v)
        chosen = rng.choice(keep, self.per_volume, replace=keep.size < self.per_volume)
        scaled = axial_first(robust_scale(x))[chosen]
        return {"image": resize_slices(scaled, self.size), "slice": chosen.astype(np.int32),
                "collection": c}

    def __call__(self, i: int) -> dict:
        v, s = self.locate(i)
        got = self.volume_slices(v)
        return {"image": got["image"][s], "collection": np.int32(got["collection"]),
                "slice": got["slice"][s]}


class _SliceAt(grain.transforms.Map):
    def __init__(self, plan: SlicePlan):
        self.plan = plan

    def map(self, i):
        return self.plan(int(i))


def _batch(records) -> dict:
    image = np.stack([r["image"] for r in records])
    return {"image": np.repeat(image[..., None], 3, axis=-1),
            "collection": np.asarray([r["collection"] for r in records], np.int32),
            "slice": np.asarray([r["slice"] for r in records], np.int32)}


def training_dataset(collections: Sequence[Collection], *, global_batch_size: int, seed: int,
                     shard: tuple[int, int] | None = None, **options) -> grain.MapDataset:
    """Infinite dataset of this process's slice batches: element ``j`` is process
    ``index``'s contiguous block of global batch ``j`` (``global_batch_size // count``
    slices). ``options``: :class:`SlicePlan`'s (slice_size, brain_fraction,
    slices_per_volume, volumes_in_memory)."""
    return batches(SlicePlan(collections, seed=seed, **options),
                   global_batch_size=global_batch_size, shard=shard)


def batches(plan: SlicePlan, *, global_batch_size: int, shard: tuple[int, int] | None = None
            ) -> grain.MapDataset:
    """:func:`training_dataset` of a built :class:`SlicePlan`."""
    index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
    if global_batch_size % count:
        raise ValueError(f"global_batch_size {global_batch_size} must be divisible by the "
                         f"number of processes ({count})")
    per_process = global_batch_size // count
    ds = grain.MapDataset.range(_ENDLESS).map(_SliceAt(plan)).batch(per_process,
                                                                     batch_fn=_batch)
    return ds[index::count]


def options_of(dcfg) -> dict:
    """SlicePlan options from a config's ``data`` section (defaults in DEFAULTS)."""
    out = {}
    for key, default in DEFAULTS.items():
        value = dcfg.get(key, default)
        out[key] = _plain(value) if key == "slice_size" else value
    return out


def from_config(config, workdir: str | None) -> grain.MapDataset:
    """This process's training batches of a config with ``data.source = "slices"``."""
    dcfg = config.data
    specs = [_plain(s) for s in (dcfg.get("collections") or [])]
    return training_dataset(collections_of(specs, workdir), global_batch_size=config.batch_size,
                            seed=config.seed, **options_of(dcfg))
