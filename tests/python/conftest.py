"""Shared fixtures: locations of the reference data used by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _shared_dir(env: str, name: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override)
    return REPO.parent / "shared" / name


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Directory of the diffusers/transformers reference outputs (skips if absent)."""
    path = _shared_dir("SNAPFUSION_GOLDEN", "golden")
    if not path.is_dir():
        pytest.skip(f"golden reference data not found at {path} (set SNAPFUSION_GOLDEN)")
    return path


@pytest.fixture(scope="session")
def golden_eval_dir() -> Path:
    """Directory of the pytorch-fid/torchmetrics reference outputs (skips if absent)."""
    path = _shared_dir("SNAPFUSION_GOLDEN_EVAL", "golden-eval")
    if not path.is_dir():
        pytest.skip(f"golden-eval reference data not found at {path} (set SNAPFUSION_GOLDEN_EVAL)")
    return path
