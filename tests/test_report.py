"""Evaluation reports: the PNG writer (checked by a small decoder), overlay colours, slice
choice and orientation, and the metric CSV/JSON files."""

import csv
import json
import struct
import zlib

import numpy as np
import pytest

from jaxbrain.evaluation import report

RED, GREEN, YELLOW = (255, 0, 0), (0, 255, 0), (255, 255, 0)


def _read_png(path):
    """Decode an 8-bit RGB, non-interlaced PNG whose rows all use filter type 0."""
    data = open(path, "rb").read()
    assert data[:8] == report.PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1])
    assert (depth, color, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any()
    return rows[:, 1:].reshape(height, width, 3)


def _head(shape=(20, 24, 16)):
    """An ellipsoid "brain" of varying positive intensities on a zero background."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g ** 2 for g in grid) < 0.9
    return np.where(inside, 100.0 + 50.0 * grid[0] + 20.0 * grid[2], 0.0)


def _pixel(picture, tile, x, y, shape):
    """Colour of voxel (x, y) of a slice in tile ``tile``: anterior up, patient left left."""
    return tuple(picture[shape[1] - 1 - y, tile * shape[0] + x])


def test_png_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    report.write_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(_read_png(tmp_path / "a.png"), rgb)
    for bad in (rgb.astype(np.float32), rgb[..., :2], np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            report.write_png(tmp_path / "b.png", bad)


def test_overlay_colours_and_orientation(tmp_path):
    image = _head()
    shape = image.shape
    label = np.zeros(shape, np.uint8)
    # Patient left (small x), anterior (large y), slices 6..9.
    label[3:8, 14:20, 6:10] = 1
    chosen = report.overlay_png(tmp_path / "o.png", image, label, slices=2)
    assert len(chosen) == 2 and all(6 <= z <= 9 for z in chosen)
    picture = _read_png(tmp_path / "o.png")
    assert picture.shape == (shape[1], 2 * shape[0], 3)
    for tile in range(2):
        assert _pixel(picture, tile, 3, 14, shape) == RED          # outline
        r, g, b = _pixel(picture, tile, 5, 16, shape)              # interior: blended
        assert r > g == b
        r, g, b = _pixel(picture, tile, 14, 5, shape)              # unlabelled: grey
        assert r == g == b
    tinted = picture[..., 0] != picture[..., 1]
    rows, cols = np.nonzero(tinted[:, :shape[0]])
    assert rows.max() < shape[1] // 2 and cols.max() < shape[0] // 2   # top left of the tile
    # Background is black, the brightest brain voxels white.
    assert tuple(picture[0, 0]) == (0, 0, 0) and picture.max() == 255


def test_slices_follow_the_label_or_the_brain(tmp_path):
    image = _head()
    label = np.zeros(image.shape, np.uint8)
    label[8:10, 8:10, 3:12] = 1
    label[6:14, 6:14, 10] = 1
    assert report.overlay_png(tmp_path / "a.png", image, label, slices=1) == [10]
    assert report.overlay_png(tmp_path / "b.png", image, label, slices=3) == [3, 6, 10]
    assert report.overlay_png(tmp_path / "c.png", image, label, slices=20) == list(range(3, 12))
    brain = np.flatnonzero(image.any(axis=(0, 1)))
    chosen = report.overlay_png(tmp_path / "d.png", image, np.zeros_like(label), slices=3)
    assert chosen == np.linspace(brain[0], brain[-1], 5)[1:-1].round().astype(int).tolist()
    assert _read_png(tmp_path / "d.png").shape == (image.shape[1], 3 * image.shape[0], 3)


def test_brats_colours_and_ground_truth_side_by_side(tmp_path):
    image = _head()
    shape = image.shape
    pred = np.zeros(shape, np.uint8)
    pred[4:16, 4:18, 8] = 2
    pred[6:14, 6:16, 8] = 1
    pred[8:12, 8:14, 8] = 4
    truth = np.zeros(shape, np.uint8)
    truth[10:16, 10:18, 8] = 2
    chosen = report.overlay_png(tmp_path / "o.png", image, pred, slices=1, ground_truth=truth)
    assert chosen == [8]
    picture = _read_png(tmp_path / "o.png")
    assert picture.shape == (shape[1], 2 * shape[0], 3)
    assert _pixel(picture, 0, 4, 4, shape) == GREEN
    assert _pixel(picture, 0, 6, 6, shape) == RED
    assert _pixel(picture, 0, 8, 8, shape) == YELLOW
    r, g, b = _pixel(picture, 0, 9, 10, shape)
    assert r == g > b
    # Ground truth tile: oedema only, where the truth has it.
    assert _pixel(picture, 1, 10, 10, shape) == GREEN
    gt_tile = picture[:, shape[0]:]
    tinted = gt_tile[..., 0] != gt_tile[..., 1]
    assert tinted.sum() == np.count_nonzero(truth[:, :, 8])
    custom = report.overlay_png(tmp_path / "c.png", image, pred, slices=1,
                                colors={4: (0, 0, 255)})
    assert custom == [8]
    picture = _read_png(tmp_path / "c.png")
    assert _pixel(picture, 0, 8, 8, shape) == (0, 0, 255)
    r, g, b = _pixel(picture, 0, 4, 4, shape)
    assert r == g == b


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
