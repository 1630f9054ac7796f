r"""BraTS tumour segmentation on 2D axial slices with a BrainDINO ViT-B/16: BrainDINO's
segmentation recipe (its nnU-Net 2D trainer), evaluated on whole volumes.

  python train.py --config configs/braindino_seg_brats.py --workdir runs/braindino_seg_f0 \
      --config.data.root=/data/BraTS2021_Training_Data --config.init.orbax=runs/braindino
  python train.py --config configs/braindino_seg_brats.py:demo --workdir runs/dino_seg_demo
  python eval.py --workdir runs/dino_seg_demo      # every axial slice, stacked, 3D Dice / HD95

Presets (``:arg``): ``demo`` (a tiny ViT on synthetic BraTS volumes, 64 x 64 slices, a few
minutes on a CPU), ``frozen`` (the encoder kept fixed, only fusion and decoder train),
``512`` (512 x 512 patches of slices resampled to 0.5 mm in-plane), ``atlas`` (ATLAS v2.0
stroke lesions: T1w, one sigmoid channel), ``bf16`` (bfloat16 compute), ``remat``
(rematerialised blocks). Combine with commas, e.g. ``:demo,atlas``.

Model (``dino_seg``, :mod:`jaxbrain.models.dino_seg`): the 4 modalities [FLAIR, T1ce, T1, T2]
fused to 3 channels by a bias-free 1x1 convolution initialised to 1/4, BrainDINO's ViT-B/16
(``braindino_vitb16``: RoPE in bfloat16, 4 storage tokens, LayerScale 1e-5, no qkv bias, stochastic
depth 0.2), the normed patch tokens of blocks 2, 5, 8 and 11 concatenated (3072 channels at
1/16) and the 4-stage transposed-convolution decoder 3072 -> 1536 -> 768 -> 384 -> 192 ->
classes (22.6% of the parameters).

Recipe (BrainDINO's ``BrainDINO_Primus_Multiscale_HighRes_Trainer``): AdamW (0.9, 0.98),
weight decay 0.05, decoder lr 3e-4 and encoder lr 3e-5 (``optim.lr_scale`` {"encoder":
0.1}, weight decay scaled with it as in the trainer's parameter groups), linear poly decay
(power 1) over 300 epochs of 250 iterations without warm-up (the trainer decays per epoch,
here per step), gradient clipping at 12 (nnU-Net's); foreground oversampling 0.33 (nnU-Net's
2D sampler: ``rand_slice_crop``, a third of the samples centred on a voxel of a random tumour
label); sigmoid regions [TC, WT, ET] with Dice + BCE, the Dice summed over the batch (nnU-Net's
2D ``batch_dice``); flips of both in-plane axes and intensity scale / shift; per-channel
z-score over the brain as every BraTS config. Not published, chosen here: the batch (16
slices, 4 from each volume read) and, for ``512``, the in-plane spacing; nnU-Net's rotations,
elastic and other intensity augmentations are not reproduced.

Initialisation: ``--config.init.orbax=<run or directory>`` with ``init.encoder_only`` takes the
``encoder`` subtree of a BrainDINO pretraining run (configs/braindino_pretrain.py), or the
whole of a converted slice encoder (a BrainDINO teacher checkpoint, DINOv3 / DINOv2 file:
``python -m jaxbrain.convert from-torch teacher_checkpoint.pth ckpt/``); fusion and decoder
start fresh. Its fields must be the config's (``--config.model.*``, e.g. the hub DINOv3's
qkv bias). Without a source the network starts from scratch.

Evaluation (validation and eval.py alike): each axial slice (``eval.slice_axis`` 2) of a whole
preprocessed volume is predicted with 2D Gaussian-blended sliding windows of ``data.roi``
(``eval.sw_batch_size`` windows a call), the slices are stacked back into the volume, and
Dice / HD95 of TC, WT and ET and the NIfTI label maps come out as for the 3D BraTS runs.

Folds: as configs/brats_swinunetr.py (``brats21_folds.json`` when the data root has it, else a
5-fold split saved as ``<workdir>/folds.json``; ``data.fold`` held out).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.models.dino import dino_preset
from jaxbrain.training.config import presets

PRESETS = ("demo", "frozen", "512", "atlas", "bf16", "remat")

BRATS_AUGMENT = ("rand_slice_crop(pos_fraction=0.33), brats_regions, "
                 "rand_flip(prob=0.5, axes=(0, 1)), rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)")
ATLAS_AUGMENT = ("rand_slice_crop(pos_fraction=0.33), rand_flip(prob=0.5, axes=(0, 1)), "
                 "rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)")
# A tiny encoder for the demo: 4 blocks of width 64, patch 8 (3 decoder stages).
DEMO_ENCODER = dict(hidden_size=64, depth=4, num_heads=4, mlp_dim=128, patch_size=8,
                    drop_path=0.0)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = presets(arg, PRESETS, __file__)
    atlas = "atlas" in args
    size = 512 if "512" in args else 224
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16                    # slices, global over all hosts and devices
    steps_per_epoch = 250                # nnU-Net's iterations per epoch
    c.total_steps = 300 * steps_per_epoch
    c.log_every = 50
    c.eval_every = 10 * steps_per_epoch
    c.ckpt_every = steps_per_epoch
    c.keep_checkpoints = 3
    c.best_metric = "val_dice_mean"
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    encoder = dino_preset("braindino_vitb16", img_size=size)
    c.model = dict(name="dino_seg", in_channels=1 if atlas else 4, out_channels=1 if atlas else 3,
                   layers=(2, 5, 8, 11), fused_channels=3, fusion_init=0.25, mask_token=True,
                   remat="remat" in args, remat_policy=None, scan_blocks=False, **encoder)
    if atlas:
        c.objective = dict(name="segmentation", kind="sigmoid", dice=1.0, ce=1.0, threshold=0.5,
                           batch_dice=True)
    else:
        c.objective = dict(name="segmentation", kind="sigmoid", dice=1.0, ce=1.0, threshold=0.5,
                           channels=("TC", "WT", "ET"), regions="brats", batch_dice=True)
    optim = dict(name="adamw", lr=3e-4, weight_decay=0.05, b1=0.9, b2=0.98, schedule="poly",
                 power=1.0, warmup_steps=0, end_lr=0.0, grad_clip=12.0, grad_accum=1,
                 lr_scale={"encoder": 0.1})
    if "frozen" in args:  # zero updates for the encoder instead of a tenth of the rate
        del optim["lr_scale"]
        optim["freeze"] = "encoder"
    c.optim = optim
    c.init = dict(torch=placeholder(str), orbax=placeholder(str), encoder_only=True, strict=True)

    c.data = dict(
        layout="atlas" if atlas else "brats", root=placeholder(str), datalist=placeholder(str),
        datalist_if_present=None if atlas else "brats21_folds.json", fold=0, num_folds=5,
        split_seed=0, val_every=0, labels="binary" if atlas else "brats2021", roi=(size, size),
        crops_per_volume=4, cache=placeholder(str), workers=0, threads=4, synthetic=None,
        train_fraction=1.0, subset_seed=0,
        preprocess="zscore, resample(spacing=(0.5, 0.5, 1.0))" if size == 512 else "zscore",
        augment=ATLAS_AUGMENT if atlas else BRATS_AUGMENT)
    c.eval = dict(roi=placeholder(tuple), overlap=0.5, mode="gaussian", sw_batch_size=16,
                  slice_axis=2, max_cases=placeholder(int))

    if "demo" in args:
        c.model.update(img_size=64, layers=(0, 1, 2, 3), **DEMO_ENCODER)
        c.batch_size = 16
        c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 300, 10, 100, 100
        c.optim.update(lr=1e-3)
        shape = (80, 96, 80) if atlas else (96, 96, 64)
        c.data.update(
            roi=(64, 64), threads=2, preprocess="zscore",
            synthetic=dict(kind="atlas" if atlas else "brats", n=10, shape=shape, seed=0,
                           anatomy="auto", version=2021))
        c.eval.update(sw_batch_size=16, max_cases=2)
    return c
