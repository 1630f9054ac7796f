r"""BrainSegFounder stage 2 on BraTS: the same self-supervised objective on the target data
(4 channels [FLAIR, T1ce, T1, T2]), starting from the stage-1 encoder.

  python train.py --config configs/brainsegfounder_stage2_brats.py --workdir runs/bsf_stage2 \
      --config.data.root=/data/BraTS2021 --config.init.orbax=runs/bsf_stage1

Presets: as stage 1 (``62m`` | ``64m`` | ``69m`` | ``277m``, ``demo``, ``bf16``, ``remat``).

Recipe: lr 6e-6, batch 2, 50,000 steps (the published range is 50k-100k), training cases of
fold ``data.fold`` (the fold's validation cases stay unseen for fine-tuning: the folds are
those of ``brats_swinunetr``, ``brats21_folds.json`` in the data root or else the split made
from the sorted case ids with ``data.split_seed``, the same in both runs); the encoder
(``swinViT``) comes from stage 1 (``init.orbax``: a stage-1 run or ``convert from-torch``
output; ``init.torch``: a PyTorch SSL checkpoint), the SSL heads start fresh. The stage-1
patch embedding has 2 input channels: ``init.channels="average"`` (default) or ``"repeat"``
adapts it to 4, ``"fresh"`` replaces it with a new one as the original did. Either way the
embedding is trained here (the original's stayed at its random initialisation).
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
        c, in_channels=4,
        layout="brats", root=placeholder(str), datalist=placeholder(str),
        datalist_if_present="brats21_folds.json", fold=0, num_folds=5, split_seed=0,
        val_every=0, labels="brats2021")
    if "demo" in args:
        stage1.demo(c, kind="brats", n=10, shape=(96, 96, 64), version=2021)
        c.optim.update(lr=5e-4)
    return c
