"""A small safetensors writer (the reader is the engine's strict C reader).

Files are written to a temporary name in the destination folder and renamed into place, so
an interrupted write never leaves a truncated file under the final name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8"}


def save_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], *,
                     metadata: Mapping[str, str] | None = None,
                     bf16: frozenset[str] | set[str] = frozenset()) -> None:
    """Write ``tensors`` to a safetensors file.

    Args:
        path: destination file.
        tensors: name -> array of float32, float16 or int8; names listed in ``bf16`` must be
            uint16 arrays holding bfloat16 bit patterns.
        metadata: string -> string entries for ``__metadata__``.
        bf16: names stored with dtype BF16.

    Raises:
        TypeError: unsupported dtypes or non-string names/metadata.
    """
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name in sorted(tensors):
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty str, got {name!r}")
        a = np.ascontiguousarray(tensors[name])
        if name in bf16:
            if a.dtype != np.uint16:
                raise TypeError(f"{name}: BF16 tensors must be given as uint16 bit patterns")
            tag = "BF16"
        else:
            tag = _DTYPES.get(a.dtype)
            if tag is None:
                raise TypeError(f"{name}: unsupported dtype {a.dtype}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": tag, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for a in arrays:
                f.write(a.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even) and return the uint16 bit patterns."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (b & 0x7FFFFFFF) > 0x7F800000
    rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((b >> 16) | 0x40).astype(np.uint16), rounded)
