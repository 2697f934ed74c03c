"""Reading the small text and JSON files of model folders, with errors that name the file.

Every reader of ``config.json``, ``snapfusion_model.json``, tokenizer and preprocessor files
goes through here, so that a missing, oversized, non-UTF-8, malformed or wrongly shaped file
gives the same kind of exception with the file's path in its message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Largest text file read (configs and tokenizer files are far smaller).
MAX_TEXT_BYTES = 64 << 20


def read_text_file(path: str | os.PathLike[str], what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path``.

    Args:
        path: the file.
        what: what the file is, for messages ("tokenizer file", "config file", ...).
        max_bytes: refuse larger files.

    Raises:
        FileNotFoundError: no such file. OSError: not a regular file, or unreadable.
        ValueError: larger than ``max_bytes``, or not UTF-8.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {p}") from None
    if not p.is_file():
        raise OSError(f"{what} is not a regular file: {p}")
    if size > max_bytes:
        raise ValueError(f"{p}: {what} too large ({size} bytes, at most {max_bytes})")
    try:
        with open(p, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{p}: not valid UTF-8 ({err})") from None


def read_json(path: str | os.PathLike[str], what: str = "JSON file", max_bytes: int = MAX_TEXT_BYTES,
              object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> tuple[str, Any]:
    """``(text, value)`` of a UTF-8 JSON file (errors as :func:`read_text_file`, and
    ValueError naming the file for malformed JSON)."""
    text = read_text_file(path, what, max_bytes)
    try:
        return text, json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON ({err})") from None


def read_json_object(path: str | os.PathLike[str], what: str = "JSON file",
                     max_bytes: int = MAX_TEXT_BYTES) -> tuple[str, dict[str, Any]]:
    """``(text, object)`` of a JSON file that must hold an object (ValueError otherwise)."""
    text, value = read_json(path, what, max_bytes)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return text, value


#: Where the package keeps its embedded models.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models"


def default_model_path() -> Path:
    """The embedded default model folder (raises OSError if this install has none).

    Lives here rather than in :mod:`snapfusion.pipeline` so that training scripts find the
    model on machines where the engine is not built."""
    if DEFAULT_MODEL_DIR.is_dir():
        for child in sorted(DEFAULT_MODEL_DIR.iterdir()):
            if (child / "model_index.json").is_file():
                return child
    raise OSError(f"no embedded default model under {DEFAULT_MODEL_DIR}; pass a model path")
