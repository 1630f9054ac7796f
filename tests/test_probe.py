"""Whole-scan probes on a frozen slice encoder: scan preprocessing, the feature cache, the
slice heads' pooling, kNN against scikit-learn, and one probe run through train.py's loop."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from flax import traverse_util

from jaxbrain import models
from jaxbrain.data import slices
from jaxbrain import runs
from jaxbrain.evaluation import evaluate, probe
from jaxbrain.inference import features
from jaxbrain.training import data as data_lib
from jaxbrain.training import loop
from jaxbrain.training.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "braindino_probe.py")
SHAPE = (22, 26, 18)


def _scan(rng, radius: float) -> np.ndarray:
    """An ellipsoidal 'brain' of textured intensities; its size is the class signal."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    inside = (grid ** 2).sum(0) < radius ** 2
    x = rng.gamma(4.0, 30.0, SHAPE) * inside
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_table")
    rng = np.random.default_rng(0)
    rows = ["subject,t1,sex,age"]
    for i in range(24):
        sex = "M" if i % 2 else "F"
        path = root / f"sub{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(_scan(rng, 0.95 if sex == "M" else 0.6), np.eye(4)), path)
        rows.append(f"sub{i:02d},{path.name},{sex},{40 + i}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(root / "labels.csv")


def _config(table, **changes):
    c = load_config_file(CONFIG, "sex,demo")
    c.data.synthetic = None
    c.data.root = table
    c.probe.n_slices = 8
    c.total_steps, c.eval_every, c.ckpt_every, c.log_every = 40, 20, 40, 20
    c.progress = False
    for key, value in changes.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def test_scan_slices_are_robust_scaled_trilinear_axial_slices():
    torch = pytest.importorskip("torch")
    x = _scan(np.random.default_rng(1), 0.8)
    got = slices.scan_slices(x, 12, (20, 24))
    scaled = np.moveaxis(slices.robust_scale(x), 2, 0)  # (Z, X, Y)
    ref = torch.nn.functional.interpolate(torch.from_numpy(scaled)[None, None], size=(12, 20, 24),
                                          mode="trilinear", align_corners=False)[0, 0].numpy()
    assert got.shape == (12, 20, 24, 3)
    np.testing.assert_allclose(got[..., 1], ref, atol=1e-5)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_feature_cache_is_read_back_not_recomputed(table, tmp_path):
    c = _config(table, **{"probe.cache": str(tmp_path / "cache")})
    parts = data_lib.split(c.data, str(tmp_path))
    encoder = features.load_encoder(c)
    (train,) = features.cached_features(c, str(tmp_path), [parts.train], encoder=encoder)
    calls = encoder.calls
    assert calls == len(parts.train)  # 8 slices a scan, 16 a call: one call per scan
    x = train[0].load()["image"]
    width = c.probe.encoder.hidden_size  # the demo pretraining encoder's
    assert x.shape == (8, width) and x.dtype == np.float32
    # The normalised CLS: token 0 of the encoder's tokens after its final LayerNorm.
    stack = slices.scan_slices(nib.load(parts.train[0].images[0]).get_fdata(), 8, (32, 32))
    tokens = encoder.model.apply(encoder.variables, jnp.asarray(stack))
    np.testing.assert_allclose(x, np.asarray(tokens[:, 0]), atol=1e-5)
    np.testing.assert_allclose(x.mean(-1), 0, atol=1e-4)  # LayerNorm'd (before its affine:
    # the affine starts at scale 1, bias 0)

    again = features.load_encoder(c)
    budget = data_lib.split(dict_config(c, train_fraction=0.5), str(tmp_path)).train
    (reread, part) = features.cached_features(c, str(tmp_path), [parts.train, budget],
                                              encoder=again)
    assert again.calls == 0  # every scan from the cache
    np.testing.assert_array_equal(reread[0].load()["image"], x)
    assert 0 < len(part) < len(parts.train) and part[0].target in (0.0, 1.0)

    other = features.load_encoder(_config(table, **{"probe.cache": str(tmp_path / "cache"),
                                                    "probe.seed": 1}))
    assert features.cache_key(other, features.settings(c))[0] != \
        features.cache_key(encoder, features.settings(c))[0]


def dict_config(c, **data):
    d = c.data.copy_and_resolve_references()
    d.update(data)
    return d


def _head(pool, **kw):
    return models.from_config({"name": "slice_head", "in_channels": 16, "num_classes": 3,
                               "pool": pool, "num_heads": 2, **kw})


def _mlp(params, pooled):
    y = nn.LayerNorm(epsilon=1e-5).apply({"params": params["head_norm"]}, pooled)
    y = y @ params["head_fc1"]["kernel"] + params["head_fc1"]["bias"]
    y = jax.nn.gelu(y, approximate=False)
    return y @ params["head"]["kernel"] + params["head"]["bias"]


def test_head_pooling_shapes_and_values():
    x = jax.random.normal(jax.random.key(0), (2, 7, 16))
    for pool in ("mean", "attention", "transformer"):
        head = _head(pool)
        params = nn.meta.unbox(head.init(jax.random.key(1), x))["params"]
        out = head.apply({"params": params}, x)
        assert out.shape == (2, 3) and out.dtype == jnp.float32
        if pool == "mean":
            np.testing.assert_allclose(out, _mlp(params, x.mean(1)), atol=1e-5)
        elif pool == "attention":
            score = (x @ params["attn_score"]["kernel"])[..., 0] + params["attn_score"]["bias"]
            w = jax.nn.softmax(score, axis=1)
            np.testing.assert_allclose(out, _mlp(params, (w[..., None] * x).sum(1)), atol=1e-5)
            # one slice: its feature, whatever the score
            np.testing.assert_allclose(head.apply({"params": params}, x[:, :1]),
                                       _mlp(params, x[:, 0]), atol=1e-5)
        else:
            assert {"block0", "block1", "slice_pos"} <= set(params)
            assert not np.allclose(out, _mlp(params, x.mean(1)), atol=1e-3)
    with pytest.raises(ValueError, match="width 16"):
        _head("mean").init(jax.random.key(0), jnp.zeros((1, 4, 8)))


def test_knn_matches_scikit_learn():
    neighbors = pytest.importorskip("sklearn.neighbors")
    rng = np.random.default_rng(0)
    train_f = [rng.standard_normal((5, 12)) for _ in range(40)]
    test_f = [rng.standard_normal((5, 12)) for _ in range(15)]
    train_x, test_x = probe.pooled(train_f), probe.pooled(test_f)
    np.testing.assert_allclose(np.linalg.norm(train_x, axis=1), 1.0)
    labels = rng.integers(0, 3, 40)
    ages = rng.uniform(40, 80, 40)
    T = probe.TEMPERATURE
    for k in (1, 3, 5, 10, 20):
        ours = probe.knn_classify(train_x, labels, test_x, k, 3)
        ref = neighbors.KNeighborsClassifier(
            n_neighbors=k, metric="cosine", algorithm="brute",
            weights=lambda d: np.exp((1.0 - d) / T)).fit(train_x, labels).predict_proba(test_x)
        np.testing.assert_allclose(ours, ref, atol=1e-8)
        ours = probe.knn_regress(train_x, ages, test_x, k)
        ref = neighbors.KNeighborsRegressor(n_neighbors=k, metric="cosine", algorithm="brute"
                                            ).fit(train_x, ages).predict(test_x)
        np.testing.assert_allclose(ours, ref, atol=1e-8)
    with pytest.raises(ValueError, match="k=41"):
        probe.knn_regress(train_x, ages, test_x, 41)


def loop_config(workdir):
    return runs.load_config(workdir)  # as eval.py reads it


def test_probe_run_through_the_loop_and_knn_table(table, tmp_path):
    workdir = str(tmp_path / "run")
    c = _config(table, **{"model.pool": "attention"})
    loop.train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    val = [r for r in rows if "val/auc" in r]
    assert [r["step"] for r in val] == [20, 40] and 0.0 <= val[-1]["val/auc"] <= 1.0
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    assert np.isfinite(train).all()

    summary = evaluate.evaluate_scans(loop_config(workdir), workdir, str(tmp_path / "eval"))
    assert summary["scans"] == 6 and summary["metrics"]["auc"] in [r["val/auc"] for r in val]
    assert os.path.exists(tmp_path / "eval" / "predictions.csv")

    table_rows = probe.main(["knn", "--workdir", workdir, "--k", "1,5,50"])
    assert [r["k"] for r in table_rows] == [1, 5, 50]
    assert table_rows[-1]["k_used"] == table_rows[-1]["train_scans"] == 18
    assert table_rows[0]["auc"] > 0.8  # the scans' size is in their slices
    assert os.path.exists(os.path.join(workdir, "knn.csv"))
    text = open(os.path.join(workdir, "knn.md")).read()
    assert text.startswith("| k | k_used | train_scans | scans | auc | accuracy |")


def test_features_of_a_dinov2_file_are_its_x_norm_clstoken(table, tmp_path):
    """probe.torch: a DINOv2 backbone file (the dinov2 package's model, random weights); the
    cached features of a scan equal the original's x_norm_clstoken on the scan's slices made
    with torch's trilinear resize."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("dinov2")
    from dinov2.models.vision_transformer import DinoVisionTransformer
    from jaxbrain.models.dino import dino_preset
    torch.manual_seed(0)
    ref = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                mlp_ratio=4.0, init_values=1.0).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 0.1)
                    + (1.0 if name.endswith("norm.weight") or ".norm" in name else 0.0))
    path = str(tmp_path / "dinov2_tiny.pth")
    torch.save(ref.state_dict(), path)
    c = _config(table)
    c.probe.encoder = {"name": "dino_vit", **dino_preset(
        "dinov2_vits14", hidden_size=32, depth=2, num_heads=2, mlp_dim=128, patch_size=8,
        img_size=32, drop_path=0.0)}
    c.probe.torch = path
    parts = data_lib.split(c.data, str(tmp_path))
    (got,) = features.cached_features(c, str(tmp_path), [parts.val[:2]])
    for case, cached in zip(parts.val[:2], got):
        x = nib.load(case.images[0]).get_fdata().astype(np.float32)
        scaled = torch.from_numpy(np.moveaxis(slices.robust_scale(x), 2, 0).copy())
        stack = torch.nn.functional.interpolate(scaled[None, None], size=(8, 32, 32),
                                                mode="trilinear", align_corners=False)[0, 0]
        with torch.no_grad():
            cls = ref.forward_features(stack[:, None].repeat(1, 3, 1, 1))["x_norm_clstoken"]
        np.testing.assert_allclose(cached.load()["image"], cls.numpy(), atol=1e-4)


def test_a_demo_pretrained_encoder_beats_a_random_one(tmp_path):
    """configs/braindino_pretrain.py:demo (self-distillation on synthetic brains) through the
    loop, then kNN on scans whose class is the brain's size: the EMA teacher's encoder (found
    in the run by itself) against the same architecture at random."""
    pretrain = load_config_file(os.path.join(ROOT, "configs", "braindino_pretrain.py"), "demo")
    pretrain.progress = False
    run = str(tmp_path / "pretrain")
    loop.train_and_evaluate(pretrain, run)

    rng = np.random.default_rng(0)
    shape = (40, 48, 36)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    rows = ["subject,t1,sex"]
    for i in range(40):
        sex = "M" if i % 2 else "F"
        radius = (0.9 if sex == "M" else 0.75) + rng.uniform(-0.05, 0.05)
        x = rng.gamma(4.0, 30.0, shape) * ((grid ** 2).sum(0) < radius ** 2)
        nib.save(nib.Nifti1Image(x.astype(np.float32), np.eye(4)), tmp_path / f"s{i}.nii.gz")
        rows.append(f"s{i},s{i}.nii.gz,{sex}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")

    c = load_config_file(CONFIG, "sex,demo")  # the demo encoder is the pretraining demo's
    c.data.synthetic, c.data.root = None, str(tmp_path / "labels.csv")
    trained = models.from_config(pretrain.model).encoder_kwargs()
    assert {k: v for k, v in c.probe.encoder.items() if k not in ("name", "img_size", "layer_scale_init")} \
        == {k: trained[k] for k in c.probe.encoder if k not in ("name", "img_size", "layer_scale_init")}
    c.probe.encoder.layer_scale_init = trained["layer_scale_init"]  # the run's, at random too
    c.probe.slice_size, c.probe.n_slices = pretrain.data.slice_size, 16
    ks = (1, 3, 5, 10, 20)
    got = probe.compare_encoders(c, str(tmp_path / "probe"),
                                 {"random": {"orbax": None}, "pretrained": {"orbax": run}}, ks=ks)
    auc = {name: np.mean([r["auc"] for r in rows]) for name, rows in got.items()}
    assert auc["pretrained"] > auc["random"] + 0.1, auc
    # The demo probe's head and the demo LoRA preset take the run's encoder as they are.
    assert c.model.in_channels == pretrain.model.hidden_size
    lora = load_config_file(CONFIG, "sex,demo,lora")
    lora.init.orbax = run
    model = models.from_config(lora.model)
    x = jax.ShapeDtypeStruct((1, 4, 32, 32, 1), jnp.float32)
    start = loop.initial_variables(lora, model, x, jax.random.key(0))
    teacher = runs.load_run(run).variables["params"]["encoder"]
    np.testing.assert_array_equal(start["params"]["encoder"]["blocks_1"]["mlp"]["linear1"]["kernel"],
                                  teacher["blocks_1"]["mlp"]["linear1"]["kernel"])


def test_lora_probe_through_the_loop(table, tmp_path):
    """configs/braindino_probe.py:lora: slice stacks cached once, the encoder frozen but for
    its q / v adapters, the head trained through it; eval.py reads the same cache."""
    workdir = str(tmp_path / "lora")
    c = _config(table)
    c_lora = load_config_file(CONFIG, "sex,demo,lora")
    with c.unlocked():
        c.model, c.data.source, c.init = c_lora.model, "scan_slices", c_lora.init
        c.optim.freeze, c.optim.unfreeze = c_lora.optim.freeze, c_lora.optim.unfreeze
        c.ckpt_every = 20
    loop.train_and_evaluate(c, workdir)
    stacks = [d for d in os.listdir(os.path.join(workdir, "features"))]
    assert len(stacks) == 1
    one = next(p for p in os.scandir(os.path.join(workdir, "features", stacks[0])) if p.is_dir())
    assert np.load(os.path.join(one.path, "image.npy")).shape == (8, 32, 32)

    def params(step):
        return traverse_util.flatten_dict(runs.load_run(workdir, step).variables["params"], sep="/")
    first, last = params(20), params(40)
    moved = sorted(k for k in last if not np.array_equal(first[k], last[k]))
    assert moved and all("/lora_" in k or k.startswith("head/") for k in moved), moved
    assert any("lora_b_v" in k for k in moved) and any(k.startswith("head/") for k in moved)

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        val = [json.loads(line) for line in f if "val/auc" in line]
    summary = evaluate.evaluate_scans(loop_config(workdir), workdir, str(tmp_path / "eval"))
    assert summary["scans"] == 6 and summary["metrics"]["auc"] in [r["val/auc"] for r in val]

    # The adapted encoder alone, adapters merged, in DINOv3's layout: the same slice features.
    from jaxbrain.convert import load_torch
    from jaxbrain.convert.__main__ import main as convert_main
    from jaxbrain.models.dino import DinoViT
    out = str(tmp_path / "encoder.pt")
    assert convert_main(["to-torch", workdir, out, "--encoder"]) == 0
    run = runs.load_run(workdir)
    kw = {**run.model.encoder_kwargs(), "lora_rank": 0}
    backbone = DinoViT(**kw)
    params, report = load_torch(out, backbone)
    assert report.ok and report.source_format == "DINOv3 original"
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    adapted = DinoViT(**run.model.encoder_kwargs())
    np.testing.assert_allclose(backbone.apply({"params": params}, x),
                               adapted.apply({"params": run.variables["params"]["encoder"]}, x),
                               atol=2e-5)


def test_stroke_preset_reads_braindinos_table_and_reports_days(table, tmp_path):
    """configs/braindino_probe.py:stroke on a table in BrainDINO's ATLAS layout (``Days Post
    Stroke,image_path``, no subject column): log(1 + days) with the Huber loss, MAE in days."""
    import csv as csv_lib
    with open(table) as f:
        images = [os.path.join(os.path.dirname(table), r["t1"]) for r in csv_lib.DictReader(f)]
    path = tmp_path / "train.csv"
    path.write_text("Days Post Stroke,image_path\n"
                    + "".join(f"{3 + 25 * i},{p}\n" for i, p in enumerate(images)))
    c = load_config_file(CONFIG, "stroke")
    demo = load_config_file(CONFIG, "demo")
    with c.unlocked():
        c.data.root, c.probe = str(path), demo.probe
        c.probe.n_slices = 8
        c.model.in_channels, c.model.num_heads = demo.model.in_channels, 2
        c.total_steps, c.eval_every, c.ckpt_every, c.log_every = 20, 20, 20, 20
        c.progress = False
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(c, workdir)
    summary = evaluate.evaluate_scans(loop_config(workdir), workdir, str(tmp_path / "eval"))
    assert summary["scans"] == 5 and summary["objective"]["transform"] == "log1p"
    with open(tmp_path / "eval" / "predictions.csv") as f:
        rows = list(csv_lib.DictReader(f))
    targets = sorted(float(r["target"]) for r in rows)
    assert set(targets) <= {3.0 + 25 * i for i in range(24)}  # days, not log days
    assert summary["metrics"]["mae"] > 0


def test_label_budget_sweep_writes_its_table_and_plot(table, tmp_path):
    """python -m jaxbrain.evaluation.probe budgets at test size: two label fractions, a head
    and kNN per run, one feature cache, finished runs skipped on a rerun."""
    workdir = str(tmp_path / "budgets")
    c = _config(table)
    c.total_steps, c.eval_every, c.ckpt_every = 20, 20, 20
    rows = probe.budget_sweep(c, workdir, {"random": None}, fractions=(0.5, 1.0), seeds=(0,),
                              k=3, progress=False)
    assert [r["fraction"] for r in rows] == [0.5, 1.0]
    assert 6 <= rows[0]["train_scans"] <= 10 and rows[1]["train_scans"] == 18  # stratified half
    assert all(0.0 <= r["head_auc"] <= 1.0 and 0.0 <= r["knn_auc"] <= 1.0 for r in rows)
    assert rows[-1]["knn_auc"] > 0.8  # the scans' size is in their slices
    assert len(os.listdir(os.path.join(workdir, "features"))) == 1  # one encoder, one cache
    text = open(os.path.join(workdir, "budgets.md")).read()
    assert text.startswith("| encoder | label fraction | training scans | head AUC | kNN AUC |")
    assert os.path.getsize(os.path.join(workdir, "budgets.png")) > 1000
    stamp = os.path.getmtime(os.path.join(workdir, "runs", "random", "f1", "s0", "result.json"))
    again = probe.main(["budgets", "--workdir", workdir, "--config", f"{CONFIG}:sex,demo",
                        "--encoder", "random=", "--fractions", "0.5,1", "--k", "3",
                        f"--config.data.root={table}", "--config.data.synthetic=None",
                        "--config.probe.n_slices=8"])
    assert [r["head_auc"] for r in again] == [r["head_auc"] for r in rows]
    assert os.path.getmtime(os.path.join(workdir, "runs", "random", "f1", "s0", "result.json")) == stamp
