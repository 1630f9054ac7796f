r"""BraTS 2021 segmentation with SwinUNETR: BrainSegFounder's fine-tuning recipe.

  python train.py --config configs/brats_swinunetr.py --workdir runs/brats_f0 \
      --config.data.root=/data/BraTS2021_Training_Data --config.data.fold=0
  python train.py --config configs/brats_swinunetr.py:demo --workdir runs/demo   # synthetic, CPU

Presets (``:arg``): model size ``62m`` | ``64m`` (default, BF-S) | ``69m`` | ``277m``, and
``demo`` (a small SwinUNETR on synthetic BraTS data, minutes on a laptop CPU). Combine with
commas, e.g. ``:demo,bf16``; ``bf16`` computes in bfloat16, ``remat`` rematerialises blocks.

Recipe: 4 channels [FLAIR, T1ce, T1, T2], 3 sigmoid outputs [TC, WT, ET], 128^3 crops,
flips on 3 axes, per-channel z-score over nonzero voxels, intensity scale/shift 0.1; Dice
loss; AdamW lr 1e-4, weight decay 1e-5, 50 warm-up epochs then cosine over 300 epochs
(~1000 training cases of a 5-fold split, batch 2: 500 steps an epoch); sliding-window
validation with overlap 0.5.

Folds: ``brats21_folds.json`` (the BrainSegFounder / MONAI split) when the data root has it,
else a 5-fold split made once per run (``data.split_seed``, saved as ``<workdir>/folds.json``
and read back on resume); ``data.fold`` is held out. ``--config.data.datalist=x.json`` uses
that datalist instead (it must exist); ``--config.data.val_every=k`` holds out every k-th case.

PatchMerging order: ``model.downsample="merging"``, MONAI >= 1.5's corrected one, as along
jaxbrain's whole pretraining chain (exports load into today's MONAI as they are);
``--config.model.downsample=merging_legacy`` for weights trained with MONAI < 1.5
(BrainSegFounder's published files, MONAI's ``model_swinvit.pt``).

Shapes: ``data.roi`` is the one size: of the training crops and of the sliding-window
validation window (``eval.roi``, None by default, would set the window alone).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.models.swin_unetr import BRAINSEGFOUNDER_SIZES as SIZES
from jaxbrain.training.config import presets

PRESETS = (*SIZES, "demo", "bf16", "remat")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = presets(arg, PRESETS, __file__, exclusive=[SIZES])
    size = next((a for a in args if a in SIZES), "64m")
    depths, feature, heads = SIZES[size]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 2                     # global, over all hosts and devices
    steps_per_epoch = 500
    c.total_steps = 300 * steps_per_epoch
    c.log_every = 50
    c.eval_every = 10 * steps_per_epoch
    c.ckpt_every = steps_per_epoch
    c.keep_checkpoints = 3
    c.best_metric = "val_dice_mean"
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"             # or "fsdp" (set mesh.fsdp > 1)

    c.model = dict(name="swin_unetr", in_channels=4, out_channels=3, feature_size=feature,
                   depths=depths, num_heads=heads, drop_rate=0.0, dropout_path_rate=0.0,
                   downsample="merging", use_v2=False, remat="remat" in args)
    c.objective = dict(name="segmentation", kind="sigmoid", dice=1.0, ce=0.0, threshold=0.5,
                       channels=("TC", "WT", "ET"), regions="brats")
    c.optim = dict(name="adamw", lr=1e-4, weight_decay=1e-5, b1=0.9, b2=0.999,
                   schedule="warmup_cosine", warmup_steps=50 * steps_per_epoch, end_lr=0.0,
                   grad_clip=0.0, grad_accum=1)
    c.init = dict(torch=placeholder(str), orbax=placeholder(str), encoder_only=False, strict=True)

    c.data = dict(
        layout="brats", root=placeholder(str), datalist=placeholder(str),
        datalist_if_present="brats21_folds.json", fold=0, num_folds=5, split_seed=0,
        val_every=0, labels="brats2021", roi=(128, 128, 128), crops_per_volume=1,
        cache=placeholder(str), workers=0, threads=4, synthetic=None, train_fraction=1.0,
        subset_seed=0,
        preprocess="zscore",
        augment=("rand_crop, brats_regions, rand_flip(prob=0.5), "
                 "rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)"))
    c.eval = dict(roi=placeholder(tuple), overlap=0.5, mode="gaussian", sw_batch_size=2,
                  max_cases=placeholder(int))

    if "demo" in args:
        c.model.update(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
        c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 300, 10, 100, 100
        c.optim.update(lr=1e-3, warmup_steps=20)
        c.data.update(
            roi=(64, 64, 64), threads=2,
            synthetic=dict(kind="brats", n=10, shape=(96, 96, 64), seed=0, anatomy="auto",
                           version=2021),
            augment=("rand_crop(pos_fraction=0.7), brats_regions, rand_flip(prob=0.5), "
                     "rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)"))
        c.eval.update(sw_batch_size=1, max_cases=2)
    return c
