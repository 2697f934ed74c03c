"""Training data from the synthetic world: fresh draws or a pre-drawn pool.

Two sources give the same kind of batch (uint8 NHWC images and padded token ids on the
training device):

* **fresh**: every batch is drawn with :func:`snapfusion.data.sample_batch` from a generator
  seeded by ``(seed, rank, step, stream)``;
* **pool**: a pool of images and captions drawn once (in parallel worker processes, saved
  under a folder so a resumed run reuses it), kept as tensors on the device; a batch is a
  random subset whose indices come from the same step-seeded generator. This is what GPU
  runs use: no per-step drawing, tokenizing or host-to-device copies.

Either way a batch depends only on ``(seed, rank, step, stream)``: the data "RNG state"
of a checkpoint is its step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._pool_worker import draw_chunk as _draw_chunk
from ._pool_worker import tokenize as _tokenize_in_worker
from .common import step_rng

__all__ = ["draw_pool", "save_pool", "load_pool", "get_pool", "WorldData", "WorldBatch", "to_float_images",
           "to_uint8_images", "make_world_data", "DATA_DEFAULTS"]

#: Keys of a recipe's ``data`` section: pool folder (None: fresh draws), its size, seed and
#: drawing processes, the image side, and the probability of partial captions (background,
#: each object's size left out: :func:`snapfusion.data.sample_batch`).
DATA_DEFAULTS: dict[str, Any] = {"pool_dir": None, "pool_size": 0, "pool_seed": 0, "pool_workers": 0,
                                 "image_size": 64, "partial_captions": 0.0}

# Pools already loaded / moved to a device in this process (the one-shot script runs every
# stage in one process and would otherwise re-read and re-tokenize the pool per stage).
_HOST_POOLS: dict[tuple[Any, ...], tuple[np.ndarray, list[str], np.ndarray | None]] = {}
_DEVICE_POOLS: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

_POOL_IMAGES = "pool_images.npy"
_POOL_CAPTIONS = "pool_captions.json"
_POOL_META = "pool_meta.json"
_POOL_IDS = "pool_ids.npy"


def tokenizer_fingerprint(tokenizer_dir: str | os.PathLike[str]) -> str:
    """Hash of a tokenizer folder's files (decides whether stored pool ids are still valid)."""
    import hashlib

    h = hashlib.sha256()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        p = Path(tokenizer_dir) / name
        if p.is_file():
            h.update(name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def draw_pool(n: int, seed: int = 0, size: int = 64, workers: int = 0, chunk: int = 2048,
              split: str = "train", progress: bool = True, tokenizer_dir: str | None = None,
              partial: float = 0.0) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Draw ``n`` world samples (chunk ``i`` from seed ``[seed, 7, i]``: independent of ``workers``).

    Args:
        n: number of samples (>= 1).
        seed: pool seed.
        size: image side.
        workers: worker processes (0 or 1: in this process).
        chunk: samples per work item.
        split: world split.
        progress: tqdm bar.
        tokenizer_dir: also tokenize the captions (in the workers) with this tokenizer.
        partial: probability of partial captions (``sample_batch``).

    Returns:
        ``(images, captions, ids)``: uint8 ``[n, size, size, 3]``, ``n`` strings and int32
        ``[n, L]`` token ids (None without ``tokenizer_dir``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"pool size must be a positive int, got {n!r}")
    tdir = str(tokenizer_dir) if tokenizer_dir else None
    jobs = [(min(chunk, n - i), seed, k, size, split, tdir, float(partial))
            for k, i in enumerate(range(0, n, chunk))]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    id_chunks: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="world pool", dynamic_ncols=True, mininterval=1.0)
    pos = 0
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            for ims, caps, ids in ex.map(_draw_chunk, jobs):
                images[pos:pos + len(caps)] = ims
                captions.extend(caps)
                if ids is not None:
                    id_chunks.append(ids)
                pos += len(caps)
                if bar is not None:
                    bar.update(len(caps))
    else:
        for job in jobs:
            ims, caps, ids = _draw_chunk(job)
            images[pos:pos + len(caps)] = ims
            captions.extend(caps)
            if ids is not None:
                id_chunks.append(ids)
            pos += len(caps)
            if bar is not None:
                bar.update(len(caps))
    if bar is not None:
        bar.close()
    return images, captions, (np.concatenate(id_chunks) if id_chunks else None)


def save_pool(folder: str | os.PathLike[str], images: np.ndarray, captions: Sequence[str],
              meta: dict[str, Any], ids: np.ndarray | None = None) -> None:
    """Write a pool (``pool_images.npy``, ``pool_captions.json``, optional ``pool_ids.npy``,
    ``pool_meta.json`` last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _POOL_META).unlink(missing_ok=True)
    np.save(folder / _POOL_IMAGES, images)
    (folder / _POOL_CAPTIONS).write_text(json.dumps(list(captions)), encoding="utf-8")
    if ids is not None:
        np.save(folder / _POOL_IDS, ids)
    (folder / _POOL_META).write_text(json.dumps(meta), encoding="utf-8")


def load_pool(folder: str | os.PathLike[str]) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Read a pool written by :func:`save_pool`.

    Raises:
        OSError: missing files. ValueError: inconsistent contents.
    """
    folder = Path(folder)
    meta_path = folder / _POOL_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"no complete pool in {folder}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    images = np.load(folder / _POOL_IMAGES, allow_pickle=False)
    captions = json.loads((folder / _POOL_CAPTIONS).read_text(encoding="utf-8"))
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] != len(captions):
        raise ValueError(f"pool in {folder} is inconsistent: images {images.shape} {images.dtype}, "
                         f"{len(captions)} captions")
    if not all(isinstance(c, str) for c in captions):
        raise ValueError(f"pool in {folder}: captions must be strings")
    return images, captions, meta


def get_pool(folder: str | os.PathLike[str], n: int, seed: int = 0, size: int = 64, workers: int = 0,
             progress: bool = True, tokenizer_dir: str | None = None, partial: float = 0.0
             ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Load the pool in ``folder`` if it matches ``(n, seed, size, partial)``, else draw and save it.

    With ``tokenizer_dir`` the pool also carries token ids of that tokenizer (computed by the
    drawing workers, or now if the stored pool lacks them).
    """
    fp = tokenizer_fingerprint(tokenizer_dir) if tokenizer_dir else None
    key = (str(Path(folder).resolve()), int(n), int(seed), int(size), fp, float(partial))
    if key in _HOST_POOLS:
        return _HOST_POOLS[key]
    base = {"n": n, "seed": seed, "size": size, "split": "train"}
    # pools without partial captions keep the metadata they always had
    meta: dict[str, Any] = {**base, "partial_captions": float(partial)} if partial else base
    ids = None
    try:
        images, captions, old = load_pool(folder)
        if {k: old.get(k) for k in base} != base or float(old.get("partial_captions", 0.0)) != float(partial):
            raise ValueError("pool settings changed")
        if fp is not None:
            if old.get("tokenizer") == fp and (Path(folder) / _POOL_IDS).is_file():
                ids = np.load(Path(folder) / _POOL_IDS, allow_pickle=False)
            else:
                ids = _tokenize_in_worker(str(tokenizer_dir), captions)
                save_pool(folder, images, captions, {**meta, "tokenizer": fp}, ids)
    except (OSError, ValueError):
        images, captions, ids = draw_pool(n, seed, size, workers=workers, progress=progress,
                                          tokenizer_dir=tokenizer_dir, partial=partial)
        save_pool(folder, images, captions, {**meta, "tokenizer": fp}, ids)
    _HOST_POOLS[key] = (images, captions, ids)
    return images, captions, ids


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` in [-1, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, H, W, 3] images, got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """float ``[B, 3, H, W]`` in [-1, 1] -> uint8 numpy ``[B, H, W, 3]`` (clipped, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 image arrays of the same shape (peak 255; inf if equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(255.0 ** 2 / mse))


@dataclass
class WorldBatch:
    """One batch.

    Attributes:
        images: uint8 ``[B, H, W, 3]`` on the device.
        ids: int64 ``[B, L]`` token ids on the device.
        index: int64 ``[B]`` pool indices (None for fresh draws).
        captions: the captions.
    """

    images: torch.Tensor
    ids: torch.Tensor
    index: torch.Tensor | None
    captions: list[str] | None


class WorldData:
    """Batches of world images and token ids (see the module docstring).

    Args:
        tokenizer: a :class:`snapfusion.tokenizer.CLIPTokenizer` (pads to its ``model_max_length``).
        seed: data seed.
        rank: DDP rank (enters every seed).
        device: where batches live.
        pool: optional ``(images, captions)`` or ``(images, captions, ids)`` pool (ids: int
            ``[N, L]`` from this tokenizer, or None).
        size: image side of fresh draws.
        partial: probability of partial captions in fresh draws (``sample_batch``).
    """

    def __init__(self, tokenizer: Any, seed: int = 0, rank: int = 0, device: torch.device | str = "cpu",
                 pool: tuple[Any, ...] | None = None, size: int = 64, partial: float = 0.0) -> None:
        self.tokenizer = tokenizer
        self.partial = float(partial)
        self.seed = int(seed)
        self.rank = int(rank)
        self.device = torch.device(device)
        self.size = size
        self.max_length = int(tokenizer.model_max_length)
        self.empty_ids = torch.as_tensor(tokenizer([""]), dtype=torch.long, device=self.device)
        self.pool_images: torch.Tensor | None = None
        self.pool_ids: torch.Tensor | None = None
        self.pool_captions: Sequence[str] | None = None
        if pool is not None:
            images, captions = pool[0], pool[1]
            self.pool_captions = captions
            given = pool[2] if len(pool) > 2 else None
            if len(images) != len(captions) or len(captions) == 0:
                raise ValueError("pool images and captions must be non-empty and of equal length")
            if given is not None and tuple(given.shape) != (len(captions), self.max_length):
                raise ValueError(f"pool ids have shape {tuple(given.shape)}, expected "
                                 f"{(len(captions), self.max_length)}")
            key = (id(images), id(captions), str(self.device), len(tokenizer), self.max_length,
                   tokenizer.eos_token_id)
            if key not in _DEVICE_POOLS:
                ids = (torch.from_numpy(np.asarray(given, dtype=np.int32)).to(self.device) if given is not None
                       else self.tokenize(list(captions)).to(torch.int32))
                _DEVICE_POOLS[key] = (torch.from_numpy(np.ascontiguousarray(images)).to(self.device), ids)
            self.pool_images, self.pool_ids = _DEVICE_POOLS[key]
            self.size = int(images.shape[1])

    @property
    def pool_size(self) -> int:
        """Number of pool samples (0 without a pool)."""
        return 0 if self.pool_images is None else int(self.pool_images.shape[0])

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """int64 ``[B, L]`` ids on the device."""
        return torch.as_tensor(self.tokenizer(list(captions)), dtype=torch.long, device=self.device)

    def batch(self, step: int, n: int, stream: int = 0) -> WorldBatch:
        """The batch of ``step`` (deterministic in ``(seed, rank, step, stream)``)."""
        rng = step_rng(self.seed, self.rank, step, stream)
        if self.pool_images is not None:
            rows = rng.integers(0, self.pool_size, size=n)
            idx = torch.from_numpy(rows).to(self.device, non_blocking=True)
            return WorldBatch(self.pool_images[idx], self.pool_ids[idx].long(), idx,
                              [self.pool_captions[i] for i in rows])
        from snapfusion.data import sample_batch

        images, captions, _ = sample_batch(n, rng, size=self.size, split="train", partial=self.partial)
        return WorldBatch(torch.from_numpy(images).to(self.device), self.tokenize(captions), None, captions)

    def drop_captions(self, ids: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
        """Replace each row by the empty caption with probability ``p``."""
        if p <= 0:
            return ids
        mask = torch.rand(ids.shape[0], generator=generator, device=generator.device).to(ids.device) < p
        return torch.where(mask[:, None], self.empty_ids.expand_as(ids), ids)


def make_world_data(tokenizer: Any, data: dict[str, Any] | None, seed: int, rank: int,
                    device: torch.device | str, progress: bool = True,
                    tokenizer_dir: str | None = None) -> WorldData:
    """A :class:`WorldData` from a recipe's ``data`` section (see :data:`DATA_DEFAULTS`).

    ``tokenizer_dir`` (the folder ``tokenizer`` was read from) lets the pool store token ids.

    Raises:
        ValueError: unknown keys, a pool folder without a positive size, or a partial-caption
            probability outside [0, 1].
    """
    cfg = dict(DATA_DEFAULTS)
    bad = set(data or {}) - set(DATA_DEFAULTS)
    if bad:
        raise ValueError(f"unknown data keys {sorted(bad)} (known: {sorted(DATA_DEFAULTS)})")
    cfg.update(data or {})
    from snapfusion.data.captions import check_probability

    partial = check_probability(cfg["partial_captions"], "data.partial_captions")
    pool = None
    if cfg["pool_dir"]:
        if int(cfg["pool_size"]) < 1:
            raise ValueError("data.pool_size must be positive when data.pool_dir is set")
        pool = get_pool(cfg["pool_dir"], int(cfg["pool_size"]), seed=int(cfg["pool_seed"]),
                        size=int(cfg["image_size"]), workers=int(cfg["pool_workers"]), progress=progress,
                        tokenizer_dir=tokenizer_dir, partial=partial)
    return WorldData(tokenizer, seed=seed, rank=rank, device=device, pool=pool, size=int(cfg["image_size"]),
                     partial=partial)
