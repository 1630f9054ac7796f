"""Inference shared by validation during training and by eval.py: sliding-window
prediction of whole volumes (:mod:`.sliding_window`) and the :class:`Predictor`."""

from jaxbrain.inference.predictor import Predictor, eval_roi
from jaxbrain.inference.sliding_window import sliding_window_inference

__all__ = ["Predictor", "eval_roi", "sliding_window_inference"]
