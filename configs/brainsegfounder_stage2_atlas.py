r"""BrainSegFounder stage 2 on ATLAS v2.0: the self-supervised objective on the stroke T1w
scans (1 channel), starting from the stage-1 encoder.

  python train.py --config configs/brainsegfounder_stage2_atlas.py --workdir runs/bsf_atlas2 \
      --config.data.root=/data/ATLAS_2 --config.init.orbax=runs/bsf_stage1

Presets and recipe as ``brainsegfounder_stage2_brats`` (lr 6e-6, 50,000 steps, encoder from
stage 1, the 2-channel patch embedding adapted to 1 channel by ``init.channels``); the
subjects held out for fine-tuning validation (fold ``data.fold`` of the split made from the
sorted subject ids with ``data.split_seed``, as ``atlas_swinunetr``) are left out here too.
"""

from ml_collections.config_dict import placeholder

from jaxbrain.models.swin_unetr import BRAINSEGFOUNDER_SIZES as SIZES
from jaxbrain.training.config import presets, sibling, sibling_module

PRESETS = sibling_module(__file__, "brainsegfounder_stage1").PRESETS


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[SIZES])
    c = sibling(__file__, "brainsegfounder_stage1", ",".join(a for a in args if a != "demo"))
    stage1 = sibling_module(__file__, "brainsegfounder_stage1")
    stage1.target_stage(
        c, in_channels=1,
        layout="atlas", root=placeholder(str), datalist=placeholder(str), fold=0, num_folds=5,
        split_seed=0, val_every=0, labels="binary")
    if "demo" in args:
        stage1.demo(c, kind="atlas", n=10, shape=(80, 96, 80))
        c.optim.update(lr=5e-4)
    return c
