r"""MIS-FM Volume Fusion pretraining of PCT-Net on unlabeled brain MRI.

  python train.py --config configs/misfm_vf_pctnet.py --workdir runs/vf_pctnet \
      --config.data.root=/data/brains/subjects.csv
  python train.py --config configs/misfm_vf_pctnet.py:demo --workdir runs/vf_demo   # synthetic
  python -m jaxbrain.convert to-torch runs/vf_pctnet pctnet_vf.pt    # MIS-FM's layout

Presets (``:arg``): ``demo`` (a small PCT-Net on synthetic subjects, minutes on a CPU),
``boxes`` (the paper's random-box fusion instead of PyMIC's block grid), ``mode1`` /
``mode2`` (resolution_mode 1 / 2: stems that keep more depth, for thick-slice data),
``bf16``, ``remat``.

Recipe (MIS-FM): 64x128x128 crops, two per volume, each augmented as PyMIC's
``Crop4VolumeFusion`` (``vf_augment``); each crop fused with the other crop of
its volume (``objective.foreground="pair"``; "roll" takes another sample) over a block grid
(block sides 8..32, 70% of the blocks foreground, k uniform in 1..4, alpha = k/4); PCT-Net
(features 24, 48, 128, 256, 512; 45M parameters) segments the 5 fusion classes with deep
supervision; loss (Dice + CE) / 2; Adam lr 1e-3, weight decay 1e-5 (L2, as PyTorch's Adam),
step decay (x0.5 every 50k of 200k steps), batch 4. Intensities scaled per channel to [0, 1]
between the 0.5th and 99.5th brain percentiles. ``data.root`` is a subject list (CSV with a
``t1`` column, or JSON) or a folder holding ``subjects.csv``.

``data.roi`` is the crop size and PCT-Net's ``model.input_size`` (one reference: setting either,
e.g. ``--config.data.roi=(32,64,64)``, sets both).
"""

import ml_collections
from ml_collections.config_dict import FieldReference, placeholder

from jaxbrain.training.config import presets

PRESETS = ("demo", "boxes", "mode1", "mode2", "bf16", "remat")

# PyMIC's Crop4VolumeFusion, per crop: a random resized crop of data.roi (scale 0.7-1.5 per
# axis), flips, a percentile contrast stretch, gamma 0.7-1.5 and inversion with probability 0.25.
VF_AUGMENT = ("rand_resized_crop(scale_min=0.7, scale_max=1.5), rand_flip(prob=0.5), "
              "rand_contrast, rand_gamma(gamma=(0.7, 1.5)), rand_invert(prob=0.25)")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = presets(arg, PRESETS, __file__, exclusive=[("mode1", "mode2")])
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4                     # global
    c.total_steps = 200_000
    c.log_every = 100
    c.eval_every = 0
    c.ckpt_every = 2000
    c.keep_checkpoints = 3
    # Pretraining uses every subject (data.val_every=0). To validate with the objective's own
    # loss on held-out subjects: --config.data.val_every=20 --config.eval_every=1000
    # (--config.best_metric=val_loss keeps the lowest).
    c.best_metric = placeholder(str)
    c.best_mode = "min"
    c.compute_dtype = "bfloat16" if "bf16" in args else "float32"
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding = "replicate"

    roi = FieldReference((64, 128, 128))  # data.roi and model.input_size
    mode = 1 if "mode1" in args else 2 if "mode2" in args else 0
    c.model = dict(name="pctnet", in_channels=1, out_channels=5, input_size=roi,
                   features=(24, 48, 128, 256, 512), dropout=(0.0, 0.0, 0.2, 0.2, 0.2),
                   depths=(2, 2, 2), num_heads=(4, 8, 16), window_sizes=(6, 6, 6),
                   multiscale_pred=True, resolution_mode=mode, corrected_index=False,
                   remat="remat" in args)
    c.objective = dict(name="volume_fusion", variant="boxes" if "boxes" in args else "blocks",
                       classes=5, foreground="pair", fg_ratio=0.7, block_min=(8, 8, 8),
                       block_max=(32, 32, 32), box_count=(10, 40), box_min=(8, 8, 8),
                       box_max=(40, 80, 80), dice=0.5, ce=0.5, deep_supervision=None)
    c.optim = dict(name="adam", lr=1e-3, weight_decay=1e-5, b1=0.9, b2=0.999,
                   schedule="step", decay_steps=50_000, decay_rate=0.5, grad_clip=0.0,
                   grad_accum=1)
    c.init = dict(torch=placeholder(str), orbax=placeholder(str), encoder_only=False,
                  strict=True, channels="average", new_head=False)
    c.data = dict(
        layout="subjects", root=placeholder(str), subject_list="subjects.csv",
        channels=("t1",), roi=roi, crops_per_volume=2, cache=placeholder(str), workers=0,
        threads=4, synthetic=None, val_every=0,
        preprocess="scale_percentiles(lower=0.5, upper=99.5)",
        augment=VF_AUGMENT)

    if "demo" in args:
        demo(c)
    return c


def demo(c) -> None:
    """The CPU-sized version: a small PCT-Net on 32x64x64 crops of synthetic subjects."""
    c.model.update(features=(8, 16, 32, 64, 128), num_heads=(2, 4, 8))
    c.objective.update(block_min=(4, 8, 8), block_max=(16, 32, 32), box_min=(4, 8, 8),
                       box_max=(20, 40, 40))
    c.total_steps, c.log_every, c.ckpt_every, c.eval_every = 300, 10, 100, 100
    c.optim.update(decay_steps=150)
    c.data.update(roi=(32, 64, 64), threads=2, val_every=4,  # held out, validated by the VF loss
                  synthetic=dict(kind="unlabeled", n=8, shape=(72, 88, 72), seed=0,
                                 anatomy="auto"))
