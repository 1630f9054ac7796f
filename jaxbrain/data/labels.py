"""Label conventions and the BraTS region channels.

BraTS label maps hold 1 = necrotic tumour core, 2 = peritumoral oedema and the enhancing
tumour as 4 (BraTS 2021 and earlier) or 3 (BraTS 2023). Models predict three overlapping
sigmoid channels in the order [TC, WT, ET]:

  TC (tumour core)  = necrosis + enhancing
  WT (whole tumour) = necrosis + oedema + enhancing
  ET (enhancing)    = enhancing

The regions are nested, ET within TC within WT, in every label map. Predicted channels need not
be (an ET voxel outside the predicted WT): :func:`regions_to_brats` nests them by keeping each
region only inside the one that holds it, so that the label map it writes has exactly the
regions :func:`nested_regions` gives, and metrics computed from the map are those of the file.
"""

from __future__ import annotations

import numpy as np

# Allowed label values of each convention.
CONVENTIONS = {
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "binary": (0, 1),
}

REGIONS = ("TC", "WT", "ET")


def enhancing_value(convention: str) -> int:
    if convention == "brats2021":
        return 4
    if convention == "brats2023":
        return 3
    raise ValueError(f"not a BraTS label convention: {convention!r} (brats2021 or brats2023)")


def brats_to_regions(label: np.ndarray, convention: str = "brats2021") -> np.ndarray:
    """Label map (...,) -> uint8 region channels (..., 3) in the order [TC, WT, ET]."""
    et_value = enhancing_value(convention)
    et = label == et_value
    tc = et | (label == 1)
    wt = tc | (label == 2)
    return np.stack([tc, wt, et], axis=-1).astype(np.uint8)


def nested_regions(regions: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Region channels (..., 3) [TC, WT, ET] (probabilities or 0/1) -> bool (..., 3) nested
    as BraTS defines them: WT thresholded, TC = TC and WT, ET = ET and TC (and so WT)."""
    regions = np.asarray(regions)
    if regions.shape[-1] != 3:
        raise ValueError(f"expected 3 region channels [TC, WT, ET], got shape {regions.shape}")
    on = regions > threshold
    wt = on[..., 1]
    tc = on[..., 0] & wt
    et = on[..., 2] & tc
    return np.stack([tc, wt, et], axis=-1)


def regions_to_brats(regions: np.ndarray, convention: str = "brats2021",
                     threshold: float = 0.5) -> np.ndarray:
    """Region channels (..., 3) [TC, WT, ET] (probabilities or 0/1) -> uint8 label map.

    The channels are nested first (:func:`nested_regions`); WT voxels outside TC are oedema (2),
    TC voxels outside ET necrosis (1), ET voxels enhancing (4 in BraTS 2021, 3 in 2023).
    ``brats_to_regions`` of the result gives back exactly the nested regions.
    """
    tc, wt, et = np.moveaxis(nested_regions(regions, threshold), -1, 0)
    value = enhancing_value(convention)
    out = np.zeros(wt.shape, np.uint8)
    out[wt] = 2
    out[tc] = 1
    out[et] = value
    return out
