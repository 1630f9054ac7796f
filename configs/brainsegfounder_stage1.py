r"""BrainSegFounder stage 1: self-supervised pretraining on healthy brains (UK Biobank).

  python train.py --config configs/brainsegfounder_stage1.py --workdir runs/bsf_stage1 \
      --config.data.root=/data/ukb/subjects.csv --config.batch_size=128
  python train.py --config configs/brainsegfounder_stage1.py:demo --workdir runs/bsf_stage1

Presets (``:arg``): model size ``62m`` | ``64m`` (default, BF-S) | ``69m`` | ``277m``; ``demo``
(a small model on synthetic UK Biobank-style subjects, minutes on a CPU); ``bf16``, ``remat``.

Recipe: 2 channels [T1, T2-FLAIR] (skull-stripped, MNI), random 96^3 crops, 2 per volume;
each crop gives two views (rotation by k * 90 degrees, noise cutout up to 30% of the
voxels, box pasting from another sample); loss = rotation CE + NT-Xent (temperature 0.5) +
L1 reconstruction, weights 1; AdamW lr 4e-4 (the published README's 5e-4 also works), weight
decay 0.1, 500 warm-up steps then cosine; batch 2 per device (set batch_size to
2 x devices: the original trained on 64-128 A100s). Intensities are scaled per channel to
[0, 1] between the 0.5th and 99.5th percentiles of the brain voxels (the original used a fixed
ScaleIntensityRange; use ``scale_range(a_min=..., a_max=...)`` in data.preprocess for that).
Contrastive negatives come from the whole global batch (``objective.negatives="local"``:
the original's per-device negatives).

PatchMerging order: ``model.downsample="merging"``, MONAI >= 1.5's corrected one, as along
jaxbrain's whole pretraining chain (exports load into today's MONAI as they are);
``--config.model.downsample=merging_legacy`` for weights trained with MONAI < 1.5
(BrainSegFounder's published files, MONAI's ``model_swinvit.pt``).

``data.root`` is a subject list (CSV ``subject,t1,flair`` or JSON) or a folder holding
``subjects.csv``; ``data.channels`` names its columns. ``data.roi`` is the crop size (the
foreground crop of ``data.preprocess`` is grown to a multiple of it and follows it).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.models.swin_unetr import BRAINSEGFOUNDER_SIZES as SIZES
from jaxbrain.training.config import derived, presets

PRESETS = (*SIZES, "demo", "bf16", "remat")
PREPROCESS = "crop_foreground(k_divisible={roi}), scale_percentiles(lower=0.5, upper=99.5)"


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = presets(arg, PRESETS, __file__, exclusive=[SIZES])
    size = next((a for a in args if a in SIZES), "64m")
    depths, feature, heads = SIZES[size]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 2                     # global; the original: 2 per GPU
    c.total_steps = 100_000
    c.log_every = 100
    c.eval_every = 0
    c.ckpt_every = 1000
    c.keep_checkpoints = 3
    # Pretraining uses every subject (data.val_every=0). To validate with the objective's own
    # loss on held-out subjects: --config.data.val_every=20 --config.eval_every=1000
    # (--config.best_metric=val_loss keeps the lowest).
    c.best_metric = placeholder(str)
    c.best_mode = "min"
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    c.model = dict(name="ssl_head", in_channels=2, feature_size=feature, depths=depths,
                   num_heads=heads, dropout_path_rate=0.0, downsample="merging",
                   use_v2=False, remat="remat" in args)
    c.objective = dict(name="ssl", rotation=1.0, contrastive=1.0, reconstruction=1.0,
                       temperature=0.5, negatives="global", max_drop=0.3, box_min=0.05,
                       box_max=0.25, max_boxes=None)
    c.optim = dict(name="adamw", lr=4e-4, weight_decay=0.1, b1=0.9, b2=0.999,
                   schedule="warmup_cosine", warmup_steps=500, end_lr=0.0, grad_clip=0.0,
                   grad_accum=1)
    # init.channels: how a pretrained patch embedding meets another channel count:
    # "average" | "repeat" (adapted, trained on) or "fresh" (a new embedding, the original).
    c.init = dict(torch=placeholder(str), orbax=placeholder(str), encoder_only=False,
                  strict=True, channels="average")

    c.data = dict(
        layout="subjects", root=placeholder(str), subject_list="subjects.csv",
        channels=("t1", "flair"), roi=(96, 96, 96), crops_per_volume=2, cache=placeholder(str),
        workers=0, threads=4, synthetic=None, val_every=0, augment="rand_crop")
    c.data.preprocess = derived(PREPROCESS, "roi", c.data.get_ref("roi"))

    if "demo" in args:
        demo(c, kind="unlabeled", n=8, shape=(72, 88, 72))
    return c


def demo(c, *, kind: str, n: int, shape, **synthetic) -> None:
    """The small, CPU-sized version of an SSL config (shared by the stage-2 configs)."""
    c.model.update(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
    c.total_steps, c.log_every, c.ckpt_every, c.eval_every = 200, 10, 100, 100
    c.optim.update(lr=1e-3, warmup_steps=10)
    c.data.update(
        roi=(32, 64, 64),                # H == W for the rotation; 1 x 2 x 2 bottleneck tokens
        threads=2, val_every=4,          # every 4th subject held out: validated by the SSL loss
        synthetic=dict(kind=kind, n=n, shape=shape, seed=0, anatomy="auto", **synthetic),
        preprocess="scale_percentiles(lower=0.5, upper=99.5)")


def target_stage(c, *, in_channels: int, **data) -> None:
    """Turns the stage-1 config ``c`` into stage 2 on a target dataset (``data``: its layout
    fields): lr 6e-6, 50,000 steps, the encoder from stage 1 (required), its patch
    embedding adapted to ``in_channels``, the same crops and intensity scaling."""
    c.model.in_channels = in_channels
    c.total_steps = 50_000
    c.optim.update(lr=6e-6)
    c.init.update(encoder_only=True, channels="average", required=True)
    c.data = dict(
        roi=tuple(c.data.roi), crops_per_volume=2, cache=placeholder(str), workers=0,
        threads=4, synthetic=None, augment="rand_crop", **data)
    c.data.preprocess = derived(PREPROCESS, "roi", c.data.get_ref("roi"))
