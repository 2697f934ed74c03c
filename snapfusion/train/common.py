"""Shared training machinery: devices and DistributedDataParallel, step-derived randomness,
EMA, checkpoints with exact resume, JSONL loss logs with a PNG plot, and the training loop.

Randomness: every random draw of a training step (data indices, noise, timesteps, caption
dropout, block drops) comes from generators seeded by ``(seed, rank, step, stream)``, so a
run resumed from a checkpoint at step ``s`` continues exactly as the uninterrupted run
(the checkpoint holds model, optimizer, EMA, step, elapsed time and the seed; the data
"RNG state" is the step itself).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) :func:`setup_env` initialises the
process group from the environment (NCCL on CUDA, Gloo on CPU); each rank draws different
data (its rank enters the seeds), gradients are averaged by DDP, and only rank 0 writes
files. The stop decision (step or time budget) is taken on rank 0 and broadcast.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DistEnv",
    "setup_env",
    "step_rng",
    "step_generator",
    "EMA",
    "JsonlLogger",
    "plot_losses",
    "save_checkpoint",
    "load_checkpoint",
    "TrainConfig",
    "Trainer",
    "autocast_ctx",
    "load_config",
    "unwrap",
]


# ------------------------------------------------------------------------------- devices


@dataclass
class DistEnv:
    """Where this process runs.

    Attributes:
        device: torch device of this rank.
        rank: global rank (0 without DDP).
        world_size: number of processes.
        local_rank: rank on this node.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True under DDP."""
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        """True on a CUDA device."""
        return self.device.type == "cuda"


_ENV: DistEnv | None = None


def setup_env(device: str = "cpu", threads: int | None = None) -> DistEnv:
    """Pick the device, configure fast math and, under ``torchrun``, join the process group.

    Args:
        device: "cpu" or "cuda" (a rank uses ``cuda:LOCAL_RANK``).
        threads: torch CPU threads (None keeps torch's choice).

    Returns:
        The :class:`DistEnv` (cached: a second call returns the first result).

    Raises:
        ValueError: unknown device. RuntimeError: CUDA asked for but unavailable.
    """
    global _ENV
    if _ENV is not None:
        return _ENV
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch sees no CUDA device")
    if threads is not None:
        torch.set_num_threads(int(threads))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        dev = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    _ENV = DistEnv(dev, rank, world, local)
    return _ENV


def reset_env() -> None:
    """Forget the cached environment (tests; after ``destroy_process_group``)."""
    global _ENV
    _ENV = None


def autocast_ctx(env: DistEnv, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (when enabled), a no-op elsewhere."""
    if env.cuda and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------- randomness


def step_rng(seed: int, rank: int, step: int, stream: int = 0) -> np.random.Generator:
    """A numpy generator determined by ``(seed, rank, step, stream)``."""
    return np.random.default_rng([int(seed), int(rank), int(step), int(stream)])


def step_generator(seed: int, rank: int, step: int, stream: int = 0,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` determined by ``(seed, rank, step, stream)``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(step_rng(seed, rank, step, 1000 + stream).integers(0, 2 ** 62)))
    return g


# ----------------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Args:
        model: the trained module.
        decay: target decay; the effective decay at step ``n`` is
            ``min(decay, (1 + n) / (10 + n))`` (warm-up).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the current weights in (call after each optimizer step)."""
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        state = model.state_dict()
        keys = list(self.shadow)
        cur = [state[k].detach().float() for k in keys]
        torch._foreach_lerp_([self.shadow[k] for k in keys], cur, 1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``."""
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))

    def state_dict(self) -> dict[str, Any]:
        """Serializable state."""
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        self.decay = float(state["decay"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


# ------------------------------------------------------------------------------- logging


class JsonlLogger:
    """Append-only JSON-lines log (written by rank 0 only)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one record."""
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (on resume, lines written after the checkpoint)."""
        if self.path is None or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (malformed lines skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def plot_losses(jsonl: str | os.PathLike[str], png: str | os.PathLike[str], keys: Sequence[str] = ("loss",),
                title: str = "", width: int = 640, height: int = 360) -> bool:
    """Draw loss curves (log scale when all values are positive) from a JSONL log into a PNG.

    Returns:
        False when the log holds no finite values of ``keys`` (nothing is written).
    """
    from PIL import Image, ImageDraw, ImageFont

    recs = read_jsonl(jsonl)
    series = {}
    for k in keys:
        pts = [(r["step"], float(r[k])) for r in recs if k in r and "step" in r
               and isinstance(r[k], (int, float)) and math.isfinite(float(r[k]))]
        if pts:
            series[k] = pts
    if not series:
        return False
    allv = [v for pts in series.values() for _, v in pts]
    logy = min(allv) > 0
    tr = (lambda v: math.log10(v)) if logy else (lambda v: v)
    ys = [tr(v) for v in allv]
    xs = [s for pts in series.values() for s, _ in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 60, 10, 24, 30
    d.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    for i, (k, pts) in enumerate(series.items()):
        c = colors[i % len(colors)]
        line = [px(s, tr(v)) for s, v in pts]
        if len(line) > 1:
            d.line(line, fill=c, width=1)
        else:
            d.point(line, fill=c)
        d.text((left + 5 + 110 * i, 5), k, fill=c, font=font)
    ylab = (lambda y: f"{10 ** y:.3g}") if logy else (lambda y: f"{y:.3g}")
    d.text((2, top), ylab(y1), fill=(0, 0, 0), font=font)
    d.text((2, height - bottom - 10), ylab(y0), fill=(0, 0, 0), font=font)
    d.text((left, height - bottom + 4), f"step {x0}", fill=(0, 0, 0), font=font)
    d.text((width - right - 80, height - bottom + 4), f"step {x1}", fill=(0, 0, 0), font=font)
    if title:
        d.text((width // 2 - 3 * len(title), height - 14), title, fill=(0, 0, 0), font=font)
    img.save(png)
    return True


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Atomically write a checkpoint (tensors, dicts, lists, numbers, strings only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only`` loading: no code runs).

    Raises:
        OSError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise OSError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise OSError(f"checkpoint {path} does not hold a dict")
    return state


# ------------------------------------------------------------------------------- configs


def load_config(cls: type, source: Mapping[str, Any] | str | os.PathLike[str] | None,
                overrides: Mapping[str, Any] | None = None) -> Any:
    """Build a config dataclass from a mapping or JSON file plus overrides.

    Raises:
        ValueError: unknown keys (a typo is an error).
    """
    data: dict[str, Any] = {}
    if source is not None:
        if isinstance(source, Mapping):
            data.update(source)
        else:
            text = Path(source).read_text(encoding="utf-8")
            loaded = json.loads(text)
            if not isinstance(loaded, dict):
                raise ValueError(f"{source}: expected a JSON object")
            data.update(loaded)
    data.update(overrides or {})
    names = {f.name for f in fields(cls)}
    bad = sorted(set(data) - names)
    if bad:
        raise ValueError(f"unknown {cls.__name__} keys: {bad} (known: {sorted(names)})")
    return cls(**data)


@dataclass
class TrainConfig:
    """Optimisation settings shared by the recipes.

    Attributes:
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: cosine decay floor (fraction of ``lr``) reached at the end of the
            step or time budget, whichever is nearer.
        grad_clip: gradient-norm clip (0 disables).
        ema_decay: EMA decay (0 disables EMA).
        batch_size: per-rank batch size.
        max_steps: step budget (0: unlimited).
        max_minutes: wall-time budget in minutes (0: unlimited), counted across resumes.
        ckpt_minutes: minutes between checkpoints.
        log_every: steps between log records.
        seed: run seed.
        bf16: bf16 autocast on CUDA.
        session_steps: stop this session after this many steps (0: no limit) -- the run is
            then continued by running the recipe again (it resumes from its checkpoint with
            the same schedule); splits long runs over preemptible sessions.
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    batch_size: int = 64
    max_steps: int = 1000
    max_minutes: float = 0.0
    ckpt_minutes: float = 3.0
    log_every: int = 10
    seed: int = 0
    bf16: bool = True
    session_steps: int = 0


# --------------------------------------------------------------------------------- loop


StepFn = Callable[[int], tuple[torch.Tensor, dict[str, torch.Tensor | float]]]


@dataclass
class TrainResult:
    """Summary of a :meth:`Trainer.run` call."""

    steps: int
    elapsed: float
    final_loss: float
    first_loss: float
    resumed_from: int
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Optimizer, LR schedule, EMA, checkpoints, logs and the step loop of one recipe.

    Args:
        name: run name (progress bar, log records).
        out_dir: folder of ``checkpoint.pt``, ``log.jsonl`` and ``loss.png`` (None: no files).
        model: the trained module (its ``state_dict`` is checkpointed; DDP-wrapped here).
        cfg: :class:`TrainConfig`.
        env: the :class:`DistEnv`.
        params: parameters to optimise (default: all of ``model`` requiring grad).
        find_unused_parameters: DDP option (needed when blocks are skipped).
        forward_module: the module whose ``forward`` computes the loss (wrapped by DDP and
            exposed as :attr:`ddp_model`); default ``model``. It must own ``model``.
        extra_state: callables ``(get, set)`` for recipe state to checkpoint as well.
        progress: show a tqdm bar on rank 0.
    """

    def __init__(self, name: str, out_dir: str | os.PathLike[str] | None, model: nn.Module, cfg: TrainConfig,
                 env: DistEnv, params: Sequence[nn.Parameter] | None = None,
                 find_unused_parameters: bool = False, forward_module: nn.Module | None = None,
                 extra_state: tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]] | None = None,
                 progress: bool = True) -> None:
        self.name = name
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.cfg = cfg
        self.env = env
        self.model = model
        self.params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        if not self.params:
            raise ValueError(f"{name}: nothing to train")
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay,
                                           fused=env.cuda or None)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.ddp_model: nn.Module = model if forward_module is None else forward_module
        if env.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.ddp_model, device_ids=[env.device.index] if env.cuda else None,
                find_unused_parameters=find_unused_parameters)
        self.extra_state = extra_state
        self.progress = progress and env.is_main
        self.step = 0
        self.elapsed_before = 0.0
        self.resumed_from = 0
        self.logger = JsonlLogger(self.out_dir / "log.jsonl" if (self.out_dir and env.is_main) else None)
        self._session_start = time.perf_counter()
        self._acc: dict[str, torch.Tensor] = {}
        self._n_acc = 0
        self._t_log = time.perf_counter()
        self._last_lr = cfg.lr
        self.first_loss = math.nan
        self.last_loss = math.nan

    # -------------------------------------------------------------------------- state
    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir/checkpoint.pt``."""
        return None if self.out_dir is None else self.out_dir / "checkpoint.pt"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly."""
        state: dict[str, Any] = {
            "name": self.name,
            "step": self.step,
            "elapsed": self.elapsed(),
            "seed": self.cfg.seed,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.extra_state is not None:
            state["extra"] = self.extra_state[0]()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if int(state.get("seed", self.cfg.seed)) != self.cfg.seed:
            raise ValueError(f"{self.name}: checkpoint seed {state.get('seed')} != config seed {self.cfg.seed}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.extra_state is not None and "extra" in state:
            self.extra_state[1](state["extra"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.elapsed_before = float(state["elapsed"])
        self._session_start = time.perf_counter()

    def maybe_resume(self) -> bool:
        """Load ``out_dir/checkpoint.pt`` if it exists; returns whether it did."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        self.load_state_dict(load_checkpoint(path, map_location=self.env.device))
        self.resumed_from = self.step
        if self.env.is_main:
            self.logger.truncate_after(self.step)
        return True

    def save(self) -> None:
        """Write the checkpoint and the loss plot (rank 0)."""
        if self.checkpoint_path is None or not self.env.is_main:
            return
        save_checkpoint(self.checkpoint_path, self.state_dict())
        try:
            plot_losses(self.out_dir / "log.jsonl", self.out_dir / "loss.png", keys=self._plot_keys,
                        title=self.name)
        except (OSError, ValueError):  # a plot is a convenience; never fail a run on it
            pass

    def elapsed(self) -> float:
        """Training seconds so far, across resumes."""
        return self.elapsed_before + (time.perf_counter() - self._session_start)

    # ----------------------------------------------------------------------- schedule
    def progress_fraction(self) -> float:
        """How far the run is through its budget (max of step and time fractions)."""
        fr = 0.0
        if self.cfg.max_steps > 0:
            fr = max(fr, self.step / self.cfg.max_steps)
        if self.cfg.max_minutes > 0:
            fr = max(fr, self.elapsed() / (60.0 * self.cfg.max_minutes))
        return min(1.0, fr)

    def lr_at(self) -> float:
        """Warm-up then cosine decay to ``min_lr_ratio``."""
        c = self.cfg
        if c.warmup_steps > 0 and self.step < c.warmup_steps:
            return c.lr * (self.step + 1) / c.warmup_steps
        fr = self.progress_fraction()
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * fr)))

    def should_stop(self) -> bool:
        """Step or time budget reached (decided on rank 0, shared with the others)."""
        c = self.cfg
        stop = (c.max_steps > 0 and self.step >= c.max_steps) or \
            (c.max_minutes > 0 and self.elapsed() >= 60.0 * c.max_minutes)
        if self.env.distributed:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.env.device)
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item() > 0)
        if c.max_steps <= 0 and c.max_minutes <= 0:
            raise ValueError(f"{self.name}: neither max_steps nor max_minutes is set")
        return stop

    # --------------------------------------------------------------------------- loop
    _plot_keys: tuple[str, ...] = ("loss",)

    def train_step(self, step_fn: StepFn) -> tuple[torch.Tensor, dict[str, Any]]:
        """One optimisation step at :attr:`step` (LR schedule, backward, clip, AdamW, EMA);
        advances :attr:`step` and returns the detached loss and logs."""
        c = self.cfg
        lr = self.lr_at()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, logs = step_fn(self.step)
        if not self.env.cuda and not bool(torch.isfinite(loss.detach()).all()):
            raise FloatingPointError(f"{self.name}: loss is not finite at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.step += 1
        self._acc_add({"loss": loss.detach(), **logs})
        self._last_lr = lr
        return loss.detach(), logs

    def _acc_add(self, logs: Mapping[str, Any]) -> None:
        for k, v in logs.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            self._acc[k] = self._acc[k] + v.to(self._acc[k].device) if k in self._acc else v.clone()
        self._n_acc += 1

    def flush_log(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Average the accumulated logs into one record, write it (rank 0) and return it."""
        if not self._n_acc:
            return None
        rec: dict[str, Any] = {k: float(v.item()) / self._n_acc for k, v in self._acc.items()}
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"{self.name}: loss is not finite near step {self.step}")
        now = time.perf_counter()
        rec.update(step=self.step, lr=self._last_lr, elapsed=round(self.elapsed(), 3),
                   steps_per_s=round(self._n_acc / max(1e-9, now - self._t_log), 3))
        rec.update(extra or {})
        self._t_log = now
        self._acc, self._n_acc = {}, 0
        if math.isnan(self.first_loss):
            self.first_loss = rec["loss"]
        self.last_loss = rec["loss"]
        if self.env.is_main:
            self.logger.log(rec)
        return rec

    def train_steps(self, step_fn: StepFn, n: int) -> dict[str, Any] | None:
        """``n`` steps without budget checks or progress bar (e.g. between evolution actions);
        logs every ``log_every`` steps and returns the last record."""
        self.model.train()
        rec = None
        for _ in range(n):
            self.train_step(step_fn)
            if self.step % self.cfg.log_every == 0:
                rec = self.flush_log() or rec
        return self.flush_log() or rec

    def run(self, step_fn: StepFn, plot_keys: Sequence[str] = ("loss",),
            on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Resume if a checkpoint exists, then train until the step or time budget is used up.

        Args:
            step_fn: ``step_fn(step) -> (loss, logs)``; the loss is back-propagated here.
                Logs are tensors (synchronised only at log steps) or floats.
            plot_keys: log keys drawn into ``loss.png``.
            on_log: called with every log record (rank 0).

        Returns:
            A :class:`TrainResult`.
        """
        self._plot_keys = tuple(plot_keys)
        self.maybe_resume()
        c = self.cfg
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.max_steps if c.max_steps > 0 else None, initial=self.step, desc=self.name,
                       dynamic_ncols=True, mininterval=1.0, leave=True)
        last_ckpt = time.perf_counter()
        self._t_log = time.perf_counter()
        self.model.train()
        session_end = self.step + c.session_steps if c.session_steps > 0 else None
        try:
            while not self.should_stop() and (session_end is None or self.step < session_end):
                self.train_step(step_fn)
                if bar is not None:
                    bar.update(1)
                if self.step % c.log_every == 0 or self.should_stop_soon():
                    rec = self.flush_log()
                    if rec is not None:
                        if on_log is not None and self.env.is_main:
                            on_log(rec)
                        if bar is not None:
                            bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{rec['lr']:.2g}")
                if time.perf_counter() - last_ckpt >= 60.0 * c.ckpt_minutes:
                    self.save()
                    last_ckpt = time.perf_counter()
        except (KeyboardInterrupt, SystemExit):
            # interrupted (Ctrl-C, or SIGTERM turned into SystemExit by the caller): keep the
            # progress so that running the recipe again resumes here
            self.flush_log()
            self.save()
            raise
        finally:
            if bar is not None:
                bar.close()
        rec = self.flush_log()
        if rec is not None and on_log is not None and self.env.is_main:
            on_log(rec)
        self.save()
        first = self.first_loss if not math.isnan(self.first_loss) else self.last_loss
        return TrainResult(self.step, self.elapsed(), self.last_loss, first, self.resumed_from)

    def should_stop_soon(self) -> bool:
        """Whether the next stop check is likely to end the run (log the tail)."""
        c = self.cfg
        return c.max_steps > 0 and self.step >= c.max_steps

    # ----------------------------------------------------------------------- results
    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into the model."""
        if self.ema is None:
            yield self.model
            return
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ema.copy_to(self.model)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(backup)


def config_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict."""
    return json.loads(json.dumps(asdict(cfg)))
