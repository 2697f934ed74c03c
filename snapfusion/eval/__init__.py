"""Evaluation metrics: FID (as pytorch-fid) and CLIP score (as torchmetrics).

Importing this package does not import torch; the networks import it when
they are built.

* :func:`activation_statistics`, :func:`frechet_distance`: float64 Gaussian
  statistics and Fréchet distance (numpy/scipy).
* :class:`FIDInception`, :func:`fid`, :func:`convert_fid_weights`: the FID
  Inception-v3 network, FID of two image sets, weights conversion.
* :class:`CLIPScore`: CLIP score of image/caption pairs.

``snapfusion.eval.fid`` is the :func:`fid` function (it shadows the module
of the same name; import module contents with ``from snapfusion.eval.fid import ...``).
"""

from __future__ import annotations

from snapfusion.eval.clip_score import CLIPImagePreprocessor, CLIPScore
from snapfusion.eval.fid import FID_DIMS, FIDInception, convert_fid_weights, fid
from snapfusion.eval.metrics import (
    activation_statistics,
    frechet_distance,
    frechet_distance_from_features,
)

__all__ = [
    "activation_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "FIDInception",
    "FID_DIMS",
    "fid",
    "convert_fid_weights",
    "CLIPScore",
    "CLIPImagePreprocessor",
]
