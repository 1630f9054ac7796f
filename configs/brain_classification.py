r"""Whole-scan classification of T1w MRI: Alzheimer's (ADNI CN vs AD), Parkinson's (PPMI PD vs
control) or sex (F vs M), with a 3D ViT or a 3D CNN; one label per scan.

  python train.py --config configs/brain_classification.py:demo --workdir runs/ad_demo
  python eval.py --workdir runs/ad_demo                  # predictions.csv, metrics.json, roc.png
  python train.py --config configs/brain_classification.py:sex,demo --workdir runs/sex_demo
  python train.py --config configs/brain_classification.py:ad,vit --workdir runs/ad_vit_f0 \
      --config.data.root=/data/adni/labels.csv --config.data.fold=0
  python train.py --config configs/brain_classification.py:pd,resnet18 --workdir runs/pd_site3 \
      --config.data.root=/data/ppmi --config.data.num_folds=None --config.data.held_out_site=site3
  python eval.py --workdir runs/pd_site3

Presets (``:arg``, comma-separated): task ``ad`` (default: CN vs AD from the diagnosis
column) | ``pd`` (control vs PD) | ``sex`` (F vs M from the sex column; no scale
augmentation, head size being one of its cues); model ``vit`` (default: ViT-B/16, MONAI's
layout) | ``densenet121`` | ``resnet18`` | ``resnet50`` (MedicalNet's); input ``128`` (1.5 mm,
128^3; default 2 mm, 96^3); ``demo`` (a synthetic cohort of 200 subjects at 4 mm, ADNI-,
PPMI- or UK Biobank-like by task, a small ResNet, 300 steps: minutes on a laptop CPU; with a
model preset, that model); ``bf16`` computes in bfloat16, ``remat`` rematerialises blocks; a
pretrained source's layout ``timm`` (a 2D timm ViT into the ViT) | ``torchvision`` (a 2D
torchvision / timm ResNet or DenseNet into the CNN; default model resnet18) | ``videomae``
(a VideoMAE into the ViT), with its file in ``--config.init.torch`` (configs/_whole_scan.py).

Class 1 (the positive class of the AUC) is AD, PD or M; rows of other classes (e.g. MCI) are
dropped. The label table, preprocessing, splits, class weights and checkpoint choice are
those of every whole-scan config (configs/_whole_scan.py); brain age is
configs/brain_age.py.
"""

from jaxbrain.training.config import presets, sibling_module

_shared = sibling_module(__file__, "_whole_scan")
TASKS = ("ad", "pd", "sex")
PRESETS = (*TASKS, *_shared.MODELS, *_shared.COMMON, *_shared.SOURCES)


def get_config(arg: str = ""):
    args = presets(arg, PRESETS, __file__, exclusive=[TASKS, _shared.MODELS, _shared.SOURCES])
    return _shared.build(next((a for a in args if a in TASKS), "ad"), args)
