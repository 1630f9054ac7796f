r"""ATLAS v2.0 stroke-lesion segmentation with SwinUNETR (BrainSegFounder's ATLAS recipe).

  python train.py --config configs/atlas_swinunetr.py --workdir runs/atlas \
      --config.data.root=/data/ATLAS_2
  python train.py --config configs/atlas_swinunetr.py:demo --workdir runs/atlas_demo   # synthetic

Presets: model size ``62m`` | ``64m`` (default) | ``69m`` | ``277m``; ``demo`` (small model on
synthetic ATLAS data); ``bf16``; ``remat``.

Recipe: 1 channel (T1w), 1 sigmoid output (lesion), each whole volume z-scored and resized to
96^3 (so a training crop is the whole brain), flips and intensity scale/shift, dropout 0.1,
Dice + BCE, AdamW lr 1e-4 wd 1e-5 with warm-up and cosine.

Folds: a 5-fold split by subject (sessions of one subject stay together) made once per run
(``data.split_seed``, saved as ``<workdir>/folds.json`` and read back on resume);
``data.fold`` is held out for validation. ``--config.data.datalist=x.json`` uses a datalist
with folds instead; ``--config.data.val_every=k`` holds out every k-th case by id.

PatchMerging order: ``model.downsample="merging"``, MONAI >= 1.5's corrected one, as along
jaxbrain's whole pretraining chain (exports load into today's MONAI as they are);
``--config.model.downsample=merging_legacy`` for weights trained with MONAI < 1.5
(BrainSegFounder's published files, MONAI's ``model_swinvit.pt``).

Shapes: ``data.roi`` is the one size: the volumes are resized to it (``data.preprocess``
follows ``data.roi`` until it is set itself), the crops and the validation window are it.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.models.swin_unetr import BRAINSEGFOUNDER_SIZES as SIZES
from jaxbrain.training.config import derived, presets

PRESETS = (*SIZES, "demo", "bf16", "remat")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = presets(arg, PRESETS, __file__, exclusive=[SIZES])
    depths, feature, heads = SIZES[next((a for a in args if a in SIZES), "64m")]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 2
    steps_per_epoch = 240            # ~480 training subjects of ATLAS v2.0's 655, batch 2
    c.total_steps = 200 * steps_per_epoch
    c.log_every = 50
    c.eval_every = 5 * steps_per_epoch
    c.ckpt_every = steps_per_epoch
    c.keep_checkpoints = 3
    c.best_metric = "val_dice_mean"
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    c.model = dict(name="swin_unetr", in_channels=1, out_channels=1, feature_size=feature,
                   depths=depths, num_heads=heads, drop_rate=0.1, dropout_path_rate=0.0,
                   downsample="merging", use_v2=False, remat="remat" in args)
    c.objective = dict(name="segmentation", kind="sigmoid", dice=1.0, ce=1.0, threshold=0.5)
    c.optim = dict(name="adamw", lr=1e-4, weight_decay=1e-5, b1=0.9, b2=0.999,
                   schedule="warmup_cosine", warmup_steps=10 * steps_per_epoch, end_lr=0.0,
                   grad_clip=0.0, grad_accum=1)
    c.init = dict(torch=placeholder(str), orbax=placeholder(str), encoder_only=False, strict=True)

    c.data = dict(
        layout="atlas", root=placeholder(str), datalist=placeholder(str), fold=0, num_folds=5,
        split_seed=0, val_every=0, labels="binary", roi=(96, 96, 96), crops_per_volume=1,
        cache=placeholder(str), workers=0, threads=4, synthetic=None, train_fraction=1.0,
        subset_seed=0,
        augment="rand_flip(prob=0.5), rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)")
    c.data.preprocess = derived("zscore, resize(shape={roi})", "roi", c.data.get_ref("roi"))
    c.eval = dict(roi=placeholder(tuple), overlap=0.5, mode="gaussian", sw_batch_size=1,
                  max_cases=placeholder(int))

    if "demo" in args:
        c.model.update(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
        c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 300, 10, 100, 100
        c.optim.update(lr=1e-3, warmup_steps=20)
        c.data.update(roi=(64, 64, 64), threads=2,
                      synthetic=dict(kind="atlas", n=10, shape=(80, 96, 80), seed=0,
                                     anatomy="auto"))
        c.eval.update(max_cases=2)
    return c
