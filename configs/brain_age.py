r"""Brain age from T1w MRI (UK Biobank style): regression of the age column of a label
table with a 3D ViT or a 3D CNN; one value per scan.

  python train.py --config configs/brain_age.py:demo --workdir runs/age_demo     # synthetic
  python eval.py --workdir runs/age_demo       # predictions.csv, metrics.json, scatter.png
  python train.py --config configs/brain_age.py:densenet121 --workdir runs/ukb_age \
      --config.data.root=/data/ukb/participants.tsv --config.data.test_fold=4
  python eval.py --workdir runs/ukb_age --split test

Presets (``:arg``, comma-separated): model ``vit`` (default: ViT-B/16, MONAI's layout) |
``densenet121`` | ``resnet18`` | ``resnet50`` (MedicalNet's); input ``128`` (1.5 mm, 128^3;
default 2 mm, 96^3); ``demo`` (a synthetic cohort of 200 controls aged 40-85 at 4 mm, a small
ResNet, 300 steps: minutes on a laptop CPU; with a model preset, that model); ``bf16``
computes in bfloat16, ``remat`` rematerialises blocks; a pretrained source's layout ``timm``
(a 2D timm ViT into the ViT) | ``torchvision`` (a 2D torchvision / timm ResNet or DenseNet
into the CNN; default model resnet18) | ``videomae`` (a VideoMAE into the ViT), with its file
in ``--config.init.torch`` (configs/_whole_scan.py).

Targets are standardised by the training scans' mean and std (MSE); the best checkpoint has
the lowest validation MAE, and eval.py reports the MAE after the brain-age bias correction
fitted on the validation predictions (``eval.age_bias``). The label table, preprocessing and
splits (stratified by age bins) are those of every whole-scan config (configs/_whole_scan.py);
classification is configs/brain_classification.py.
"""

from jaxbrain.training.config import presets, sibling_module

_shared = sibling_module(__file__, "_whole_scan")
PRESETS = (*_shared.MODELS, *_shared.COMMON, *_shared.SOURCES)


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[_shared.MODELS, _shared.SOURCES])
    return _shared.build("age", args)
