r"""ATLAS v2.0 stroke-lesion segmentation with PCT-Net, fine-tuned from Volume Fusion.

  python train.py --config configs/misfm_finetune_atlas.py --workdir runs/vf_atlas \
      --config.data.root=/data/ATLAS_2 --config.init.orbax=runs/vf_pctnet
  python train.py --config configs/misfm_finetune_atlas.py:demo --workdir runs/vf_atlas_demo \
      --config.init.orbax=runs/vf_demo

Presets as ``misfm_finetune_brats``. The ATLAS data and evaluation of ``atlas_swinunetr``,
except that volumes keep their size (scaled to [0, 1] as in the pretraining, not resized):
PCT-Net trains on 64x128x128
crops (half of them centred on lesion) and segments whole volumes with a sliding window of
that size (``data.roi`` = ``model.input_size``, one reference). One sigmoid output, deep
supervision, Dice + BCE, Adam lr 1e-3. Folds as ``atlas_swinunetr``.
"""

from jaxbrain.training.config import presets, sibling, sibling_module

PRESETS = sibling_module(__file__, "misfm_finetune_brats").PRESETS


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[("mode1", "mode2")])
    c = sibling(__file__, "atlas_swinunetr", ",".join(a for a in args if a in ("demo", "bf16")))
    sibling_module(__file__, "misfm_finetune_brats").finetune(c, args, in_channels=1,
                                                              out_channels=1)
    c.data.augment = ("rand_crop(pos_fraction=0.5), rand_flip(prob=0.5), "
                      "rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)")
    return c
