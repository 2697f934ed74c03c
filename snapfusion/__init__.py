"""snapfusion: fast text-to-image diffusion on ordinary CPUs.

The package wraps a C engine (``snapfusion._engine``) built on XNNPACK and
adds pure-Python parts (tokenizer, data, evaluation, training recipes).
Heavy or optional submodules are imported lazily so that ``import snapfusion``
stays cheap and works without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("data", "eval", "nn", "train", "tokenizer", "schedulers", "convert",
                    "components", "pipeline", "distributed")
_LAZY_ATTRS = {"Pipeline": "pipeline", "PipelineOutput": "pipeline",
               "CLIPTokenizer": "tokenizer"}

__all__ = ["Pipeline", "PipelineOutput", "CLIPTokenizer", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_ATTRS[name]}"), name)
    if name == "engine":
        return importlib.import_module(f"{__name__}._engine")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
