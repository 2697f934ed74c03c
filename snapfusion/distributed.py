"""Batch text-to-image generation, in one process or sharded across a Dask cluster.

>>> from distributed import Client                                   # doctest: +SKIP
>>> client = Client("tcp://scheduler:8786")                          # doctest: +SKIP
>>> for index, image in generate_many(prompts, model="path/to/model", client=client,
...                                   seeds=range(len(prompts)), num_inference_steps=8,
...                                   guidance_scale=7.5, threads=4):   # doctest: +SKIP
...     image.save(f"{index:05d}.png")

How it works:

* Every image is one job ``(key, prompt, seed, pipeline arguments)`` and is generated alone
  (batch 1) with its own seed, so an image does not depend on which other images share a
  worker, a shard or a process: the same seeds give the same images bit for bit on a
  cluster and in a single process (at the same engine thread count).
* Jobs are grouped into shards (one Dask task each). A worker loads each model once and
  keeps it in a worker-local cache keyed by :class:`ModelSpec` (path, swapped decoder,
  threads, scheduler); the pipeline is used by one task at a time.
* Results stream back as shards complete: :func:`generate_many` is an iterator of
  ``(index, image)`` in completion order.
* Fault tolerance: a shard whose worker died (``KilledWorker``), or that was cancelled (a
  cluster restart), is submitted again, up to ``max_attempts`` times; the results are keyed
  by index and each index is yielded exactly once. Results already delivered are kept by
  the caller, so a lost worker costs only its unfinished shards.

Dask is imported only when a cluster is used; the single-process path needs neither Dask
nor torch.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ModelSpec",
    "Job",
    "GenerationStream",
    "generate_many",
    "stream_jobs",
    "load_pipeline",
    "cached_pipeline",
    "clear_pipeline_cache",
    "swap_decoder",
    "run_shard",
    "pipeline_loads",
]

#: Pipelines kept per process (each worker holds at most this many models).
CACHE_SIZE = 2

#: Pipeline arguments that :func:`generate_many` sets itself (per job or per call).
_RESERVED = {"prompt", "seed", "generator", "latents", "output_type", "num_images_per_prompt",
             "callback_on_step_end"}


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: a model, optionally with another model's VAE decoder.

    Attributes:
        path: absolute path of a diffusers model folder or single file; ``None`` for the
            embedded default model.
        decoder: absolute path of a model folder (its ``vae/`` is used) or of a ``vae``
            folder whose decoder replaces the model's own; ``None`` keeps the model's.
        threads: engine threads while this model runs (``None``: the worker's thread count
            on a Dask worker, the engine default elsewhere).
        scheduler: a scheduler class name to use instead of the model's.
    """

    path: str | None = None
    decoder: str | None = None
    threads: int | None = None
    scheduler: str | None = None

    @classmethod
    def create(cls, model: Any = None, *, decoder: Any = None, threads: int | None = None,
               scheduler: str | None = None) -> ModelSpec:
        """Validate and normalise a model description (paths made absolute).

        Args:
            model: a :class:`ModelSpec` (returned with ``threads``/``decoder`` overridden
                when given), a path, or ``None`` for the default model.
            decoder: path of the model (or ``vae`` folder) whose decoder to use.
            threads: engine threads (positive int).
            scheduler: scheduler class name.

        Raises:
            TypeError: wrong argument types. OSError: a path that does not exist.
            ValueError: a non-positive thread count.
        """
        if isinstance(model, ModelSpec):
            return cls(model.path, _abs_path(decoder, "decoder") if decoder is not None
                       else model.decoder,
                       _threads(threads) if threads is not None else model.threads,
                       scheduler if scheduler is not None else model.scheduler)
        if scheduler is not None and not isinstance(scheduler, str):
            raise TypeError(f"scheduler must be a class name (str), got {type(scheduler).__name__}")
        return cls(_abs_path(model, "model"), _abs_path(decoder, "decoder"), _threads(threads),
                   scheduler)


def _abs_path(p: Any, what: str) -> str | None:
    if p is None:
        return None
    if not isinstance(p, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path or None, got {type(p).__name__}")
    path = Path(p).expanduser().absolute()
    if not path.exists():
        raise OSError(f"{what}: {path}: no such model folder or file")
    return str(path)


def _threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    return threads


def swap_decoder(pipe: Any, source: str | os.PathLike[str]) -> None:
    """Replace ``pipe.vae`` by the decoder of another model (decoder half only).

    Args:
        pipe: a :class:`snapfusion.pipeline.Pipeline`.
        source: a model folder (its ``vae/`` subfolder is used) or a ``vae`` folder.

    Raises:
        OSError: no VAE there. ValueError: the decoder does not fit the pipeline's latents
            (different latent channels or downsampling factor).
    """
    from .components import AutoencoderKL

    folder = Path(source)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise OSError(f"{source}: neither a model folder with vae/ nor a vae folder")
    vae = AutoencoderKL(folder, encoder=False)
    channels = int(vae.config.get("latent_channels", 4))
    if channels != pipe.unet.in_channels:
        raise ValueError(f"decoder {folder} takes {channels}-channel latents, the UNet makes "
                         f"{pipe.unet.in_channels}")
    factor = 2 ** (len(vae.config.get("block_out_channels", [64])) - 1)
    if factor != pipe.vae_scale_factor:
        raise ValueError(f"decoder {folder} upsamples by {factor}, the model's by "
                         f"{pipe.vae_scale_factor}")
    pipe.vae = vae


def load_pipeline(spec: ModelSpec) -> Any:
    """Load the pipeline a :class:`ModelSpec` describes (progress bar off), uncached."""
    from .pipeline import Pipeline

    pipe = Pipeline.from_pretrained(spec.path, threads=spec.threads, scheduler=spec.scheduler)
    if spec.decoder is not None:
        swap_decoder(pipe, spec.decoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _Entry:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.lock = threading.Lock()


_CACHE: OrderedDict[ModelSpec, _Entry] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_LOADS = 0  # pipelines loaded by this process (for tests and diagnostics)


def _cache_entry(spec: ModelSpec) -> _Entry:
    global _LOADS
    with _CACHE_LOCK:
        entry = _CACHE.get(spec)
        if entry is not None:
            _CACHE.move_to_end(spec)
            return entry
        entry = _Entry(load_pipeline(spec))
        _LOADS += 1
        _CACHE[spec] = entry
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return entry


def cached_pipeline(spec: ModelSpec) -> Any:
    """This process's pipeline for ``spec``, loaded on first use (LRU of :data:`CACHE_SIZE`)."""
    return _cache_entry(spec).pipe


def clear_pipeline_cache() -> None:
    """Drop the pipelines cached by this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


def pipeline_loads() -> int:
    """How many pipelines this process has loaded through the cache."""
    return _LOADS


# ---------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One image to generate.

    Attributes:
        key: the result's key (hashable, picklable; an index for :func:`generate_many`).
        prompt: the text prompt.
        seed: the initial-noise seed (numpy PCG64, as ``Pipeline(seed=...)``).
        kwargs: further pipeline arguments as sorted ``(name, value)`` pairs.
    """

    key: Hashable
    prompt: str
    seed: int
    kwargs: tuple[tuple[str, Any], ...] = ()


def run_shard(spec: ModelSpec, jobs: Sequence[Job],
              output_type: str = "pil") -> list[tuple[Hashable, Any, dict[str, Any]]]:
    """Generate a shard of jobs with this process's cached pipeline (what a task runs).

    Args:
        spec: the model.
        jobs: the images to generate.
        output_type: ``"pil"`` (PIL images), ``"np"`` (float32 ``(H, W, 3)`` in [0, 1]) or
            ``"latent"`` (float32 ``(C, h, w)``).

    Returns:
        ``(key, image, timings)`` per job, in order; ``timings`` as
        :attr:`snapfusion.pipeline.PipelineOutput.timings`.
    """
    from . import _engine

    entry = _cache_entry(spec)
    threads = spec.threads if spec.threads is not None else _worker_threads()
    out = []
    with entry.lock:  # one generation at a time per pipeline (scheduler state, engine threads)
        for job in jobs:
            if threads is not None:
                _engine.set_num_threads(threads)
            res = entry.pipe(job.prompt, seed=job.seed, output_type=output_type,
                             **dict(job.kwargs))
            out.append((job.key, res.images[0], res.timings))
    return out


def _worker_threads() -> int | None:
    """Inside a Dask worker: its thread count (the engine default otherwise oversubscribes
    a machine that runs several workers)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def _worker_failure_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a task was lost with its worker rather than failed by itself."""
    import asyncio
    import concurrent.futures

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    kinds: list[type[BaseException]] = [KilledWorker, CommClosedError, asyncio.CancelledError,
                                        concurrent.futures.CancelledError]
    try:
        from distributed.client import FutureCancelledError

        kinds.append(FutureCancelledError)
    except ImportError:  # older distributed releases
        pass
    return tuple(kinds)


class GenerationStream:
    """Iterator over generated images, in completion order.

    Yields ``(key, image)`` or, with ``return_timings``, ``(key, image, timings)``.
    Attributes ``total`` (jobs), ``completed`` (yielded so far) and ``resubmitted`` (shards
    submitted again after a lost worker) describe the run; :meth:`close` (or leaving a
    ``with`` block) cancels what is still running.
    """

    def __init__(self, shards: list[tuple[ModelSpec, list[Job]]], client: Any,
                 output_type: str, return_timings: bool, max_attempts: int,
                 progress: bool | str, own_client: bool = False) -> None:
        self.total = sum(len(jobs) for _, jobs in shards)
        self.completed = 0
        self.resubmitted = 0
        self._shards = shards
        self._client = client
        self._own_client = own_client
        self._output_type = output_type
        self._return_timings = return_timings
        self._max_attempts = max_attempts
        self._progress = progress
        self._gen = self._run()

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> tuple[Any, ...]:
        return next(self._gen)

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop: cancel the shards still running and release an owned client."""
        self._gen.close()

    # --------------------------------------------------------------- internals
    def _run(self) -> Iterator[tuple[Any, ...]]:
        bar = None
        if self._progress and self.total:
            from tqdm.auto import tqdm

            desc = self._progress if isinstance(self._progress, str) else "generating"
            bar = tqdm(total=self.total, desc=desc, unit="img")
        seen: set[Hashable] = set()
        try:
            source = (self._local() if self._client is None else self._dask())
            for key, image, timings in source:
                if key in seen:  # a shard that ran twice: keep the first copy
                    continue
                seen.add(key)
                self.completed += 1
                if bar is not None:
                    bar.update(1)
                yield (key, image, timings) if self._return_timings else (key, image)
        finally:
            if bar is not None:
                bar.close()
            if self._own_client and self._client is not None:
                self._client.close()

    def _local(self) -> Iterator[tuple[Hashable, Any, dict[str, Any]]]:
        for spec, jobs in self._shards:
            for job in jobs:  # one job at a time: results stream image by image
                yield from run_shard(spec, [job], self._output_type)

    def _dask(self) -> Iterator[tuple[Hashable, Any, dict[str, Any]]]:
        from distributed import as_completed

        client = self._client
        failures = _worker_failure_types()
        token = uuid.uuid4().hex[:12]
        owner: dict[str, tuple[int, int]] = {}
        live: dict[str, Any] = {}

        def submit(i: int, attempt: int) -> Any:
            spec, jobs = self._shards[i]
            fut = client.submit(run_shard, spec, jobs, self._output_type,
                                key=f"snapfusion-shard-{token}-{i}-{attempt}", pure=False)
            owner[fut.key] = (i, attempt)
            live[fut.key] = fut
            return fut

        ac = as_completed([submit(i, 0) for i in range(len(self._shards))])
        try:
            for fut in ac:
                i, attempt = owner.pop(fut.key)
                live.pop(fut.key, None)
                try:
                    results = fut.result()
                except failures as exc:
                    if attempt + 1 >= self._max_attempts:
                        raise RuntimeError(
                            f"shard {i} was lost with its worker {attempt + 1} times; giving "
                            f"up ({type(exc).__name__}: {exc})") from exc
                    self.resubmitted += 1
                    ac.add(submit(i, attempt + 1))
                    continue
                finally:
                    fut.release()
                yield from results
        finally:
            for fut in live.values():
                fut.cancel()


def stream_jobs(items: Iterable[tuple[ModelSpec, Job]], client: Any = None, *,
                shard_size: int | None = None, output_type: str = "pil",
                return_timings: bool = False, max_attempts: int = 3,
                progress: bool | str = False) -> GenerationStream:
    """Generate arbitrary jobs (several models, arguments per job), streaming results.

    Args:
        items: ``(model, job)`` pairs; job keys must be unique.
        client: a ``distributed.Client``, a scheduler address (a client is opened and closed
            with the stream) or ``None`` to generate in this process.
        shard_size: jobs per Dask task (default: about four tasks per worker thread).
        output_type: see :func:`run_shard`.
        return_timings: yield ``(key, image, timings)``.
        max_attempts: submissions of a shard before a lost worker is an error.
        progress: show a tqdm bar (a string names it).

    Returns:
        A :class:`GenerationStream`.

    Raises:
        ValueError: duplicate keys, bad sizes. TypeError: wrong argument types.
    """
    pairs = list(items)
    keys = set()
    for spec, job in pairs:
        if not isinstance(spec, ModelSpec) or not isinstance(job, Job):
            raise TypeError("items must be (ModelSpec, Job) pairs")
        if job.key in keys:
            raise ValueError(f"duplicate job key {job.key!r}")
        keys.add(job.key)
    if output_type not in ("pil", "np", "latent"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'latent', not {output_type!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
    own = False
    if isinstance(client, str):
        from distributed import Client

        client = Client(client)
        own = True
    elif client is not None and not hasattr(client, "submit"):
        raise TypeError(f"client must be a distributed.Client, an address or None, got "
                        f"{type(client).__name__}")
    if shard_size is None:
        if client is None:
            shard_size = 1
        else:
            slots = max(1, sum(client.nthreads().values()))
            shard_size = max(1, min(16, math.ceil(len(pairs) / (4 * slots))))
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    shards: list[tuple[ModelSpec, list[Job]]] = []
    by_model: dict[ModelSpec, list[Job]] = {}
    for spec, job in pairs:
        by_model.setdefault(spec, []).append(job)
    for spec, jobs in by_model.items():
        for s in range(0, len(jobs), shard_size):
            shards.append((spec, jobs[s:s + shard_size]))
    return GenerationStream(shards, client, output_type, return_timings, max_attempts, progress,
                            own_client=own)


def _seed_list(seeds: Any, n: int) -> list[int]:
    if seeds is None:
        return list(range(n))
    if isinstance(seeds, bool):
        raise TypeError("seeds must be an int or a sequence of ints")
    if isinstance(seeds, int):
        return [seeds + i for i in range(n)]
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be an int or a sequence of ints, got {type(seeds).__name__}")
    out = list(seeds)
    for s in out:
        if isinstance(s, bool) or not isinstance(s, int) and not _is_np_int(s):
            raise TypeError(f"seeds must be ints, got {type(s).__name__}")
        if int(s) < 0:
            raise ValueError(f"seeds must be non-negative, got {s}")
    if len(out) != n:
        raise ValueError(f"{len(out)} seeds for {n} prompts")
    return [int(s) for s in out]


def _is_np_int(x: Any) -> bool:
    import numpy as np

    return isinstance(x, np.integer)


def generate_many(prompts: Sequence[str], model: Any = None, client: Any = None,
                  seeds: int | Sequence[int] | None = None, *, threads: int | None = None,
                  decoder: Any = None, scheduler: str | None = None,
                  shard_size: int | None = None, output_type: str = "pil",
                  return_timings: bool = False, max_attempts: int = 3,
                  progress: bool | str = False, **pipe_kwargs: Any) -> GenerationStream:
    """Generate one image per prompt, streaming ``(index, image)`` as they complete.

    Args:
        prompts: the prompts (non-empty list of str); index ``i`` is ``prompts[i]``.
        model: model path, :class:`ModelSpec`, or ``None`` for the embedded default.
        client: ``distributed.Client``, scheduler address, or ``None`` (this process).
        seeds: one seed per prompt, or an int ``s`` for seeds ``s, s+1, ...`` (default
            ``0, 1, ...``).
        threads: engine threads per worker (use the same count to reproduce images).
        decoder: a model (or ``vae`` folder) whose VAE decoder replaces the model's.
        scheduler: scheduler class name instead of the model's.
        shard_size: prompts per Dask task.
        output_type: ``"pil"`` (default), ``"np"`` (float32 ``(H, W, 3)``) or ``"latent"``.
        return_timings: yield ``(index, image, timings)`` with the pipeline's stage timings.
        max_attempts: submissions of a shard before a lost worker is an error.
        progress: show a tqdm bar.
        **pipe_kwargs: further :meth:`Pipeline.__call__` arguments
            (``num_inference_steps``, ``guidance_scale``, ``height``, ``width``,
            ``negative_prompt`` (a str, or a list with one entry per prompt), ``clip_skip``).

    Returns:
        A :class:`GenerationStream` (iterator; each index appears exactly once).

    Raises:
        TypeError / ValueError: bad prompts, seeds or arguments. OSError: missing model.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError("prompts must be a non-empty list of str")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str")
    bad = sorted(_RESERVED & set(pipe_kwargs))
    if bad:
        raise TypeError(f"generate_many sets {', '.join(bad)} itself; pass seeds= and "
                        "output_type= instead")
    n = len(prompts)
    seed_list = _seed_list(seeds, n)
    negs = pipe_kwargs.pop("negative_prompt", None)
    if isinstance(negs, (list, tuple)):
        if len(negs) != n or not all(isinstance(s, str) for s in negs):
            raise ValueError(f"negative_prompt: expected a str or {n} strs")
        neg_list: list[str | None] = list(negs)
    elif negs is None or isinstance(negs, str):
        neg_list = [negs] * n
    else:
        raise TypeError(f"negative_prompt must be a str or a list of str, got "
                        f"{type(negs).__name__}")
    spec = ModelSpec.create(model, decoder=decoder, threads=threads, scheduler=scheduler)
    base = tuple(sorted(pipe_kwargs.items()))
    items = []
    for i, (p, s, neg) in enumerate(zip(prompts, seed_list, neg_list)):
        kw = base if neg is None else tuple(sorted(base + (("negative_prompt", neg),)))
        items.append((spec, Job(i, p, s, kw)))
    return stream_jobs(items, client, shard_size=shard_size, output_type=output_type,
                       return_timings=return_timings, max_attempts=max_attempts,
                       progress=progress)

