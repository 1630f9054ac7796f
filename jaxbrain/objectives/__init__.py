"""Training objectives: how a batch becomes a loss and metrics, what state an objective keeps
and how its outputs become predictions.

The protocol (``compute`` required; state, schedules by step, the model's example input and
whole-volume predictions optional) is documented in one place, :mod:`jaxbrain.training.loop`.
``register(name)`` adds an objective class; configs name it in ``objective.name``.
"""

from jaxbrain.objectives.contrastive import Contrastive
from jaxbrain.objectives.dino import Dino
from jaxbrain.objectives.mae import MAE
from jaxbrain.objectives.segmentation import Segmentation
from jaxbrain.objectives.ssl import SSL
from jaxbrain.objectives.supervised import Classification, Multitask, Regression
from jaxbrain.objectives.volume_fusion import VolumeFusion

OBJECTIVES = {"segmentation": Segmentation, "ssl": SSL, "volume_fusion": VolumeFusion,
              "classification": Classification, "regression": Regression,
              "mae": MAE, "contrastive": Contrastive, "multitask": Multitask,
              "dino": Dino}


def register(name: str):
    """Class decorator adding an objective under ``name``."""
    def add(cls):
        OBJECTIVES[name] = cls
        return cls
    return add


def create(name: str, **kwargs):
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)
