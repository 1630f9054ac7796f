"""NIfTI volumes: checked reading into canonical RAS voxel order, resampling, writing back.

Every array the data pipeline hands to a model is in *canonical* voxel order: axis 0 runs
left -> right, axis 1 posterior -> anterior, axis 2 inferior -> superior (nibabel's
``as_closest_canonical``). A :class:`Geometry` travels with it and records how its voxel grid
maps onto the source file's grid (reorientation, crops, resampling, resizing), so that a
prediction made on the array can be written back in the space of the original file.

All grid changes are per-axis linear maps ``source_canonical_index = scale * index + offset``;
that covers flips/permutations (done once, by nibabel's orientation tools), crops, padding,
resampling to a spacing and resizing.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from typing import Sequence

import nibabel as nib
import numpy as np


class DataError(ValueError):
    """Bad input data. The message names the file (or record) and what was expected."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a canonical array's voxels map to the file it came from.

    Attributes:
      source_affine: the file's voxel -> world (mm) affine.
      source_shape: the file's spatial shape.
      ornt: nibabel orientation (3, 2) taking the file's axes to canonical RAS axes.
      canonical_affine: affine of the file reoriented to RAS (before any crop or resample).
      scale, offset: per axis, ``canonical_index = scale * index + offset`` for the current grid.
      shape: the current grid's spatial shape.
    """

    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    ornt: np.ndarray
    canonical_affine: np.ndarray
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        perm = self.ornt[:, 0].astype(int)
        shape = [0, 0, 0]
        for src_axis, dst_axis in enumerate(perm):
            shape[dst_axis] = self.source_shape[src_axis]
        return tuple(shape)

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> world affine of the current grid."""
        grid = np.eye(4)
        grid[:3, :3] = np.diag(self.scale)
        grid[:3, 3] = self.offset
        return self.canonical_affine @ grid

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in dataclasses.fields(self))

    __hash__ = None

    def remapped(self, scale: Sequence[float], offset: Sequence[float],
                 shape: Sequence[int]) -> "Geometry":
        """Geometry after a grid change with ``old_index = scale * new_index + offset``."""
        scale = np.asarray(scale, np.float64)
        return dataclasses.replace(
            self,
            scale=tuple(float(v) for v in np.asarray(self.scale) * scale),
            offset=tuple(float(v) for v in np.asarray(self.scale) * np.asarray(offset)
                         + np.asarray(self.offset)),
            shape=tuple(int(v) for v in shape))

    def cropped(self, start: Sequence[int], shape: Sequence[int]) -> "Geometry":
        """Geometry of ``array[start0:start0+n0, ...]`` (a negative start means padding)."""
        return self.remapped((1, 1, 1), start, shape)

    def to_dict(self) -> dict:
        return {f.name: np.asarray(getattr(self, f.name)).tolist() for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(source_affine=np.asarray(d["source_affine"], np.float64),
                   source_shape=tuple(d["source_shape"]),
                   ornt=np.asarray(d["ornt"], np.float64),
                   canonical_affine=np.asarray(d["canonical_affine"], np.float64),
                   scale=tuple(d["scale"]), offset=tuple(d["offset"]), shape=tuple(d["shape"]))


def _open(path: str):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for bad headers
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: expected a NIfTI image, got {type(img).__name__}")
    return img


def _spatial(path: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3 spatial dims of a file, accepting trailing singleton dimensions."""
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise DataError(f"{path}: expected a 3D volume, got shape {shape}"
                        + (" (4D data: pass one volume per file)" if len(shape) > 3 else ""))
    return tuple(int(n) for n in shape[:3])


def read_header(path: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """Spatial shape and affine of a NIfTI file without reading its voxels."""
    img = _open(path)
    return _spatial(path, img.shape), np.asarray(img.affine, np.float64)


def read_volume(path: str, *, dtype=np.float32, check_finite: bool = True,
                contiguous: bool = True) -> tuple[np.ndarray, Geometry]:
    """Reads a 3D NIfTI volume in canonical (RAS) voxel order.

    Returns the array (``dtype``; integer dtypes are cast from the stored integers exactly)
    and its :class:`Geometry`. Raises :class:`DataError` naming ``path`` for a missing file,
    a corrupt or truncated file, data that is not 3D, and NaN/Inf voxels. With
    ``contiguous=False`` the array may be a flipped/transposed view (no copy).
    """
    img = _open(path)
    shape = _spatial(path, img.shape)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated NIfTI data ({type(e).__name__}: {e})") from e
    if np.issubdtype(data.dtype, np.floating) and (check_finite or not np.issubdtype(dtype, np.floating)):
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise DataError(f"{path}: {bad} NaN/Inf voxels; expected finite values")
    if not np.issubdtype(dtype, np.floating) and np.issubdtype(data.dtype, np.floating):
        if not np.array_equal(data, np.round(data)):
            raise DataError(f"{path}: non-integer values in a label volume")
    data = data.astype(dtype, copy=False)

    affine = np.asarray(img.affine, np.float64)
    ornt = nib.orientations.io_orientation(affine)
    data = nib.orientations.apply_orientation(data, ornt)
    canonical_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    geometry = Geometry(source_affine=affine, source_shape=shape, ornt=ornt,
                        canonical_affine=canonical_affine, scale=(1.0, 1.0, 1.0),
                        offset=(0.0, 0.0, 0.0), shape=tuple(data.shape))
    return (np.ascontiguousarray(data) if contiguous else data), geometry


def check_same_grid(paths: Sequence[str], geometries: Sequence[Geometry], *,
                    atol: float = 1e-3) -> None:
    """Raises DataError unless all volumes of one case share shape and affine."""
    ref_path, ref = paths[0], geometries[0]
    for path, g in zip(paths[1:], geometries[1:]):
        if g.source_shape != ref.source_shape:
            raise DataError(f"{path}: shape {g.source_shape} differs from {ref_path} "
                            f"{ref.source_shape}; all images of a case must share one grid")
        if not np.allclose(g.source_affine, ref.source_affine, atol=atol):
            raise DataError(f"{path}: affine differs from {ref_path}; all images of a case must "
                            f"share one grid\n{g.source_affine}\nvs\n{ref.source_affine}")


def check_labels(path: str, label: np.ndarray, allowed: Sequence[int]) -> None:
    """Raises DataError if ``label`` holds values outside ``allowed``."""
    values = np.unique(label)
    bad = np.setdiff1d(values, np.asarray(allowed))
    if bad.size:
        raise DataError(f"{path}: label values {bad.tolist()} outside the expected set "
                        f"{sorted(int(v) for v in allowed)}; relabel them (python -m "
                        "jaxbrain.data check lists every such file)")


    # --- resampling -------------------------------------------------------------------------------


def _resample_axis(x: np.ndarray, axis: int, coords: np.ndarray, mode: str) -> np.ndarray:
    """Samples ``x`` along ``axis`` at float voxel coordinates; 0 outside [-0.5, n - 0.5]."""
    n = x.shape[axis]
    inside = (coords >= -0.5) & (coords <= n - 0.5)
    c = np.clip(coords, 0, n - 1)
    bshape = [1] * x.ndim
    bshape[axis] = len(coords)
    mask = inside.reshape(bshape)
    if mode == "nearest":
        idx = np.clip(np.floor(c + 0.5).astype(np.int64), 0, n - 1)
        return np.where(mask, np.take(x, idx, axis=axis), np.zeros((), x.dtype))
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w1 = (c - i0).astype(x.dtype).reshape(bshape)
    out = np.take(x, i0, axis=axis) * (1 - w1) + np.take(x, i1, axis=axis) * w1
    return np.where(mask, out, np.zeros((), out.dtype))


def remap(x: np.ndarray, scale: Sequence[float], offset: Sequence[float],
          shape: Sequence[int], mode: str = "linear") -> np.ndarray:
    """Resamples the 3 leading (spatial) axes: ``out[i] = x[scale * i + offset]``.

    Separable linear (or nearest) interpolation; trailing axes (channels) ride along. Values
    outside the source grid (further than half a voxel) are 0.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    out = x if mode == "nearest" or np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    for axis in range(3):
        if scale[axis] == 1 and offset[axis] == 0 and shape[axis] == out.shape[axis]:
            continue
        coords = np.arange(shape[axis], dtype=np.float64) * scale[axis] + offset[axis]
        out = _resample_axis(out, axis, coords, mode)
    return out


def resize_params(in_shape: Sequence[int], out_shape: Sequence[int]):
    """(scale, offset) of a voxel-centre-aligned resize (torch ``align_corners=False``)."""
    scale = [i / o for i, o in zip(in_shape, out_shape)]
    return scale, [0.5 * s - 0.5 for s in scale]


def spacing_params(spacing: Sequence[float], target: Sequence[float], shape: Sequence[int]):
    """(scale, offset, out_shape) of resampling to ``target`` mm keeping the first voxel."""
    scale = [t / s for s, t in zip(spacing, target)]
    out_shape = [int(np.floor((n - 1) / k + 1e-6)) + 1 for n, k in zip(shape, scale)]
    return scale, [0.0] * 3, out_shape


def to_source(x: np.ndarray, geometry: Geometry, mode: str = "nearest") -> np.ndarray:
    """Maps an array on ``geometry``'s current grid back onto the source file's grid.

    Use ``mode="nearest"`` for label maps and ``"linear"`` for probabilities. Voxels the
    current grid does not cover (cropped away) become 0.
    """
    if tuple(x.shape[:3]) != tuple(geometry.shape):
        raise ValueError(f"array spatial shape {x.shape[:3]} does not match geometry {geometry.shape}")
    scale = 1.0 / np.asarray(geometry.scale)
    offset = -np.asarray(geometry.offset) * scale
    x = remap(x, scale, offset, geometry.canonical_shape, mode)
    inverse = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")),
        nib.orientations.io_orientation(geometry.source_affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(x, inverse))


def write_volume(path: str, x: np.ndarray, geometry: Geometry, *, mode: str = "nearest",
                 dtype=None) -> None:
    """Writes a prediction on ``geometry``'s grid to ``path`` in the source file's space."""
    data = to_source(x, geometry, mode)
    if dtype is not None:
        data = data.astype(dtype)
    img = nib.Nifti1Image(data, geometry.source_affine)
    img.set_qform(geometry.source_affine, code=1)
    img.set_sform(geometry.source_affine, code=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    nib.save(img, path)
