"""What the whole-scan configs share (``brain_classification.py``, ``brain_age.py``): one
prediction per T1w scan from a 3D ViT or a 3D CNN. Not a config itself: :func:`build` makes
the config of one task, the two config files choose the task and check the presets.

Models (:data:`MODELS`): ``vit`` (default: ViT-B/16 in MONAI's layout: CLS token, learned
positions, no qkv bias), ``densenet121``, ``resnet18``, ``resnet50`` (MedicalNet's). Input:
2 mm, 96^3 (``128``: 1.5 mm, 128^3). ``demo``: a synthetic cohort of 200 subjects at 4 mm and
300 steps (minutes on a laptop CPU) with a small ResNet, or with a model preset that model
(``demo,vit`` a small ViT, which from scratch overfits so few subjects). ``bf16`` computes in
bfloat16, ``remat`` rematerialises blocks.

Data: a label table (``data.layout="table"``, :mod:`jaxbrain.data.tables`): one row per scan
with a subject column (subject / participant_id / PTID / RID / PATNO / eid), an image path
column (t1 / t1w / image / path; relative to the table's folder), and the task's column:
diagnosis (dx / group / research_group: CN, MCI, AD, PD, "Healthy Control", ...), sex
(sex / gender / ptgender: F, M) or age; session and site columns are optional (site is needed
for ``data.held_out_site``). A BIDS dataset is read as it is (its folder, or its
participants.tsv): ``sub-*/[ses-*/]anat/*_T1w.nii.gz`` by name, the labels from
participants.tsv and sessions.tsv, ``data.bids_select`` (e.g. "acq-mprage") among several T1w
of a session. Scans are skull-stripped T1w in MNI space (e.g. FSL's 91 x 109 x 91 at 2 mm):
resampled to ``data.spacing``, robust-scaled (1st-99th percentile clip, z-score over brain
voxels) and cropped or padded about the centre to ``data.roi``, the whole-scan shape the model
sees.

Splits are by subject (all sessions of a subject on one side): a 5-fold split stratified by
class (regression: by quantile bins of the target), ``data.fold`` validated, saved as
``<workdir>/folds.json`` and read back on resume; or ``--config.data.num_folds=None
--config.data.held_out_site=X`` validates on site X (out-of-distribution).
``data.train_fraction`` trains on a stratified fraction of the training subjects (label
budgets). Classification uses class weights "balanced" on the training scans, regression
standardises targets by the training mean and std (both fitted once from the training cases).
The best checkpoint is chosen by validation AUC (classification) or MAE (regression); eval.py
reports the bias-corrected brain-age MAE too (``eval.age_bias``, fitted on the validation
predictions).

Initialisations: from scratch (no ``init``), from a previous run or converted directory
(``init.orbax``), or from a PyTorch file (``init.torch``) whose family ``init.from`` names:
``timm_vit`` (timm's 2D ViT), ``torchvision_resnet`` / ``torchvision_densenet``
(torchvision's or timm's 2D CNNs), ``videomae`` (transformers / MCG-NJU), ``monai`` (the 3D
MONAI / MedicalNet layouts); None reads it off the keys. 2D and video networks are inflated
to the 3D model (:mod:`jaxbrain.convert.inflate`): ``init.inflate`` "mean" (each 2D kernel
repeated over depth and divided by it) or "centre" (the 2D kernel at the central depth tap);
``init.channels="sum"`` (= "average") or "mean" takes an RGB stem to the T1w channel. The
model must be the source's architecture (torchvision's ResNets: shortcut B without
downsample bias, the ``resnet50`` preset; ``resnet18`` needs ``model.shortcut_type="B"``,
``model.bias_downsample=False``; timm's ViT: ``model.qkv_bias=True``, ``model.norm_eps=1e-6``;
VideoMAE: ``model.cls_token=False``, ``model.pool="mean"``): the strict load names what
differs. The encoder is taken (``init.encoder_only``), the head starts fresh. The source
presets (:data:`SOURCES`) set both, the family and the fields its network fixes (the sizes
stay the model preset's):

* ``timm`` (ViT): ``init.from="timm_vit"``, qkv bias, LayerNorm eps 1e-6, CLS token pooling
  with the final norm (timm's ``global_pool="token"``, its ViTs' default; a file pooled by
  average, with ``fc_norm``, needs ``model.pool=mean``);
* ``torchvision`` (CNNs): ``torchvision_resnet`` / ``torchvision_densenet``; ResNets with
  torchvision's shortcut B without downsample bias (``resnet18``'s MedicalNet preset has A);
* ``videomae`` (ViT): ``init.from="videomae"``, no CLS token (mean pooling into a fresh
  ``fc_norm``, as VideoMAE's fine-tuning: a pre-training file's final norm, transformers'
  ``layernorm`` or MCG-NJU's ``encoder.norm``, is reported as ignored, the decoder too;
  ``model.final_norm=True`` keeps it), q and v biases without a k bias, eps 1e-12.

Each preset loads the files its source publishes; a strict load that fails names the one
setting that makes it fit. ``python train.py --config ... --print_config`` lists the resolved
fields.

    python train.py --config configs/brain_classification.py:ad,resnet18,torchvision \
        --config.init.torch=resnet18_imagenet.pth --config.data.root=/data/adni/labels.csv
"""

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.training.config import derived

MODELS = ("vit", "densenet121", "resnet18", "resnet50")
COMMON = ("128", "demo", "bf16", "remat")  # the presets of every whole-scan config
# Source presets: the pretrained network's family per model and the model fields it fixes.
SOURCES = {
    "timm": {"vit": ("timm_vit", dict(qkv_bias=True, norm_eps=1e-6, cls_token=True, pool="cls"))},
    "torchvision": {
        "resnet18": ("torchvision_resnet", dict(shortcut_type="B", bias_downsample=False)),
        "resnet50": ("torchvision_resnet", dict(shortcut_type="B", bias_downsample=False)),
        "densenet121": ("torchvision_densenet", {})},
    "videomae": {"vit": ("videomae", dict(cls_token=False, pool="mean", qkv_bias=True,
                                          mask_k_bias=True, norm_eps=1e-12))},
}

CLASSES = {"ad": ("CN", "AD"), "pd": ("CN", "PD"), "sex": ("F", "M")}  # class 1: positive
# Small poses (translation in voxels: 8 mm at 2 mm, 4 mm in the demo) and left-right flips.
# The sex task does not rescale: head size is one of its cues (the only one in the demo).
AUGMENT = ("rand_affine(rotate=5.0, scale={scale}, translate={translate}, prob=0.5), "
           "rand_flip(prob=0.5, axes=(0,))")
# A ResNet-10 shape, 8..64 channels, 3^3 stem: learns the demo cohort in a few hundred CPU steps.
SMALL_RESNET = dict(name="resnet", in_channels=1, block="basic", layers=(1, 1, 1, 1),
                    block_inplanes=(8, 16, 32, 64), conv1_t_size=3, conv1_t_stride=2,
                    shortcut_type="B")
# The demo's ViT: 8^3 patches (6 x 7 x 6 of the 48 x 56 x 48 crops), width 96, 4 blocks.
DEMO_VIT = dict(patch_size=8, hidden_size=96, depth=4, num_heads=4, mlp_dim=192, drop_path=0.0,
                pool="mean")
# The demo's synthetic cohorts (jaxbrain.data.cohort.write_cohort options) per task.
DEMO_COHORTS = {
    "ad": dict(groups={"CN": 0.5, "AD": 0.5}, ages=(70.0, 80.0)),          # ADNI-like
    "pd": dict(groups={"HC": 0.5, "PD": 0.5}, ages=(55.0, 75.0), pd=True),  # PPMI-like
    "sex": dict(groups={"CN": 1.0}, ages=(40.0, 85.0)),                     # UK Biobank-like
    "age": dict(groups={"CN": 1.0}, ages=(40.0, 85.0)),
}


def augment(task: str, translate: float) -> str:
    """The training augmentation of ``task`` with translations up to ``translate`` voxels."""
    return AUGMENT.format(scale=0.0 if task == "sex" else 0.05, translate=translate)


def model_config(name: str, roi, num_classes: int, remat: bool) -> dict:
    """The model section of one of :data:`MODELS` for one input channel (T1w)."""
    if name == "vit":  # MONAI's ViT-B/16 layout: CLS token, learned positions, no qkv bias
        return dict(name="vit", in_channels=1, img_size=roi, patch_size=16, hidden_size=768,
                    depth=12, num_heads=12, mlp_dim=3072, cls_token=True, pos_embed="learned",
                    pool="cls", fc_norm=None, final_norm=None, qkv_bias=False, norm_eps=1e-5,
                    dropout=0.0, drop_path=0.1, num_classes=num_classes, remat=remat,
                    remat_policy=None, scan_blocks=False)
    return dict(name=name, in_channels=1, num_classes=num_classes, remat=remat)


def build(task: str, args) -> ml_collections.ConfigDict:
    """The config of ``task`` (``ad``, ``pd``, ``sex``: classification of the label table's
    diagnosis or sex column; ``age``: regression of its age column) with the presets
    ``args`` (already checked by the config file: at most one of :data:`MODELS`, others of
    :data:`COMMON`)."""
    if task not in (*CLASSES, "age"):
        raise ValueError(f"whole-scan task {task!r}: expected one of {(*CLASSES, 'age')}")
    source = next((a for a in args if a in SOURCES), None)
    model = next((a for a in args if a in MODELS), next(iter(SOURCES[source])) if source else "vit")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 8                     # global, over all hosts and devices
    c.total_steps = 10_000
    c.log_every = 50
    c.eval_every = 500
    c.ckpt_every = 500
    c.keep_checkpoints = 3
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    fine = "128" in args
    c.data = dict(
        layout="table", root=placeholder(str), image_root=placeholder(str),
        task={"age": "age", "sex": "sex"}.get(task, "diagnosis"),
        classes=CLASSES.get(task), images=placeholder(tuple), bids_select=placeholder(str),
        columns=None, vocabulary=None, drop_missing=False,
        num_folds=5, fold=0, split_seed=0, held_out_site=placeholder(str),
        test_fold=placeholder(int), test_table=placeholder(str),
        train_fraction=1.0, subset_seed=0,
        spacing=(1.5, 1.5, 1.5) if fine else (2.0, 2.0, 2.0),
        roi=(128, 128, 128) if fine else (96, 96, 96),
        cache=placeholder(str), workers=0, threads=2, synthetic=None,
        augment=augment(task, translate=4.0))
    c.data.preprocess = (
        derived("resample(spacing={spacing}), robust_scale, ", "spacing",
                c.data.get_ref("spacing"))
        + derived("center_crop_or_pad(shape={roi})", "roi", c.data.get_ref("roi")))

    num_classes = 1 if task == "age" else len(CLASSES[task])
    c.model = model_config(model, c.data.get_ref("roi"), num_classes, "remat" in args)
    if task == "age":
        c.objective = dict(name="regression", loss="mse", target_mean=placeholder(float),
                           target_std=placeholder(float))
    else:
        c.objective = dict(name="classification", num_classes=num_classes,
                           class_weights="balanced", label_smoothing=0.0)
    lr = 1e-4 if model == "vit" else 3e-4
    c.optim = dict(name="adamw", lr=lr, weight_decay=0.05 if model == "vit" else 1e-4,
                   b1=0.9, b2=0.999, schedule="warmup_cosine", warmup_steps=500, end_lr=0.0,
                   grad_clip=1.0, grad_accum=1, layer_decay=0.0, freeze=placeholder(str))
    c.init = {"torch": placeholder(str), "orbax": placeholder(str), "from": placeholder(str),
              "inflate": "mean", "channels": "average", "encoder_only": True, "strict": True,
              "new_head": True}
    c.eval = dict(age_bias=task == "age", max_cases=placeholder(int))
    if source:
        if model not in SOURCES[source]:
            raise ValueError(f"whole-scan config: the {source} preset initialises "
                             f"{' or '.join(SOURCES[source])}, not {model} (add one of those "
                             "model presets)")
        c.init["from"] = SOURCES[source][model][0]

    if "demo" in args:
        # The synthetic cohort on a 4 mm grid (46 x 55 x 46), padded to 48 x 56 x 48.
        c.data.update(num_folds=4, roi=(48, 56, 48), synthetic=dict(
            kind="cohort", n=200, shape=(46, 55, 46), seed=0, sites=3, followup=0.2,
            anatomy="auto", **DEMO_COHORTS[task]))
        c.data.preprocess = derived("robust_scale, center_crop_or_pad(shape={roi})", "roi",
                                    c.data.get_ref("roi"))
        c.data.augment = augment(task, translate=1.0)
        if not any(a in MODELS for a in args) and not source:  # 200 subjects from scratch: a small CNN
            c.model = dict(SMALL_RESNET, num_classes=num_classes, remat="remat" in args)
        elif model == "vit":
            c.model.update(DEMO_VIT)
        c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 300, 25, 50, 50
        c.optim.update(lr=3e-3, warmup_steps=20, weight_decay=1e-4)
    if source:  # after the demo's sizes: the source's architecture fields win
        c.model.update(SOURCES[source][model][1])
    return c
