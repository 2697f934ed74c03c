"""Worker-side functions of world-pool drawing (no torch import: spawned workers start fast)."""

from __future__ import annotations

from typing import Any

import numpy as np

_TOKENIZERS: dict[str, Any] = {}


def tokenize(tokenizer_dir: str, captions: list[str]) -> np.ndarray:
    """int32 ``[N, L]`` ids of ``captions`` with the tokenizer in ``tokenizer_dir`` (cached)."""
    if tokenizer_dir not in _TOKENIZERS:
        from snapfusion.tokenizer import CLIPTokenizer

        _TOKENIZERS[tokenizer_dir] = CLIPTokenizer.from_pretrained(tokenizer_dir)
    return _TOKENIZERS[tokenizer_dir](captions).astype(np.int32)


def draw_chunk(args: tuple[int, int, int, int, str, str | None, float]) -> tuple[np.ndarray, list[str], Any]:
    """Draw chunk ``index`` of a pool: ``n`` samples from seed ``[seed, 7, index]``."""
    n, seed, index, size, split, tokenizer_dir, partial = args
    from snapfusion.data import sample_batch

    images, captions, _ = sample_batch(n, np.random.default_rng([seed, 7, index]), size=size, split=split,
                                       partial=partial)
    ids = tokenize(tokenizer_dir, captions) if tokenizer_dir else None
    return images, captions, ids
