r"""BrainSegFounder fine-tuning on ATLAS v2.0 from a stage-2 checkpoint (the ATLAS recipe of
``atlas_swinunetr``, encoder initialised from self-supervised pretraining).

  python train.py --config configs/brainsegfounder_finetune_atlas.py --workdir runs/bsf_atlas \
      --config.data.root=/data/ATLAS_2 --config.init.orbax=runs/bsf_atlas2

The PatchMerging order is ``atlas_swinunetr``'s ("merging", that of jaxbrain's own stages);
BrainSegFounder's published files were trained with MONAI < 1.5's order: add
``--config.model.downsample=merging_legacy`` when starting from one (``init.torch``).

Presets as ``atlas_swinunetr``. ``data.train_fraction`` trains on a fixed random subset.
"""

from jaxbrain.models.swin_unetr import BRAINSEGFOUNDER_SIZES as SIZES
from jaxbrain.training.config import presets, sibling, sibling_module

PRESETS = sibling_module(__file__, "atlas_swinunetr").PRESETS


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[SIZES])
    c = sibling(__file__, "atlas_swinunetr", ",".join(args))
    c.init.update(encoder_only=True, channels="average", required=True)
    return c
