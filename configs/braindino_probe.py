r"""Whole-scan probes on a frozen 2D slice encoder (BrainDINO's volume-level protocol): every
scan becomes 128 axial slices of 224 x 224, the encoder's normalised CLS of each slice is
computed once and cached, and a small head trains on those features through the one loop.

  python train.py --config configs/braindino_probe.py:demo --workdir runs/probe_demo
  python eval.py --workdir runs/probe_demo              # predictions.csv, metrics.json, roc.png
  python -m jaxbrain.evaluation.probe knn --workdir runs/probe_demo     # knn.csv, knn.md
  python train.py --config configs/braindino_probe.py:ad --workdir runs/probe_ad \
      --config.data.root=/data/adni/labels.csv --config.probe.orbax=runs/braindino_pretrain \
      --config.probe.subtree=objective/teacher/backbone --config.probe.cache=/scratch/features
  python train.py --config configs/braindino_probe.py:age,attention --workdir runs/probe_age \
      --config.data.root=/data/ukb/participants.tsv --config.probe.orbax=ckpt/dinov3_vitb16 \
      --config.data.train_fraction=0.1
  python train.py --config configs/braindino_probe.py:ad,lora --workdir runs/probe_ad_lora \
      --config.data.root=/data/adni/labels.csv --config.init.orbax=runs/braindino_pretrain

Presets (``:arg``, comma-separated): task ``ad`` (default: CN vs AD) | ``pd`` (control vs
PD) | ``sex`` (F vs M) | ``age`` (brain age, MAE) | ``sequence`` (BraTS sequence type: T1, T1ce,
T2, FLAIR, one table row per image, from ``python -m jaxbrain.data sequence-table``; macro
AUC) | ``stroke`` (ATLAS days post stroke, BrainDINO's table ``Days Post Stroke,image_path``;
log(1 + days) with the Huber loss, MAE in days; no demo); pooling over slices ``mean`` (default) |
``attention`` | ``transformer`` (2 blocks); ``lora`` (the encoder adapted rather than frozen:
LoRA rank 8 on every block's q and v, trained with the head through the encoder on cached
slice stacks, ``data.source="scan_slices"``, model ``slice_scan``; the encoder's weights
come through ``init.orbax`` / ``init.torch``, e.g. a pretraining run's EMA teacher, and the
rest of the encoder stays frozen); encoder ``braindino`` (default: BrainDINO's
ViT-B/16, DINOv3 layout with 4 storage tokens, no qkv bias) | ``dinov3`` (DINOv3 ViT-B/16 as
released) | ``dinov2`` (DINOv2 ViT-B/14, 224 px); ``demo`` (a synthetic cohort of 80 subjects at
4 mm, 16 slices of 32 x 32 px, the encoder of ``configs/braindino_pretrain.py:demo``: random
unless probe.orbax (or, with ``lora``, init.orbax) names such a run, 600 head steps: a minute
or two on a CPU).

Data and splits are those of the whole-scan configs (configs/_whole_scan.py: a label table,
subject-level 5-fold split stratified by class or age bins, ``data.held_out_site``,
``data.train_fraction`` label budgets 0.1 ... 1.0 from the same cached features). The encoder
(``probe.*``, :mod:`jaxbrain.inference.features`): ``probe.orbax`` a pretraining run or a
converted DINOv2 / DINOv3 directory (``probe.subtree`` where its encoder is), or
``probe.torch`` with ``probe.family``; none: a random encoder (the baseline). The features are
keyed by the encoder's weights and the preprocessing, so label budgets, seeds and heads reuse
them. The head (:mod:`jaxbrain.models.slice_heads`): pooling, then LayerNorm -> Linear ->
GELU -> Linear. Optimisation as BrainDINO's runners: classification Adam 1e-4 with weight
decay 1e-5 and cross-entropy, batch 4, the best checkpoint by validation AUC (macro one-vs-
rest); regression AdamW 1e-3 with weight decay 1e-4 on standardised targets (MSE), by MAE.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.data import tables
from jaxbrain.models.dino import dino_preset
from jaxbrain.training.config import presets, sibling_module

_shared = sibling_module(__file__, "_whole_scan")
TASKS = ("ad", "pd", "sex", "age", "sequence", "stroke")
REGRESSIONS = ("age", "stroke")
# Class order per classification task (sequence: BraTS sequence type, one row per image).
CLASSES = {**_shared.CLASSES, "sequence": tables.SEQUENCES}
POOLS = ("mean", "attention", "transformer")
ENCODERS = {"braindino": "braindino_vitb16", "dinov3": "dinov3_vitb16",
            "dinov2": "dinov2_vitb14"}
PRESETS = (*TASKS, *POOLS, *ENCODERS, "lora", "demo")
# The demo's encoder: configs/braindino_pretrain.py:demo's (the BrainDINO layout at width 64,
# 2 blocks, 8 px patches), so that the demo presets probe a demo pretraining run; 32 px slices;
# LayerScale starts at 1 (at 1e-5 a random encoder's CLS is the same for every slice).
DEMO_ENCODER = dict(sibling_module(__file__, "braindino_pretrain").DEMO_VIT, img_size=32,
                    drop_path=0.0, layer_scale_init=1.0)


def encoder_config(name: str, **overrides) -> dict:
    """The model section of a published slice encoder (:func:`jaxbrain.models.dino.dino_preset`),
    without stochastic depth (the encoder is frozen)."""
    kwargs = dino_preset(ENCODERS[name], **{"drop_path": 0.0, **overrides})
    if name == "dinov2":
        kwargs["img_size"] = 224
    return {"name": "dino_vit", **{k: v for k, v in kwargs.items() if v is not None}}


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[TASKS, POOLS, tuple(ENCODERS)])
    task = next((a for a in args if a in TASKS), "ad")
    pool = next((a for a in args if a in POOLS), "mean")
    encoder = next((a for a in args if a in ENCODERS), "braindino")
    demo = "demo" in args
    lora = "lora" in args

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4
    c.total_steps = 2000
    c.log_every = 50
    c.eval_every = 250
    c.ckpt_every = 250
    c.keep_checkpoints = 2
    c.compute_dtype = "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    c.data = dict(
        source="features", layout="table", root=placeholder(str), image_root=placeholder(str),
        task={"age": "age", "sex": "sex", "sequence": "sequence"}.get(task, "diagnosis"),
        classes=CLASSES.get(task), images=placeholder(tuple), drop_missing=False,
        num_folds=5, fold=0, split_seed=0, held_out_site=placeholder(str),
        test_fold=placeholder(int), test_table=placeholder(str),
        train_fraction=1.0, subset_seed=0, preprocess="", augment="", roi=None,
        workers=0, threads=2, synthetic=None)
    enc = encoder_config(encoder, **(DEMO_ENCODER if demo else {}))
    c.probe = dict(encoder=enc, orbax=placeholder(str), torch=placeholder(str),
                   family=placeholder(str), strict=True, subtree=placeholder(str),
                   n_slices=16 if demo else 128, slice_size=32 if demo else 224, channel=0,
                   batch=16 if demo else 32, cache=placeholder(str), seed=0)

    if task == "stroke":  # BrainDINO's ATLAS table: "Days Post Stroke,image_path"
        if demo:
            raise ValueError("configs/braindino_probe.py: stroke has no demo data (the "
                             "synthetic cohorts carry no days post stroke)")
        c.data.update(task="Days Post Stroke", images=("image_path",),
                      columns={"subject": "image_path"})
    num_classes = 1 if task in REGRESSIONS else len(CLASSES[task])
    c.model = dict(name="slice_head", in_channels=enc["hidden_size"], num_classes=num_classes,
                   pool=pool, depth=2, num_heads=2 if demo else 8)
    if lora:  # the encoder adapted, not frozen: slice stacks in, LoRA on q and v + the head
        c.data.source = "scan_slices"
        c.model = dict({k: v for k, v in enc.items() if k != "name"}, name="slice_scan", in_channels=3,
                       lora_rank=8, num_classes=num_classes, head_pool=pool, head_depth=2,
                       head_num_heads=2 if demo else 8, remat=not demo, remat_policy=None,
                       scan_blocks=False)
        c.init = {"orbax": placeholder(str), "torch": placeholder(str), "from": placeholder(str),
                  "encoder_only": True, "strict": True}
    if task == "age":
        c.objective = dict(name="regression", loss="mse", target_mean=placeholder(float),
                           target_std=placeholder(float))
        c.optim = dict(name="adamw", lr=1e-3, weight_decay=1e-4)
    elif task == "stroke":  # log(1 + days), Huber 1.0, not standardised (the original's)
        c.objective = dict(name="regression", loss="huber", huber_delta=1.0, transform="log1p",
                           target_mean=0.0, target_std=1.0)
        c.optim = dict(name="adamw", lr=1e-3, weight_decay=1e-4)
    else:
        c.objective = dict(name="classification", num_classes=num_classes,
                           class_weights=placeholder(str), label_smoothing=0.0)
        c.optim = dict(name="adam", lr=1e-4, weight_decay=1e-5)
    c.optim.update(b1=0.9, b2=0.999, schedule="constant", warmup_steps=0, end_lr=0.0,
                   grad_clip=0.0, grad_accum=1)
    if lora:
        c.optim.update(freeze="encoder", unfreeze=("*/lora_*",))
    c.eval = dict(age_bias=task == "age", max_cases=placeholder(int))

    if demo and task == "sequence":  # 20 synthetic BraTS cases, 4 images each
        c.data.update(num_folds=4, synthetic=dict(kind="brats_sequences", n=20,
                                                  shape=(48, 48, 32), seed=0, anatomy="auto"))
    elif demo:
        c.data.update(num_folds=4, synthetic=dict(
            kind="cohort", n=80, shape=(46, 55, 46), seed=0, sites=3, followup=0.0,
            anatomy="auto", **_shared.DEMO_COHORTS[task]))
    if demo:
        c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 600, 100, 100, 100
        c.optim.lr = 3e-3
    return c
