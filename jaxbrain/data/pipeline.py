"""grain pipelines: shuffled, repeated, augmented training crops and whole evaluation volumes.

Training::

    cases -> shuffle(seed, per epoch) -> repeat -> load + preprocess (or read the cache)
          -> augment (RandomMap: grain's per-record rng) -> batch -> shard by process
          -> mp_prefetch workers

Randomness is drawn per *global* record index, and each process takes a contiguous block of
every global batch, so the global batch (and every crop in it) is the same whatever the
number of processes or worker processes. The iterator's state (``get_state`` /
``set_state``) is what a checkpoint stores to resume exactly.

Transforms are named by short specs such as ``"zscore"`` or ``"resize(shape=(96, 96, 96))"``
so configs, the cache command and the cache index all speak the same language. Crop-size
transforms (``rand_crop``, ``rand_resized_crop``) take their size from the ``roi`` the
pipeline is given (``config.data.roi``) unless their spec names one.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from typing import Callable, Sequence

import grain
import numpy as np

from jaxbrain.data import transforms as T
from jaxbrain.data.layouts import Case
from jaxbrain.data.nifti import DataError, Geometry

TRANSFORMS: dict[str, Callable] = {
    "resample": T.Resample,
    "resize": T.Resize,
    "crop_foreground": T.CropForeground,
    "pad": T.Pad,
    "zscore": T.ZScore,
    "scale_range": T.ScaleRange,
    "scale_percentiles": T.ScalePercentiles,
    "brats_regions": T.BratsRegions,
    "rand_crop": T.RandCrop,
    "rand_flip": T.RandFlip,
    "rand_slice": T.RandSlice,
    "rand_slice_crop": T.RandSliceCrop,
    "rand_rot90": T.RandRot90,
    "rand_scale_shift": T.RandScaleShift,
    "rand_resized_crop": T.RandResizedCrop,
    "rand_contrast": T.RandContrast,
    "rand_gamma": T.RandGamma,
    "rand_invert": T.RandInvert,
    "center_crop_or_pad": T.CenterCropOrPad,
    "robust_scale": T.RobustScale,
    "rand_affine": T.RandAffine,
}


def parse_transform(spec: str, *, roi: Sequence[int] | None = None):
    """``"name"`` or ``"name(key=value, ...)"`` (Python literals) -> transform instance.

    ``roi``: the crop size of transforms that take one (``takes_roi``) when the spec gives
    none; such a transform without either raises ValueError naming it.
    """
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"transform spec {spec!r}: not of the form name(key=value, ...)") from e
    if isinstance(node, ast.Name):
        name, kwargs = node.id, {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        name = node.func.id
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    else:
        raise ValueError(f"transform spec {spec!r}: expected name or name(key=value, ...)")
    if name not in TRANSFORMS:
        raise ValueError(f"transform spec {spec!r}: unknown transform {name!r}; "
                         f"known: {sorted(TRANSFORMS)}")
    if getattr(TRANSFORMS[name], "takes_roi", False) and kwargs.get("roi") is None \
            and roi is not None:
        kwargs["roi"] = tuple(int(s) for s in roi)
    try:
        return TRANSFORMS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"transform spec {spec!r}: {e}") from e


def parse_transforms(specs: Sequence[str] | str, *, roi: Sequence[int] | None = None) -> list:
    """A comma-separated spec string (or a list of specs) -> transforms; ``roi`` as in
    :func:`parse_transform`."""
    if isinstance(specs, str):
        specs = [s for s in _split_top_level(specs) if s.strip()]
    return [parse_transform(s, roi=roi) for s in specs]


def _split_top_level(text: str) -> list[str]:
    """Splits ``"a, b(x=(1, 2)), c"`` at commas outside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _canonical(specs: Sequence[str] | str) -> list[str]:
    if isinstance(specs, str):
        specs = _split_top_level(specs)
    return [ast.unparse(ast.parse(s.strip(), mode="eval").body) for s in specs if s.strip()]


  # --- cache ------------------------------------------------------------------------------------

CACHE_INDEX = "cache.json"
_CACHE_FORMAT = 1


def _case_dict(case: Case) -> dict:
    """The case as stored in the cache index (``meta``, a label table's other columns, is not
    part of what the cache holds)."""
    d = dataclasses.asdict(case)
    d.pop("meta", None)
    return json.loads(json.dumps(d))


def _write_case(args) -> dict:
    case, preprocess_specs, out_dir = args
    record = T.apply(parse_transforms(preprocess_specs), T.load_case(case))
    folder = os.path.join(out_dir, case.id)
    os.makedirs(folder, exist_ok=True)
    entry = {"case": _case_dict(case), "dir": case.id, "arrays": {}}
    for key in ("image", "label"):
        if key in record:
            np.save(os.path.join(folder, key + ".npy"), np.ascontiguousarray(record[key]))
            entry["arrays"][key] = [list(record[key].shape), str(record[key].dtype)]
    if "geometry" in record:
        entry["geometry"] = record["geometry"].to_dict()
    return entry


def build_cache(cases: Sequence[Case], preprocess: Sequence[str] | str, out_dir: str, *,
                workers: int = 0) -> str:
    """Decodes, reorients and preprocesses every case once into uncompressed ``.npy`` files
    under ``out_dir`` (read back memory-mapped), with an index ``cache.json`` recording the
    cases and the preprocessing. Returns the index path."""
    specs = _canonical(preprocess)
    parse_transforms(specs)  # fail early on a bad spec
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"duplicate case ids {dup[:5]}: cache folders would collide")
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(c, specs, out_dir) for c in cases]
    if workers > 0:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            entries = pool.map(_write_case, jobs, chunksize=1)
    else:
        entries = [_write_case(j) for j in jobs]
    index = {"format": _CACHE_FORMAT, "preprocess": specs, "cases": entries}
    path = os.path.join(out_dir, CACHE_INDEX)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, path)
    return path


@dataclasses.dataclass(frozen=True)
class CachedCase:
    """A cached, preprocessed case: arrays are read memory-mapped."""

    root: str
    entry: dict

    @property
    def id(self) -> str:
        return self.entry["case"]["id"]

    def load(self) -> dict:
        folder = os.path.join(self.root, self.entry["dir"])
        record = {"id": self.id, "labels": self.entry["case"]["labels"]}
        for key, (shape, dtype) in self.entry["arrays"].items():
            path = os.path.join(folder, key + ".npy")
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: unreadable cache array ({e}); rebuild the cache") from e
            if list(arr.shape) != shape or str(arr.dtype) != dtype:
                raise DataError(f"{path}: cache array is {arr.shape} {arr.dtype}, index says "
                                f"{tuple(shape)} {dtype}; rebuild the cache")
            record[key] = arr
        if "geometry" in self.entry:
            record["geometry"] = Geometry.from_dict(self.entry["geometry"])
        if self.entry["case"].get("target") is not None:
            record["target"] = np.asarray(self.entry["case"]["target"], np.float32)
        return record


def open_cache(out_dir: str, preprocess: Sequence[str] | str | None = None,
               cases: Sequence[Case] | None = None) -> list[CachedCase]:
    """The cached cases; checks the cache was built with ``preprocess`` and (if given) holds
    exactly ``cases``."""
    path = os.path.join(out_dir, CACHE_INDEX)
    if not os.path.exists(path):
        raise DataError(f"{path}: no cache index; build it with `python -m jaxbrain.data cache`")
    with open(path) as f:
        index = json.load(f)
    if index.get("format") != _CACHE_FORMAT:
        raise DataError(f"{path}: cache format {index.get('format')}, expected {_CACHE_FORMAT}")
    if preprocess is not None and index["preprocess"] != _canonical(preprocess):
        raise DataError(f"{path}: cache built with preprocess {index['preprocess']}, but "
                        f"{_canonical(preprocess)} was asked for; rebuild the cache")
    cached = [CachedCase(out_dir, e) for e in index["cases"]]
    if cases is not None:
        want = {c.id: _case_dict(c) for c in cases}
        have = {c.id: c.entry["case"] for c in cached}
        missing = sorted(want.keys() - have.keys())
        changed = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        if missing or changed:
            raise DataError(f"{path}: cache does not match the data: missing {missing[:5]}, "
                            f"changed {changed[:5]}; rebuild the cache")
        cached = [c for c in cached if c.id in want]
        order = {c.id: i for i, c in enumerate(cases)}
        cached.sort(key=lambda c: order[c.id])
    return cached


  # --- datasets ---------------------------------------------------------------------------------


class _Load(grain.transforms.Map):
    """Case -> preprocessed record (decoding the NIfTI files, or reading the cache)."""

    def __init__(self, preprocess: Sequence[str]):
        self.preprocess = list(preprocess)
        self._transforms = None

    def map(self, source):
        if isinstance(source, CachedCase):
            return source.load()
        if self._transforms is None:
            self._transforms = parse_transforms(self.preprocess)
        record = T.load_case(source)
        record["labels"] = source.labels
        return T.apply(self._transforms, record)


class _Augment(grain.transforms.RandomMap):
    """Record -> ``crops`` augmented crops stacked on a leading axis (image/label only)."""

    def __init__(self, augment: Sequence[str], crops: int, roi: tuple[int, ...] | None = None):
        self.augment = list(augment)
        self.crops = crops
        self.roi = roi
        self._transforms = None

    def random_map(self, record, rng):
        if self._transforms is None:
            self._transforms = parse_transforms(self.augment, roi=self.roi)
        outs = [T.apply(self._transforms, record, rng) for _ in range(self.crops)]
        keys = [k for k in ("image", "label", "target") if k in outs[0]]
        if self.crops == 1:  # views; the batch function makes the one copy
            return {k: np.asarray(outs[0][k])[None] for k in keys}
        return {k: np.stack([np.asarray(o[k]) for o in outs]) for k in keys}


def _concat(records):
    return {k: np.concatenate([r[k] for r in records]) for k in records[0]}


def _process_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is not None:
        return shard
    import jax
    return jax.process_index(), jax.process_count()


_ENDLESS = 2**40  # records: "infinite" for any training run


def training_dataset(cases: Sequence[Case | CachedCase], *, preprocess: Sequence[str] | str,
                     augment: Sequence[str] | str, global_batch_size: int, seed: int,
                     crops_per_volume: int = 1, shard: tuple[int, int] | None = None,
                     roi: tuple[int, ...] | None = None) -> grain.MapDataset:
    """Infinite dataset of this process's training batches.

    Each element is ``{"image": (B, *roi, C) float32, "label": (B, *roi[, K]) uint8}`` with
    ``B = global_batch_size // process_count``: this process's block of the global batch.
    ``crops_per_volume`` crops are cut from each loaded volume (they sit next to each other in
    the batch). ``shard = (index, count)`` defaults to (jax.process_index(), process_count()).
    ``roi`` (``config.data.roi``) is the crop size of the augment transforms that take one
    (``rand_crop``, ``rand_resized_crop``) and give none in their spec.
    """
    if not cases:
        raise DataError("no training cases")
    roi = None if roi is None else tuple(int(s) for s in roi)
    augment = _canonical(augment)
    parse_transforms(augment, roi=roi)  # fail here, not in a worker, on a bad spec or no ROI
    index, count = _process_shard(shard)
    per_volume = crops_per_volume * count
    if global_batch_size % per_volume:
        raise ValueError(f"global_batch_size {global_batch_size} must be divisible by "
                         f"crops_per_volume ({crops_per_volume}) x processes ({count})")
    volumes_per_process = global_batch_size // per_volume
    epochs = _ENDLESS // len(cases)  # finite so that batch/slice lengths stay in range
    ds = (grain.MapDataset.source(list(cases)).seed(seed).shuffle().repeat(epochs)
          .map(_Load(_canonical(preprocess)))
          .random_map(_Augment(augment, crops_per_volume, roi))
          .batch(volumes_per_process, batch_fn=_concat))
    return ds[index::count]


def eval_dataset(cases: Sequence[Case | CachedCase], *, preprocess: Sequence[str] | str,
                 shard: tuple[int, int] | None = None) -> grain.MapDataset:
    """This process's share of whole preprocessed evaluation volumes, in order, each once.

    Elements are records with ``image`` (X, Y, Z, C), ``label`` when present, ``id``, and
    ``geometry`` for writing predictions back in the source space.
    """
    index, count = _process_shard(shard)
    return (grain.MapDataset.source(list(cases)).map(_Load(_canonical(preprocess)))
            .map(_in_memory)[index::count])


def _in_memory(record: dict) -> dict:
    """Reads memory-mapped cache arrays into memory (whole volumes are used whole)."""
    return {k: np.array(v) if isinstance(v, np.memmap) else v for k, v in record.items()}


def _ensure_flags_parsed():
    """grain's worker processes read absl flags; outside an absl app, use their defaults."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def loader(dataset: grain.MapDataset, *, workers: int = 0, threads: int = 2,
           buffer: int = 4) -> grain.IterDataset:
    """Iterable over ``dataset`` with ``workers`` prefetching processes (0: in-process,
    ``threads`` reading ahead). Its iterators have ``get_state`` / ``set_state``.

    Reading from the cache is memory copies that release the GIL: threads in one process
    are several times faster than worker processes there (no copy of every batch through
    shared memory). Decoding .nii.gz is about as fast either way.
    """
    ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                   prefetch_buffer_size=buffer))
    if workers > 0:
        _ensure_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=buffer))
    return ds
