r"""BrainSegFounder fine-tuning on ATLAS v2.0 from a stage-2 checkpoint (the ATLAS recipe of
``atlas_swinunetr``, encoder initialised from self-supervised pretraining).

  python train.py --config configs/brainsegfounder_finetune_atlas.py --workdir runs/bsf_atlas \
      --config.data.root=/data/ATLAS_2 --config.init.orbax=runs/bsf_atlas2

Presets as ``atlas_swinunetr``. ``data.train_fraction`` trains on a fixed random subset.
"""

from jaxbrain.training.config import sibling


def get_config(arg: str = ""):
    c = sibling(__file__, "atlas_swinunetr", arg)
    c.init.update(encoder_only=True, channels="average", required=True)
    return c
