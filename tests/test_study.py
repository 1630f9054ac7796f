"""The initialisation study (python -m jaxbrain.study): the grid's configs and bookkeeping with
a recording runner (each initialisation reaches its config: none, a pretraining run, a built
2D source file), the table / CSV / plot files, resumption (a rerun trains nothing), and one
real tiny cell through the loop and the whole-scan evaluation whose brain-age prediction
beats the training mean on the held-out site."""

from __future__ import annotations

import csv
import json
import os

import pytest

from jaxbrain import study as study_lib

# The demo preset on fewer subjects, a smaller corpus and fewer steps.
TINY = dict(study_lib.PRESETS["demo"], cohort_n=48, corpus_n=8,
            finetune=dict(total_steps=40, eval_every=20, ckpt_every=20, log_every=20,
                          batch_size=8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    study_lib.PRESETS["tiny"] = TINY
    yield str(tmp_path_factory.mktemp("study"))
    del study_lib.PRESETS["tiny"]


class Recorder:
    """A runner that records the configs it is given and returns metrics of the init."""

    def __init__(self):
        self.configs = {}

    def __call__(self, config, workdir):
        self.configs[workdir] = config
        value = {"scratch": 0.6, "natural_images": 0.7, "synthetic": 0.8,
                 "ssl": 0.75}[self._init(workdir)]
        return {"val_auc": value, "val_balanced_accuracy": value - 0.1, "test_auc": value,
                "test_balanced_accuracy": value - 0.1, "step": 1}

    @staticmethod
    def _init(workdir):
        return workdir.split(os.sep)[-3]


def test_grid_configs_outputs_and_resumption(tiny):
    out = os.path.join(tiny, "fake")
    s, cells = study_lib.parse(["--preset", "tiny", "--out", out, "--archs", "resnet18",
                                "--inits", "scratch,natural_images,synthetic,video",
                                "--tasks", "ad", "--budgets", "0.5,1", "--seeds", "0,1"])
    assert len(cells) == 12  # video is for the ViT only
    pretrained = []
    runner = Recorder()
    rows = study_lib.run_study(s, cells, runner=runner, progress=False,
                               pretrainer=lambda c, w: pretrained.append((c, w)))
    assert [r["status"] for r in rows] == ["ok"] * 12
    (config, workdir), = pretrained  # one pretraining run for all its fine-tunes
    assert config.objective.name == "multitask" and workdir.endswith("pretrain/synthetic/resnet18")
    assert config.model.block_inplanes == (64, 16, 32, 64) and config.data.roi == (32, 40, 32)
    by_init = {}
    for w, c in runner.configs.items():
        by_init.setdefault(Recorder._init(w), []).append(c)
        assert c.data.test_table.endswith("labels_ood.csv") and c.data.num_folds == 4
        assert c.data.subset_seed == c.seed and c.data.train_fraction in (0.5, 1.0)
    assert all(c.init.orbax is None and c.init.torch is None for c in by_init["scratch"])
    assert all(c.init.orbax == workdir for c in by_init["synthetic"])
    for c in by_init["natural_images"]:
        assert c.init["from"] == "torchvision_resnet" and os.path.exists(c.init.torch)
        assert c.init.encoder_only and c.init.new_head and c.init.channels == "sum"
    with open(by_init["scratch"][0].data.test_table) as f:
        assert {r["site"] for r in csv.DictReader(f)} == {"site4"}  # held out
    with open(by_init["scratch"][0].data.root) as f:
        assert "site4" not in {r["site"] for r in csv.DictReader(f)}

    table = open(os.path.join(out, "results.md")).read()
    assert "| resnet18 | synthetic | 0.800 ± 0.000 | 0.700 ± 0.000 |" in table
    assert os.path.getsize(os.path.join(out, "results.png")) > 1000
    with open(os.path.join(out, "results.csv")) as f:
        assert len(list(csv.DictReader(f))) == 12

    again = Recorder()  # a rerun trains nothing, pretrains nothing, writes the same table
    rows2 = study_lib.run_study(s, cells, runner=again, progress=False,
                                pretrainer=lambda c, w: pytest.fail("pretrained again"))
    assert not again.configs and [r["status"] for r in rows2] == ["ok"] * 12
    assert open(os.path.join(out, "results.md")).read() == table


def test_failures_are_reported_and_retried(tiny):
    out = os.path.join(tiny, "failing")
    s, cells = study_lib.parse(["--preset", "tiny", "--out", out, "--archs", "resnet18",
                                "--inits", "scratch,ssl", "--tasks", "ad", "--budgets", "1",
                                "--seeds", "0"])

    def broken(config, workdir):
        raise RuntimeError("pretraining broke")
    rows = study_lib.run_study(s, cells, runner=Recorder(), pretrainer=broken, progress=False)
    status = {r["init"]: r["status"] for r in rows}
    assert status["scratch"] == "ok"
    assert status["ssl"] == "failed: pretraining: RuntimeError: pretraining broke"
    assert "| resnet18 | ssl | failed |" in open(os.path.join(out, "results.md")).read()
    retried = []
    study_lib.run_study(s, cells, runner=Recorder(), progress=False,
                        pretrainer=lambda c, w: retried.append(c.objective.name))
    assert retried == ["contrastive"]


def test_a_stopped_run_is_not_a_finished_cell(tiny, monkeypatch):
    """A run the loop ended early (SIGTERM: checkpoint saved, normal return) stops the study
    without a result; the rerun trains it again (resuming it)."""
    from jaxbrain.training import loop
    out = os.path.join(tiny, "stopped")
    s, cells = study_lib.parse(["--preset", "tiny", "--out", out, "--archs", "resnet18",
                                "--inits", "scratch,ssl", "--tasks", "ad", "--budgets", "1",
                                "--seeds", "0"])
    calls = []
    monkeypatch.setattr(loop, "train_and_evaluate", lambda c, w: calls.append(w))  # no steps
    with pytest.raises(study_lib.Stopped, match="stopped at step None of"):
        study_lib.run_study(s, cells, runner=Recorder(), progress=False)
    assert calls and not os.path.exists(os.path.join(calls[0], study_lib.RESULT))
    with pytest.raises(study_lib.Stopped):
        study_lib.run_study(s, cells, progress=False, pretrainer=lambda c, w: None)
    assert not any(os.path.exists(os.path.join(study_lib.cell_dir(s, c), study_lib.RESULT))
                   for c in cells if c.init == "scratch")


def test_one_real_cell_beats_the_training_mean(tiny):
    """Brain age, the small ResNet from scratch, 40 steps: trained, evaluated on the
    validation fold and the held-out site, its MAE below the training mean's there."""
    out = os.path.join(tiny, "real")
    s, cells = study_lib.parse(["--preset", "tiny", "--out", out, "--archs", "resnet18",
                                "--inits", "scratch", "--tasks", "age", "--budgets", "1",
                                "--seeds", "0"])
    row, = study_lib.run_study(s, cells, progress=False)
    assert row["status"] == "ok", row["status"]
    result = json.load(open(os.path.join(out, row["workdir"], "result.json")))
    assert result["test_scans"] > 0 and result["val_scans"] > 0
    assert result["test_mae"] < result["test_mae_of_training_mean"]
    assert f"{result['test_mae']:.3f}" in open(os.path.join(out, "results.md")).read()
