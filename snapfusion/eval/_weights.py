"""Reading safetensors weight files (plain or gzip-compressed) with validation."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["read_safetensors", "check_tensor_names_and_shapes"]

# A gzip member larger than this once decompressed is refused (decompression bomb).
MAX_DECOMPRESSED_BYTES = 4 << 30


def _read_gzip_limited(path: Path, limit: int) -> bytes:
    chunks = []
    total = 0
    with gzip.open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 24)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ValueError(f"{path}: decompressed size exceeds {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Loads every tensor of a ``.safetensors`` or ``.safetensors.gz`` file.

    Args:
        path: File path; a name ending in ``.gz`` (or content starting with the
            gzip magic) is decompressed in memory first.

    Returns:
        Mapping tensor name -> numpy array (dtype as stored).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a valid safetensors file (truncated,
            corrupt header, unsupported dtype, oversized gzip content).
    """
    from safetensors.numpy import load as st_load

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    with open(p, "rb") as fh:
        magic = fh.read(2)
    try:
        if magic == b"\x1f\x8b":
            data = _read_gzip_limited(p, MAX_DECOMPRESSED_BYTES)
        else:
            data = p.read_bytes()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{p}: cannot read compressed weights: {exc}") from exc
    if len(data) < 8:
        raise ValueError(f"{p}: not a safetensors file (only {len(data)} bytes)")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{p}: invalid safetensors file: {exc}") from exc
    return dict(tensors)


def check_tensor_names_and_shapes(tensors: Mapping[str, np.ndarray],
                                  expected: Mapping[str, tuple[int, ...]],
                                  source: str) -> None:
    """Raises ValueError naming the first missing, unexpected or mis-shaped tensor.

    Args:
        tensors: Loaded tensors (anything with ``.shape`` and ``.dtype``).
        expected: Required names and shapes.
        source: Description of where the tensors came from (for messages).
    """
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{source}: missing tensor {missing[0]!r}{more}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]!r}{more}")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != tuple(shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {got}, expected {tuple(shape)}")
        t = tensors[name]
        is_float = (t.is_floating_point() if hasattr(t, "is_floating_point")
                    else np.dtype(t.dtype).kind == "f")
        if not is_float:
            raise ValueError(f"{source}: tensor {name!r} has non-float dtype {tensors[name].dtype}")
