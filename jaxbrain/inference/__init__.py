"""Inference shared by validation during training and by eval.py: sliding-window
prediction of whole volumes (:mod:`.sliding_window`) and the :class:`Predictor`; one
prediction per whole scan (:class:`ScanPredictor`, :mod:`.scans`)."""

from jaxbrain.inference.predictor import Predictor, eval_roi, segment_case
from jaxbrain.inference.scans import ScanPredictor
from jaxbrain.inference.sliding_window import sliding_window_inference

__all__ = ["Predictor", "ScanPredictor", "eval_roi", "segment_case", "sliding_window_inference"]
