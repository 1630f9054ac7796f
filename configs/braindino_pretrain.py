r"""BrainDINO pretraining: DINOv3-style self-distillation of a 2D slice encoder on axial MRI
slices (DINO CLS loss + iBOT masked-patch loss + KoLeo, EMA teacher, multi-crop on device;
optional Gram anchoring for a second stage).

  python train.py --config configs/braindino_pretrain.py --workdir runs/braindino \
      --config.data.collections='[{"root": "/data/ukb", "channels": ["t1", "flair"]}, \
                                  {"root": "/data/brats", "layout": "brats"}]'
  python train.py --config configs/braindino_pretrain.py:gram --workdir runs/braindino_gram \
      --config.init.orbax=runs/braindino                    # second stage: Gram anchoring
  python train.py --config configs/braindino_pretrain.py:demo --workdir runs/braindino_demo

Presets (``:arg``, comma-separated): ``demo`` (a 2-block, 64-wide ViT on synthetic slices,
64 px global / 32 px local crops, a few minutes on a CPU), ``gram`` (Gram anchoring on,
weight 1, the Gram teacher refreshed from the EMA teacher every 10k steps), ``dinov2``
(DINOv2's choices: centring instead of Sinkhorn-Knopp, the iBOT loss on the DINO head,
weight-normalised last layer), ``bf16`` (bfloat16 compute).

Recipe (the ViT-B/16 of BrainDINO, REFERENCE section 4, with DINOv3's
``ssl_default_config.yaml`` where the paper is silent):

* backbone ``braindino_vitb16`` (patch 16, 768 wide, 12 blocks, 4 storage tokens, axial
  RoPE in bfloat16 as DINOv3's ``vit_base`` builds it (``model.rope_dtype="bf16"``; "fp32"
  as the hub backbones), LayerScale 1e-5, no qkv bias, drop path 0.2) + DINO head and a separate iBOT head
  (3 layers, hidden 2048, bottleneck 256, 65536 prototypes, plain last layer):
  ``jaxbrain.models.dino_heads.DinoStudent``;
* crops 2 x 224 (scale 0.32-1) + 8 x 96 (0.05-0.32), flips, intensity jitter p 0.8, blur
  p 1.0 / 0.1 / 0.5, no solarisation (the originals' p 0.2 on the second global crop is
  ``--config.objective.solarize_p='(0.0, 0.2, 0.0)'``, see ``jaxbrain.objectives.dino``);
  teacher on the global crops; student temperature 0.1, teacher 0.04 -> 0.07 over 30
  epochs; Sinkhorn-Knopp (3 iterations); momentum 0.992 -> 1 (cosine);
  iBOT block masks (DINOv2's MaskingGenerator) with probability 0.5, ratio 0.1-0.5,
  weight 1; KoLeo 0.1
  (``jaxbrain.objectives.dino``);
* AdamW (0.9, 0.999), lr 1e-3 x sqrt(batch / 1024) (DINOv3's ``sqrt_wrt_1024`` rule),
  DINO cosine schedule with 10 warm-up epochs to 1e-6, weight decay 0.04 -> 0.4 (cosine),
  none on biases / norms / LayerScale, clip 3.0 per module, the heads' last layers frozen
  for the first epoch, layer-wise decay 0.9, patch embedding lr x 0.2; 100 epochs of
  1250 steps (DINOv3's ``OFFICIAL_EPOCH_LENGTH``), global batch 1024.

Data: ``data.source = "slices"`` (``jaxbrain.data.slices``): axial slices of every volume
of ``data.collections``, robustly scaled per volume and z-scored, resized to 224, repeated
to 3 channels. A run's checkpoints hold the student (``params``: ``encoder``, ``dino_head``,
``ibot_head``) and the EMA teacher in the objective state (``objective/teacher``, same
layout); the originals release the teacher (``torch.load(f)["teacher"]``).
"""

import math

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbrain.models.dino import dino_preset
from jaxbrain.training.config import presets

PRESETS = ("demo", "gram", "dinov2", "bf16")
EPOCH = 1250  # steps per "epoch", DINOv3's OFFICIAL_EPOCH_LENGTH

DEMO_VIT = dict(hidden_size=64, depth=2, num_heads=2, mlp_dim=128, img_size=64,
                patch_size=8, drop_path=0.0)


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__)
    demo = "demo" in args
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 8 if demo else 1024
    epoch = 10 if demo else EPOCH
    epochs = 12 if demo else 100
    c.total_steps = epochs * epoch
    c.log_every = 10 if demo else 100
    c.eval_every = 0
    c.ckpt_every = 50 if demo else 2 * EPOCH
    c.keep_checkpoints = 3
    c.best_metric = placeholder(str)
    c.best_mode = "min"
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    c.data = dict(source="slices", slice_size=64 if demo else 224, brain_fraction=0.1,
                  slices_per_volume=8 if demo else 16, volumes_in_memory=4 if demo else 8,
                  collections=placeholder(list) if not demo else [
                      {"name": "demo", "synthetic": {"kind": "unlabeled", "n": 6,
                                                     "shape": (64, 72, 64)},
                       "channels": ("t1", "flair")}],
                  workers=0, threads=2, preprocess="", augment="", roi=None)

    dinov2 = "dinov2" in args
    backbone = dino_preset("braindino_vitb16", **(DEMO_VIT if demo else {}))
    c.model = dict(name="dino_student", in_channels=3, **backbone,
                   head_prototypes=256 if demo else 65536, head_hidden=128 if demo else 2048,
                   head_bottleneck=32 if demo else 256, head_nlayers=3,
                   head_weight_norm=dinov2, ibot_separate_head=not dinov2, remat=False,
                   remat_policy=None, scan_blocks=False)

    gram = "gram" in args
    c.objective = dict(
        name="dino", total_steps=c.get_ref("total_steps"),
        global_crops=2, local_crops=4 if demo else 8,
        global_size=64 if demo else 224, local_size=32 if demo else 96,
        global_scale=(0.32, 1.0), local_scale=(0.05, 0.32), ratio=(3 / 4, 4 / 3),
        flip_p=0.5, intensity_p=0.8, brightness=0.4, contrast=0.4, gamma=(0.7, 1.5),
        blur_p=(1.0, 0.1, 0.5), blur_sigma=(0.1, 2.0), blur_kernel=9,
        solarize_p=(0.0, 0.0, 0.0), solarize_threshold=128 / 255,
        student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
        teacher_temp_warmup_steps=(3 if demo else 30) * epoch,
        momentum=0.992, final_momentum=1.0,
        centering="centering" if dinov2 else "sinkhorn_knopp", center_momentum=0.9,
        sinkhorn_iterations=3, dino_weight=1.0, ibot_weight=1.0, mask_probability=0.5,
        mask_ratio=(0.1, 0.5), mask_mode="block", koleo_weight=0.1, koleo_group=0,
        gram_weight=1.0 if gram else 0.0, gram_every=(20 if demo else 10_000) if gram else 0,
        gram_start=0, gram_img_level=False)

    lr = 1e-3 * math.sqrt(c.batch_size / 1024)
    c.optim = dict(
        name="adamw", lr=lr, b1=0.9, b2=0.999, schedule="dino_cosine",
        warmup_steps=(1 if demo else 10) * epoch, end_lr=1e-6,
        weight_decay=0.04, weight_decay_end=0.4, decay_mask="dino",
        grad_clip=3.0, clip_per_subtree=True, freeze_last_layer_steps=epoch,
        layer_decay=0.9, lr_scale={"encoder/patch_embedding": 0.2}, grad_accum=1)
    c.init = dict(torch=placeholder(str), orbax=placeholder(str), encoder_only=False,
                  new_head=False, strict=True)
    return c
