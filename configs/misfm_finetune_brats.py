r"""BraTS segmentation with PCT-Net, fine-tuned from Volume Fusion pretraining (MIS-FM).

  python train.py --config configs/misfm_finetune_brats.py --workdir runs/vf_brats \
      --config.data.root=/data/BraTS2021 --config.init.orbax=runs/vf_pctnet
  python train.py --config configs/misfm_finetune_brats.py --workdir runs/vf_brats \
      --config.data.root=/data/BraTS2021 --config.init.torch=pctnet_ct10k_volf.pt
  python train.py --config configs/misfm_finetune_brats.py:demo --workdir runs/vf_brats_demo \
      --config.init.orbax=runs/vf_demo

Presets: ``demo`` (small PCT-Net on synthetic BraTS), ``scratch`` (no pretrained weights),
``mode1`` / ``mode2``, ``bf16``, ``remat``. ``data.train_fraction`` trains on a fixed subset.

The BraTS data, augmentation and evaluation of ``brats_swinunetr`` with PCT-Net: 4 channels in
(the pretrained 1-channel stem is averaged over them, ``init.channels``), 3 sigmoid region
outputs [TC, WT, ET] (new output layers: ``init.new_head``), intensities scaled as in the
pretraining (per channel to [0, 1] between the 0.5th and 99.5th brain percentiles), deep
supervision, Dice + BCE
(0.5 each), Adam lr 1e-3 (MIS-FM's fine-tuning rate) with weight decay 1e-5, batch 2,
64x128x128 crops (the pretraining's), and sliding-window evaluation at PCT-Net's fixed window.
``data.roi`` is the crop size, the window and ``model.input_size`` (one reference: setting
``--config.data.roi`` sets all three).
"""

from jaxbrain.training.config import presets, sibling, sibling_module

PRESETS = ("demo", "scratch", "mode1", "mode2", "bf16", "remat")


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[("mode1", "mode2")])
    c = sibling(__file__, "brats_swinunetr", ",".join(a for a in args if a in ("demo", "bf16")))
    finetune(c, args, in_channels=4, out_channels=3)
    c.data.augment = ("rand_crop(pos_fraction=0.7), brats_regions, rand_flip(prob=0.5), "
                      "rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)")
    return c


def finetune(c, args, *, in_channels: int, out_channels: int) -> None:
    """Turns a SwinUNETR segmentation config into PCT-Net fine-tuning from VF (shared by the
    ATLAS config): the VF config's PCT-Net, crop size and intensity scaling."""
    vf = sibling_module(__file__, "misfm_vf_pctnet").get_config(
        ",".join(a for a in args if a in ("demo", "mode1", "mode2", "bf16", "remat")))
    c.data.roi = tuple(vf.data.roi)
    c.model = dict(vf.model, in_channels=in_channels, out_channels=out_channels,
                   input_size=c.data.get_ref("roi"))
    c.objective.update(dice=0.5, ce=0.5, deep_supervision=None)
    c.optim = dict(name="adam", lr=1e-3, weight_decay=1e-5, b1=0.9, b2=0.999,
                   schedule="warmup_cosine", warmup_steps=c.optim.warmup_steps, end_lr=0.0,
                   grad_clip=0.0, grad_accum=1)
    c.init.update(channels="average", new_head=True, required="scratch" not in args)
    # The pretraining's intensity scaling (per channel to [0, 1] between brain percentiles),
    # so that the pretrained stem and BatchNorm statistics see what they were trained on.
    c.data.preprocess = vf.data.preprocess
