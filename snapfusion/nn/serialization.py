"""Config and safetensors I/O in the diffusers / transformers folder layouts.

A model folder holds ``config.json`` and one weight file:
``diffusion_pytorch_model.safetensors`` (diffusers models) or ``model.safetensors``
(transformers models).  Only safetensors are read: pickled ``.bin`` checkpoints are
refused because loading them can execute code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .._files import read_json

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DIFFUSERS_WEIGHTS",
    "TRANSFORMERS_WEIGHTS",
    "read_config",
    "write_config",
    "read_safetensors",
    "write_safetensors",
    "find_weights",
    "load_into",
]

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
_MAX_CONFIG_BYTES = 16 << 20


def read_config(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Read a config given as a mapping, a ``config.json`` path or a folder holding one.

    Args:
        source: mapping (copied), JSON file path, or model folder.

    Returns:
        A new dict.

    Raises:
        TypeError: ``source`` is of another type or the JSON is not an object.
        OSError: the file is missing or unreadable.
        ValueError: malformed JSON or an oversized file.
    """
    if isinstance(source, Mapping):
        return json.loads(json.dumps(dict(source)))  # deep copy, JSON-clean
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"config must be a mapping or a path, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    data = read_json(path, "config file", _MAX_CONFIG_BYTES)[1]
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``config`` as pretty, key-sorted JSON to ``path``."""
    Path(path).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def find_weights(folder: str | os.PathLike[str], preferred: str) -> Path:
    """Locate the safetensors weight file of a model folder.

    Args:
        folder: model folder.
        preferred: file name tried first (the other layout's name is tried next).

    Raises:
        FileNotFoundError: no safetensors file (pickled checkpoints are mentioned as refused).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"model folder not found: {folder}")
    for name in (preferred, DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    pickles = [p.name for p in folder.glob("*.bin")]
    hint = f" (found {pickles}; pickled checkpoints are not loaded, convert them to safetensors)" if pickles else ""
    raise FileNotFoundError(f"no {preferred} in {folder}{hint}")


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, "torch.Tensor"]:
    """Read every tensor of a safetensors file onto the CPU.

    Raises:
        OSError: missing, truncated or malformed file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise OSError(f"cannot read safetensors file {path}: {exc}") from exc
    except (ValueError, RuntimeError) as exc:
        raise OSError(f"cannot read safetensors file {path}: {exc}") from exc


def write_safetensors(state_dict: Mapping[str, "torch.Tensor"], path: str | os.PathLike[str]) -> None:
    """Write a state dict (detached, contiguous CPU copies) with ``format: pt`` metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_into(module: "torch.nn.Module", state_dict: Mapping[str, "torch.Tensor"], source: str = "state dict") -> None:
    """``load_state_dict(strict=True)`` with a readable error.

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches (the message lists them).
        TypeError: a value is not a floating-point tensor where a float parameter is expected.
    """
    import torch

    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    bad_shape = [
        f"{k}: {tuple(state_dict[k].shape)} vs expected {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or bad_shape:
        def _fmt(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_fmt(unexpected)}")
        if bad_shape:
            parts.append(f"shape mismatch: {_fmt(bad_shape)}")
        raise ValueError(f"cannot load {source} into {type(module).__name__}: " + "; ".join(parts))
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{source}: value of {k!r} is {type(v).__name__}, not a tensor")
        if own[k].is_floating_point() and not v.is_floating_point():
            raise TypeError(f"{source}: {k!r} has dtype {v.dtype}, expected a floating-point tensor")
    module.load_state_dict(dict(state_dict), strict=True)
