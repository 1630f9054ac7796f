r"""BrainSegFounder fine-tuning on BraTS from a stage-2 checkpoint (the BraTS recipe of
``brats_swinunetr``, encoder initialised from self-supervised pretraining).

  python train.py --config configs/brainsegfounder_finetune_brats.py --workdir runs/bsf_brats \
      --config.data.root=/data/BraTS2021 --config.init.orbax=runs/bsf_stage2
  python train.py --config configs/brainsegfounder_finetune_brats.py --workdir runs/bsf_brats \
      --config.data.root=/data/BraTS2021 --config.init.torch=ssl_stage2.pt \
      --config.model.downsample=merging_legacy     # BrainSegFounder's published SSL file

The PatchMerging order is ``brats_swinunetr``'s ("merging", that of jaxbrain's own stages);
BrainSegFounder's published files were trained with MONAI < 1.5's order: add
``--config.model.downsample=merging_legacy`` when starting from one.

Presets as ``brats_swinunetr`` (``demo``, sizes, ``bf16``, ``remat``). ``data.train_fraction``
trains on a fixed random subset of the training cases (label-efficiency studies).
"""

from jaxbrain.models.swin_unetr import BRAINSEGFOUNDER_SIZES as SIZES
from jaxbrain.training.config import presets, sibling, sibling_module

PRESETS = sibling_module(__file__, "brats_swinunetr").PRESETS


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[SIZES])
    c = sibling(__file__, "brats_swinunetr", ",".join(args))
    c.init.update(encoder_only=True, channels="average", required=True)
    return c
