"""Training objectives: how a batch becomes a loss and metrics.

An objective has ``compute(apply, batch, key) -> (loss, metrics)``, where ``apply`` runs the
model in training mode on an input and ``key`` drives on-device augmentation. Objectives that
depend on how the batch is split over devices have ``for_mesh(batch_shards)``.
"""

from jaxbrain.objectives.segmentation import Segmentation
from jaxbrain.objectives.ssl import SSL
from jaxbrain.objectives.volume_fusion import VolumeFusion

OBJECTIVES = {"segmentation": Segmentation, "ssl": SSL, "volume_fusion": VolumeFusion}


def create(name: str, **kwargs):
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)
