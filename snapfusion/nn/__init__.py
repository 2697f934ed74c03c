"""PyTorch models with diffusers / transformers-compatible parameter names and configs.

* :class:`CLIPTextModel` -- CLIP text transformer (transformers ``CLIPTextModel``).
* :class:`UNet2DConditionModel` -- elastic UNet (diffusers ``UNet2DConditionModel`` plus the
  ``elastic_blocks`` config key and stochastic block dropping).
* :class:`AutoencoderKL` -- SD VAE (diffusers ``AutoencoderKL``), optionally with a
  channel-reduced decoder.
* Elastic block-list helpers (torch-free): :func:`full_block_list`,
  :func:`validate_block_list`, :func:`block_names`, :func:`with_blocks_removed`.
* Folder I/O: :func:`from_config`, :func:`load_safetensors`, :func:`save_pretrained`.

Attributes are imported lazily so that ``snapfusion.nn.elastic`` works without importing torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Mapping

__all__ = [
    "CLIPTextModel",
    "CLIPTextOutput",
    "UNet2DConditionModel",
    "AutoencoderKL",
    "full_block_list",
    "validate_block_list",
    "block_names",
    "all_block_names",
    "with_blocks_removed",
    "resolve_unet_config",
    "model_class_for_config",
    "from_config",
    "load_safetensors",
    "save_pretrained",
]

_LAZY = {
    "CLIPTextModel": "clip",
    "CLIPTextOutput": "clip",
    "UNet2DConditionModel": "unet",
    "AutoencoderKL": "vae",
    "full_block_list": "elastic",
    "validate_block_list": "elastic",
    "block_names": "elastic",
    "all_block_names": "elastic",
    "with_blocks_removed": "elastic",
    "resolve_unet_config": "elastic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_class_for_config(config: Mapping[str, Any]) -> type:
    """The model class a config describes.

    Dispatch: diffusers ``_class_name`` (``UNet2DConditionModel``, ``AutoencoderKL``),
    transformers ``architectures`` / ``model_type`` (``CLIPTextModel``, ``clip_text_model``).

    Raises:
        ValueError: the config names no supported class.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    cls_name = config.get("_class_name")
    archs = config.get("architectures") or []
    if cls_name == "UNet2DConditionModel":
        return __getattr__("UNet2DConditionModel")
    if cls_name == "AutoencoderKL":
        return __getattr__("AutoencoderKL")
    if "CLIPTextModel" in archs or config.get("model_type") == "clip_text_model":
        return __getattr__("CLIPTextModel")
    raise ValueError(f"cannot tell the model class of this config (_class_name={cls_name!r}, "
                     f"architectures={archs!r}, model_type={config.get('model_type')!r})")


def from_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> Any:
    """Build a randomly initialised model of the class named by a config (mapping, JSON file or folder)."""
    from .serialization import read_config

    cfg = read_config(config)
    return model_class_for_config(cfg)(cfg)


def load_safetensors(folder: str | os.PathLike[str]) -> Any:
    """Load a diffusers / transformers model folder (config.json + safetensors weights)."""
    from .serialization import read_config

    return model_class_for_config(read_config(folder)).from_pretrained(folder)


def save_pretrained(model: Any, folder: str | os.PathLike[str]) -> None:
    """Write ``model`` (one of this package's classes) as a diffusers / transformers folder."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} cannot be saved as a model folder")
    model.save_pretrained(folder)
