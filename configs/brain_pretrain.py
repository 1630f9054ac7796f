r"""Pretraining a whole-scan brain model on T1w MRI, then fine-tuning it with
configs/brain_age.py or configs/brain_classification.py.

  python train.py --config configs/brain_pretrain.py:mae --workdir runs/mae \
      --config.data.root=/data/ukb/subjects.csv            # UK Biobank style subject list
  python train.py --config configs/brain_pretrain.py:contrastive,densenet121 \
      --workdir runs/simclr --config.data.root=/data/ukb/subjects.csv
  python train.py --config configs/brain_pretrain.py:synthetic --workdir runs/synth \
      --config.data.synthetic.n=5000                       # synthetic-MRI supervised
  python train.py --config configs/brain_age.py --workdir runs/age \
      --config.data.root=/data/ukb/participants.tsv --config.init.orbax=runs/mae
  python train.py --config configs/brain_pretrain.py:mae,demo --workdir runs/mae_demo

Presets (``:arg``, comma-separated): the objective ``mae`` (default; with a CNN preset
``contrastive``) | ``contrastive`` | ``synthetic``; the model ``vit`` | ``densenet121`` | ``resnet18`` | ``resnet50``; ``demo``
(the same objective at CPU size: a synthetic cohort at 4 mm, 48 x 56 x 48 crops, the small ViT
or CNN of the whole-scan demos, 200 steps); ``bf16`` computes in bfloat16, ``remat``
rematerialises blocks.

* mae: masked autoencoder of the 3D ViT-B/16 (75% of the 6^3 patches masked per scan,
  per-patch normalised pixel MSE on the masked patches; a 4-block, 256-wide decoder); AdamW
  lr 1.5e-4, weight decay 0.05, betas (0.9, 0.95). ViT only.
* contrastive: SimCLR for a CNN (DenseNet-121 by default, ResNet-18 or ResNet-50): two
  on-device views per scan (random 75% crop, flips, intensity jitter, noise), projection MLP
  2048 -> 128, NT-Xent (temperature 0.1) with the global batch's negatives; AdamW 3e-4.
* synthetic: supervised pretraining on a synthetic cohort (jaxbrain.data.cohort) of
  data.synthetic.n subjects (default 2000; CN / MCI / AD, ages 50-90, 4 sites): age
  regression + sex + diagnosis classification from one scan (the multitask objective over
  the label table's age, sex and diagnosis columns, weights 1); any model (the ViT by
  default; in the demo the small ResNet).

Data (mae, contrastive): a subject list (layout ``subjects``: CSV ``subject,t1`` or a folder
holding subjects.csv; ``data.channels`` its image columns) or, with
``--config.data.layout=table``, a label table without a task (``data.task=None``: every
scan). Scans are preprocessed as in the whole-scan configs (2 mm, robust scaling, 96^3
centre crop or pad), so the fine-tuning config sees the same inputs; every scan trains
(``data.val_every=k`` validates by the objective's own loss on every k-th).

Fine-tuning: the whole-scan configs take the encoder with ``--config.init.orbax=<this
workdir>`` (their ``init.encoder_only=True, new_head=True``): the MAE's ``encoder`` is the
ViT's, the contrastive model's trunk (``features`` / ``encoder``) the CNN's; a synthetic
run's whole trunk. Options there: ``--config.optim.freeze=encoder`` (linear probe) or
``--config.optim.layer_decay=0.75`` (layer-wise lr decay), see jaxbrain/training/optim.py.
The model fields must match (``model.*`` of the fine-tuning config: the MAE presets use the
whole-scan ViT's, ``img_size`` = ``data.roi``).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.training.config import derived, presets, sibling_module

_shared = sibling_module(__file__, "_whole_scan")
OBJECTIVES = ("mae", "contrastive", "synthetic")
MODELS = _shared.MODELS
PRESETS = (*OBJECTIVES, *MODELS, "demo", "bf16", "remat")
TASKS = ("age", "sex", "diagnosis")
DIAGNOSES = ("CN", "MCI", "AD")
SYNTHETIC_COHORT = dict(groups={"CN": 0.5, "MCI": 0.25, "AD": 0.25}, ages=(50.0, 90.0),
                        sites=4, followup=0.0)
HOST_AUGMENT = "rand_flip(prob=0.5, axes=(0,))"


def _model(objective: str, model: str, roi, demo: bool, small: bool, remat: bool) -> dict:
    """The model section; ``demo`` shrinks the ViT, ``small`` makes a CNN the demos' small
    ResNet."""
    if model == "vit":
        vit = _shared.model_config("vit", roi, 0, remat)
        vit.pop("num_classes")
        if demo:
            vit.update(_shared.DEMO_VIT)
        if objective == "mae":
            return dict(vit, name="mae", drop_path=0.0, decoder_width=128 if demo else 256,
                        decoder_depth=2 if demo else 4, decoder_heads=4 if demo else 8)
        return dict(vit, num_classes=1 + 2 + len(DIAGNOSES))
    if small:
        cnn = dict(_shared.SMALL_RESNET, remat=remat)
    else:
        cnn = dict(name=model, in_channels=1, remat=remat)
    if objective == "contrastive":
        hidden, dim = (64, 32) if demo else (2048, 128)
        return dict(cnn, name="contrastive_" + cnn["name"], projection_hidden=hidden,
                    projection_dim=dim)
    return dict(cnn, num_classes=1 + 2 + len(DIAGNOSES))


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[OBJECTIVES, MODELS])
    demo = "demo" in args
    chosen = next((a for a in args if a in MODELS), None)
    # Without an objective preset: mae for the ViT, contrastive for a CNN.
    objective = next((a for a in args if a in OBJECTIVES),
                     "contrastive" if chosen not in (None, "vit") else "mae")
    # Defaults: the ViT (mae, synthetic), DenseNet-121 (contrastive); in the demo without a
    # model preset, the whole-scan demos' small ResNet (synthetic, contrastive).
    default_model = "densenet121" if objective == "contrastive" else "vit"
    if demo and objective == "synthetic":
        default_model = "resnet18"
    model = chosen or default_model
    if objective == "mae" and model != "vit":
        raise ValueError(f"configs/brain_pretrain.py: the mae preset pretrains the ViT, not "
                         f"{model} (use contrastive or synthetic for a CNN)")
    if objective == "contrastive" and model == "vit":
        raise ValueError("configs/brain_pretrain.py: the contrastive preset is for the CNNs "
                         "(densenet121, resnet18, resnet50); the ViT pretrains with mae")

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16 if objective != "synthetic" else 8
    c.total_steps = 100_000 if objective != "synthetic" else 20_000
    c.log_every = 100
    c.eval_every = 0
    c.ckpt_every = 1000
    c.keep_checkpoints = 3
    c.best_metric = placeholder(str)
    c.best_mode = "min"
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    if objective == "synthetic":
        c.data = dict(
            layout="table", root=None, image_root=placeholder(str), task=TASKS,
            classes={"diagnosis": DIAGNOSES}, images=placeholder(tuple), drop_missing=False,
            num_folds=None, fold=0, split_seed=0, val_every=0, spacing=(2.0, 2.0, 2.0),
            roi=(96, 96, 96), cache=placeholder(str), workers=0, threads=2,
            augment=_shared.augment("age", translate=4.0),
            synthetic=dict(kind="cohort", n=2000, shape=(91, 109, 91), seed=0,
                           anatomy="auto", **SYNTHETIC_COHORT))
    else:
        c.data = dict(
            layout="subjects", root=placeholder(str), subject_list="subjects.csv",
            channels=("t1",), task=None, spacing=(2.0, 2.0, 2.0), roi=(96, 96, 96),
            cache=placeholder(str), workers=0, threads=2, synthetic=None, val_every=0,
            augment=HOST_AUGMENT)
    c.data.preprocess = (
        derived("resample(spacing={spacing}), robust_scale, ", "spacing",
                c.data.get_ref("spacing"))
        + derived("center_crop_or_pad(shape={roi})", "roi", c.data.get_ref("roi")))

    c.model = _model(objective, model, c.data.get_ref("roi"), demo, demo and chosen is None,
                     "remat" in args)
    if objective == "mae":
        c.objective = dict(name="mae", patch_size=c.model.get_ref("patch_size"),
                           mask_ratio=0.75, norm_pix_loss=True)
        c.optim = dict(name="adamw", lr=1.5e-4, weight_decay=0.05, b1=0.9, b2=0.95,
                       schedule="warmup_cosine", warmup_steps=2000, end_lr=0.0,
                       grad_clip=0.0, grad_accum=1)
    elif objective == "contrastive":
        c.objective = dict(name="contrastive", temperature=0.1, negatives="global", crop=0.75,
                           flip_axes=(0, 1, 2), flip_prob=0.5, intensity_scale=0.1,
                           intensity_shift=0.1, noise_std=0.05)
        c.optim = dict(name="adamw", lr=3e-4, weight_decay=1e-4, b1=0.9, b2=0.999,
                       schedule="warmup_cosine", warmup_steps=1000, end_lr=0.0,
                       grad_clip=1.0, grad_accum=1)
    else:
        c.objective = dict(name="multitask", tasks=TASKS, num_classes=(1, 2, len(DIAGNOSES)),
                           weights=(1.0, 1.0, 1.0), target_mean=None, target_std=None)
        c.optim = dict(name="adamw", lr=1e-4 if model == "vit" else 3e-4,
                       weight_decay=0.05 if model == "vit" else 1e-4, b1=0.9, b2=0.999,
                       schedule="warmup_cosine", warmup_steps=500, end_lr=0.0,
                       grad_clip=1.0, grad_accum=1)
    c.optim.freeze = placeholder(tuple)
    c.optim.layer_decay = 0.0
    c.init = dict(torch=placeholder(str), orbax=placeholder(str), encoder_only=False,
                  strict=True, new_head=False)

    if demo:
        # A synthetic cohort on a 4 mm grid (46 x 55 x 46), padded to 48 x 56 x 48; the
        # unlabeled objectives read its label table without a task.
        cohort = dict(kind="cohort", n=64, shape=(46, 55, 46), seed=0, anatomy="auto",
                      **SYNTHETIC_COHORT)
        c.data.update(layout="table", root=None, roi=(48, 56, 48), synthetic=cohort,
                      num_folds=None, fold=0, split_seed=0, image_root=None, images=None,
                      drop_missing=False)
        if objective != "synthetic":
            c.data.task = None
        c.data.preprocess = derived("robust_scale, center_crop_or_pad(shape={roi})", "roi",
                                    c.data.get_ref("roi"))
        c.data.augment = HOST_AUGMENT
        c.batch_size = 8
        c.total_steps, c.log_every, c.ckpt_every = 200, 10, 100
        c.optim.update(lr=1e-3, warmup_steps=10, weight_decay=1e-4)
    return c
