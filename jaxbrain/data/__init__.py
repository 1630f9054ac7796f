"""Brain MRI data: NIfTI reading, dataset layouts, transforms, grain pipelines, synthetic data."""

from jaxbrain.data.layouts import Case, atlas, brats, datalist, find_cases, split_fold, subjects
from jaxbrain.data.nifti import DataError, Geometry, read_volume, to_source, write_volume
from jaxbrain.data.pipeline import (build_cache, eval_dataset, loader, open_cache,
                                    parse_transforms, training_dataset)
from jaxbrain.data.transforms import load_case
