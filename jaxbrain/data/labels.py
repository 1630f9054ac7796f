"""Label conventions and the BraTS region channels.

BraTS label maps hold 1 = necrotic tumour core, 2 = peritumoral oedema and the enhancing
tumour as 4 (BraTS 2021 and earlier) or 3 (BraTS 2023). Models predict three overlapping
sigmoid channels in the order [TC, WT, ET]:

  TC (tumour core)  = necrosis + enhancing
  WT (whole tumour) = necrosis + oedema + enhancing
  ET (enhancing)    = enhancing
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


def regions_to_brats(regions: np.ndarray, convention: str = "brats2021",
                     threshold: float = 0.5) -> np.ndarray:
    """Region channels (..., 3) [TC, WT, ET] (probabilities or 0/1) -> uint8 label map.

    WT voxels become oedema (2), TC voxels necrosis (1), ET voxels enhancing (4 or 3), each
    overriding the previous, as BraTS submissions are written.
    """
    if regions.shape[-1] != 3:
        raise ValueError(f"expected 3 region channels [TC, WT, ET], got shape {regions.shape}")
    on = regions > threshold
    out = np.zeros(regions.shape[:-1], np.uint8)
    out[on[..., 1]] = 2
    out[on[..., 0]] = 1
    out[on[..., 2]] = enhancing_value(convention)
    return out
