"""Fréchet distance between Gaussian fits of feature sets (numpy/scipy only).

The computation follows pytorch-fid v0.3.0 (``calculate_activation_statistics``
and ``calculate_frechet_distance``) in float64:

* statistics: ``mu = mean(x, axis=0)``, ``sigma = cov(x, rowvar=False)``
  (unbiased, divides by N - 1);
* distance: ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))``
  with ``scipy.linalg.sqrtm``; only when the square root has non-finite
  entries is it recomputed with ``eps`` added to both diagonals; a complex
  square root whose diagonal has imaginary parts above 1e-3 is an error,
  otherwise its real part is used.

This module does not import torch; the synthetic-data evaluator uses it too.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["activation_statistics", "frechet_distance", "frechet_distance_from_features"]


def _as_float_array(x: Any, name: str, ndim: int, promote: bool = False) -> np.ndarray:
    """Converts ``x`` to a finite float64 array of ``ndim`` dimensions or raises.

    With ``promote``, lower-dimensional input is first promoted like
    ``np.atleast_1d`` / ``np.atleast_2d`` (as pytorch-fid does for mu/sigma).
    """
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and other non-arrays
        raise TypeError(f"{name} is not convertible to an array: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must have a real numeric dtype, got {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    if promote and arr.ndim < ndim:
        arr = arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def activation_statistics(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set, as pytorch-fid computes them.

    Args:
        feats: Features, array-like ``[N, D]`` (any real dtype; computed in
            float64). ``N >= 2``.

    Returns:
        ``(mu, sigma)``: float64 ``[D]`` mean and float64 ``[D, D]`` unbiased
        covariance (``np.cov(feats, rowvar=False)``).

    Raises:
        TypeError: Non-numeric input.
        ValueError: Not 2-D, fewer than 2 rows, no columns, NaN or inf.
    """
    x = _as_float_array(feats, "feats", 2)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    if d < 1:
        raise ValueError("features have no dimensions (shape [N, 0])")
    mu = np.mean(x, axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its (deprecated) error-estimate output."""
    from scipy import linalg

    with warnings.catch_warnings():
        # Older SciPy warns about a possibly inaccurate result for singular
        # products; pytorch-fid silences this with ``disp=False``.
        warnings.simplefilter("ignore", RuntimeWarning)
        out = linalg.sqrtm(a)
    if isinstance(out, tuple):  # defensive: some versions return (sqrtm, errest)
        out = out[0]
    return np.asarray(out)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))``, computed
    exactly as pytorch-fid (float64, ``scipy.linalg.sqrtm``, real part).

    Args:
        mu1: Mean of the first set, float ``[D]``.
        sigma1: Covariance of the first set, float ``[D, D]``.
        mu2: Mean of the second set, float ``[D]``.
        sigma2: Covariance of the second set, float ``[D, D]``.
        eps: Diagonal offset used only if the plain matrix square root has
            non-finite entries.

    Returns:
        The distance as a Python float (may be a tiny negative number from
        rounding when both sets are identical).

    Raises:
        TypeError: Non-numeric inputs.
        ValueError: Inconsistent shapes, NaN/inf inputs, or a matrix square
            root with a significant imaginary component.
    """
    m1 = _as_float_array(mu1, "mu1", 1, promote=True)
    m2 = _as_float_array(mu2, "mu2", 1, promote=True)
    s1 = _as_float_array(sigma1, "sigma1", 2, promote=True)
    s2 = _as_float_array(sigma2, "sigma2", 2, promote=True)
    if m1.shape != m2.shape:
        raise ValueError(f"mean vectors have different lengths: {m1.shape} vs {m2.shape}")
    d = m1.shape[0]
    if d < 1:
        raise ValueError("mean vectors are empty")
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"covariances must be [{d}, {d}] to match the means, got {s1.shape} and {s2.shape}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative number, got {eps}")

    diff = m1 - m2
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"frechet_distance: singular product of covariances; adding {eps} to the diagonals",
            RuntimeWarning, stacklevel=2)
        offset = np.eye(d) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("matrix square root is not finite even after the eps offset")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"matrix square root has a significant imaginary component {m}")
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_from_features(feats1: Any, feats2: Any) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets.

    Args:
        feats1: Features ``[N1, D]`` (N1 >= 2).
        feats2: Features ``[N2, D]`` (N2 >= 2).

    Returns:
        ``frechet_distance(*activation_statistics(feats1), *activation_statistics(feats2))``.
    """
    mu1, s1 = activation_statistics(feats1)
    mu2, s2 = activation_statistics(feats2)
    return frechet_distance(mu1, s1, mu2, s2)
