"""Model conversion: safetensors writing, original single-file checkpoints, 16-bit and int8
weights (:func:`convert`)."""

from __future__ import annotations

from typing import Any

from .safetensors_io import save_safetensors

__all__ = ["convert", "save_safetensors"]


def __getattr__(name: str) -> Any:
    if name == "convert":  # imported on use: it loads the engine
        from .quantize import convert

        return convert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
