"""Per-record transforms on channels-last NumPy volumes.

A record is a dict: ``"image"`` float32 (X, Y, Z, C) in canonical RAS voxel order,
optionally ``"label"`` (X, Y, Z) uint8 label map or (X, Y, Z, K) uint8 channels,
``"geometry"`` (:class:`~jaxbrain.data.nifti.Geometry`) and ``"id"``.

Every transform is a small callable ``t(record, rng=None) -> record``. Deterministic ones
ignore ``rng``; random ones (``random = True``) draw only from the ``np.random.Generator`` they
are handed, which the pipeline derives from grain's per-record seed, so results do not depend
on worker count or order. Spatial transforms keep ``"geometry"`` up to date so predictions can
be written back in the source space.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from jaxbrain.data import labels as labels_lib
from jaxbrain.data import nifti
from jaxbrain.data.layouts import Case
from jaxbrain.data.nifti import DataError


def load_case(case: Case, *, check_labels: bool = True) -> dict:
    """Reads a case's images (stacked channels-last) and label in canonical orientation.

    Raises DataError naming the file for anything wrong: a missing, corrupt or non-3D file,
    NaN/Inf voxels, images of one case on different grids, label values outside the case's
    label convention.
    """
    image, geometries = None, []
    for c, path in enumerate(case.images):
        x, g = nifti.read_volume(path, contiguous=False)
        if image is None:
            image = np.empty(x.shape + (len(case.images),), np.float32)
        elif g.source_shape != geometries[0].source_shape:
            nifti.check_same_grid([case.images[0], path], [geometries[0], g])
        image[..., c] = x
        geometries.append(g)
    paths = list(case.images)
    record = {"id": case.id}
    if case.label is not None:
        label, g = nifti.read_volume(case.label, dtype=np.int32)
        paths.append(case.label)
        geometries.append(g)
        nifti.check_same_grid(paths, geometries)
        if check_labels:
            nifti.check_labels(case.label, label, labels_lib.CONVENTIONS[case.labels])
        record["label"] = label.astype(np.uint8)
    else:
        nifti.check_same_grid(paths, geometries)
    record["image"] = image
    record["geometry"] = geometries[0]
    if case.target is not None:
        record["target"] = np.asarray(case.target, np.float32)  # () or (T,) tasks
    return record


def _spatial_remap(record: dict, scale, offset, shape, label_mode="nearest") -> dict:
    out = dict(record)
    out["image"] = nifti.remap(record["image"], scale, offset, shape, "linear")
    if "label" in record:
        out["label"] = nifti.remap(record["label"], scale, offset, shape, label_mode)
    if "geometry" in record:
        out["geometry"] = record["geometry"].remapped(scale, offset, shape)
    return out


def _crop_or_pad(record: dict, start: Sequence[int], shape: Sequence[int]) -> dict:
    """``array[start : start + shape]`` per spatial axis, zero outside the array."""
    out = dict(record)
    for key in ("image", "label"):
        if key in record:
            out[key] = _window(record[key], start, shape)
    if "geometry" in record:
        out["geometry"] = record["geometry"].cropped(start, shape)
    return out


def _window(x: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """``x[start : start + shape]`` over its ``len(shape)`` leading (spatial) axes, zero
    outside ``x``; trailing axes (channels) are kept whole."""
    k = len(shape)
    src = tuple(slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, shape, x.shape))
    inner = np.asarray(x[src])  # reads only the window from a memory-mapped array
    if inner.shape[:k] == tuple(shape):
        return inner
    out = np.zeros(tuple(shape) + x.shape[k:], x.dtype)
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    out[dst] = inner
    return out


class Resample:
    """Resamples to a voxel spacing in mm (linear for images, nearest for labels)."""

    random = False

    def __init__(self, spacing: Sequence[float]):
        self.spacing = tuple(float(s) for s in spacing)

    def __call__(self, record, rng=None):
        g = record["geometry"]
        scale, offset, shape = nifti.spacing_params(g.spacing, self.spacing, record["image"].shape[:3])
        return _spatial_remap(record, scale, offset, shape)


class Resize:
    """Resizes the whole volume to ``shape`` (trilinear, voxel centres aligned; labels nearest)."""

    random = False

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)

    def __call__(self, record, rng=None):
        scale, offset = nifti.resize_params(record["image"].shape[:3], self.shape)
        return _spatial_remap(record, scale, offset, self.shape)


class CropForeground:
    """Crops to the bounding box of nonzero image voxels (any channel), plus ``margin``, grown
    symmetrically to a multiple of ``k_divisible`` (zero padded where it leaves the volume)."""

    random = False

    def __init__(self, margin: int = 0, k_divisible: int | Sequence[int] = 1):
        self.margin = margin
        self.k_divisible = k_divisible

    def __call__(self, record, rng=None):
        image = record["image"]
        nonzero = np.any(image != 0, axis=-1)
        if not nonzero.any():
            raise DataError(f"{record.get('id', '?')}: image is entirely zero; cannot crop to foreground")
        k = np.broadcast_to(np.asarray(self.k_divisible), (3,))
        start, shape = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            idx = np.flatnonzero(nonzero.any(axis=other))
            lo, hi = idx[0] - self.margin, idx[-1] + 1 + self.margin
            size = int(-(-(hi - lo) // k[axis]) * k[axis])
            lo -= (size - (hi - lo)) // 2
            start.append(int(lo))
            shape.append(size)
        return _crop_or_pad(record, start, shape)


class Pad:
    """Pads each spatial axis symmetrically with zeros up to at least ``shape``."""

    random = False

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)

    def __call__(self, record, rng=None):
        have = record["image"].shape[:3]
        if all(h >= s for h, s in zip(have, self.shape)):
            return record
        size = [max(h, s) for h, s in zip(have, self.shape)]
        start = [-((n - h) // 2) for n, h in zip(size, have)]
        return _crop_or_pad(record, start, size)


class CenterCropOrPad:
    """Crops or zero-pads each spatial axis about its centre to exactly ``shape``: MONAI's
    ``ResizeWithPadOrCrop`` (a crop starts at ``n // 2 - s // 2``; a pad puts ``(s - n) // 2``
    voxels before). For whole scans at a fixed size, e.g. 91 x 109 x 91 -> 96^3."""

    random = False

    def __init__(self, shape: Sequence[int]):
        self.shape = _triple("center_crop_or_pad shape", shape, int)

    def __call__(self, record, rng=None):
        have = record["image"].shape[:3]
        start = [n // 2 - s // 2 if n > s else -((s - n) // 2) for n, s in zip(have, self.shape)]
        return _crop_or_pad(record, start, self.shape)


def _map_nonzero(record: dict, fn) -> dict:
    """The record with each channel's nonzero voxels replaced by ``fn(values)`` (float32);
    zero voxels, and channels without any nonzero voxel, stay as they are."""
    image = np.array(record["image"], np.float32)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        mask = channel != 0
        if mask.any():
            channel[mask] = np.asarray(fn(channel[mask])).astype(np.float32)
    return {**record, "image": image}


class ZScore:
    """Per-channel (x - mean) / std over nonzero voxels; zero voxels stay zero.

    Matches MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)`` (population std;
    a channel with std 0 is only centred).
    """

    random = False

    def __call__(self, record, rng=None):
        def normalise(values):
            values = values.astype(np.float64)
            mean, std = values.mean(), values.std()
            return (values - mean) / (std if std > 0 else 1.0)
        return _map_nonzero(record, normalise)


class ScaleRange:
    """Linear map of [a_min, a_max] to [b_min, b_max], clipped: MONAI's
    ``ScaleIntensityRange(clip=True)``, as the SSL recipes scale their inputs."""

    random = False

    def __init__(self, a_min: float, a_max: float, b_min: float = 0.0, b_max: float = 1.0,
                 clip: bool = True):
        if a_max == a_min:
            raise ValueError(f"scale_range: a_min and a_max are both {a_min}")
        self.a_min, self.a_max, self.b_min, self.b_max, self.clip = a_min, a_max, b_min, b_max, clip

    def __call__(self, record, rng=None):
        image = np.asarray(record["image"], np.float32)
        out = (image - self.a_min) / (self.a_max - self.a_min) * (self.b_max - self.b_min) + self.b_min
        if self.clip:
            out = np.clip(out, min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        return {**record, "image": out.astype(np.float32)}


class ScalePercentiles:
    """Per channel, the ``lower`` and ``upper`` percentiles of the nonzero voxels map to 0 and
    1 (clipped); zero voxels (background of skull-stripped scans) stay 0. MRI intensities have
    no absolute scale, so this is the MRI counterpart of ``scale_range``."""

    random = False

    def __init__(self, lower: float = 0.5, upper: float = 99.5):
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"scale_percentiles: need 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper = lower, upper

    def __call__(self, record, rng=None):
        def scale(values):
            lo, hi = np.percentile(values, [self.lower, self.upper])
            return np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        return _map_nonzero(record, scale)


class RobustScale:
    """Per channel, clips to the ``lower`` and ``upper`` percentiles of the nonzero voxels, then
    z-scores over those voxels (std floor 1e-6); zero voxels (background) stay zero. The
    volume-level normalisation of BrainDINO's runners (1st / 99th percentile of voxels > 0)."""

    random = False

    def __init__(self, lower: float = 1.0, upper: float = 99.0):
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"robust_scale: need 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper = lower, upper

    def __call__(self, record, rng=None):
        def scale(values):
            values = values.astype(np.float64)
            lo, hi = np.percentile(values, [self.lower, self.upper])
            values = np.clip(values, lo, hi)
            return (values - values.mean()) / max(values.std(), 1e-6)
        return _map_nonzero(record, scale)


class BratsRegions:
    """BraTS label map -> [TC, WT, ET] uint8 channels, in the record's label convention
    (``record["labels"]``, BraTS 2021 or 2023) unless ``convention`` is given."""

    random = False

    def __init__(self, convention: str | None = None):
        if convention is not None:
            labels_lib.enhancing_value(convention)
        self.convention = convention

    def __call__(self, record, rng=None):
        convention = self.convention or record.get("labels") or "brats2021"
        return {**record, "label": labels_lib.brats_to_regions(record["label"], convention)}


def _crop_size(name: str, roi) -> tuple[int, int, int]:
    """A crop-size transform's ``roi``: 3 positive integers, or ValueError naming ``name``
    when it has none (neither in its spec nor from the pipeline, i.e. ``config.data.roi``)."""
    if roi is None:
        raise ValueError(f"{name}: no crop size: give {name}(roi=(X, Y, Z)) or pass the ROI to "
                         "the pipeline (training_dataset(roi=...), from config.data.roi)")
    return _triple(f"{name} roi", roi, int)


class RandCrop:
    """Random crop of ``roi`` (padding first if the volume is smaller).

    With probability ``pos_fraction`` the crop is centred on a random labelled voxel (label > 0
    in any channel), clipped to stay inside the volume; otherwise its position is uniform. A
    case without labelled voxels always gets a uniform crop. Without ``roi`` in its spec the
    pipeline supplies it (``takes_roi``: ``config.data.roi``).
    """

    random = True
    takes_roi = True

    def __init__(self, roi: Sequence[int] | None = None, pos_fraction: float = 0.0):
        self.roi = _crop_size("rand_crop", roi)
        self.pos_fraction = float(pos_fraction)
        self._pad = Pad(self.roi)

    def __call__(self, record, rng):
        record = self._pad(record)
        shape = record["image"].shape[:3]
        room = [n - r for n, r in zip(shape, self.roi)]
        start = None
        if self.pos_fraction > 0 and rng.random() < self.pos_fraction and "label" in record:
            label = np.asarray(record["label"])
            fg = label.any(axis=-1) if label.ndim == 4 else label
            where = np.flatnonzero(fg)
            if where.size:
                centre = np.unravel_index(where[rng.integers(where.size)], shape)
                start = [int(np.clip(c - r // 2, 0, m)) for c, r, m in zip(centre, self.roi, room)]
        if start is None:
            start = [int(rng.integers(m + 1)) for m in room]
        return _crop_or_pad(record, start, self.roi)


class RandSlice:
    """One 2D slice across ``axis`` (2: axial in canonical RAS): image (X, Y, C), label
    (X, Y[, K]). With probability ``pos_fraction`` the slice holds labelled voxels; otherwise
    it is uniform among the slices with any non-zero image voxel (all slices if none has).
    For 2D models trained on slices of volumes (e.g. axial slices of brain MRI)."""

    random = True

    def __init__(self, axis: int = 2, pos_fraction: float = 0.0):
        if axis not in (0, 1, 2):
            raise ValueError(f"rand_slice: axis must be 0, 1 or 2, got {axis}")
        self.axis, self.pos_fraction = int(axis), float(pos_fraction)

    def __call__(self, record, rng):
        image = np.asarray(record["image"])
        others = tuple(a for a in range(image.ndim) if a != self.axis)
        choices = np.flatnonzero(np.any(image != 0, axis=others))
        if "label" in record and self.pos_fraction > 0 and rng.random() < self.pos_fraction:
            label = np.asarray(record["label"])
            labelled = np.flatnonzero(np.any(label != 0, axis=tuple(
                a for a in range(label.ndim) if a != self.axis)))
            choices = labelled if labelled.size else choices
        if not choices.size:
            choices = np.arange(image.shape[self.axis])
        index = int(choices[rng.integers(choices.size)])
        out = dict(record)
        for key in ("image", "label"):
            if key in record:
                out[key] = np.take(np.asarray(record[key]), index, axis=self.axis)
        out.pop("geometry", None)
        return out


class RandSliceCrop:
    """nnU-Net's 2D training sampler: one slice across ``axis`` (2: axial in canonical RAS)
    and a crop of ``roi`` (2 sizes) of it: image (roi0, roi1, C), label (roi0, roi1[, K]).

    With probability ``pos_fraction`` (nnU-Net's ``oversample_foreground_percent``, 0.33 in
    BrainDINO's trainer) the sample is forced to foreground: a foreground class present in
    the case is chosen uniformly (a non-zero value of a label map, or a non-empty channel of
    region channels such as [TC, WT, ET] after ``brats_regions``), then one of its voxels
    uniformly; the slice is that voxel's and the crop is centred on it, clipped to stay
    inside the (padded) slice. Otherwise the slice is uniform among those with any non-zero
    image voxel (all slices if none has) and the crop position is uniform. A slice smaller
    than ``roi`` is zero padded symmetrically first. Without ``roi`` in its spec the pipeline
    supplies it (``takes_roi``: ``config.data.roi``)."""

    random = True
    takes_roi = True

    def __init__(self, roi: Sequence[int] | None = None, axis: int = 2, pos_fraction: float = 0.0):
        if roi is None:
            raise ValueError("rand_slice_crop: no crop size: give rand_slice_crop(roi=(X, Y)) or "
                             "set config.data.roi to the 2 sizes of the slice crops")
        roi = tuple(np.ravel(roi))
        if len(roi) != 2 or not all(float(r).is_integer() and r > 0 for r in roi):
            raise ValueError(f"rand_slice_crop roi: expected 2 positive integers (the slice "
                             f"crop), got {roi!r}")
        if axis not in (0, 1, 2):
            raise ValueError(f"rand_slice_crop: axis must be 0, 1 or 2, got {axis}")
        if not 0 <= pos_fraction <= 1:
            raise ValueError(f"rand_slice_crop pos_fraction: expected a probability in [0, 1], "
                             f"got {pos_fraction!r}")
        self.roi = tuple(int(r) for r in roi)
        self.axis, self.pos_fraction = int(axis), float(pos_fraction)

    def _foreground_voxel(self, label: np.ndarray, rng) -> tuple[int, ...] | None:
        """A voxel (3 indices) of a uniformly chosen foreground class, or None without one."""
        if label.ndim == 4:
            present = [k for k in range(label.shape[-1]) if label[..., k].any()]
            if not present:
                return None
            mask = label[..., present[int(rng.integers(len(present)))]] != 0
        else:
            present = [v for v in np.unique(label) if v != 0]
            if not present:
                return None
            mask = label == present[int(rng.integers(len(present)))]
        where = np.flatnonzero(mask)
        return tuple(int(i) for i in np.unravel_index(where[rng.integers(where.size)], mask.shape))

    def __call__(self, record, rng):
        image = np.asarray(record["image"])
        label = np.asarray(record["label"]) if "label" in record else None
        plane = [a for a in range(3) if a != self.axis]
        voxel = None
        if label is not None and self.pos_fraction > 0 and rng.random() < self.pos_fraction:
            voxel = self._foreground_voxel(label, rng)
        if voxel is None:
            choices = np.flatnonzero(np.any(image != 0, axis=tuple(plane) + (3,)))
            if not choices.size:
                choices = np.arange(image.shape[self.axis])
            index = int(choices[rng.integers(choices.size)])
        else:
            index = voxel[self.axis]
        out = dict(record)
        out.pop("geometry", None)
        size = [image.shape[a] for a in plane]
        padded = [max(n, r) for n, r in zip(size, self.roi)]
        offset = [(p - n) // 2 for p, n in zip(padded, size)]  # symmetric padding before
        room = [p - r for p, r in zip(padded, self.roi)]
        if voxel is None:
            start = [int(rng.integers(m + 1)) for m in room]
        else:
            start = [int(np.clip(voxel[a] + o - r // 2, 0, m))
                     for a, o, r, m in zip(plane, offset, self.roi, room)]
        start = [s - o for s, o in zip(start, offset)]  # in the unpadded slice
        for key in ("image", "label"):
            if key in record:
                out[key] = _window(np.take(np.asarray(record[key]), index, axis=self.axis),
                                   start, self.roi)
        return out


class RandFlip:
    """Flips each listed spatial axis independently with probability ``prob``."""

    random = True

    def __init__(self, prob: float = 0.5, axes: Sequence[int] = (0, 1, 2)):
        self.prob = prob
        self.axes = tuple(axes)

    def __call__(self, record, rng):
        flip = tuple(a for a in self.axes if rng.random() < self.prob)
        if not flip:
            return record
        out = dict(record)
        for key in ("image", "label"):
            if key in record:
                out[key] = np.flip(record[key], axis=flip)  # a view; batching copies once
        out.pop("geometry", None)  # augmented crops no longer map back to the source
        return out


class RandRot90:
    """Rotates by k * 90 degrees in the plane of ``axes`` with probability ``prob``
    (k uniform in {1, 2, 3}). The plane must be square so batch shapes stay fixed."""

    random = True

    def __init__(self, prob: float = 0.5, axes: tuple[int, int] = (0, 1)):
        self.prob = prob
        self.axes = tuple(axes)

    def __call__(self, record, rng):
        shape = record["image"].shape
        if shape[self.axes[0]] != shape[self.axes[1]]:
            raise DataError(f"{record.get('id', '?')}: RandRot90 in plane {self.axes} needs equal "
                            f"sizes there, got {shape[:3]}")
        if rng.random() >= self.prob:
            return record
        k = int(rng.integers(1, 4))
        out = dict(record)
        for key in ("image", "label"):
            if key in record:
                out[key] = np.ascontiguousarray(np.rot90(record[key], k, axes=self.axes))
        out.pop("geometry", None)
        return out


def affine_matrix(rotate_deg: Sequence[float], scale: Sequence[float],
                  translate: Sequence[float]) -> np.ndarray:
    """4x4 map from output to input voxel offsets from the volume centre:
    ``input = R @ (diag(scale) @ output + translate)`` with ``R = Rx @ Ry @ Rz`` (angles in
    degrees about axes 0, 1, 2; translation in voxels): MONAI's ``Affine`` convention
    (``rotate_order="XYZ"``), so scale > 1 shrinks the image and translate t moves it by -t."""
    a = np.deg2rad(np.asarray(rotate_deg, np.float64))
    (cx, cy, cz), (sx, sy, sz) = np.cos(a), np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rx @ ry @ rz @ np.diag(np.asarray(scale, np.float64))
    out[:3, 3] = rx @ ry @ rz @ np.asarray(translate, np.float64)
    return out


def warp_affine(x: np.ndarray, matrix: np.ndarray, order: int = 1) -> np.ndarray:
    """Resamples the 3 leading axes of ``x`` (trailing channels ride along) with the
    :func:`affine_matrix` ``matrix`` about the centre ``(n - 1) / 2``: trilinear (``order=1``)
    or nearest (0); outside the volume counts as 0 (interpolated towards it at the border,
    as ``grid_sample``'s zero padding)."""
    centre = (np.asarray(x.shape[:3], np.float64) - 1) / 2
    linear = matrix[:3, :3]
    offset = matrix[:3, 3] + centre - linear @ centre
    src = np.asarray(x)
    if order == 1 and not np.issubdtype(src.dtype, np.floating):
        src = src.astype(np.float32)
    out = np.empty(src.shape, src.dtype)
    channels = src.reshape(src.shape[:3] + (-1,))
    flat = out.reshape(channels.shape)
    for c in range(channels.shape[-1]):
        ndimage.affine_transform(channels[..., c], linear, offset, output=flat[..., c],
                                 order=order, mode="grid-constant", cval=0.0)
    return out


class RandAffine:
    """With probability ``prob``, a random small affine about the volume centre: rotation
    U(-rotate, rotate) degrees about each axis, scale 1 + U(-scale, scale) per axis and a
    translation U(-translate, translate) voxels per axis (:func:`affine_matrix`, MONAI's
    ``RandAffine`` ranges and convention); trilinear for images, nearest for labels, zeros
    outside. The shape is kept."""

    random = True

    def __init__(self, rotate: float = 5.0, scale: float = 0.1, translate: float = 4.0,
                 prob: float = 1.0):
        for name, v in (("rotate", rotate), ("scale", scale), ("translate", translate)):
            if not 0 <= v:
                raise ValueError(f"rand_affine {name}: expected a range >= 0, got {v!r}")
        if scale >= 1:
            raise ValueError(f"rand_affine scale: expected a range below 1, got {scale!r}")
        if not 0 <= prob <= 1:
            raise ValueError(f"rand_affine prob: expected a probability in [0, 1], got {prob!r}")
        self.rotate, self.scale, self.translate, self.prob = rotate, scale, translate, prob

    def __call__(self, record, rng):
        if rng.random() >= self.prob:
            return record
        matrix = affine_matrix(rng.uniform(-self.rotate, self.rotate, 3),
                               1 + rng.uniform(-self.scale, self.scale, 3),
                               rng.uniform(-self.translate, self.translate, 3))
        out = {**record, "image": warp_affine(record["image"], matrix, order=1)}
        if "label" in record:
            out["label"] = warp_affine(record["label"], matrix, order=0)
        out.pop("geometry", None)
        return out


class RandScaleShift:
    """image * (1 + U(-scale, scale)) + U(-shift, shift), each applied with probability
    ``prob`` (MONAI RandScaleIntensity then RandShiftIntensity; one factor for all channels
    unless ``per_channel``)."""

    random = True

    def __init__(self, scale: float = 0.1, shift: float = 0.1, prob: float = 1.0,
                 per_channel: bool = False):
        self.scale, self.shift, self.prob, self.per_channel = scale, shift, prob, per_channel

    def __call__(self, record, rng):
        n = record["image"].shape[-1] if self.per_channel else 1
        factor, offset = np.ones(n, np.float32), np.zeros(n, np.float32)
        if rng.random() < self.prob:
            factor += rng.uniform(-self.scale, self.scale, n).astype(np.float32)
        if rng.random() < self.prob:
            offset += rng.uniform(-self.shift, self.shift, n).astype(np.float32)
        image = np.multiply(record["image"], factor, dtype=np.float32)
        image += offset
        return {**record, "image": image}


def _triple(name: str, value, kind=float) -> tuple:
    """``value`` as 3 positive numbers (a scalar is repeated), or ValueError naming ``name``."""
    what = "positive integer" if kind is int else "positive number"
    try:
        v = np.broadcast_to(np.asarray(value, np.float64), (3,))
    except (ValueError, TypeError):
        v = None
    if v is None or not (v > 0).all() or (kind is int and (v != np.round(v)).any()):
        raise ValueError(f"{name}: expected a {what} or 3 of them, got {value!r}")
    return tuple(kind(x) for x in v)


def _pair(name: str, value) -> tuple[float, float]:
    """``value`` as a (low, high) pair with low <= high, or ValueError naming ``name``."""
    try:
        lo, hi = (float(x) for x in value)
    except (ValueError, TypeError):
        raise ValueError(f"{name}: expected a (low, high) pair, got {value!r}") from None
    if not lo <= hi:
        raise ValueError(f"{name}: expected low <= high, got {value!r}")
    return lo, hi


def _map_channels(record: dict, fn) -> dict:
    """The record with each image channel (all voxels) replaced by ``fn(channel)`` (float32)."""
    image = np.array(record["image"], np.float32)
    for c in range(image.shape[-1]):
        image[..., c] = fn(image[..., c])
    return {**record, "image": image}


def adaptive_contrast_adjust(x: np.ndarray, p0: float, p1: float) -> np.ndarray:
    """Piecewise-linear map with the ``p0`` and ``p1`` percentiles v0, v1 of all of ``x``:
    [min, v0) -> [0, 0.1), [v0, v1] -> [0.1, 0.9], (v1, max] -> (0.9, 1]; output in [0, 1].

    PyMIC's ``adaptive_contrast_adjust``, except that v1 == v0 (e.g. a constant input) maps
    that segment to 0.1 instead of dividing by zero.
    """
    x = np.asarray(x, np.float64)
    v_min, v_max = x.min(), x.max()
    v0, v1 = np.percentile(x, [p0, p1])
    low = (x - v_min) * (0.1 / (v0 - v_min if v0 > v_min else 1.0))
    mid = (x - v0) * (0.8 / (v1 - v0 if v1 > v0 else 1.0)) + 0.1
    high = 0.9 + (x - v1) * (0.1 / (v_max - v1 if v_max > v1 else 1.0))
    out = np.where(x < v0, low, np.where(x > v1, high, mid))
    return np.clip(out, 0.0, 1.0)


def gamma_correction(x: np.ndarray, gamma: float) -> np.ndarray:
    """``((x - min) / (max - min)) ** gamma * (max - min) + min`` over all of ``x``: the range
    is kept and the order of values too; a constant ``x`` is returned as is. PyMIC's
    ``gamma_correction`` with its random gamma given."""
    x = np.asarray(x, np.float64)
    v_min, v_max = x.min(), x.max()
    if not v_min < v_max:
        return x
    out = np.power((x - v_min) / (v_max - v_min), gamma) * (v_max - v_min) + v_min
    return np.clip(out, v_min, v_max)


class RandResizedCrop:
    """Crop of random size and position, resized to ``roi``: PyMIC's ``random_resized_crop``
    (the spatial part of ``Crop4VolumeFusion``).

    Per axis a scale s ~ U(scale_min, scale_max) gives a crop of min(int(roi * s), image size)
    voxels (at least 1) at a uniform position; the crop is resized to ``roi`` by linear
    interpolation with corner voxels aligned (``scipy.ndimage.zoom(order=1)``; labels nearest).
    An image smaller than ``roi`` along an axis is cropped whole there and zoomed up. Unlike
    scipy's zoom with its default ``mode="constant"``, the last voxel along an axis is never
    zeroed by rounding. Without ``roi`` in its spec the pipeline supplies it (``takes_roi``).
    """

    random = True
    takes_roi = True

    def __init__(self, roi: Sequence[int] | None = None, scale_min=(0.7, 0.7, 0.7),
                 scale_max=(1.5, 1.5, 1.5)):
        self.roi = _crop_size("rand_resized_crop", roi)
        self.scale_min = _triple("rand_resized_crop scale_min", scale_min)
        self.scale_max = _triple("rand_resized_crop scale_max", scale_max)
        if any(lo > hi for lo, hi in zip(self.scale_min, self.scale_max)):
            raise ValueError(f"rand_resized_crop: expected scale_min <= scale_max per axis, got "
                             f"{self.scale_min} and {self.scale_max}")

    def __call__(self, record, rng):
        shape = record["image"].shape[:3]
        scale = rng.uniform(self.scale_min, self.scale_max)
        crop = [max(1, min(int(r * s), n)) for r, s, n in zip(self.roi, scale, shape)]
        start = [int(rng.integers(n - c + 1)) for n, c in zip(shape, crop)]
        step = [(c - 1) / (r - 1) if r > 1 else 0.0 for c, r in zip(crop, self.roi)]
        out = dict(record)
        for key, mode in (("image", "linear"), ("label", "nearest")):
            if key in record:
                out[key] = nifti.remap(_window(record[key], start, crop), step, (0, 0, 0), self.roi, mode)
        if "geometry" in record:
            out["geometry"] = record["geometry"].cropped(start, crop).remapped(step, (0, 0, 0), self.roi)
        return out


class RandContrast:
    """Adaptive contrast adjustment to [0, 1] (:func:`adaptive_contrast_adjust`) with
    percentiles p0 ~ U(lower), p1 ~ U(upper), drawn once per record and applied to each
    channel over all its voxels: the contrast step of PyMIC's ``Crop4VolumeFusion``."""

    random = True

    def __init__(self, lower=(0.1, 2.0), upper=(98.0, 99.9)):
        self.lower = _pair("rand_contrast lower", lower)
        self.upper = _pair("rand_contrast upper", upper)
        if not (0 <= self.lower[0] and self.lower[1] <= self.upper[0] and self.upper[1] <= 100):
            raise ValueError(f"rand_contrast: expected 0 <= lower <= upper <= 100 (percentiles), "
                             f"got lower={lower!r}, upper={upper!r}")

    def __call__(self, record, rng):
        p0, p1 = rng.uniform(*self.lower), rng.uniform(*self.upper)
        return _map_channels(record, lambda x: adaptive_contrast_adjust(x, p0, p1))


class RandGamma:
    """Gamma correction (:func:`gamma_correction`) with gamma ~ U(gamma), drawn once per record
    and applied to each channel within its own [min, max]: PyMIC's ``gamma_correction`` as
    ``Crop4VolumeFusion`` uses it (``gamma_correction(patch, 0.7, 1.5)``)."""

    random = True

    def __init__(self, gamma=(0.7, 1.5)):
        self.gamma = _pair("rand_gamma gamma", gamma)
        if not self.gamma[0] > 0:
            raise ValueError(f"rand_gamma gamma: expected positive values, got {gamma!r}")

    def __call__(self, record, rng):
        gamma = rng.uniform(*self.gamma)
        return _map_channels(record, lambda x: gamma_correction(x, gamma))


class RandInvert:
    """image -> 1 - image (all channels) with probability ``prob``, for images in [0, 1] (after
    ``rand_contrast``). ``Crop4VolumeFusion`` inverts both of its crops together with
    probability 0.25; here each record (crop) is inverted independently."""

    random = True

    def __init__(self, prob: float = 0.25):
        if not 0 <= prob <= 1:
            raise ValueError(f"rand_invert prob: expected a probability in [0, 1], got {prob!r}")
        self.prob = float(prob)

    def __call__(self, record, rng):
        if rng.random() >= self.prob:
            return record
        return {**record, "image": np.subtract(1.0, record["image"], dtype=np.float32)}


def apply(transforms: Sequence, record: dict, rng: np.random.Generator | None = None) -> dict:
    """Applies ``transforms`` in order; random ones need ``rng``."""
    for t in transforms:
        if t.random and rng is None:
            raise ValueError(f"{type(t).__name__} is random and needs an rng")
        record = t(record, rng)
    return record
