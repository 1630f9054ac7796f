"""Evaluation reports: overlay figures (colours, legend, titles, orientation, slice choice, the
plain image outside labels) and the metric CSV/JSON files."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from jaxbrain.evaluation import report

RED, GREEN, YELLOW = (255, 0, 0), (0, 255, 0), (255, 255, 0)


def _head(shape=(20, 24, 16)):
    """An ellipsoid "brain" of varying positive intensities on a zero background."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g ** 2 for g in grid) < 0.9
    return np.where(inside, 100.0 + 50.0 * grid[0] + 20.0 * grid[2], 0.0)


def _overlay(path, image, label, **kw):
    """Write the PNG and return (chosen slices, its RGB pixels, the figure's panel axes)."""
    chosen = report.overlay_png(path, image, label, **kw)
    with Image.open(path) as png:
        assert png.format == "PNG"
        picture = np.asarray(png.convert("RGB"))
    fig, again, axes = report._figure(image, label, **kw)
    assert again == chosen
    assert picture.shape[:2] == (round(fig.bbox.height), round(fig.bbox.width))
    return chosen, picture, axes


def _pixel(picture, ax, x, y, shape):
    """Colour at the centre of voxel (x, y) of a slice in panel ``ax``; the panel shows
    anterior (large y) up and patient left (small x) on the left."""
    col, row = ax.transData.transform((x, shape[1] - 1 - y))
    return tuple(int(c) for c in picture[int(picture.shape[0] - row), int(col)])


def _panel(picture, ax):
    """The panel's pixels and, for each, the displayed (row, column) voxel it shows."""
    x0, y0, x1, y1 = np.round(ax.get_window_extent().extents).astype(int)
    top, bottom = picture.shape[0] - y1, picture.shape[0] - y0
    pixels = picture[top:bottom, x0:x1]
    cols, rows = np.meshgrid(np.arange(x0, x1) + 0.5,
                             picture.shape[0] - np.arange(top, bottom) - 0.5)
    data = ax.transData.inverted().transform(np.stack([cols.ravel(), rows.ravel()], axis=1))
    voxel = np.round(data).astype(int).reshape(*cols.shape, 2)
    return pixels, voxel[..., 1], voxel[..., 0]


def _grey(image, z):
    """The windowed grey level (0..255) of every voxel of slice z, in display order."""
    nonzero = image[image != 0]
    low, high = np.percentile(nonzero, (1, 99))
    gray = np.clip((image[:, :, z] - low) / (high - low), 0, 1)
    return np.round(255 * gray).astype(int).T[::-1]


def _assert_plain_outside(picture, ax, image, label, z):
    """Every panel pixel showing an unlabelled voxel is exactly that voxel's grey level."""
    pixels, rows, cols = _panel(picture, ax)
    labelled = (label[:, :, z] != 0).T[::-1][rows, cols]
    expected = _grey(image, z)[rows, cols]
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel][~labelled], expected[~labelled])
    return pixels, labelled


def test_overlay_colours_orientation_and_plain_image_outside_labels(tmp_path):
    image = _head()
    shape = image.shape
    label = np.zeros(shape, np.uint8)
    # Patient left (small x), anterior (large y), slices 6..9.
    label[3:8, 14:20, 6:10] = 1
    chosen, picture, axes = _overlay(tmp_path / "o.png", image, label, slices=2)
    assert len(chosen) == 2 and all(6 <= z <= 9 for z in chosen)
    assert [len(row) for row in axes] == [1, 1]  # one row per slice, no ground truth column
    for z, (ax,) in zip(chosen, axes):
        assert ax.get_window_extent().height >= 300  # readable panels
        assert ax.get_title() == f"Prediction\naxial z={z} / {shape[2]}"
        assert _pixel(picture, ax, 3, 14, shape) == RED          # outline
        r, g, b = _pixel(picture, ax, 5, 16, shape)              # interior: blended
        assert r > g == b
        r, g, b = _pixel(picture, ax, 14, 5, shape)              # unlabelled: grey
        assert r == g == b
        pixels, labelled = _assert_plain_outside(picture, ax, image, label, z)
        tinted = (pixels[..., 0] != pixels[..., 1]) | (pixels[..., 1] != pixels[..., 2])
        assert tinted.any() and not (tinted & ~labelled).any()
        rows, cols = np.nonzero(tinted)
        assert rows.max() < tinted.shape[0] // 2 and cols.max() < tinted.shape[1] // 2  # top left
        # Background is black, the brightest brain voxels white.
        assert pixels[0, 0].tolist() == [0, 0, 0] and pixels.max() == 255
    fig, _, _ = report._figure(image, label, slices=2)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1: lesion"]


def test_slices_follow_the_label_or_the_brain(tmp_path):
    image = _head()
    label = np.zeros(image.shape, np.uint8)
    label[8:10, 8:10, 3:12] = 1
    label[6:14, 6:14, 10] = 1
    assert report.overlay_png(tmp_path / "a.png", image, label, slices=1) == [10]
    assert report.overlay_png(tmp_path / "b.png", image, label, slices=3) == [3, 6, 10]
    assert report.overlay_png(tmp_path / "c.png", image, label, slices=20) == list(range(3, 12))
    brain = np.flatnonzero(image.any(axis=(0, 1)))
    chosen, picture, axes = _overlay(tmp_path / "d.png", image, np.zeros_like(label), slices=3)
    assert chosen == np.linspace(brain[0], brain[-1], 5)[1:-1].round().astype(int).tolist()
    # Three rows of one panel each, every panel some 300 pixels or more.
    height, width = picture.shape[:2]
    assert 300 <= width < 600 and 3 * 300 <= height < 3 * 600
    for z, (ax,) in zip(chosen, axes):
        _assert_plain_outside(picture, ax, image, np.zeros_like(label), z)


def test_brats_colours_legend_and_ground_truth_side_by_side(tmp_path):
    image = _head()
    shape = image.shape
    pred = np.zeros(shape, np.uint8)
    pred[4:16, 4:18, 8] = 2
    pred[6:14, 6:16, 8] = 1
    pred[8:12, 8:14, 8] = 4
    truth = np.zeros(shape, np.uint8)
    truth[10:16, 10:18, 8] = 2
    chosen, picture, axes = _overlay(tmp_path / "o.png", image, pred, slices=1, ground_truth=truth)
    assert chosen == [8]
    (ax_pred, ax_truth), = axes
    assert ax_pred.get_title() == "Prediction\naxial z=8 / 16"
    assert ax_truth.get_title() == "Ground truth\naxial z=8 / 16"
    left, right = ax_pred.get_window_extent(), ax_truth.get_window_extent()
    assert left.x1 < right.x0 and left.y0 == right.y0 and min(left.width, left.height) >= 300
    assert 2 * 300 <= picture.shape[1] < 2 * 600
    assert _pixel(picture, ax_pred, 4, 4, shape) == GREEN
    assert _pixel(picture, ax_pred, 6, 6, shape) == RED
    assert _pixel(picture, ax_pred, 8, 8, shape) == YELLOW
    r, g, b = _pixel(picture, ax_pred, 9, 10, shape)
    assert r == g > b
    # Ground truth panel: oedema only, where the truth has it, and the plain image elsewhere.
    assert _pixel(picture, ax_truth, 10, 10, shape) == GREEN
    _assert_plain_outside(picture, ax_pred, image, pred, 8)
    pixels, labelled = _assert_plain_outside(picture, ax_truth, image, truth, 8)
    tinted = pixels[..., 0] != pixels[..., 1]
    assert (tinted == labelled).all()
    fig, _, _ = report._figure(image, pred, slices=1, ground_truth=truth)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "1: necrotic tumour core", "2: oedema", "4: enhancing tumour"]

    custom, picture, ((ax,),) = _overlay(tmp_path / "c.png", image, pred, slices=1,
                                        colors={4: (0, 0, 255)}, names={4: "ET"})
    assert custom == [8]
    assert _pixel(picture, ax, 8, 8, shape) == (0, 0, 255)
    r, g, b = _pixel(picture, ax, 4, 4, shape)
    assert r == g == b
    fig, _, _ = report._figure(image, pred, slices=1, colors={4: (0, 0, 255)}, names={4: "ET"})
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["4: ET"]


def test_overlay_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        report.overlay_png(tmp_path / "x.png", np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def test_write_metrics(tmp_path):
    rows = [
        {"hd95": 2.5, "dice": 0.8, "case": "BraTS-001"},
        {"case": "BraTS-002", "dice": np.float64(0.6), "hd95": float("nan"),
         "lesion_tp": np.int64(3)},
    ]
    csv_path, json_path = report.write_metrics(rows, tmp_path / "out")
    assert csv_path.endswith("metrics.csv") and json_path.endswith("metrics.json")
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    assert table == [["case", "dice", "hd95", "lesion_tp"],
                     ["BraTS-001", "0.8", "2.5", ""],
                     ["BraTS-002", "0.6", "nan", "3"]]
    content = json.loads(open(json_path).read())
    assert content["cases"][1] == {"case": "BraTS-002", "dice": 0.6, "hd95": None, "lesion_tp": 3}
    assert content["summary"]["dice"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.1),
                                          "median": pytest.approx(0.7), "n": 2, "nan": 0}
    assert content["summary"]["hd95"]["nan"] == 1
    report.write_metrics(rows, tmp_path / "out", name="val")
    assert (tmp_path / "out" / "val.csv").exists() and (tmp_path / "out" / "val.json").exists()
