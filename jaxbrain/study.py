r"""The initialisation study: where should a 3D brain model's weights come from?

    python -m jaxbrain.study --preset demo --out runs/study          # built-in data, CPU
    python -m jaxbrain.study --preset demo --out runs/study --archs vit --tasks ad --seeds 0
    python -m jaxbrain.study --preset full --out runs/study_full --held-out-site site3 \
        --data ad=/data/adni/labels.csv pd=/data/ppmi/labels.csv age=/data/ukb/labels.tsv \
        --unlabeled /data/ukb/subjects.csv \
        --source vit:natural_images=vit_b16_in21k.pth --source vit:video=videomae_k400.pth \
        --set total_steps=10000 --pretrain-set data.synthetic.n=5000

A grid of fine-tuning runs, initialisation x architecture x task x label budget x seed:

* initialisations (:data:`INITS`): ``scratch``; ``natural_images`` (a 2D timm ViT /
  torchvision-layout ResNet or DenseNet inflated to 3D: ``init.torch`` + ``init.from``);
  ``video`` (a VideoMAE, ViT only); ``synthetic`` (the model's own supervised multitask
  pretraining, age + sex + diagnosis, on a synthetic cohort: configs/brain_pretrain.py
  ``synthetic``); ``ssl`` (self-supervised pretraining on unlabeled scans: ``mae`` for the
  ViT, ``contrastive`` for the CNNs). Pretraining runs once per architecture and every
  fine-tune of it starts from its encoder (``init.orbax``).
* architectures (:data:`ARCHS`): ``vit``, ``resnet18``, ``densenet121`` (the demo preset: small
  models of each family); tasks ``ad``, ``pd`` (configs/brain_classification.py) and ``age``
  (configs/brain_age.py); label budgets are ``data.train_fraction``.
* one site is held out: the other sites train (a 4-fold subject split, fold 0 validates and
  picks the checkpoint) and the held-out site is the test split (out of distribution).

Sources without a file (``--source arch:init=path``) are built with random weights (timm,
transformers: nothing is downloaded), so on built-in data those rows test the path, not the
benefit of real pretrained weights; the CSV's ``source`` column says which it was.

Every run has its own workdir under ``--out`` (``pretrain/<init>/<arch>``,
``runs/<task>/<arch>/<init>/b<budget>/s<seed>``); a finished cell keeps ``result.json`` and
is skipped on a rerun (an unfinished one resumes from its checkpoint). Written to ``--out``:
``results.csv`` (one row per run), ``results.md`` (mean +- std over seeds: AUC and balanced
accuracy, MAE for age; held-out site and validation fold) and ``results.png`` (the metric
on the held-out site against the label budget, one line per initialisation, one panel per
task and architecture).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import numpy as np

INITS = ("scratch", "natural_images", "video", "synthetic", "ssl")
ARCHS = ("vit", "resnet18", "densenet121")
TASKS = ("ad", "pd", "age")
PRETRAINED = ("synthetic", "ssl")  # initialisations made by a pretraining run of the study
SOURCE_FAMILY = {("natural_images", "vit"): "timm_vit",
                 ("natural_images", "resnet18"): "torchvision_resnet",
                 ("natural_images", "densenet121"): "torchvision_densenet",
                 ("video", "vit"): "videomae"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# The fields a source network fixes in the ViT (the sizes stay those of the architecture):
# timm's ViT has a qkv bias and LayerNorm eps 1e-6; VideoMAE no CLS token (mean pooling), q
# and v biases (no k bias) and eps 1e-12, a pre-training file's final norm left out as
# VideoMAE's fine-tuning leaves it (configs/_whole_scan.py's presets). The CNNs of every initialisation are torchvision's
# (7^3 stem, shortcut B without downsample bias): scratch and inflated runs train one network.
VIT_FIELDS = {"natural_images": dict(qkv_bias=True, norm_eps=1e-6),
              "video": dict(cls_token=False, pool="mean", qkv_bias=True, mask_k_bias=True,
                            norm_eps=1e-12)}

# --------------------------------------------------------------------------------------
# Presets.

_DEMO_MODELS = {
    # The whole-scan demo ViT (configs/_whole_scan.py DEMO_VIT) on 6 mm scans: 8^3 patches.
    "vit": dict(name="vit", in_channels=1, patch_size=8, hidden_size=96, depth=4, num_heads=4,
                mlp_dim=192, cls_token=True, pos_embed="learned", pool="mean", qkv_bias=False,
                norm_eps=1e-5, dropout=0.0, drop_path=0.0),
    # ResNet-10 shape after torchvision's stem (7^3, 64 wide) and with its shortcut.
    "resnet18": dict(name="resnet", in_channels=1, block="basic", layers=(1, 1, 1, 1),
                     block_inplanes=(64, 16, 32, 64), conv1_t_size=7, conv1_t_stride=2,
                     shortcut_type="B", bias_downsample=False),
    # A DenseNet of 3 blocks of 2 layers, growth 8 (3 blocks: the contrastive crops, 24 x 30
    # x 24, keep a voxel after the stem's 4x and two transitions).
    "densenet121": dict(name="densenet", in_channels=1, init_features=16, growth_rate=8,
                        block_config=(2, 2, 2), bn_size=2),
}
_FULL_MODELS = {
    "vit": dict(name="vit", in_channels=1, patch_size=16, hidden_size=768, depth=12,
                num_heads=12, mlp_dim=3072, cls_token=True, pos_embed="learned", pool="cls",
                qkv_bias=False, norm_eps=1e-5, dropout=0.0, drop_path=0.1),
    "resnet18": dict(name="resnet18", in_channels=1, shortcut_type="B", bias_downsample=False),
    "densenet121": dict(name="densenet121", in_channels=1),
}

PRESETS = {
    # 6 mm synthetic cohorts (30 x 36 x 30, cropped / padded to 32 x 40 x 32), 4 sites of
    # which site4 is held out, small models, 60 fine-tuning and 200 pretraining steps.
    "demo": dict(built_in=True, models=_DEMO_MODELS, roi=(32, 40, 32),
                 cohort_shape=(30, 36, 30), cohort_n=160, corpus_n=96, held_out_site="site4",
                 budgets=(0.1, 1.0),
                 seeds=(0, 1), finetune=dict(total_steps=60, eval_every=20, ckpt_every=20,
                                             log_every=20, batch_size=8),
                 pretrain=dict(total_steps=200, ckpt_every=100, log_every=20, batch_size=8),
                 vit_source=dict(img=40, patch=8)),
    # The configs' own sizes (2 mm, 96^3), ViT-B/16, ResNet-18, DenseNet-121, their steps.
    "full": dict(built_in=False, models=_FULL_MODELS, roi=None, cohort_shape=None,
                 cohort_n=None, corpus_n=None, held_out_site=None, budgets=(0.1, 1.0),
                 seeds=(0, 1, 2),
                 finetune={}, pretrain={}, vit_source=dict(img=224, patch=16)),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One fine-tuning run of the grid."""

    task: str
    arch: str
    init: str
    budget: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}/{self.arch}/{self.init}/b{self.budget:g}/s{self.seed}"


def grid(inits: Sequence[str], archs: Sequence[str], tasks: Sequence[str],
         budgets: Sequence[float], seeds: Sequence[int]) -> list[Cell]:
    """The cells of the grid in run order, seed by seed (an interrupted study has the whole
    grid for its first seeds); the video initialisation for the ViT only."""
    return [Cell(t, a, i, float(b), int(s)) for s in seeds for t in tasks for a in archs
            for i in inits for b in budgets if i != "video" or a == "vit"]


def pretraining_jobs(cells: Iterable[Cell]) -> list[tuple[str, str]]:
    """The (init, arch) pretraining runs the cells need, each once."""
    return sorted({(c.init, c.arch) for c in cells if c.init in PRETRAINED})


# --------------------------------------------------------------------------------------
# Configs.


def _config_file(name: str, arg: str):
    from jaxbrain.training.config import load_config_file
    return load_config_file(os.path.join(CONFIGS, name), arg)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(c: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """``key.sub=value`` strings (values read as Python literals, else strings) into ``c``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value (e.g. total_steps=5000)")
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            if p not in node:
                raise KeyError(f"override {item!r}: the config has no {key!r}")
            node = node[p]
        node[leaf] = _literal(value)


def model_for(preset: dict, arch: str, init: str, roi) -> dict:
    """The model section of ``arch`` for ``init`` (without num_classes)."""
    model = dict(preset["models"][arch])
    if arch == "vit":
        model.update(VIT_FIELDS.get(init, {}), img_size=tuple(roi))
    return model


@dataclasses.dataclass
class Study:
    """Everything a run needs: the preset, the study folder, the tasks' data, the sources and
    the options given on the command line."""

    out: str
    preset: str = "demo"
    data: dict = dataclasses.field(default_factory=dict)  # task -> label table
    held_out_site: str | None = None
    unlabeled: str | None = None  # subject list for ssl (full preset)
    sources: dict = dataclasses.field(default_factory=dict)  # (init, arch) -> torch file
    overrides: Sequence[str] = ()  # fine-tuning config overrides
    pretrain_overrides: Sequence[str] = ()

    @property
    def spec(self) -> dict:
        return PRESETS[self.preset]

    @property
    def built_in(self) -> bool:
        """Whether the preset runs on the built-in synthetic cohorts (the configs' demos)."""
        return bool(self.spec["built_in"])

    def roi(self, c) -> tuple:
        return tuple(self.spec["roi"] or c.data.roi)

    # ---- data -----------------------------------------------------------------------
    def tables(self, task: str) -> tuple[str, str, str | None]:
        """(training-sites table, held-out-site table, image root) of ``task``, written
        under ``out/data/<task>`` once: the demo's synthetic cohort, or the given table
        split by its site column."""
        folder = os.path.join(self.out, "data", task)
        inside, outside = (os.path.join(folder, f"labels_{n}.csv") for n in ("in", "ood"))
        site = self.held_out_site or self.spec["held_out_site"]
        if self.built_in:
            image_root = None
            if not os.path.exists(os.path.join(folder, ".complete")):
                _write_demo_cohort(task, folder, self.spec)
            table = os.path.join(folder, "labels.csv")
        else:
            if task not in self.data:
                raise ValueError(f"--preset full: no label table for task {task!r} (pass "
                                 f"--data {task}=/path/labels.csv)")
            if not site:
                raise ValueError("--preset full: name the site held out (--held-out-site)")
            table = self.data[task]
            image_root = table if os.path.isdir(table) else os.path.dirname(os.path.abspath(table))
        if not os.path.exists(outside):
            split_by_site(table, site, inside, outside)
        return inside, outside, image_root

    def corpus(self, synthetic) -> str:
        """The demo's pretraining corpus (the pretraining config's synthetic cohort with
        the preset's size and grid, seed 1), written under ``out/data/corpus`` once."""
        from jaxbrain.data import cohort
        folder = os.path.join(self.out, "data", "corpus")
        if not os.path.exists(os.path.join(folder, ".complete")):
            options = {k: (v.to_dict() if hasattr(v, "to_dict") else v)
                       for k, v in synthetic.items()
                       if k in ("groups", "ages", "pd", "followup", "sites", "anatomy")}
            cohort.write_cohort(folder, self.spec["corpus_n"], shape=self.spec["cohort_shape"],
                                seed=1, progress=False, **options)
            open(os.path.join(folder, ".complete"), "w").close()
        return folder

    # ---- configs --------------------------------------------------------------------
    def finetune_config(self, cell: Cell, pretrained: str | None, source: str | None):
        """The whole-scan config of one cell."""
        if cell.task == "age":
            c = _config_file("brain_age.py", "demo" if self.built_in else "")
        else:
            c = _config_file("brain_classification.py",
                             cell.task + (",demo" if self.built_in else ""))
        inside, outside, image_root = self.tables(cell.task)
        roi = self.roi(c)
        with c.unlocked():
            c.data.synthetic = None
            c.data.update(root=inside, test_table=outside, image_root=image_root,
                          num_folds=4, fold=0, split_seed=0, held_out_site=None,
                          train_fraction=cell.budget, subset_seed=cell.seed, roi=roi)
            num_classes = 1 if cell.task == "age" else 2
            c.model = ml_collections.ConfigDict(
                dict(model_for(self.spec, cell.arch, cell.init, roi), num_classes=num_classes))
            c.seed = cell.seed
            c.progress = False
            c.update(self.spec["finetune"])
            c.init.update(torch=None, orbax=None, encoder_only=True, new_head=True, strict=True)
            c.init["from"] = None
            if cell.init in PRETRAINED:
                c.init.orbax = pretrained
            elif cell.init in ("natural_images", "video"):
                c.init.torch = source
                c.init["from"] = SOURCE_FAMILY[(cell.init, cell.arch)]
                c.init.channels = "sum"
            apply_overrides(c, self.overrides)
        return c

    def pretrain_config(self, init: str, arch: str):
        """The configs/brain_pretrain.py run of ``init`` (synthetic / ssl) for ``arch``."""
        objective = ("synthetic" if init == "synthetic"
                     else "mae" if arch == "vit" else "contrastive")
        demo = self.built_in
        c = _config_file("brain_pretrain.py", f"{objective},{arch}" + (",demo" if demo else ""))
        roi = self.roi(c)
        base = model_for(self.spec, arch, "scratch", roi)
        with c.unlocked():
            if objective == "mae":
                decoder = {k: v for k, v in c.model.items() if k.startswith("decoder_")}
                model = dict(base, name="mae", **decoder)
                c.objective.patch_size = base["patch_size"]
            elif objective == "contrastive":
                model = dict(base, name="contrastive_" + base["name"],
                             projection_hidden=c.model.projection_hidden,
                             projection_dim=c.model.projection_dim)
            else:
                model = dict(base, num_classes=c.model.num_classes)
            c.model = ml_collections.ConfigDict(model)
            c.data.roi = roi
            if demo:  # one corpus for every pretraining run: another seed than the tasks'
                c.data.root = self.corpus(c.data.synthetic)  # cohorts (other subjects, sites)
                c.data.synthetic = None
            elif objective != "synthetic":
                if not self.unlabeled:
                    raise ValueError("--preset full: ssl pretraining needs the unlabeled scans "
                                     "(--unlabeled /path/subjects.csv)")
                c.data.root = self.unlabeled
            c.seed = 0
            c.progress = False
            c.update(self.spec["pretrain"])
            apply_overrides(c, self.pretrain_overrides)
        return c


def _write_demo_cohort(task: str, folder: str, spec: dict) -> None:
    from jaxbrain.data import cohort
    cohort_cfg = _config_file("brain_age.py" if task == "age" else "brain_classification.py",
                              "demo" if task == "age" else f"{task},demo").data.synthetic
    options = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in cohort_cfg.items()
               if k in ("groups", "ages", "pd", "followup", "seed")}
    cohort.write_cohort(folder, spec["cohort_n"], shape=spec["cohort_shape"], sites=4,
                        progress=False, **options)
    open(os.path.join(folder, ".complete"), "w").close()


def split_by_site(table: str, site: str, inside: str, outside: str) -> None:
    """Writes the rows of ``table`` (CSV / TSV, or a folder holding labels.csv) from sites
    other than ``site`` to ``inside`` and those of ``site`` to ``outside`` (CSV)."""
    if os.path.isdir(table):
        names = ("labels.csv", "labels.tsv", "participants.tsv")
        table = next((os.path.join(table, n) for n in names
                      if os.path.exists(os.path.join(table, n))), table)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if table.endswith(".tsv") else ","))
    column = next((k for k in (rows[0] if rows else {}) if k.lower() == "site"), None)
    if column is None:
        raise ValueError(f"{table}: no site column to hold a site out (columns: "
                         f"{list(rows[0]) if rows else []})")
    held = [r for r in rows if r[column] == site]
    if not held:
        raise ValueError(f"{table}: no row of site {site!r} (sites: "
                         f"{sorted({r[column] for r in rows})})")
    os.makedirs(os.path.dirname(inside), exist_ok=True)
    for path, part in ((inside, [r for r in rows if r[column] != site]), (outside, held)):
        with open(path + ".tmp", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
        os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------
# Source networks (random weights unless a file is given).


def build_source(init: str, arch: str, spec: dict, path: str) -> str:
    """Writes a random-weight torch source network of ``arch`` for ``init`` to ``path``
    (timm's ViT / ResNet / DenseNet, transformers' VideoMAEModel) with the architecture's
    sizes; returns a description."""
    import torch
    from jaxbrain.convert.timm_import import timm_module
    torch.manual_seed(0)
    m = spec["models"][arch]
    if (init, arch) == ("video", "vit"):
        import transformers
        v = spec["vit_source"]
        cfg = transformers.VideoMAEConfig(
            image_size=v["img"], patch_size=m["patch_size"], num_channels=3, num_frames=16,
            tubelet_size=2, hidden_size=m["hidden_size"], num_hidden_layers=m["depth"],
            num_attention_heads=m["num_heads"], intermediate_size=m["mlp_dim"], qv_bias=True,
            use_mean_pooling=False)  # a pre-training encoder, as published: its final norm
        net, what = transformers.VideoMAEModel(cfg), "transformers VideoMAEModel (pre-training)"
    elif arch == "vit":
        v = spec["vit_source"]
        net = timm_module("vision_transformer").VisionTransformer(
            img_size=v["img"], patch_size=m["patch_size"], in_chans=3, num_classes=1000,
            embed_dim=m["hidden_size"], depth=m["depth"], num_heads=m["num_heads"],
            mlp_ratio=m["mlp_dim"] / m["hidden_size"], qkv_bias=True,
            global_pool="avg" if m["pool"] == "mean" else "token")
        what = "timm VisionTransformer"
    elif arch == "resnet18":
        r = timm_module("resnet")
        layers = m.get("layers", (2, 2, 2, 2))
        channels = m.get("block_inplanes", (64, 128, 256, 512))
        if channels[0] != 64:
            raise ValueError(f"{arch}: torchvision's ResNet stem is 64 wide, the model's "
                             f"block_inplanes start at {channels[0]}")
        net = r.ResNet(r.BasicBlock, list(layers), channels=tuple(channels), num_classes=1000)
        what = "timm ResNet (torchvision layout)"
    elif arch == "densenet121":
        d = timm_module("densenet")
        net = d.DenseNet(growth_rate=m.get("growth_rate", 32),
                         block_config=tuple(m.get("block_config", (6, 12, 24, 16))),
                         bn_size=m.get("bn_size", 4), num_classes=1000)
        what = "timm DenseNet (torchvision layout)"
    else:
        raise ValueError(f"no {init} source network for {arch!r}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(net.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    return f"{what}, random weights"


# --------------------------------------------------------------------------------------
# Running.

RESULT = "result.json"


class NotAvailable(Exception):
    """An initialisation this installation cannot make (reported in the table as n/a)."""


class Stopped(BaseException):
    """A run ended before its last step (SIGTERM: the loop saved a checkpoint and returned):
    the study stops too, and a rerun resumes that run. Not an ``Exception``, so that no
    cell records it as a failure."""


def _check_finished(config, workdir: str) -> None:
    from jaxbrain import runs
    step, total = runs.latest_step(workdir), int(config.total_steps)
    if step is None or step < total:
        raise Stopped(f"{workdir}: stopped at step {step} of {total}; rerun the study to "
                      "resume it")


def pretrain(config, workdir: str) -> None:
    """Trains (or resumes) a pretraining run to its last step."""
    from jaxbrain.training.loop import train_and_evaluate
    train_and_evaluate(config, workdir)
    _check_finished(config, workdir)


def _quietly(fn: Callable, log: str):
    """Runs ``fn`` with its prints in the file ``log``."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f):
        return fn()


def train_and_evaluate_cell(config, workdir: str) -> dict:
    """Trains (or resumes) the run, then evaluates its best checkpoint on the validation
    fold and the held-out site; returns the metrics as ``val_*`` / ``test_*``."""
    from jaxbrain.evaluation.evaluate import evaluate_scans
    from jaxbrain.training.loop import train_and_evaluate
    train_and_evaluate(config, workdir)
    _check_finished(config, workdir)  # a stopped run is not a finished cell
    out = {}
    for split in ("val", "test"):
        summary = evaluate_scans(config, workdir, os.path.join(workdir, f"eval_{split}"),
                                 split=split)
        out.update({f"{split}_{k}": float(v) for k, v in summary["metrics"].items()})
        out[f"{split}_scans"] = summary["scans"]
        out["step"] = summary["step"]
    return out


def run_study(study: Study, cells: Sequence[Cell], *, runner: Callable | None = None,
              pretrainer: Callable | None = None, progress: bool = True) -> list[dict]:
    """Runs the pretraining jobs and the cells not finished yet (``result.json``), then writes
    results.csv / .md / .png. ``runner(config, workdir) -> metrics`` and
    ``pretrainer(config, workdir)`` replace the real training (tests). Returns the rows."""
    from tqdm import tqdm
    runner = runner or train_and_evaluate_cell
    pretrainer = pretrainer or pretrain
    from jaxbrain.parallel import enable_compilation_cache
    enable_compilation_cache(None)
    os.makedirs(study.out, exist_ok=True)
    jobs = pretraining_jobs(cells)
    done = [c for c in cells if os.path.exists(os.path.join(cell_dir(study, c), RESULT))]
    pre_done = [j for j in jobs if os.path.exists(os.path.join(pretrain_dir(study, *j), RESULT))]
    rows, pretrained, failures = [], {}, {}
    with tqdm(total=len(jobs) + len(cells), initial=len(done) + len(pre_done), unit="run",
              desc="study", disable=not progress, dynamic_ncols=True) as bar:
        for init, arch in jobs:
            workdir = pretrain_dir(study, init, arch)
            bar.set_postfix_str(f"pretrain {init}/{arch}")
            marker = os.path.join(workdir, RESULT)
            if not os.path.exists(marker):
                try:
                    config = study.pretrain_config(init, arch)
                    start = time.time()
                    _quietly(lambda: pretrainer(config, workdir), os.path.join(workdir, "log.txt"))
                    _write_json(marker, {"seconds": time.time() - start})
                except Exception as e:  # noqa: BLE001 - reported in the table, others go on
                    failures[(init, arch)] = _failure(e, workdir)
                bar.update()
            if os.path.exists(marker):
                pretrained[(init, arch)] = workdir
        for cell in cells:
            bar.set_postfix_str(cell.name)
            row = _run_cell(study, cell, runner, pretrained, failures)
            if row["status"] == "skipped":
                row["status"] = "ok"
            else:
                bar.update()
                write_outputs(study.out, rows + [row], figure=False)  # the table so far
            rows.append(row)
    write_outputs(study.out, rows)
    return rows


def _run_cell(study, cell, runner, pretrained, failures) -> dict:
    workdir = cell_dir(study, cell)
    row = {"task": cell.task, "arch": cell.arch, "init": cell.init, "budget": cell.budget,
           "seed": cell.seed, "workdir": os.path.relpath(workdir, study.out), "source": ""}
    marker = os.path.join(workdir, RESULT)
    if os.path.exists(marker):
        with open(marker) as f:
            return {**row, **json.load(f), "status": "skipped"}
    source = None
    try:
        if cell.init in PRETRAINED:
            if (cell.init, cell.arch) not in pretrained:
                why = failures.get((cell.init, cell.arch))
                if why is None:
                    return {**row, "status": "not available: pretraining did not run"}
                return {**row, "status": f"failed: pretraining: {why}"}
            row["source"] = os.path.relpath(pretrained[(cell.init, cell.arch)], study.out)
        elif cell.init != "scratch":
            source, row["source"] = _source(study, cell.init, cell.arch)
        config = study.finetune_config(cell, pretrained.get((cell.init, cell.arch)), source)
        start = time.time()
        metrics = _quietly(lambda: runner(config, workdir), os.path.join(workdir, "log.txt"))
    except NotAvailable as e:
        return {**row, "status": f"not available: {e}"}
    except Exception as e:  # noqa: BLE001 - one failed cell does not stop the grid
        return {**row, "status": f"failed: {_failure(e, workdir)}"}
    result = {**metrics, "seconds": round(time.time() - start, 1), "source": row["source"],
              "train_fraction": cell.budget}
    _write_json(marker, result)
    return {**row, **result, "status": "ok"}


def _source(study: Study, init: str, arch: str) -> tuple[str, str]:
    """(torch file, description) of a 2D / video source: the given one or a built one."""
    if (init, arch) in study.sources:
        path = study.sources[(init, arch)]
        return path, path
    if (init, arch) not in SOURCE_FAMILY:
        raise ValueError(f"no {init} source for {arch}")
    try:
        from jaxbrain.convert import inflate  # noqa: F401 - the 2D / video -> 3D path
    except ImportError as e:
        raise NotAvailable(f"2D / video inflation ({e})") from e
    path = os.path.join(study.out, "sources", f"{init}_{arch}.pt")
    info = path + ".json"
    if not os.path.exists(info):
        what = build_source(init, arch, study.spec, path)
        _write_json(info, {"source": what})
    with open(info) as f:
        return path, json.load(f)["source"]


def _failure(e: Exception, workdir: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "error.txt"), "w") as f:
        f.write("".join(traceback.format_exception(e)))
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {first}"[:200]


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def cell_dir(study: Study, cell: Cell) -> str:
    return os.path.join(study.out, "runs", cell.task, cell.arch, cell.init,
                        f"b{cell.budget:g}", f"s{cell.seed}")


def pretrain_dir(study: Study, init: str, arch: str) -> str:
    return os.path.join(study.out, "pretrain", init, arch)


# --------------------------------------------------------------------------------------
# Outputs.

# (metric key, header) per task kind; the held-out site (test_) first, then the validation fold.
CLASSIFICATION = (("auc", "AUC"), ("balanced_accuracy", "BA"))
REGRESSION = (("mae", "MAE"),)


def metrics_of(task: str):
    return REGRESSION if task == "age" else CLASSIFICATION


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    m = float(np.mean(values))
    if len(values) == 1:
        return f"{m:.3f}"
    return f"{m:.3f} ± {float(np.std(values, ddof=1)):.3f}"


def summarise(rows: Sequence[dict]) -> dict:
    """{(task, arch, init, budget): {"<split>_<metric>": [values over seeds], "status": ...}}"""
    groups: dict = {}
    for r in rows:
        key = (r["task"], r["arch"], r["init"], float(r["budget"]))
        g = groups.setdefault(key, {"status": set()})
        g["status"].add("ok" if r["status"] == "ok" else r["status"])
        if r["status"] != "ok":
            continue
        for split in ("test", "val"):
            for metric, _ in metrics_of(r["task"]):
                value = r.get(f"{split}_{metric}")
                if value is not None and value != "" and math.isfinite(float(value)):
                    g.setdefault(f"{split}_{metric}", []).append(float(value))
    return groups


def markdown(rows: Sequence[dict]) -> str:
    """One table per task: rows architecture x initialisation, columns label budget x metric
    (held-out site, then validation fold), mean ± std over seeds."""
    groups = summarise(rows)
    out = []
    for task in [t for t in TASKS if any(r["task"] == t for r in rows)]:
        budgets = sorted({k[3] for k in groups if k[0] == task})
        metrics = metrics_of(task)
        seeds = sorted({int(r["seed"]) for r in rows if r["task"] == task})
        out.append(f"### {task} ({'MAE in years' if task == 'age' else 'AUC, balanced accuracy'};"
                   f" mean ± std over seeds {', '.join(map(str, seeds))})\n")
        head = ["arch", "init"] + [f"{name} {where} @{b:g}" for where in ("site", "val")
                                   for b in budgets for _, name in metrics]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for arch in [a for a in ARCHS if any(k[:2] == (task, a) for k in groups)]:
            for init in [i for i in INITS if any(k[:3] == (task, arch, i) for k in groups)]:
                cells = []
                for split in ("test", "val"):
                    for b in budgets:
                        g = groups.get((task, arch, init, b), {"status": {"-"}})
                        for metric, _ in metrics:
                            if f"{split}_{metric}" in g:
                                cells.append(_mean_std(g[f"{split}_{metric}"]))
                            else:
                                bad = sorted(s for s in g["status"] if s != "ok")
                                cells.append(_short(bad[0]) if bad else "-")
                out.append(f"| {arch} | {init} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("site: the held-out site (out of distribution, test split); val: the validation "
               "fold of the training sites (which chose the checkpoint); @b: the label budget "
               "(data.train_fraction).\n")
    return "\n".join(out)


def _short(status: str) -> str:
    return "n/a" if status.startswith("not available") else "failed"


def write_outputs(out: str, rows: Sequence[dict], figure: bool = True) -> dict[str, str]:
    """results.csv, results.md and (``figure``) results.png in ``out``."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    paths = {"csv": os.path.join(out, "results.csv"), "md": os.path.join(out, "results.md"),
             "png": os.path.join(out, "results.png")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["md"], "w") as f:
        f.write(markdown(rows))
    if figure:
        plot(rows, paths["png"])
    return paths


def plot(rows: Sequence[dict], path: str) -> None:
    """The held-out site's metric (AUC; MAE for age) against the label budget, one line per
    initialisation (mean ± std over seeds), one panel per task and architecture."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = summarise(rows)
    panels = sorted({k[:2] for k in groups}, key=lambda k: (TASKS.index(k[0]), ARCHS.index(k[1])))
    cols = max(1, min(3, len(panels)))
    nrows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (task, arch) in zip(axes.flat, panels):
        metric, name = metrics_of(task)[0]
        for init in INITS:
            points = sorted((k[3], g[f"test_{metric}"]) for k, g in groups.items()
                            if k[:3] == (task, arch, init) and f"test_{metric}" in g)
            if not points:
                continue
            x = [p[0] for p in points]
            y = [np.mean(p[1]) for p in points]
            e = [np.std(p[1], ddof=1) if len(p[1]) > 1 else 0.0 for p in points]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_title(f"{task} / {arch}")
        ax.set_xlabel("label budget (train fraction)")
        ax.set_ylabel(f"{name} (held-out site)")
        if task != "age":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Command line.


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [t for t in text.split(",") if t]
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"--{what}: unknown {bad}; known: {list(known)}")
    return names


def parse(argv: Sequence[str]) -> tuple[Study, list[Cell]]:
    p = argparse.ArgumentParser(prog="python -m jaxbrain.study",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--out", default=None, help="study folder (default runs/study_<preset>)")
    p.add_argument("--inits", default=",".join(INITS))
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--budgets", default=None, help="label budgets, e.g. 0.1,1.0")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0,1")
    p.add_argument("--data", nargs="*", default=[], metavar="TASK=TABLE",
                   help="full preset: each task's label table (with a site column)")
    p.add_argument("--held-out-site", default=None)
    p.add_argument("--unlabeled", default=None, help="full preset: subject list for ssl")
    p.add_argument("--source", action="append", default=[], metavar="ARCH:INIT=FILE",
                   help="a torch file for natural_images / video (default: random weights)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tuning config override, e.g. total_steps=5000")
    p.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                   help="pretraining config override, e.g. data.synthetic.n=5000")
    a = p.parse_args(argv)
    spec = PRESETS[a.preset]
    sources = {}
    for item in a.source:
        key, sep, path = item.partition("=")
        arch, _, init = key.partition(":")
        if not sep or (init, arch) not in SOURCE_FAMILY:
            raise SystemExit(f"--source {item!r}: expected ARCH:INIT=FILE with ARCH:INIT one of "
                             f"{[f'{a_}:{i}' for i, a_ in SOURCE_FAMILY]}")
        sources[(init, arch)] = path
    data = {}
    for item in a.data:
        task, sep, path = item.partition("=")
        if not sep or task not in TASKS:
            raise SystemExit(f"--data {item!r}: expected TASK=TABLE with TASK one of {TASKS}")
        data[task] = path
    study = Study(out=a.out or os.path.join("runs", f"study_{a.preset}"), preset=a.preset,
                  data=data, held_out_site=a.held_out_site, unlabeled=a.unlabeled,
                  sources=sources, overrides=a.set, pretrain_overrides=a.pretrain_set)
    budgets = [float(b) for b in a.budgets.split(",")] if a.budgets else spec["budgets"]
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else spec["seeds"]
    cells = grid(_names(a.inits, INITS, "inits"), _names(a.archs, ARCHS, "archs"),
                 _names(a.tasks, TASKS, "tasks"), budgets, seeds)
    return study, cells


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    study, cells = parse(sys.argv[1:] if argv is None else argv)
    start = time.time()
    try:
        rows = run_study(study, cells)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 143
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows)} runs ({len(bad)} not ok) in {time.time() - start:.0f} s: "
          f"{os.path.join(study.out, 'results.md')}, results.csv, results.png")
    for r in bad:
        print(f"  {r['task']}/{r['arch']}/{r['init']}/b{r['budget']:g}/s{r['seed']}: {r['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
