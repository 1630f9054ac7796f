"""Evaluation: segmentation metrics and reports (figures, CSV/JSON tables)."""
