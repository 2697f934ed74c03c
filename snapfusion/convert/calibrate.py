"""Calibration of int8 activations: run the float model and record each layer's input range.

The engine's :class:`~snapfusion._engine.ActivationObserver` makes every convolution and linear
layer of the models built while it is started register itself (with its name in the weight
file), and record histograms of the values of its inputs and outputs on every call. This module
runs the float pipeline through the real denoising loop (text encoder, every UNet step with
classifier-free guidance, VAE decoder, and the VAE encoder on the decoded images) over a few
prompts, and turns the histograms into per-tensor ranges with a percentile.

Why a percentile of the signed histogram: the inputs of SD's convolutions are mostly
``silu(group_norm(x))`` — bounded below by -0.28 with a long positive tail — so each tail is
clipped separately (asymmetric int8 with a zero point), and the few largest values of each tail
(a fraction ``1 - percentile / 100`` of all values on each side) are clipped rather than
stretching the 255 steps over them. 99.999 is the default: measured on the golden
``unet_sd15_small`` (relative error of the UNet output), 99.9 clips too much (0.153), 99.99
still clips useful values (0.069), 99.999 gives 0.059 and min/max (100) 0.060
(docs/quantization.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _engine

#: Prompts used when the caller gives none: varied subjects, styles and lengths.
DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse on the moon",
    "a watercolor painting of a quiet harbor at sunset, boats and reflections",
    "close-up portrait of an old man with a grey beard, dramatic lighting, 85mm",
    "a red cube on top of a blue sphere on a wooden table, studio light",
)

#: Default clipping percentile of each tail of the activation distribution.
DEFAULT_PERCENTILE = 99.999


@dataclass(frozen=True)
class LayerRange:
    """Calibrated range of one layer (names of fused layers share one).

    Attributes:
        names: the layer names in the weight file (several for a fused q/k/v projection).
        kind: ``"conv"`` or ``"linear"``.
        input: ``(lo, hi)`` of the input, or None if the layer never ran.
        output: ``(lo, hi)`` of the output, or None.
    """

    names: tuple[str, ...]
    kind: str
    input: tuple[float, float] | None
    output: tuple[float, float] | None


def _tail_edge(hist: np.ndarray, edges: np.ndarray, tail: float) -> float:
    """Upper edge of the smallest set of top bins holding more than ``tail`` values."""
    above = np.cumsum(hist[::-1])[::-1]  # values in bins >= b
    idx = np.nonzero(above > tail)[0]
    if idx.size == 0:
        return 0.0
    return float(edges[idx[-1] + 1])


def range_from_stats(stats: dict[str, Any], percentile: float,
                     edges: np.ndarray | None = None) -> tuple[float, float] | None:
    """The clipping range ``(lo, hi)`` (``lo <= 0 <= hi``) of one input's statistics.

    Args:
        stats: a statistics dict of :meth:`ActivationObserver.layers` (``count``,
            ``nan_count``, ``min``, ``max``, histograms ``pos``/``neg``).
        percentile: in (50, 100]; each tail keeps this percentage of all values inside the
            range (100: the exact min/max).
        edges: the bin edges (default: :func:`_engine.observer_bin_edges`).

    Returns:
        ``(lo, hi)``, or None when nothing was observed.
    """
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    n = int(stats["count"]) - int(stats["nan_count"])
    if n <= 0 or not np.isfinite(stats["min"]):
        return None
    mn, mx = float(stats["min"]), float(stats["max"])
    if percentile >= 100.0:
        return min(mn, 0.0), max(mx, 0.0)
    if edges is None:
        edges = _engine.observer_bin_edges()
    tail = n * (100.0 - percentile) / 100.0
    hi = min(_tail_edge(np.asarray(stats["pos"], np.float64), edges, tail), max(mx, 0.0))
    lo = max(-_tail_edge(np.asarray(stats["neg"], np.float64), edges, tail), min(mn, 0.0))
    return lo, hi


def qparams_from_range(lo: float, hi: float) -> tuple[np.float32, np.int8]:
    """Per-tensor int8 parameters covering ``[lo, hi]`` (extended to contain 0): scale
    ``(hi - lo) / 255`` in float32 (1 if that is 0) and zero point
    ``clip(round(-128 - lo / scale), -128, 127)`` — as the engine's ``sf_qparams_from_range``.
    """
    lo32 = np.float32(min(lo, 0.0)) if np.isfinite(lo) else np.float32(0)
    hi32 = np.float32(max(hi, 0.0)) if np.isfinite(hi) else np.float32(0)
    scale = np.float32((hi32 - lo32) / np.float32(255))
    if not (np.isfinite(scale) and scale >= np.float32(1e-30)):
        scale = np.float32(1)
    zp = np.rint(np.float32(-128) - lo32 / scale)
    return scale, np.int8(np.clip(zp, -128, 127))


def observe(run: Callable[[], Any]) -> list[dict[str, Any]]:
    """Start an observer, call ``run`` (which builds and runs engine models), stop it and
    return the per-layer statistics (:meth:`ActivationObserver.layers`)."""
    obs = _engine.ActivationObserver()
    with obs:
        run()
    return obs.layers()


def ranges(layers: Iterable[dict[str, Any]], percentile: float = DEFAULT_PERCENTILE,
           ) -> dict[str, LayerRange]:
    """Per layer name: its :class:`LayerRange` (every name of a fused layer maps to the same
    object)."""
    edges = _engine.observer_bin_edges()
    out: dict[str, LayerRange] = {}
    for layer in layers:
        names = tuple(layer["name"].split("|"))
        r = LayerRange(names, layer["kind"], range_from_stats(layer["input"], percentile, edges),
                       range_from_stats(layer["output"], percentile, edges))
        for n in names:
            out[n] = r
    return out


def read_prompts(source: str | Path | Sequence[str]) -> list[str]:
    """Prompts from a text file (one per line; blank lines and lines starting with ``#`` are
    skipped) or a sequence of strings.

    Raises:
        OSError: unreadable file. ValueError: no prompt. TypeError: not str.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise OSError(f"{path}: no such prompts file")
        text = path.read_text(encoding="utf-8")
        prompts = [ln.strip() for ln in text.splitlines()
                   if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        prompts = list(source)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be strings")
    if not prompts:
        raise ValueError("no calibration prompts")
    return prompts


def calibrate_pipeline(folder: str | Path, prompts: Sequence[str], *, steps: int = 8,
                       guidance_scale: float = 7.5, size: tuple[int, int] | None = None,
                       progress: bool = True) -> list[dict[str, Any]]:
    """Run the float pipeline of a diffusers folder over ``prompts`` under an observer.

    Each prompt runs the denoising loop (``steps`` steps, classifier-free guidance), the VAE
    decoder, and the VAE encoder on the decoded image (so that its layers are calibrated too).

    Args:
        folder: a diffusers folder (float weights).
        prompts: calibration prompts.
        steps: denoising steps per prompt.
        guidance_scale: classifier-free guidance (> 1 runs the unconditional pass too).
        size: ``(height, width)`` in pixels (default: the model's default size).
        progress: show a progress bar.

    Returns:
        the observer's per-layer statistics.
    """
    from ..pipeline import Pipeline

    def run() -> None:
        pipe = Pipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        h, w = size if size else (pipe.default_size, pipe.default_size)
        items: Iterable[tuple[int, str]] = enumerate(prompts)
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(list(items), desc="calibrating", unit="prompt")
        for i, prompt in items:
            out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                       height=h, width=w, seed=i, output_type="np")
            images = np.asarray(out.images, np.float32).transpose(0, 3, 1, 2) * 2 - 1
            try:
                pipe.vae.encode(images)
            except (ValueError, RuntimeError):
                pass  # a decoder-only VAE

    return observe(run)


__all__ = ["DEFAULT_PERCENTILE", "DEFAULT_PROMPTS", "LayerRange", "calibrate_pipeline",
           "observe", "qparams_from_range", "range_from_stats", "ranges", "read_prompts"]
