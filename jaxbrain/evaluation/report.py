"""Evaluation reports: overlay figures, ROC curves and predicted-vs-true scatter plots as PNG
files (matplotlib, Agg) and metric tables as CSV and JSON.

Overlays show axial slices of canonical RAS arrays (axis 0 left -> right, axis 1 posterior ->
anterior, axis 2 inferior -> superior, see :mod:`jaxbrain.data.nifti`). Each slice is displayed
with anterior at the top and the patient's left on the screen's left (neurological
convention), i.e. the transposed slice flipped upside down. Slices are chosen inside the head
(:func:`head_mask`), on the contrast that shows the regions (:func:`overlay_channel`: T1c for
BraTS, where the enhancing tumour and the core show), numbered in the source file's voxel grid
(:func:`source_slice`); air stays black and carries no label colour.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from jaxbrain import metrics as metrics_lib
from jaxbrain.metrics import summarize

Color = tuple[int, int, int]

# Label value -> colour: necrosis red, oedema green, enhancing tumour yellow (BraTS 2021
# label 4) or blue (BraTS 2023 label 3). A binary lesion mask (label 1) is drawn red.
BRATS_COLORS: dict[int, Color] = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}

# Legend names; label 1 is called "lesion" when no other label value is present.
BRATS_NAMES: dict[int, str] = {1: "necrotic tumour core", 2: "oedema", 3: "enhancing tumour",
                               4: "enhancing tumour"}

LABEL_ALPHA = 0.4

# Figure layout in pixels (at DPI): the long side of every panel, the gaps around panels, the
# title band above each and the legend band at the bottom.
DPI = 100
PANEL_PX = 360
MARGIN_PX, GAP_PX, TITLE_PX, LEGEND_PX = 12, 16, 44, 70


# Contrast names as BraTS 2021 and 2023 (and common BIDS suffixes) spell them -> one name.
MODALITIES = {"flair": "flair", "t2f": "flair", "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
              "t1": "t1", "t1n": "t1", "t1w": "t1", "t2": "t2", "t2w": "t2"}
MODALITY_NAMES = {"flair": "FLAIR", "t1ce": "T1c", "t1": "T1", "t2": "T2"}
# BraTS regions are read on the contrast-enhanced T1: the enhancing tumour and the core (the
# regions that need it) show there, oedema is outlined all the same.
BRATS_OVERLAY = "t1ce"


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the level that maximises the between-class variance)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * centres)[:-1] / np.maximum(w0, 1)
    m1 = ((counts * centres).sum() - np.cumsum(counts * centres)[:-1]) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:-1][np.argmax(between)])


def head_mask(image: np.ndarray) -> np.ndarray:
    """Voxels inside the head of a 3D image: everything but the background value where one
    value fills most of the volume's border (skull-stripped or normalised volumes: zero
    outside the brain), else the voxels above Otsu's threshold (air is dark); holes filled
    slice by slice, as the skull and ventricles may be dark too."""
    image = np.asarray(image)
    border = np.concatenate([image[[0, -1]].ravel(), image[:, [0, -1]].ravel(),
                             image[:, :, [0, -1]].ravel()])
    values, counts = np.unique(border, return_counts=True)
    if counts.max() > border.size // 2:
        mask = image != values[np.argmax(counts)]
    else:
        mask = image > _otsu(image[np.isfinite(image)])
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def pick_slices(image: np.ndarray, labelled: np.ndarray, count: int,
                head: np.ndarray | None = None) -> list[int]:
    """Axial slices inside the head, spread through the labelled extent, each the largest of
    its share.

    Only labelled voxels inside the head (``head``, default :func:`head_mask` of ``image``)
    count. The labelled slices are split into ``count`` consecutive groups and each group
    gives its slice of largest labelled area (fewer slices when fewer are labelled). With no
    label in the head the slices are evenly spaced through the head's extent.
    """
    head = head_mask(image) if head is None else np.asarray(head, bool)
    area = np.count_nonzero(np.asarray(labelled, bool) & head, axis=(0, 1))
    indices = np.flatnonzero(area)
    if indices.size:
        groups = np.array_split(indices, min(count, indices.size))
        return [int(group[np.argmax(area[group])]) for group in groups]
    inside = np.flatnonzero(np.any(head, axis=(0, 1)))
    first, last = (inside[0], inside[-1]) if inside.size else (0, image.shape[2] - 1)
    return np.linspace(first, last, count + 2)[1:-1].round().astype(int).tolist()


def overlay_channel(channels: Sequence[str], choice: str | int | None = None,
                    brats: bool = False) -> int:
    """The index of the image channel an overlay shows: ``choice`` (a channel index, or a
    contrast name in BraTS 2021 or 2023 spelling: "t1ce" / "t1c", "flair" / "t2f", ...), else
    for BraTS regions the contrast-enhanced T1 (:data:`BRATS_OVERLAY`) when there is one,
    else the first channel."""
    names = [MODALITIES.get(str(c).lower(), str(c).lower()) for c in channels]
    if choice is None or choice == "":
        if brats and BRATS_OVERLAY in names:
            return names.index(BRATS_OVERLAY)
        return 0
    if isinstance(choice, (int, np.integer)) or str(choice).isdigit():
        index = int(choice)
        if not 0 <= index < len(names):
            raise ValueError(f"eval.overlay_channel={choice}: the image has {len(names)} "
                             f"channel(s) {list(channels)}")
        return index
    want = MODALITIES.get(str(choice).lower(), str(choice).lower())
    if want not in names:
        raise ValueError(f"eval.overlay_channel={choice!r}: not one of the image's channels "
                         f"{list(channels)}")
    return names.index(want)


def modality_name(channel: str) -> str:
    """How a figure names a contrast: "T1c", "FLAIR", ... (other names as they are)."""
    key = MODALITIES.get(str(channel).lower(), str(channel).lower())
    return MODALITY_NAMES.get(key, str(channel))


def source_slice(geometry, z: int) -> tuple[int, int, int]:
    """(index, size, axis) in the source file's voxel grid of axial slice ``z`` of an array on
    ``geometry``'s grid (:class:`jaxbrain.data.nifti.Geometry`): the file axis that runs
    inferior -> superior (or back), the slice's index along it (rounded when the grid was
    resampled) and that axis's size."""
    ornt = np.asarray(geometry.ornt)
    axis = int(np.flatnonzero(ornt[:, 0].astype(int) == 2)[0])
    size = int(geometry.source_shape[axis])
    canonical = int(round(geometry.scale[2] * z + geometry.offset[2]))
    return (size - 1 - canonical if ornt[axis, 1] < 0 else canonical), size, axis


def _window(image: np.ndarray, head: np.ndarray | None = None) -> tuple[float, float]:
    """1st and 99th percentiles of the head's voxels (default: the non-zero voxels; 0, 1
    when there are none)."""
    inside = image[image != 0] if head is None else image[head]
    if not inside.size:
        return 0.0, 1.0
    low, high = np.percentile(inside, (1, 99))
    return float(low), float(high)


def _display(axial: np.ndarray) -> np.ndarray:
    """(X, Y) slice -> (rows, columns) with anterior at the top and patient left on the left."""
    return axial.T[::-1]


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _render(gray: np.ndarray, labels: np.ndarray, colors: Mapping[int, Color],
            head: np.ndarray | None = None) -> np.ndarray:
    """Grey levels in [0, 1] as RGB with label colours blended in (alpha :data:`LABEL_ALPHA`)
    and label outlines drawn on top; voxels without a drawn label keep their grey level.
    Outside ``head`` (air) the picture is black and carries no label colour."""
    if head is not None:
        gray = np.where(head, gray, 0.0)
    rgb = np.repeat(255.0 * gray[..., None], 3, axis=-1)
    for value, color in colors.items():
        mask = labels == value
        if head is not None:
            mask &= head
        paint = np.asarray(color, np.float64)
        rgb[mask] = (1 - LABEL_ALPHA) * rgb[mask] + LABEL_ALPHA * paint
        rgb[_outline(mask)] = paint
    return np.round(rgb).astype(np.uint8)


def _legend_names(present: Sequence[int], names: Mapping[int, str] | None) -> dict[int, str]:
    default = dict(BRATS_NAMES)
    if list(present) == [1]:
        default[1] = "lesion"
    return {v: f"{v}: {(names or {}).get(v, default.get(v, f'label {v}'))}" for v in present}


NOTE_PX = 22  # the orientation note under the legend


def _legend_layout(handles, width: int) -> tuple[int, int]:
    """(columns, height in pixels) of the legend: as many columns as fit in ``width`` (the
    figure's width less its margins), measured on a scratch figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scratch = Figure(figsize=(width / DPI, 4), dpi=DPI)
    FigureCanvasAgg(scratch)
    renderer = scratch.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):
        box = scratch.legend(handles=handles, ncol=ncol, fontsize=10,
                             frameon=False).get_window_extent(renderer)
        scratch.legends.clear()
        if box.width <= width - 2 * MARGIN_PX or ncol == 1:
            return ncol, int(math.ceil(box.height))
    raise AssertionError("unreachable")


def _figure(image_channel: np.ndarray, label_map: np.ndarray, *, slices: int = 3,
            ground_truth: np.ndarray | None = None, colors: Mapping[int, Color] | None = None,
            names: Mapping[int, str] | None = None, geometry=None, modality: str | None = None):
    """The overlay figure: returns (figure, chosen slices, axes[row][column])."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = np.asarray(image_channel, np.float64)
    maps = [np.asarray(label_map)] + ([] if ground_truth is None else [np.asarray(ground_truth)])
    if image.ndim != 3 or any(m.shape != image.shape for m in maps):
        raise ValueError(f"expected (X, Y, Z) arrays of one shape, got image {image.shape} and "
                         f"labels {[m.shape for m in maps]}")
    if slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}")
    colors = BRATS_COLORS if colors is None else colors
    head = head_mask(image)
    chosen = pick_slices(image, np.any([m != 0 for m in maps], axis=0), slices, head)
    low, high = _window(image, head)

    present = sorted(int(v) for v in colors if any(np.any((m == v) & head) for m in maps))
    legend = _legend_names(present, names)
    handles = [Patch(facecolor=np.asarray(colors[v]) / 255, edgecolor="black", label=legend[v])
               for v in present]

    # Panels keep the voxels square: the slice's long side is PANEL_PX pixels.
    rows_px, cols_px = image.shape[1], image.shape[0]  # displayed (Y, X)
    scale = PANEL_PX / max(rows_px, cols_px)
    panel_h, panel_w = round(rows_px * scale), round(cols_px * scale)
    ncols, nrows = len(maps), len(chosen)
    width = 2 * MARGIN_PX + ncols * panel_w + (ncols - 1) * GAP_PX
    legend_cols, legend_px = _legend_layout(handles, width) if handles else (0, 20)
    legend_band = max(LEGEND_PX, legend_px + NOTE_PX + MARGIN_PX)
    height = MARGIN_PX + nrows * (TITLE_PX + panel_h) + (nrows - 1) * GAP_PX + legend_band
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)

    titles = ["Prediction", "Ground truth"]
    shown = f" on {modality}" if modality else ""
    axes = []
    for r, z in enumerate(chosen):
        gray = np.clip((image[:, :, z] - low) / ((high - low) or 1.0), 0.0, 1.0)
        top = MARGIN_PX + r * (TITLE_PX + panel_h + GAP_PX) + TITLE_PX
        if geometry is None:
            where = f"axial z={z} / {image.shape[2]}"
        else:
            index, size, axis = source_slice(geometry, z)
            where = (f"axial slice {index} / {size}" if axis == 2
                     else f"axial: file axis {axis}, slice {index} / {size}")
        row = []
        for c, m in enumerate(maps):
            left = MARGIN_PX + c * (panel_w + GAP_PX)
            ax = fig.add_axes((left / width, 1 - (top + panel_h) / height,
                               panel_w / width, panel_h / height))
            ax.imshow(_render(_display(gray), _display(m[:, :, z]), colors,
                              _display(head[:, :, z])),
                      interpolation="nearest", aspect="auto")
            ax.set_axis_off()
            ax.set_title(f"{titles[c]}{shown}\n{where}", fontsize=11)
            row.append(ax)
        axes.append(row)

    note = "neurological view: patient left on the left, anterior up"
    if geometry is not None:
        note += "; slices numbered in the file's voxel grid"
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=legend_cols, fontsize=10,
                   frameon=False, bbox_to_anchor=(0.5, NOTE_PX / height))
    else:
        fig.text(0.5, 30 / height, "no labelled voxels", ha="center", va="bottom", fontsize=10)
    fig.text(0.5, 6 / height, note, ha="center", va="bottom", fontsize=8, color="0.3")
    return fig, chosen, axes


def overlay_png(path: str | os.PathLike, image_channel: np.ndarray, label_map: np.ndarray, *,
                slices: int = 3, ground_truth: np.ndarray | None = None,
                colors: Mapping[int, Color] | None = None,
                names: Mapping[int, str] | None = None, geometry=None,
                modality: str | None = None) -> list[int]:
    """Write axial slices of one image channel with a label map blended in, as one PNG.

    ``image_channel``, ``label_map`` and ``ground_truth`` are (X, Y, Z) canonical RAS arrays.
    Slices are chosen inside the head (:func:`head_mask`) where the labels (prediction or
    ground truth) are, spread through their extent and favouring large areas; without labels
    they are evenly spaced through the head (:func:`pick_slices`). Intensities are windowed
    to the 1st..99th percentile of the head's voxels; air is black. Labels are blended with
    their colour (``colors``, default :data:`BRATS_COLORS`; other label values are not drawn)
    at alpha 0.4 and outlined inside the head; the rest of the slice is the plain grey image.
    Each chosen slice is one row, inferior -> superior from top to bottom, with a
    "Prediction" panel and, with ``ground_truth``, a "Ground truth" panel to its right; panel
    titles name the contrast shown (``modality``) and the slice, numbered in the source
    file's grid with ``geometry`` (:func:`source_slice`), else in the array's; a legend
    sized to fit names the label values present (``names`` overrides :data:`BRATS_NAMES`).
    Returns the chosen slice indices (axis 2 of the arrays).
    """
    fig, chosen, _ = _figure(image_channel, label_map, slices=slices, ground_truth=ground_truth,
                             colors=colors, names=names, geometry=geometry, modality=modality)
    fig.savefig(path, dpi=DPI, format="png")
    return chosen


def _columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    names = sorted({key for row in rows for key in row} - {"case"})
    return (["case"] if any("case" in row for row in rows) else []) + names


def json_ready(value: object) -> object:
    """Plain Python values for JSON; NaN and infinities become null."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(rows: Iterable[Mapping[str, object]], out_dir: str | os.PathLike,
                  name: str = "metrics") -> tuple[str, str]:
    """Write per-case metric rows to ``<out_dir>/<name>.csv`` and ``<out_dir>/<name>.json``.

    Rows are flat mappings of scalars, usually with a ``case`` entry. The CSV has one line per
    row and the columns ``case`` first, then the other keys sorted; a key missing from a row is
    an empty cell and NaN is written ``nan``. The JSON holds ``{"cases": rows, "summary":
    summarize(rows)}`` with NaN written as null. Returns the two paths.
    """
    rows = [dict(row) for row in rows]
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, f"{name}.csv")
    json_path = os.path.join(out_dir, f"{name}.json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    with open(json_path, "w") as f:
        json.dump(json_ready({"cases": rows, "summary": summarize(rows)}), f, indent=2,
                  allow_nan=False)
        f.write("\n")
    return csv_path, json_path


def _plot_figure(size_px: tuple[int, int] = (560, 520)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def roc_png(path: str | os.PathLike, targets, probabilities, class_names: Sequence[str], *,
            title: str = "") -> str:
    """ROC curve(s) of class probabilities (N, K) against class indices (N,) as one PNG.

    Binary (K = 2): the curve of class 1's probability (class 1 positive). K > 2: one
    one-vs-rest curve per class. The legend gives each curve's AUC
    (:func:`jaxbrain.metrics.roc_auc`); the dashed diagonal is chance (AUC 0.5). Returns
    ``path``."""
    probs = np.asarray(probabilities, np.float64)
    y = np.asarray(targets).reshape(-1)
    if probs.ndim != 2 or probs.shape != (y.size, len(class_names)):
        raise ValueError(f"roc_png: expected probabilities ({y.size}, {len(class_names)}) for "
                         f"{y.size} targets and classes {list(class_names)}, got {probs.shape}")
    fig, ax = _plot_figure()
    positives = [1] if len(class_names) == 2 else range(len(class_names))
    for k in positives:
        is_k = (y == k).astype(np.int64)
        fpr, tpr, _ = metrics_lib.roc_curve(is_k, probs[:, k])
        auc = metrics_lib.roc_auc(is_k, probs[:, k])
        label = (f"{class_names[1]} vs {class_names[0]}" if len(class_names) == 2
                 else f"{class_names[k]} vs rest")
        ax.plot(fpr, tpr, lw=2, label=f"{label}: AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="chance: AUC = 0.5")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", aspect="equal")
    ax.set_title(title or "ROC", fontsize=11)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return str(path)


def scatter_png(path: str | os.PathLike, targets, predictions, *, corrected=None,
                quantity: str = "age", unit: str = "years") -> str:
    """Predicted against true values (N,) as one PNG, with the identity line (a perfect
    prediction) and the MAE in the title; ``corrected`` (N,) (bias-corrected predictions)
    is drawn as a second series with its own MAE. Returns ``path``."""
    true = np.asarray(targets, np.float64).reshape(-1)
    series = [("predicted", predictions)] + ([("bias-corrected", corrected)]
                                             if corrected is not None else [])
    fig, ax = _plot_figure()
    units = f" ({unit})" if unit else ""
    maes = []
    for name, values in series:
        values = np.asarray(values, np.float64).reshape(-1)
        mae = metrics_lib.mae(true, values)
        maes.append(mae)
        ax.scatter(true, values, s=18, alpha=0.75, label=f"{name}: MAE = {mae:.2f}{units}")
    every = np.concatenate([true] + [np.ravel(v) for _, v in series])
    lo, hi = float(every.min()), float(every.max())
    pad = 0.05 * ((hi - lo) or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="0.4", lw=1,
            label="identity")
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), aspect="equal",
           xlabel=f"true {quantity}{units}", ylabel=f"predicted {quantity}{units}")
    title = f"MAE {maes[0]:.2f}{' ' + unit if unit else ''}"
    if len(maes) > 1:
        title += f" (bias-corrected {maes[1]:.2f})"
    ax.set_title(f"{title}, n = {true.size}", fontsize=11)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return str(path)
