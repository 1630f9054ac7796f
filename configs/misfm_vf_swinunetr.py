r"""Volume Fusion pretraining of SwinUNETR on unlabeled brain MRI (MIS-FM's objective on
BrainSegFounder's network).

  python train.py --config configs/misfm_vf_swinunetr.py --workdir runs/vf_swin \
      --config.data.root=/data/brains/subjects.csv
  python train.py --config configs/misfm_vf_swinunetr.py:demo --workdir runs/vf_swin_demo

Presets: model size ``62m`` | ``64m`` (default) | ``69m`` | ``277m``; ``demo``; ``boxes``;
``bf16``; ``remat``. The recipe of ``misfm_vf_pctnet`` (crops, fusion, loss, Adam with step
decay) with SwinUNETR segmenting the 5 fusion classes (one output, no deep supervision). Its
encoder initialises the BrainSegFounder fine-tuning configs (``init.orbax`` with
``init.encoder_only=True``).
"""

from jaxbrain.models.swin_unetr import BRAINSEGFOUNDER_SIZES as SIZES
from jaxbrain.training.config import presets, sibling

PRESETS = (*SIZES, "demo", "boxes", "bf16", "remat")


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[SIZES])
    depths, feature, heads = SIZES[next((a for a in args if a in SIZES), "64m")]
    base = ",".join(a for a in args if a not in SIZES)
    c = sibling(__file__, "misfm_vf_pctnet", base)
    c.model = dict(name="swin_unetr", in_channels=1, out_channels=5, feature_size=feature,
                   depths=depths, num_heads=heads, drop_rate=0.0, dropout_path_rate=0.0,
                   downsample="merging", use_v2=False, remat="remat" in args)
    if "demo" in args:
        c.model.update(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
    return c
