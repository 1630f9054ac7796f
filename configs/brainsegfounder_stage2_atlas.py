r"""BrainSegFounder stage 2 on ATLAS v2.0: the self-supervised objective on the stroke T1w
scans (1 channel), starting from the stage-1 encoder.

  python train.py --config configs/brainsegfounder_stage2_atlas.py --workdir runs/bsf_atlas2 \
      --config.data.root=/data/ATLAS_2 --config.init.orbax=runs/bsf_stage1

Presets and recipe as ``brainsegfounder_stage2_brats`` (lr 6e-6, 50,000 steps, encoder from
stage 1, the 2-channel patch embedding adapted to 1 channel by ``init.channels``); the
subjects held out for fine-tuning validation (every 5th by id, as ``atlas_swinunetr``) are
left out here too.
"""

from ml_collections.config_dict import placeholder

from jaxbrain.training.config import sibling, sibling_module


def get_config(arg: str = ""):
    args = [a for a in arg.split(",") if a]
    c = sibling(__file__, "brainsegfounder_stage1", ",".join(a for a in args if a != "demo"))
    c.model.in_channels = 1
    c.total_steps = 50_000
    c.optim.update(lr=6e-6)
    c.init.update(encoder_only=True, channels="average", required=True)
    roi = tuple(c.data.roi)
    c.data = dict(
        layout="atlas", root=placeholder(str), datalist=placeholder(str), fold=0, val_every=5,
        labels="binary", roi=roi, crops_per_volume=2, cache=placeholder(str), workers=0,
        threads=4, synthetic=None,
        preprocess=f"crop_foreground(k_divisible={roi}), scale_percentiles(lower=0.5, upper=99.5)",
        augment=f"rand_crop(roi={roi})")
    if "demo" in args:
        sibling_module(__file__, "brainsegfounder_stage1").demo(
            c, kind="atlas", n=10, shape=(80, 96, 80))
        c.optim.update(lr=5e-4)
    return c
