"""Training objectives: how a batch becomes a loss and metrics."""

from jaxbrain.objectives.segmentation import Segmentation

OBJECTIVES = {"segmentation": Segmentation}


def create(name: str, **kwargs):
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**kwargs)
