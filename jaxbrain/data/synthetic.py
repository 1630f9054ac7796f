"""Synthetic multi-contrast brain MRI, written in the on-disk layouts of real datasets.

This is the built-in data of every demo and test: realistic subjects generated on the
fly, read through the same layout code as real data.  :func:`synth_subject` renders one
subject; :func:`write_brats`, :func:`write_atlas` and :func:`write_unlabeled` write
cohorts of them as NIfTI files laid out exactly like BraTS, ATLAS and UK Biobank.

Subjects
--------
A :class:`Subject` holds four contrasts (``t1``, ``t1ce``, ``t2``, ``flair``) as
float32 volumes with voxel axes in RAS order (axis 0 left->right, axis 1
posterior->anterior, axis 2 inferior->superior) and world coordinates in MNI-like
millimetres (``Subject.affine``).  Intensities are positive and unnormalised, in a
scanner-like range of roughly 0..3000.  The same seed and arguments always give
bitwise-identical arrays; random fields are defined in world millimetres, so one
seed renders the same head at any resolution (up to sampling).

The anatomy comes either from nilearn's packaged MNI152 (2009a) tissue templates,
deformed per subject (``anatomy="mni"``), or from a procedural model of nested
deformed ellipsoids with folded cortex, ventricles, deep grey nuclei, cerebellum and
brainstem (``anatomy="procedural"``, no nilearn needed).

Tissue classes (``Subject.tissue``, uint8)
    0 background, 1 CSF, 2 grey matter, 3 white matter, 4 skull and scalp.
    Lesions are not tissue classes: the map keeps the underlying anatomy.

Lesion labels (``Subject.label``, uint8)
    ``"tumour"``: BraTS 2021 convention, 1 necrotic core, 2 oedema, 4 enhancing
    tumour (BraTS 2023 files store the enhancing tumour as 3).
    ``"stroke"``: ATLAS convention, 1 lesion.

On-disk layouts (``root`` is the directory given to the writer)
    BraTS 2021  ``BraTS2021_{i:05d}/BraTS2021_{i:05d}_{flair,t1,t1ce,t2,seg}.nii.gz``,
                datalist ``brats21_folds.json``; LPS storage (affine diag(-1, -1, 1)),
                skull-stripped, images int16, labels uint8.
    BraTS 2023  ``BraTS-GLI-{i:05d}-000/BraTS-GLI-{i:05d}-000-{t2f,t1c,t1n,t2w,seg}.nii.gz``,
                datalist ``brats23_folds.json``, enhancing tumour label 3.
    ATLAS v2.0  ``ATLAS_2/Training/R{c:03d}/sub-r{c:03d}s{i:03d}/ses-1/anat/``
                ``sub-r{c:03d}s{i:03d}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz`` and
                ``..._space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz``;
                RAS MNI grid, T1 with skull, float32 images, masks {0, 1}.
    UK Biobank  ``{eid}/T1/T1_brain_to_MNI.nii.gz`` and
                ``{eid}/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz``, ``subjects.csv``;
                RAS MNI grid, skull-stripped, healthy, float32 images.

The datalists follow MONAI: ``{"training": [{"fold": k, "image": [...], "label": ...}]}``
with paths relative to ``root`` and BraTS channels ordered FLAIR, T1ce, T1, T2.

Command line::

    python -m jaxbrain.data.synthetic brats --out DIR --n 8 [--version 2023]
    python -m jaxbrain.data.synthetic cohort --out DIR --n 2000 --shape 91 109 91 [--pd]

``cohort`` writes T1w scans whose anatomy follows age, sex, diagnosis and site, with a label
table (:mod:`jaxbrain.data.cohort`); :class:`Atrophy` is its hook into the anatomy.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ATLAS_CENTER_MM",
    "ATLAS_FOV_MM",
    "BACKGROUND",
    "BRAIN_CENTER_MM",
    "BRATS_FOV_MM",
    "CSF",
    "DEFAULT_FOV_MM",
    "ENHANCING",
    "GREY_MATTER",
    "HEAD_CENTER_MM",
    "MODALITIES",
    "NECROSIS",
    "OEDEMA",
    "SKULL",
    "STROKE",
    "UKB_CENTER_MM",
    "UKB_FOV_MM",
    "WHITE_MATTER",
    "Atrophy",
    "Subject",
    "grid_affine",
    "synth_subject",
    "write_brats",
    "write_atlas",
    "write_unlabeled",
    "main",
]

MODALITIES = ("t1", "t1ce", "t2", "flair")

# Tissue classes of ``Subject.tissue``.
BACKGROUND, CSF, GREY_MATTER, WHITE_MATTER, SKULL = range(5)
# Lesion labels of ``Subject.label`` (BraTS 2021 and ATLAS conventions).
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4
STROKE = 1

# Default grid: a field of view that a whole head fills, centred on it (MNI mm).
DEFAULT_FOV_MM = (180.0, 215.0, 180.0)
HEAD_CENTER_MM = (0.0, -17.0, 12.0)
# Centre of the brain itself; skull-stripped grids and the random pose pivot on it.
BRAIN_CENTER_MM = (0.0, -17.0, 5.0)

# Rendering classes: the tissue classes with skull and scalp told apart, plus lesions.
_BONE, _SCALP = 4, 5
_NECROTIC, _OEDEMATOUS, _ENHANCING, _INFARCT, _GLIOSIS = 6, 7, 8, 9, 10
_TISSUE_OF_CLASS = np.array([0, 1, 2, 3, 4, 4], dtype=np.uint8)  # of the healthy classes

# Mean intensity of each rendering class (columns, in the order above) per contrast.
_INTENSITY = {
    #        bg   CSF   GM   WM  bone scalp necr  oed   enh   inf  glio
    "t1": (0, 180, 480, 720, 120, 900, 230, 430, 470, 210, 340),
    "t2": (0, 1800, 950, 700, 80, 800, 1600, 1300, 1100, 1750, 1300),
    "flair": (0, 120, 660, 470, 60, 600, 520, 980, 820, 150, 820),
}

# World-space extent of the random lattices; it covers any sensible field of view.
_LATTICE_EXTENT_MM = 320.0


@dataclass(frozen=True, eq=False)
class Subject:
    """One synthetic subject.

    Attributes:
        images: ``{"t1", "t1ce", "t2", "flair"}`` -> float32 volume, RAS voxel order.
        label: uint8 lesion labels (see the module docstring), ``None`` when healthy.
        tissue: uint8 tissue classes: 0 background, 1 CSF, 2 GM, 3 WM, 4 skull/scalp.
        spacing: voxel size in mm along the three axes.
        affine: 4x4 RAS voxel-to-world (MNI-like mm) matrix.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray | None
    tissue: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def grid_affine(
    shape: Sequence[int],
    fov_mm: Sequence[float] = DEFAULT_FOV_MM,
    center_mm: Sequence[float] = HEAD_CENTER_MM,
) -> np.ndarray:
    """RAS voxel-to-world affine of a grid of ``shape`` covering ``fov_mm`` around ``center_mm``."""
    shape = np.asarray(shape, dtype=float)
    spacing = np.asarray(fov_mm, dtype=float) / shape
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - spacing * (shape - 1) / 2
    return affine


def synth_subject(
    seed: int,
    shape: Sequence[int] = (96, 96, 96),
    *,
    lesion: str | None = "tumour",
    anatomy: str = "auto",
    skull: bool = True,
    affine: np.ndarray | None = None,
) -> Subject:
    """Render one synthetic subject.

    Args:
        seed: the subject; the same seed and arguments give bitwise-identical arrays.
        shape: voxel grid size.
        lesion: ``"tumour"`` (BraTS-like glioma), ``"stroke"`` (ATLAS-like chronic
            infarct) or ``None`` (healthy).
        anatomy: ``"mni"`` (deformed nilearn MNI152 templates), ``"procedural"`` or
            ``"auto"`` (``"mni"`` when nilearn is importable).
        skull: keep skull and scalp; ``False`` renders a brain-extracted image whose
            background is exactly zero, as in BraTS and UK Biobank.
        affine: RAS voxel-to-world grid to render on (positive diagonal, MNI-like mm);
            by default :func:`grid_affine` of ``shape``, a head-sized field of view.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4, got {shape}")
    if lesion is not None and lesion not in _LESIONS:
        raise ValueError(f"lesion must be 'tumour', 'stroke' or None, got {lesion!r}")
    affine = grid_affine(shape) if affine is None else _checked_affine(affine)
    anatomy = _resolve_anatomy(anatomy)
    spacing = tuple(float(s) for s in np.diag(affine)[:3])
    axes = tuple((affine[k, 3] + spacing[k] * np.arange(n)).astype(np.float32) for k, n in enumerate(shape))
    # Independent streams: a lesion, for instance, leaves the anatomy's draws unchanged.
    rng_pose, rng_anatomy, rng_lesion, rng_contrast = np.random.default_rng(seed).spawn(4)

    coords, linear = _source_coordinates(rng_pose, axes)
    drawn = _LESIONS[lesion].draw(rng_lesion) if lesion else None
    if isinstance(drawn, _Tumour):
        drawn.push_tissue(coords, axes, linear)

    shell = _draw_shell(rng_anatomy)
    if anatomy == "mni":
        classes = _mni_classes(coords, shell, min(spacing))
    else:
        classes = _procedural_classes(rng_anatomy, coords, shell)
    del coords
    if not skull:
        classes[classes >= _BONE] = BACKGROUND
    tissue = _TISSUE_OF_CLASS[classes]

    label, texture = drawn.paint(classes, axes) if drawn else (None, None)
    images = _render_contrasts(rng_contrast, classes, axes, texture, skull)
    return Subject(images, label, tissue, spacing, affine)


def _checked_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    linear = affine[:3, :3]
    if affine.shape != (4, 4) or np.any(linear != np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
        raise ValueError("affine must be a 4x4 RAS grid affine with a positive diagonal")
    return affine


@functools.lru_cache(maxsize=1)
def _nilearn_available() -> bool:
    try:
        import nilearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_anatomy(anatomy: str) -> str:
    if anatomy == "auto":
        return "mni" if _nilearn_available() else "procedural"
    if anatomy not in ("mni", "procedural"):
        raise ValueError(f"anatomy must be 'auto', 'mni' or 'procedural', got {anatomy!r}")
    return anatomy


# --------------------------------------------------------------------------- random fields


class _NoiseField:
    """Smooth, zero-mean, unit-variance random field on a lattice in world mm.

    The lattice depends only on its arguments, never on the grid it is sampled on.
    Two-dimensional fields are interpolated with cubic splines, three-dimensional
    ones (sampled at millions of points) linearly.
    """

    def __init__(self, rng, center, extent_mm: float, step_mm: float, ndim: int = 3):
        n = math.ceil(extent_mm / step_mm) + 1
        values = ndi.gaussian_filter(rng.standard_normal((n,) * ndim), 1.0, mode="wrap")
        values = (values / values.std()).astype(np.float32)
        self._order = 3 if ndim == 2 else 1
        if self._order > 1:
            values = ndi.spline_filter(values, order=self._order, mode="nearest", output=np.float32)
        self._values = values
        self._origin = np.asarray(center, dtype=np.float32) - np.float32(0.5 * (n - 1) * step_mm)
        self._step = np.float32(step_mm)

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """Sample at world positions ``coords`` of shape ``(ndim, ...)``."""
        index = (coords - self._origin.reshape((-1,) + (1,) * (coords.ndim - 1))) / self._step
        return ndi.map_coordinates(
            self._values, index, order=self._order, mode="nearest", prefilter=False, output=np.float32
        )


_AXIS_PAIRS = ((0, 1), (0, 2), (1, 2))


def _planes(rng, axes, step_mm: float, sd: float) -> list[np.ndarray]:
    """Three smooth 2-D fields over the axis pairs whose broadcast sum is a smooth 3-D field."""
    planes = []
    for a, b in _AXIS_PAIRS:
        field = _NoiseField(
            rng, (BRAIN_CENTER_MM[a], BRAIN_CENTER_MM[b]), _LATTICE_EXTENT_MM, step_mm, ndim=2
        )
        points = np.stack(np.meshgrid(axes[a], axes[b], indexing="ij"))
        planes.append(field(points) * np.float32(sd / math.sqrt(3.0)))
    return planes


def _sum_planes(xy: np.ndarray, xz: np.ndarray, yz: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.add(xy[:, :, None], xz[:, None, :], out=out)
    out += yz[None, :, :]
    return out


def _rotation(angles: np.ndarray) -> np.ndarray:
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _source_coordinates(rng, axes) -> tuple[np.ndarray, np.ndarray]:
    """Where in the anatomy's frame each voxel looks: a random pose plus a smooth warp.

    Returns the positions, float32 of shape ``(3, *shape)`` in mm, and the 3x3 linear
    part of the map.  The warp is a sum of smooth 2-D fields over axis pairs, which is
    smooth in 3-D and costs two additions per voxel.
    """
    angles = np.deg2rad(rng.uniform(-4.0, 4.0, size=3))
    scale = rng.uniform(0.95, 1.05) * rng.uniform(0.98, 1.02, size=3)
    linear = _rotation(angles) / scale[None, :]
    pivot = np.asarray(BRAIN_CENTER_MM)
    offset = pivot - linear @ pivot + rng.normal(0.0, 2.0, size=3)

    coords = np.empty((3, *(len(a) for a in axes)), dtype=np.float32)
    for k in range(3):
        xy, xz, yz = _planes(rng, axes, step_mm=40.0, sd=2.5)
        xy += (linear[k, 0] * axes[0] + offset[k]).astype(np.float32)[:, None]
        xy += (linear[k, 1] * axes[1]).astype(np.float32)[None, :]
        xz += (linear[k, 2] * axes[2]).astype(np.float32)[None, :]
        _sum_planes(xy, xz, yz, out=coords[k])
    return coords, linear


def _box(axes, center, half_width: float) -> tuple[slice, slice, slice]:
    """Index box of the grid around a world point."""
    return tuple(
        slice(int(np.searchsorted(a, c - half_width)), int(np.searchsorted(a, c + half_width, side="right")))
        for a, c in zip(axes, center)
    )


def _box_offsets(axes, box, center) -> list[np.ndarray]:
    """World offsets from ``center`` of the voxels in ``box``, as broadcastable arrays."""
    shapes = ((-1, 1, 1), (1, -1, 1), (1, 1, -1))
    return [(a[s] - np.float32(c)).reshape(sh) for a, s, c, sh in zip(axes, box, center, shapes)]


def _box_points(axes, box) -> np.ndarray:
    """World positions of the voxels in ``box``, shape ``(3, *box_shape)``."""
    return np.stack(np.meshgrid(*(a[s] for a, s in zip(axes, box)), indexing="ij"))


# --------------------------------------------------------------------------- anatomy


def _draw_shell(rng) -> np.ndarray:
    """Outer distances (mm) from the brain where the CSF, bone and scalp layers end."""
    return np.cumsum([rng.uniform(1.0, 3.0), rng.uniform(4.0, 7.0), rng.uniform(4.0, 8.0)]).astype(np.float32)


def _shell_classes(distance: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """Rendering classes outside the brain from the distance to its surface."""
    layer = (distance >= shell[0]).view(np.uint8) + (distance >= shell[1]).view(np.uint8)
    layer += (distance >= shell[2]).view(np.uint8)
    return np.array([CSF, _BONE, _SCALP, BACKGROUND], dtype=np.uint8)[layer]


def _tissue_argmax(csf: np.ndarray, grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    return np.where(
        (white >= grey) & (white >= csf), WHITE_MATTER, np.where(grey >= csf, GREY_MATTER, CSF)
    ).astype(np.uint8)


@dataclass(frozen=True)
class _Template:
    """Tissue maps on a regular RAS grid: brain, grey and white matter probabilities,
    and the distance (mm) outside a smoothed brain envelope."""

    brain: np.ndarray
    grey: np.ndarray
    white: np.ndarray
    distance: np.ndarray
    origin: np.ndarray
    step: float


@functools.lru_cache(maxsize=1)
def _mni_volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's 1 mm MNI152 2009a brain mask, GM and WM probabilities and grid origin.

    The packaged T1 template is already brain-extracted, so the skull and scalp are
    drawn procedurally around the brain mask instead of taken from it.
    """
    from nilearn import datasets

    mask = datasets.load_mni152_brain_mask(resolution=1)
    if not np.allclose(mask.affine[:3, :3], np.eye(3)):
        raise RuntimeError("unexpected MNI152 template grid")
    volumes = [
        img.get_fdata(dtype=np.float32)
        for img in (
            mask,
            datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1),
        )
    ]
    return (*volumes, mask.affine[:3, 3].astype(np.float32))


def _block_mean(volume: np.ndarray) -> np.ndarray:
    """Halve the resolution by averaging 2x2x2 blocks (trailing odd planes dropped)."""
    x, y, z = (n // 2 for n in volume.shape)
    return volume[: 2 * x, : 2 * y, : 2 * z].reshape(x, 2, y, 2, z, 2).mean(axis=(1, 3, 5))


def _envelope_distance(brain_2mm: np.ndarray) -> np.ndarray:
    """Distance (mm) outside a smoothed brain envelope, on the 2 mm grid."""
    envelope = ndi.gaussian_filter(brain_2mm, 1.5) > 0.4
    return (ndi.distance_transform_edt(~envelope) * 2.0).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _mni_template(step: int) -> _Template:
    """MNI tissue maps at 1 mm or, for coarse grids, averaged down to 2 mm."""
    brain, grey, white, origin = _mni_volumes()
    brain_2mm = _block_mean(brain)
    distance = _envelope_distance(brain_2mm)
    if step == 2:
        return _Template(brain_2mm, _block_mean(grey), _block_mean(white), distance, origin + 0.5, 2.0)
    distance = ndi.zoom(distance, 2, order=1, mode="nearest", grid_mode=True)
    pad = [(0, n - m) for n, m in zip(brain.shape, distance.shape)]
    return _Template(brain, grey, white, np.pad(distance, pad, mode="edge"), origin, 1.0)


@dataclass(frozen=True)
class Atrophy:
    """Tissue loss drawn into the anatomy, in mm (all zero: the anatomy as it is).

    Attributes:
        ventricles: the lateral ventricles grow outward by this distance.
        cortex: grey matter within this distance of CSF (or of the outside of the brain)
            becomes CSF: a thinner cortex, wider sulci.
        focal: ``((centre, radii, distance), ...)`` ellipsoids in the anatomy's frame (MNI
            mm) inside which grey matter within ``distance`` of the grey matter's edge
            becomes CSF: a structure shrinking from all sides, e.g. the hippocampi. The
            procedural anatomy has no hippocampus: there the ventricle parts centred inside
            the ellipsoid (the temporal horns) grow by ``distance`` and the sulci inside it
            widen by it.

    Distances are to the edge of a region on the template's grid (half a template voxel
    beyond the centres of its outer voxels). The procedural anatomy takes it here
    (``_procedural_classes``); :mod:`jaxbrain.data.cohort` applies it to the MNI templates.
    """

    ventricles: float = 0.0
    cortex: float = 0.0
    focal: tuple = ()


def _mni_classes(coords: np.ndarray, shell: np.ndarray, spacing: float) -> np.ndarray:
    """Rendering classes sampled from the deformed MNI templates."""
    template = _mni_template(2 if spacing >= 1.75 else 1)
    coords -= template.origin[:, None, None, None]
    coords /= np.float32(template.step)
    sample = functools.partial(
        ndi.map_coordinates, order=1, mode="nearest", prefilter=False, output=np.float32
    )
    distance = sample(template.distance, coords)
    classes = _shell_classes(distance, shell)
    inside = distance < 1.0
    points = coords[:, inside]
    brain, grey, white = (sample(m, points) for m in (template.brain, template.grey, template.white))
    classes[inside] = np.where(
        brain >= 0.5, _tissue_argmax(brain - grey - white, grey, white), classes[inside]
    )
    return classes


# Procedural anatomy, in the MNI-like frame: (centre, radii) of ellipsoids in mm.
_CEREBRUM = ((0.0, -15.0, 15.0), (70.0, 88.0, 65.0))
_CEREBELLUM = ((0.0, -62.0, -36.0), (50.0, 32.0, 24.0))
_BRAINSTEM = ((0.0, -26.0, -42.0), (13.0, 15.0, 32.0))
_DEEP_GREY = (
    ((13.0, 12.0, 9.0), (5.0, 10.0, 8.0)),  # caudate head
    ((25.0, 2.0, 1.0), (5.5, 15.0, 9.0)),  # putamen
    ((11.0, -18.0, 6.0), (8.0, 13.0, 8.0)),  # thalamus
)
_LATERAL_VENTRICLE = (
    ((9.0, -6.0, 17.0), (4.5, 26.0, 8.0)),  # body and frontal horn
    ((21.0, -38.0, 10.0), (6.0, 10.0, 7.0)),  # atrium
    ((29.0, -22.0, -12.0), (3.0, 13.0, 4.0)),  # temporal horn
)
_THIRD_VENTRICLE = ((0.0, -14.0, 2.0), (1.5, 12.0, 9.0))
_CORTEX_SULCAL_GAP_MM = 0.6
_FOLD_STEP_MM = 3.0  # lattice step of the folding field: sulci about 13 mm apart
_FOLD_MM = 4.3  # distance (mm) per unit of the folding field near its zero crossings


def _ellipsoid_depth(coords: np.ndarray, center, radii) -> np.ndarray:
    """Approximate depth (mm, negative outside) below the surface of an ellipsoid."""
    r2 = np.zeros(coords.shape[1:], dtype=np.float32)
    for k in range(3):
        r2 += np.square((coords[k] - np.float32(center[k])) * np.float32(1.0 / radii[k]))
    return (1.0 - np.sqrt(r2)) * np.float32(math.prod(radii) ** (1 / 3))


def _inside_ellipsoid(points: np.ndarray, center, radii) -> np.ndarray:
    r2 = sum(np.square((points[k] - np.float32(center[k])) / np.float32(radii[k])) for k in range(3))
    return r2 < 1.0


def _mirrored(structures):
    """Left and right copies of structures given for the right hemisphere."""
    return [((side * c[0], c[1], c[2]), r) for c, r in structures for side in (1.0, -1.0)]


def _procedural_classes(rng, coords: np.ndarray, shell: np.ndarray,
                        atrophy: Atrophy | None = None) -> np.ndarray:
    """Rendering classes of the procedural head at source positions ``coords`` (with
    ``atrophy``, see :class:`Atrophy`)."""
    size = rng.uniform(0.94, 1.06, size=3)
    ventricle_size = rng.uniform(0.7, 1.8)
    thickness = np.float32(rng.uniform(2.4, 3.4))
    sulcal_depth = np.float32(rng.uniform(15.0, 25.0))
    folds = _NoiseField(rng, BRAIN_CENTER_MM, 260.0, _FOLD_STEP_MM)

    parts = [
        _ellipsoid_depth(coords, c, np.multiply(r, size)) for c, r in (_CEREBRUM, _CEREBELLUM, _BRAINSTEM)
    ]
    depth = np.maximum(np.maximum(parts[0], parts[1]), parts[2])
    classes = _shell_classes(-depth, shell)
    inside = depth > 0
    points = coords[:, inside]
    cerebrum, cerebellum, stem = (p[inside] for p in parts)
    depth = depth[inside]

    cortex = _cortical_depth(points, depth, folds, sulcal_depth)
    tissue = np.where(cortex < thickness, GREY_MATTER, WHITE_MATTER).astype(np.uint8)
    tissue[cortex < _CORTEX_SULCAL_GAP_MM] = CSF
    if atrophy is not None:
        tissue[(tissue == GREY_MATTER) & (cortex < _CORTEX_SULCAL_GAP_MM + atrophy.cortex)] = CSF
        for centre, radii, distance in atrophy.focal:
            widen = cortex < _CORTEX_SULCAL_GAP_MM + atrophy.cortex + distance
            tissue[widen & _inside_ellipsoid(points, centre, radii)] = CSF
    _cerebellum_and_stem(tissue, points, cerebrum, cerebellum, stem)
    _deep_structures(tissue, points, cerebrum, size, ventricle_size, atrophy)
    classes[inside] = tissue
    return classes


def _cortical_depth(points, depth, folds: _NoiseField, sulcal_depth) -> np.ndarray:
    """Distance (mm) to the nearest CSF surface: the brain's, a sulcus' or the midline's.

    Sulci are the zero crossings of a smooth random field, cut down to ``sulcal_depth``
    below the surface; the interhemispheric fissure spares the corpus callosum.
    """
    cortex = depth.copy()
    shallow = depth < sulcal_depth
    cortex[shallow] = np.minimum(depth[shallow], np.abs(folds(points[:, shallow])) * np.float32(_FOLD_MM))
    x, y, z = points
    fissure = ((z > 28.0) | (y > 38.0) | (y < -52.0)) & (z > -25.0)
    cortex[fissure] = np.minimum(cortex[fissure], np.abs(x[fissure]))
    return cortex


def _cerebellum_and_stem(tissue, points, cerebrum, cerebellum, stem) -> None:
    """Folia in the cerebellum, white brainstem, and a CSF gap under the cerebrum."""
    in_cerebellum = (cerebellum > cerebrum) & (cerebellum >= stem)
    centre = _CEREBELLUM[0]
    radial = np.sqrt(sum(np.square(points[k][in_cerebellum] - np.float32(centre[k])) for k in range(3)))
    folia = 5.0 + 3.0 * np.cos(radial * np.float32(2 * np.pi / 6.0))
    tissue[in_cerebellum] = np.where(cerebellum[in_cerebellum] < folia, GREY_MATTER, WHITE_MATTER)
    tissue[(stem > cerebrum) & (stem > cerebellum)] = WHITE_MATTER
    tissue[(np.abs(cerebrum - cerebellum) < 1.2) & (stem < cerebrum)] = CSF


def _deep_structures(tissue, points, cerebrum, size, ventricle_size, atrophy: Atrophy | None = None) -> None:
    """Deep grey nuclei, and ventricles widened by ``ventricle_size`` and grown by
    ``atrophy`` (its ventricle distance, plus the focal distance of the parts centred in a
    focal ellipsoid)."""
    deep = np.flatnonzero(cerebrum > 12.0)
    if deep.size == 0:
        return
    inner = points[:, deep]
    for centre, radii in _mirrored(_DEEP_GREY):
        tissue[deep[_inside_ellipsoid(inner, centre, np.multiply(radii, size))]] = GREY_MATTER
    widen = np.array([ventricle_size, 1.0, ventricle_size])
    for centre, radii in [*_mirrored(_LATERAL_VENTRICLE), _THIRD_VENTRICLE]:
        radii = np.multiply(radii, widen * size)
        if atrophy is not None:
            radii = radii + atrophy.ventricles + sum(
                d for c, r, d in atrophy.focal if _inside_ellipsoid(np.reshape(centre, (3, 1)), c, r)[0]
            )
        tissue[deep[_inside_ellipsoid(inner, centre, radii)]] = CSF


# --------------------------------------------------------------------------- lesions


_MAX_WOBBLE = 2.0  # clip of the radius modulation, in standard deviations


@dataclass(frozen=True)
class _Blob:
    """An irregular blob: radius modulated by a smooth random field."""

    center: np.ndarray
    radius: float
    field: _NoiseField
    roughness: float

    @classmethod
    def draw(cls, rng, center, radius: float, roughness: float) -> _Blob:
        field = _NoiseField(rng, center, 4.0 * radius + 20.0, max(radius / 2.0, 2.0))
        return cls(np.asarray(center, dtype=np.float32), float(radius), field, roughness)

    @property
    def reach(self) -> float:
        """Largest distance (mm) from the centre that the blob can extend to."""
        return self.radius * (1.0 + _MAX_WOBBLE * self.roughness)

    def rho(self, axes, box) -> np.ndarray:
        """Normalised radius of the voxels in ``box``: below 1 inside the blob."""
        dx, dy, dz = _box_offsets(axes, box, self.center)
        radius = np.sqrt(dx * dx + dy * dy + dz * dz)
        field = np.clip(self.field(_box_points(axes, box)), -_MAX_WOBBLE, _MAX_WOBBLE)
        wobble = 1.0 + np.float32(self.roughness) * field
        return radius / (np.float32(self.radius) * wobble)


# Nominal brain volume (mm^3) of the MNI-sized anatomy, and the share of its sphere
# that oedema fills (it spreads in white matter only), for drawing tumour sizes.
_BRAIN_VOLUME_MM3 = 1.8e6
_OEDEMA_FILL = 0.5


@dataclass(frozen=True)
class _Tumour:
    """A glioma: necrotic core inside an enhancing rim inside oedema that spreads in white matter."""

    core: _Blob
    oedema: _Blob
    necrosis: float  # inner radius of the rim as a fraction of the core's, 0 if none
    mass_effect: float
    texture: _NoiseField

    @classmethod
    def draw(cls, rng) -> _Tumour:
        side = rng.choice([-1.0, 1.0])
        center = (side * rng.uniform(20.0, 40.0), rng.uniform(-55.0, 35.0), rng.uniform(0.0, 40.0))
        fraction = math.exp(rng.uniform(math.log(0.03), math.log(0.1)))  # of the brain volume
        whole = (3.0 * fraction * _BRAIN_VOLUME_MM3 / (4.0 * math.pi * _OEDEMA_FILL)) ** (1 / 3)
        core = whole * rng.uniform(0.45, 0.65)
        necrosis = 0.0 if rng.random() < 0.2 else rng.uniform(0.35, 0.7)
        return cls(
            core=_Blob.draw(rng, center, core, roughness=0.2),
            oedema=_Blob.draw(rng, center, whole, roughness=0.25),
            necrosis=necrosis,
            mass_effect=rng.uniform(0.0, 0.5),
            texture=_NoiseField(rng, center, 4.0 * whole + 20.0, 3.0),
        )

    def push_tissue(self, coords, axes, linear) -> None:
        """Mass effect: the tissue around the tumour appears pushed outward."""
        sigma = self.core.radius
        box = _box(axes, self.core.center, 3.0 * sigma)
        offsets = _box_offsets(axes, box, self.core.center)
        r2 = sum(np.square(d) for d in offsets)
        shrink = np.float32(-self.mass_effect) * np.exp(r2 * np.float32(-0.5 / sigma**2))
        for k in range(3):
            coords[k][box] += shrink * sum(np.float32(linear[k, j]) * offsets[j] for j in range(3))

    def paint(self, classes: np.ndarray, axes) -> tuple[np.ndarray, tuple]:
        """Write the tumour into ``classes``; return its labels and intensity texture.

        The core (enhancing rim around the necrosis) replaces any brain tissue; the
        oedema wraps it at least 3 mm thick and spreads further into white matter
        than into grey matter.
        """
        label = np.zeros(classes.shape, dtype=np.uint8)
        margin = 1.0 + 3.0 / self.core.radius
        box = _box(axes, self.core.center, max(self.oedema.reach, self.core.reach * margin) + 1.0)
        tissue = classes[box]
        core_rho, oedema_rho = self.core.rho(axes, box), self.oedema.rho(axes, box)
        white, grey = tissue == WHITE_MATTER, tissue == GREY_MATTER
        core = (tissue >= CSF) & (tissue <= WHITE_MATTER) & (core_rho < 1.0)
        necrotic = core & (core_rho < self.necrosis)
        spread = (core_rho < margin) | (white & (oedema_rho < 1.0)) | (grey & (oedema_rho < 0.6))
        oedema = (white | grey) & ~core & spread
        for mask, value, cls in (
            (oedema, OEDEMA, _OEDEMATOUS),
            (core, ENHANCING, _ENHANCING),
            (necrotic, NECROSIS, _NECROTIC),
        ):
            label[box][mask] = value
            tissue[mask] = cls
        lesion = label[box] > 0
        multiplier = np.ones(lesion.shape, dtype=np.float32)
        multiplier[lesion] += np.float32(0.08) * self.texture(_box_points(axes, box)[:, lesion])
        return label, (box, multiplier)


# Vascular territories (right hemisphere, MNI mm): ranges of the infarct centre and radius.
_TERRITORIES = {
    "mca": (((30.0, 52.0), (-40.0, 30.0), (-5.0, 45.0)), (5.0, 35.0)),
    "aca": (((5.0, 14.0), (0.0, 40.0), (30.0, 60.0)), (5.0, 20.0)),
    "pca": (((8.0, 32.0), (-90.0, -65.0), (-5.0, 20.0)), (5.0, 22.0)),
    "lacunar": (((14.0, 28.0), (-15.0, 15.0), (-2.0, 18.0)), (2.5, 8.0)),
}


@dataclass(frozen=True)
class _Stroke:
    """A chronic infarct: one to three blobs in a vascular territory, a fluid-like
    cavity with a gliotic rim."""

    blobs: tuple[_Blob, ...]

    @classmethod
    def draw(cls, rng) -> _Stroke:
        name = rng.choice(list(_TERRITORIES), p=[0.5, 0.15, 0.15, 0.2])
        ranges, (r_min, r_max) = _TERRITORIES[name]
        side = rng.choice([-1.0, 1.0])
        center = np.array([rng.uniform(*r) for r in ranges]) * [side, 1.0, 1.0]
        radius = math.exp(rng.uniform(math.log(r_min), math.log(r_max)))
        blobs = [_Blob.draw(rng, center, radius, roughness=0.3)]
        for _ in range(rng.integers(0, 3)):
            satellite = center + rng.normal(0.0, 0.8 * radius, size=3)
            blobs.append(_Blob.draw(rng, satellite, radius * rng.uniform(0.25, 0.6), roughness=0.3))
        return cls(tuple(blobs))

    def paint(self, classes: np.ndarray, axes) -> tuple[np.ndarray, None]:
        """Write the infarct into the grey and white matter of ``classes``; return its labels."""
        label = np.zeros(classes.shape, dtype=np.uint8)
        for blob in self.blobs:
            box = _box(axes, blob.center, blob.reach + 1.0)
            tissue = classes[box]
            rho = blob.rho(axes, box)
            lesion = (rho < 1.0) & np.isin(tissue, (GREY_MATTER, WHITE_MATTER, _GLIOSIS, _INFARCT))
            label[box][lesion] = STROKE
            tissue[lesion & (tissue != _INFARCT)] = _GLIOSIS
            tissue[lesion & (rho < 0.7)] = _INFARCT
        return label, None


_LESIONS = {"tumour": _Tumour, "stroke": _Stroke}


# --------------------------------------------------------------------------- contrasts


def _intensity_tables(rng) -> dict[str, np.ndarray]:
    """Per-subject class intensities: a scanner gain per contrast and a jitter per class.

    T1ce shares T1's tissue contrast (same acquisition), with its own gain and the
    enhancing tumour lit up by gadolinium.
    """
    tables = {}
    for name, base in _INTENSITY.items():
        gain = math.exp(rng.normal(0.0, 0.25))
        jitter = np.exp(rng.normal(0.0, 0.05, size=len(base)))
        tables[name] = (np.asarray(base) * gain * jitter).astype(np.float32)
    t1ce = tables["t1"] * np.float32(math.exp(rng.normal(0.0, 0.25)))
    t1ce[_ENHANCING] = t1ce[WHITE_MATTER] * rng.uniform(1.4, 1.9)
    t1ce[_SCALP] *= rng.uniform(1.0, 1.15)
    tables["t1ce"] = t1ce
    return {name: tables[name] for name in MODALITIES}


def _render_contrasts(rng, classes, axes, texture, skull: bool) -> dict[str, np.ndarray]:
    """Images of the four contrasts: class intensities, lesion texture, partial-volume
    blur, a smooth multiplicative bias field and Rician noise."""
    tables = _intensity_tables(rng)
    foreground = None if skull else classes != BACKGROUND
    images = {}
    for name, modality_rng in zip(MODALITIES, rng.spawn(len(MODALITIES))):
        image = tables[name][classes]
        if texture is not None:
            box, multiplier = texture
            image[box] *= multiplier
        image = ndi.gaussian_filter(image, 0.6, truncate=3.0)  # partial volume
        image *= np.exp(_sum_planes(*_planes(modality_rng, axes, step_mm=60.0, sd=0.12)))  # bias field
        sigma = np.float32(tables[name][WHITE_MATTER] * modality_rng.uniform(0.015, 0.04))
        images[name] = _rician(modality_rng, image, sigma, foreground)
    return images


def _rician(rng, image: np.ndarray, sigma: np.float32, where: np.ndarray | None) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise; zero outside ``where``."""
    if where is not None:
        out = np.zeros_like(image)
        out[where] = _rician(rng, image[where], sigma, None)
        return out
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= sigma
    real += image
    imaginary = rng.standard_normal(image.shape, dtype=np.float32)
    imaginary *= sigma
    return np.sqrt(np.square(real, out=real) + np.square(imaginary, out=imaginary), out=real)


# --------------------------------------------------------------------------- writers


def _save(path: Path, data: np.ndarray, affine: np.ndarray, code: str) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=code)
    image.set_sform(affine, code=code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def _int16(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)


def _lps(volume: np.ndarray) -> np.ndarray:
    """RAS voxel order to the LPS order BraTS stores (axes 0 and 1 reversed)."""
    return np.ascontiguousarray(volume[::-1, ::-1, :])


def _lps_affine(affine: np.ndarray, shape) -> np.ndarray:
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
    return affine @ flip


@dataclass(frozen=True)
class _BratsRelease:
    """File naming of a BraTS release."""

    subject: str  # subject id pattern, formatted with the index
    separator: str  # between the subject id and the file suffix
    suffixes: tuple[str, str, str, str]  # FLAIR, T1ce, T1, T2 files, in channel order
    enhancing: int  # label value stored for the enhancing tumour
    datalist: str

    def file(self, folder: Path, name: str, suffix: str) -> Path:
        return folder / f"{name}{self.separator}{suffix}.nii.gz"


_BRATS = {
    2021: _BratsRelease(
        "BraTS2021_{:05d}", "_", ("flair", "t1ce", "t1", "t2"), ENHANCING, "brats21_folds.json"
    ),
    2023: _BratsRelease("BraTS-GLI-{:05d}-000", "-", ("t2f", "t1c", "t1n", "t2w"), 3, "brats23_folds.json"),
}
_BRATS_CHANNELS = ("flair", "t1ce", "t1", "t2")
BRATS_FOV_MM = (240.0, 240.0, 155.0)


def write_brats(
    root,
    n: int,
    *,
    version: int = 2021,
    shape: Sequence[int] = (240, 240, 155),
    seed: int = 0,
    anatomy: str = "auto",
    folds: int = 5,
) -> list[dict]:
    """Write ``n`` skull-stripped tumour subjects as BraTS ``version`` (2021 or 2023).

    Subject ``i`` (from 0) is ``synth_subject(seed + i, shape, lesion="tumour",
    skull=False)`` on a grid covering 240 x 240 x 155 mm (1 mm at the default shape),
    stored in LPS order.  Folds are assigned round-robin.  Returns one record per
    subject with absolute paths: ``{"id", "image": [FLAIR, T1ce, T1, T2], "label"}``.
    """
    if version not in _BRATS:
        raise ValueError(f"version must be 2021 or 2023, got {version}")
    release = _BRATS[version]
    root = Path(root).resolve()
    affine = grid_affine(shape, BRATS_FOV_MM, BRAIN_CENTER_MM)
    stored_affine = _lps_affine(affine, shape)
    records, datalist = [], []
    for i in range(n):
        subject = synth_subject(seed + i, shape, lesion="tumour", anatomy=anatomy, skull=False, affine=affine)
        name = release.subject.format(i)
        folder = root / name
        images = [release.file(folder, name, suffix) for suffix in release.suffixes]
        for path, channel in zip(images, _BRATS_CHANNELS):
            _save(path, _lps(_int16(subject.images[channel])), stored_affine, "scanner")
        label = np.where(subject.label == ENHANCING, release.enhancing, subject.label).astype(np.uint8)
        label_path = release.file(folder, name, "seg")
        _save(label_path, _lps(label), stored_affine, "scanner")
        records.append({"id": name, "image": [str(p) for p in images], "label": str(label_path)})
        datalist.append(
            {
                "fold": i % folds,
                "image": [p.relative_to(root).as_posix() for p in images],
                "label": label_path.relative_to(root).as_posix(),
            }
        )
    (root / release.datalist).write_text(json.dumps({"training": datalist}, indent=2))
    return records


ATLAS_FOV_MM = (197.0, 233.0, 189.0)
ATLAS_CENTER_MM = (0.0, -18.0, 22.0)  # nilearn's MNI152NLin2009aSym 1 mm grid
_ATLAS_PER_COHORT = 5
_ATLAS_SPACE = "space-MNI152NLin2009aSym"


def write_atlas(
    root,
    n: int,
    *,
    shape: Sequence[int] = (197, 233, 189),
    seed: int = 0,
    anatomy: str = "auto",
) -> list[dict]:
    """Write ``n`` stroke subjects as the ATLAS v2.0 BIDS training set.

    Subject ``i`` (from 1) is ``synth_subject(seed + i, shape, lesion="stroke",
    skull=True)`` on the MNI152NLin2009aSym grid (1 mm at the default shape), in
    cohort ``R{(i - 1) // 5 + 1:03d}``.  Returns ``{"id", "image": [T1w], "label"}``
    records with absolute paths.
    """
    root = Path(root).resolve()
    affine = grid_affine(shape, ATLAS_FOV_MM, ATLAS_CENTER_MM)
    records = []
    for i in range(1, n + 1):
        cohort = (i - 1) // _ATLAS_PER_COHORT + 1
        name = f"sub-r{cohort:03d}s{i:03d}"
        folder = root / "ATLAS_2" / "Training" / f"R{cohort:03d}" / name / "ses-1" / "anat"
        stem = f"{name}_ses-1_{_ATLAS_SPACE}"
        subject = synth_subject(seed + i, shape, lesion="stroke", anatomy=anatomy, skull=True, affine=affine)
        image_path = folder / f"{stem}_T1w.nii.gz"
        label_path = folder / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"
        _save(image_path, subject.images["t1"], affine, "mni")
        _save(label_path, subject.label, affine, "mni")
        records.append({"id": name, "image": [str(image_path)], "label": str(label_path)})
    return records


UKB_FOV_MM = (182.0, 218.0, 182.0)
UKB_CENTER_MM = (-0.5, -17.5, 18.5)  # FSL's MNI152 1 mm grid
_UKB_FIRST_EID = 1000000


def write_unlabeled(
    root,
    n: int,
    *,
    shape: Sequence[int] = (182, 218, 182),
    seed: int = 0,
    anatomy: str = "auto",
) -> list[dict]:
    """Write ``n`` healthy skull-stripped subjects like UK Biobank's MNI-space T1 and FLAIR.

    Subject ``i`` (from 0, eid ``1000000 + i``) is ``synth_subject(seed + i, shape,
    lesion=None, skull=False)`` on FSL's MNI152 grid (1 mm at the default shape).
    Also writes ``subjects.csv`` (``subject,t1,flair``, paths relative to ``root``).
    Returns ``{"id", "image": [T1, FLAIR], "label": None}`` records with absolute paths.
    """
    root = Path(root).resolve()
    affine = grid_affine(shape, UKB_FOV_MM, UKB_CENTER_MM)
    records, rows = [], []
    for i in range(n):
        eid = str(_UKB_FIRST_EID + i)
        subject = synth_subject(seed + i, shape, lesion=None, anatomy=anatomy, skull=False, affine=affine)
        t1 = root / eid / "T1" / "T1_brain_to_MNI.nii.gz"
        flair = root / eid / "T2_FLAIR" / "T2_FLAIR_brain_to_MNI.nii.gz"
        _save(t1, subject.images["t1"], affine, "mni")
        _save(flair, subject.images["flair"], affine, "mni")
        records.append({"id": eid, "image": [str(t1), str(flair)], "label": None})
        rows.append([eid, t1.relative_to(root).as_posix(), flair.relative_to(root).as_posix()])
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "subjects.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject", "t1", "flair"])
        writer.writerows(rows)
    return records


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Command-line entry point: write a synthetic dataset and print where it went."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxbrain.data.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dataset", choices=("brats", "atlas", "unlabeled", "cohort"),
                        help="layout to write (cohort: T1w scans with ages, sexes, diagnoses and "
                        "sites, see jaxbrain.data.cohort)")
    parser.add_argument("--out", required=True, help="root directory to write into")
    parser.add_argument("--n", type=int, required=True, help="number of subjects")
    parser.add_argument(
        "--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="grid size (default: the dataset's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="subject i is drawn from seed + i")
    parser.add_argument("--version", type=int, choices=(2021, 2023), default=2021, help="BraTS release")
    parser.add_argument("--anatomy", choices=("auto", "mni", "procedural"), default="auto")
    parser.add_argument("--pd", action="store_true", help="cohort: PPMI-like (HC / PD)")
    parser.add_argument("--sites", type=int, default=4, help="cohort: number of sites")
    parser.add_argument("--workers", type=int, help="cohort: processes (default: one per CPU, up to 8)")
    args = parser.parse_args(argv)

    kwargs = {"seed": args.seed, "anatomy": args.anatomy}
    if args.shape:
        kwargs["shape"] = tuple(args.shape)
    if args.dataset == "brats":
        records = write_brats(args.out, args.n, version=args.version, **kwargs)
    elif args.dataset == "atlas":
        records = write_atlas(args.out, args.n, **kwargs)
    elif args.dataset == "cohort":
        from jaxbrain.data import cohort  # cohort builds on this module

        records = cohort.write_cohort(
            args.out, args.n, pd=args.pd, sites=args.sites, workers=args.workers, **kwargs
        )
        print(f"wrote {len(records)} scans of {args.n} cohort subjects to {Path(args.out).resolve()}")
        return records
    else:
        records = write_unlabeled(args.out, args.n, **kwargs)
    print(f"wrote {len(records)} {args.dataset} subjects to {Path(args.out).resolve()}")
    return records


if __name__ == "__main__":
    main()
