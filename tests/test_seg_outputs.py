"""What eval.py writes for segmentation: the written label map is the one the metrics score
(BraTS regions nested ET in TC in WT), in the label convention of the data the run was
trained on (a BraTS 2023 tree writes its enhancing tumour as 3), and overlays chosen inside
the head on the contrast that shows the region, numbered in the file's grid."""

import csv
import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _toys  # noqa: E402,F401  (registers toy_conv)
from _train_run import toy_config  # noqa: E402

from jaxbrain import metrics  # noqa: E402
from jaxbrain.data import labels, layouts, nifti  # noqa: E402
from jaxbrain.data import transforms as T  # noqa: E402
from jaxbrain.evaluation import report  # noqa: E402
from jaxbrain.objectives.segmentation import Segmentation  # noqa: E402

BRATS = Segmentation(kind="sigmoid", channels=("TC", "WT", "ET"), regions="brats")


def _disagreeing_channels(shape=(12, 12, 8)):
    """[TC, WT, ET] probabilities that break the nesting: ET and TC partly outside WT, ET
    partly outside TC."""
    probs = np.full(shape + (3,), 0.1, np.float32)
    probs[2:8, 2:8, 2:6, 1] = 0.9        # WT
    probs[4:10, 4:8, 2:6, 0] = 0.8       # TC: half outside WT
    probs[6:11, 3:9, 3:5, 2] = 0.7       # ET: outside WT, outside TC, and inside both
    return probs


@pytest.mark.parametrize("convention,et", [("brats2021", 4), ("brats2023", 3)])
def test_label_map_nests_the_regions_and_the_metrics_are_those_of_the_map(convention, et):
    probs = _disagreeing_channels()
    on = probs > 0.5
    written = BRATS.label_map(probs, convention)
    assert set(np.unique(written)) == {0, 1, 2, et}
    regions = labels.brats_to_regions(written, convention).astype(bool)
    tc, wt, ets = (regions[..., k] for k in range(3))
    np.testing.assert_array_equal(wt, on[..., 1])                       # WT as predicted
    np.testing.assert_array_equal(tc, on[..., 0] & on[..., 1])          # TC within WT
    np.testing.assert_array_equal(ets, on[..., 2] & on[..., 0] & on[..., 1])  # ET within TC
    assert (ets <= tc).all() and (tc <= wt).all()
    # The map's regions are what the metrics score, against any ground truth.
    truth = np.zeros(probs.shape[:3], np.uint8)
    truth[3:9, 2:8, 2:6] = 2
    truth[5:9, 4:8, 2:6] = 1
    truth[6:9, 4:7, 3:5] = et
    got = BRATS.case_metrics(probs, truth, convention, (1.0, 1.0, 1.0))
    target = labels.brats_to_regions(truth, convention)
    for k, name in enumerate(labels.REGIONS):
        assert got[f"dice_{name}"] == pytest.approx(metrics.dice(regions[..., k], target[..., k]),
                                                    abs=1e-12)
    # The channels taken one by one give other numbers here: they are not what is written.
    assert got["dice_ET"] != pytest.approx(metrics.dice(on[..., 2], target[..., 2]))
    np.testing.assert_array_equal(labels.nested_regions(probs), regions)


def test_other_label_sets_keep_their_maps():
    rng = np.random.default_rng(0)
    one = rng.random((6, 6, 4, 1)).astype(np.float32)
    atlas = Segmentation(kind="sigmoid")
    np.testing.assert_array_equal(atlas.label_map(one), one[..., 0] > 0.5)
    truth = (rng.random((6, 6, 4)) > 0.5).astype(np.uint8)
    assert atlas.case_metrics(one, truth)["dice"] == pytest.approx(
        metrics.dice(one[..., 0] > 0.5, truth))
    soft = rng.random((6, 6, 4, 3)).astype(np.float32)
    classes = Segmentation(kind="softmax")
    np.testing.assert_array_equal(classes.label_map(soft), soft.argmax(-1))
    with pytest.raises(ValueError, match="no single label map"):
        atlas.label_map(soft)


def test_brats_regions_follow_the_records_convention():
    """A BraTS 2023 label map's enhancing tumour (3) is in the training targets' ET and TC."""
    label = np.array([0, 1, 2, 3, 3], np.uint8)
    out = T.BratsRegions()({"label": label, "labels": "brats2023"})["label"]
    np.testing.assert_array_equal(out[:, 2], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(out[:, 0], [0, 1, 0, 1, 1])
    out = T.BratsRegions()({"label": np.array([0, 4], np.uint8), "labels": "brats2021"})["label"]
    np.testing.assert_array_equal(out[:, 2], [0, 1])


def _dice_or_nan(a, b):
    return metrics.dice(a, b) if b.any() else float("nan")


@pytest.fixture(scope="module")
def run2023(tmp_path_factory):
    """A 4-step toy run on a synthetic BraTS 2023 tree (the datasets' own naming), validated
    at steps 2 and 4, from a recipe whose data.labels says brats2021."""
    from jaxbrain.training.loop import train_and_evaluate
    workdir = str(tmp_path_factory.mktemp("brats23"))
    config = toy_config(**{"eval_every": 2})
    config.data.synthetic.update(version=2023)
    assert config.data.labels == "brats2021"
    train_and_evaluate(config, workdir)
    return workdir


def test_brats2023_run_records_and_writes_its_convention(run2023, tmp_path):
    from jaxbrain import runs
    from jaxbrain.evaluation.evaluate import evaluate
    root = os.path.join(run2023, "data", "brats")
    case = sorted(n for n in os.listdir(root) if n.startswith("BraTS"))[0]
    assert case.startswith("BraTS-GLI-")
    assert os.path.exists(os.path.join(root, case, f"{case}-t1c.nii.gz"))
    assert json.load(open(os.path.join(run2023, "config.json")))["data"]["labels"] == "brats2023"
    # Files given on the command line are written in the run's convention, whatever the
    # config passed says; every voxel on (threshold 0) is enhancing tumour: 3, never 4.
    config = runs.load_config(run2023)
    with config.unlocked():
        config.data.labels = "brats2021"
        config.objective.threshold = 0.0
    images = [os.path.join(root, case, f"{case}-{m}.nii.gz") for m in ("t2f", "t1c", "t1n", "t2w")]
    evaluate(config, run2023, str(tmp_path), images=images)
    written = np.asarray(nib.load(str(tmp_path / f"{case}-t2f_seg.nii.gz")).dataobj)
    assert set(np.unique(written)) == {3}


def _written_vs_reported(workdir, config, out):
    """evaluate() into ``out``; every region's Dice recomputed from each written NIfTI and the
    dataset's own segmentation file, checked against metrics.csv. Returns the rows."""
    from jaxbrain.evaluation.evaluate import evaluate
    rows = evaluate(config, workdir, str(out))
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) >= 1
    for row in table:
        case = row["case"]
        written = np.asarray(nib.load(str(out / f"{case}_seg.nii.gz")).dataobj)
        truth_file = os.path.join(workdir, "data", "brats", case, f"{case}-seg.nii.gz")
        truth = np.asarray(nib.load(truth_file).dataobj)
        assert set(np.unique(written)) <= {0, 1, 2, 3}
        pred, target = (labels.brats_to_regions(x, "brats2023") for x in (written, truth))
        for k, name in enumerate(labels.REGIONS):
            from_file = _dice_or_nan(pred[..., k], target[..., k])
            np.testing.assert_allclose(float(row[f"dice_{name}"]), from_file, rtol=1e-9)
        assert pred[..., 1].any()  # a map with tumour in it, not a vacuous comparison
    return rows


def test_written_segmentation_has_the_reported_and_validated_dice(run2023, tmp_path):
    """Every region's Dice recomputed from the written NIfTI against the dataset's own
    segmentation file equals metrics.csv, which equals the validation logged for the
    checkpoint evaluated; also when the preprocessing resamples and crops the volumes."""
    from jaxbrain import runs
    config = runs.load_config(run2023)
    rows = _written_vs_reported(run2023, config, tmp_path / "own")
    with open(os.path.join(run2023, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    step = rows[0]["step"]
    val = [r for r in logged if r.get("step") == step and "val/dice_WT" in r]
    assert val, f"no validation logged at step {step}"
    for name in labels.REGIONS:
        np.testing.assert_allclose(val[0][f"val/dice_{name}"], rows[0][f"dice_{name}"],
                                   rtol=1e-6, equal_nan=True)
    assert os.path.exists(tmp_path / "own" / f"{rows[0]['case']}_overlay.png")
    with config.unlocked():
        config.data.preprocess = ("resample(spacing=(7.0, 6.0, 4.5)), zscore, "
                                  "center_crop_or_pad(shape=(30, 36, 28))")
    _written_vs_reported(run2023, config, tmp_path / "resampled")


# --- overlays ---------------------------------------------------------------------------


def _head(shape=(24, 28, 20)):
    """A skull-stripped-like head: an ellipsoid of positive values in zero air."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = grid[0] ** 2 + grid[1] ** 2 + (grid[2] / 0.6) ** 2 < 0.8
    return np.where(inside, 100.0 + 30.0 * grid[0], 0.0)


def test_slices_are_chosen_inside_the_head(tmp_path):
    image = _head()
    head = image != 0
    label = np.zeros(image.shape, np.uint8)
    label[10:14, 12:16, 9:11] = 2                 # tumour inside
    label[:, :, 0] = 3                           # a prediction over the air of slice 0
    label[0:3, 0:3, 17:20] = 1                   # and in the air of slices 17..19
    assert not head[:, :, 0].any() and not head[0:3, 0:3, 17:20].any()
    chosen = report.pick_slices(image, label != 0, 3)
    assert chosen and all(head[:, :, z].any() for z in chosen) and set(chosen) <= {9, 10}
    assert report.overlay_png(tmp_path / "o.png", image, label, slices=3) == chosen
    # Nothing labelled in the head: slices spread through the head, not through the array.
    empty = report.pick_slices(image, label * ~head, 3)
    inside = np.flatnonzero(head.any(axis=(0, 1)))
    assert all(inside[0] < z < inside[-1] for z in empty)
    # A skull-stripped head that fills the first and last slices: zero air all the same.
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in (16, 16, 8)], indexing="ij")
    tall = np.where(grid[0] ** 2 + grid[1] ** 2 < 0.7, 2.0 + grid[2], 0.0)
    assert tall[:, :, 0].any() and tall[:, :, -1].any()
    np.testing.assert_array_equal(report.head_mask(tall), tall != 0)
    # A head in noisy air (not skull-stripped): Otsu separates it.
    noisy = image + np.random.default_rng(0).normal(3.0, 1.0, image.shape)
    mask = report.head_mask(noisy)
    assert (mask == head).mean() > 0.98


def test_overlay_contrast_follows_the_region_and_can_be_chosen():
    brats21, brats23 = layouts.BRATS_CHANNELS, ("t2f", "t1c", "t1n", "t2w")
    assert report.overlay_channel(brats21, brats=True) == 1
    assert report.overlay_channel(brats23, brats=True) == 1
    assert report.overlay_channel(("t1",), brats=True) == 0
    assert report.overlay_channel(brats21) == 0
    assert report.overlay_channel(brats23, "flair") == 0 == report.overlay_channel(brats21, "t2f")
    assert report.overlay_channel(brats21, "3") == 3 == report.overlay_channel(brats21, 3)
    assert report.modality_name("t1c") == "T1c" == report.modality_name("t1ce")
    with pytest.raises(ValueError, match="overlay_channel='dwi'.*t2f"):
        report.overlay_channel(brats23, "dwi")
    with pytest.raises(ValueError, match="4 channel"):
        report.overlay_channel(brats21, 7)


@pytest.mark.parametrize("affine", [np.diag([-1.0, -1.0, 1.0, 1.0]),               # LPS
                                    np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0],       # slices on
                                              [0, -1.0, 0, 0], [0, 0, 0, 1]])])     # file axis 1
def test_slice_numbers_are_the_files(tmp_path, affine):
    data = np.zeros((10, 12, 14), np.float32)
    path = str(tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), path)
    _, geometry = nifti.read_volume(path)
    geometry = geometry.cropped((1, 2, 3), (5, 6, 7))
    for z in range(geometry.shape[2]):
        marked = np.zeros(geometry.shape, np.uint8)
        marked[:, :, z] = 1
        in_file = nifti.to_source(marked, geometry)
        index, size, axis = report.source_slice(geometry, z)
        assert size == data.shape[axis]
        assert np.flatnonzero(in_file.any(axis=tuple(a for a in range(3) if a != axis))) \
            .tolist() == [index]


def test_overlay_air_untinted_legend_inside_titles_name_contrast_and_file_slice(tmp_path):
    from PIL import Image
    image = _head((20, 20, 12))
    pred = np.zeros(image.shape, np.uint8)
    pred[6:14, 6:14, 6] = 2
    pred[8:12, 8:12, 6] = 1
    pred[9:11, 9:11, 6] = 3
    pred[0:4, 0:4, 6] = 3                        # predicted in the air
    truth = np.zeros_like(pred)
    truth[7:13, 7:13, 6] = 4
    path = str(tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 30), np.float32), np.diag([-1, -1, 1, 1.0])), path)
    geometry = nifti.read_volume(path)[1].cropped((0, 0, 10), (20, 20, 12))
    kw = dict(slices=1, geometry=geometry, modality="T1c")
    fig, chosen, ((ax,),) = report._figure(image, pred, **kw)
    assert chosen == [6] and ax.get_title() == "Prediction on T1c\naxial slice 16 / 30"
    report.overlay_png(tmp_path / "o.png", image, pred, **kw)
    picture = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(int)
    # Air (outside the head) is black, with no label colour, even where predicted.
    x0, y0, x1, y1 = np.round(ax.get_window_extent().extents).astype(int)
    panel = picture[picture.shape[0] - y1:picture.shape[0] - y0, x0:x1]
    corner = panel[: panel.shape[0] // 6, : panel.shape[1] // 6]
    assert (corner == 0).all()
    # Legends of every label present fit in the figure, below the panels, with ground truth
    # beside the prediction or not.
    for truth_map in (None, truth):
        fig, _, axes = report._figure(image, pred, ground_truth=truth_map, **kw)
        renderer = fig.canvas.get_renderer()
        box = fig.legends[0].get_window_extent(renderer)
        assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == [
            "1: necrotic tumour core", "2: oedema", "3: enhancing tumour"]
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width and 0 <= box.y0
        assert box.y1 <= min(a.get_window_extent().y0 for row in axes for a in row)
