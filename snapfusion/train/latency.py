"""Per-block latency lookup table of an elastic UNet, measured with the C engine.

Method (``method: "engine-regression"``): the UNet config is instantiated with random weights
(latency does not depend on the values) and timed on the engine
(:class:`snapfusion.components.UNet`) at the deployment shape: batch 2 (the two CFG
branches), the config's latent size, the text length and width of the text encoder. Timed
networks: the full one (4 times), every network with exactly one removable block removed
(``with_blocks_removed``; its folder holds just the kept weights), and ``3 x #blocks``
random sub-networks (each block removed with probability 0.3), in random order. Each
network's time is the minimum over ``repeats`` calls, measured as the process CPU time
(``time.process_time``) when the engine runs one thread -- on a shared, loaded machine the
CPU time of the call is far steadier than wall time -- else wall time. The per-block costs
are the least-squares fit of the additive model
``T(network) = T(full) - sum(cost(b) for b removed)`` over all timed networks (the random
sub-networks average the timing noise that a single full-minus-one difference would carry;
costs are floored at 1 % of the smallest positive one so no block is free).

The latency of a sub-network that removes a set ``R`` of blocks is estimated as
``T(full) - sum(cost(b) for b in R)`` (:func:`estimate_latency`); architecture evolution
checks its budget with it and the final network is timed again for real.

Without the engine (e.g. a GPU machine without the built extension) a table in the same
format can be read from a file (the default config's table measured on the development CPU
ships as ``latency_default.json``), or :func:`flop_latency_table` counts multiply-adds
instead (``method: "flops"``, unit MFLOP): budgets are fractions of the full model, so the
unit cancels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["config_key", "measure_latency_table", "flop_latency_table", "estimate_latency", "load_table",
           "default_table", "time_engine_unet", "DEFAULT_TABLE_PATH"]

DEFAULT_TABLE_PATH = Path(__file__).resolve().parent / "latency_default.json"


def config_key(config: dict[str, Any], text_len: int, batch: int) -> str:
    """Hash of the architecture (without ``elastic_blocks``) and the timing shape."""
    cfg = {k: v for k, v in config.items() if k not in ("elastic_blocks", "_class_name", "_diffusers_version")}
    blob = json.dumps({"config": cfg, "text_len": text_len, "batch": batch}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_random_unet(config: dict[str, Any], folder: Path, full_state: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    from snapfusion.nn import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(dict(config))
    if full_state is not None:
        model.load_pruned_state_dict(full_state)
    model.save_pretrained(folder)
    return model.state_dict()


class _EngineCall:
    """An engine UNet with fixed random inputs of the deployment shape."""

    def __init__(self, folder: str | os.PathLike[str], batch: int, text_len: int) -> None:
        from snapfusion.components import UNet

        self.unet = UNet(folder)
        size = self.unet.config.get("sample_size", 16)
        size = size[0] if isinstance(size, (list, tuple)) else int(size)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((batch, self.unet.in_channels, size, size)).astype(np.float32)
        self.ctx = rng.standard_normal((batch, text_len, self.unet.cross_attention_dim)).astype(np.float32)
        self.t = np.full((batch,), 500.0, dtype=np.float32)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.unet(self.x, self.t, self.ctx)
        return time.perf_counter() - t0


def time_engine_unet(folder: str | os.PathLike[str], batch: int, text_len: int, repeats: int = 5,
                     warmup: int = 1) -> float:
    """Minimum seconds of one engine UNet call on random inputs of the deployment shape."""
    call = _EngineCall(folder, batch, text_len)
    for _ in range(warmup):
        call()
    return min(call() for _ in range(max(1, repeats)))


def measure_latency_table(config: dict[str, Any], text_len: int = 32, batch: int = 2, threads: int = 1,
                          repeats: int = 5, warmup: int = 1, blocks: Iterable[str] | None = None,
                          progress: bool = True, random_subnets: int | None = None, drop_p: float = 0.3,
                          seed: int = 0) -> dict[str, Any]:
    """Measure the per-block latency table of ``config`` on the engine (see the module docstring).

    Args:
        config: UNet config (an ``elastic_blocks`` key is ignored: the full network is timed).
        text_len: text tokens of the context.
        batch: batch of a call (2 = CFG).
        threads: engine threads during the measurement (1: CPU time of the process is timed).
        repeats: timed calls per network (the minimum is kept).
        warmup: untimed calls first.
        blocks: restrict to these block ids (default: all removable blocks).
        progress: tqdm bar.
        random_subnets: random sub-networks timed besides the single removals (default 3x the
            number of blocks).
        drop_p: removal probability of each block in a random sub-network.
        seed: seed of the random sub-networks.

    Returns:
        The table: ``{"method", "unit": "ms", "full": ms, "blocks": {id: ms}, "key", ...}``.

    Raises:
        ImportError: the engine extension is not built.
    """
    from snapfusion import _engine  # noqa: F401 - raises ImportError without the engine
    from snapfusion.nn import block_names, with_blocks_removed

    full_cfg = {k: v for k, v in config.items() if k != "elastic_blocks"}
    names = list(blocks) if blocks is not None else block_names(full_cfg)
    n_random = 3 * len(names) if random_subnets is None else int(random_subnets)
    rng = np.random.default_rng(seed)
    designs: list[list[str]] = [[]] * 4 + [[b] for b in names]
    for _ in range(n_random):
        designs.append([b for b in names if rng.random() < drop_p])
    order = rng.permutation(len(designs))
    clock = time.process_time if threads == 1 else time.perf_counter
    old_threads = _engine.get_num_threads()
    _engine.set_num_threads(int(threads))
    times = np.zeros(len(designs))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(designs), desc="latency table", dynamic_ncols=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            state = _save_random_unet(full_cfg, root / "full", None)
            for k in order:
                removed = designs[k]
                folder = root / f"net{k}"
                if removed:
                    _save_random_unet(with_blocks_removed(full_cfg, removed), folder, state)
                else:
                    folder = root / "full"
                call = _EngineCall(folder, batch, text_len)
                for _ in range(warmup):
                    call()
                best = float("inf")
                for _ in range(max(1, repeats)):
                    t0 = clock()
                    call.unet(call.x, call.t, call.ctx)
                    best = min(best, clock() - t0)
                times[k] = best
                del call
                if removed:
                    shutil.rmtree(folder, ignore_errors=True)
                if bar is not None:
                    bar.update(1)
    finally:
        _engine.set_num_threads(old_threads)
        if bar is not None:
            bar.close()
    # least squares: T(net) = full - sum(cost[b] for b removed)
    x = np.zeros((len(designs), 1 + len(names)))
    x[:, 0] = 1.0
    col = {b: i + 1 for i, b in enumerate(names)}
    for k, removed in enumerate(designs):
        for b in removed:
            x[k, col[b]] = -1.0
    coef, *_ = np.linalg.lstsq(x, times, rcond=None)
    resid = times - x @ coef
    full = float(coef[0])
    positive = [c for c in coef[1:] if c > 0]
    floor = 0.01 * (min(positive) if positive else 1e-6)
    costs = {b: max(float(coef[col[b]]), floor) * 1e3 for b in names}
    return {
        "method": "engine-regression",
        "unit": "ms",
        "clock": "process_time" if threads == 1 else "perf_counter",
        "full": full * 1e3,
        "full_measured": float(np.median(times[:4])) * 1e3,
        "blocks": costs,
        "residual_rms_ms": float(np.sqrt(np.mean(resid ** 2))) * 1e3,
        "networks_timed": len(designs),
        "threads": threads,
        "batch": batch,
        "text_len": text_len,
        "repeats": repeats,
        "key": config_key(full_cfg, text_len, batch),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": _machine(),
    }


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def flop_latency_table(config: dict[str, Any], text_len: int = 32, batch: int = 2) -> dict[str, Any]:
    """A table of multiply-add costs (MFLOP per call) from PyTorch's FLOP counter, for machines
    without the engine: the cost of ``b`` is ``F(full) - F(full with b skipped)``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from snapfusion.nn import UNet2DConditionModel

    full_cfg = {k: v for k, v in config.items() if k != "elastic_blocks"}
    model = UNet2DConditionModel(dict(full_cfg)).train()
    size = full_cfg.get("sample_size", 16)
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    x = torch.zeros(batch, full_cfg.get("in_channels", 4), size, size)
    ctx = torch.zeros(batch, text_len, model.layout.config["cross_attention_dim"]
                      if isinstance(model.layout.config["cross_attention_dim"], int) else
                      model.layout.config["cross_attention_dim"][0])
    t = torch.full((batch,), 500)

    def flops(drop: Sequence[str]) -> float:
        model.set_block_drop(probs={b: 1.0 for b in drop})
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x, t, ctx)
        return fc.get_total_flops() / 1e6

    full = flops(())
    blocks = {b: max(full - flops([b]), 1e-3) for b in model.droppable_blocks}
    return {"method": "flops", "unit": "MFLOP", "full": full, "blocks": blocks, "batch": batch,
            "text_len": text_len, "key": config_key(full_cfg, text_len, batch)}


def estimate_latency(table: dict[str, Any], removed: Iterable[str]) -> float:
    """``full - sum(cost of removed blocks)`` in the table's unit.

    Raises:
        KeyError: a removed block is not in the table.
    """
    return float(table["full"]) - sum(float(table["blocks"][b]) for b in removed)


def load_table(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a table file.

    Raises:
        OSError: unreadable. ValueError: not a table.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), dict) or "full" not in data:
        raise ValueError(f"{path} is not a latency table")
    for k, v in data["blocks"].items():
        if not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{path}: block {k!r} has a non-positive cost {v!r}")
    return data


def default_table(config: dict[str, Any], text_len: int = 32, batch: int = 2) -> dict[str, Any] | None:
    """The shipped table if it was measured for this architecture and shape, else None."""
    if not DEFAULT_TABLE_PATH.is_file():
        return None
    table = load_table(DEFAULT_TABLE_PATH)
    full_cfg = {k: v for k, v in config.items() if k != "elastic_blocks"}
    return table if table.get("key") == config_key(full_cfg, text_len, batch) else None


def engine_available() -> bool:
    """Whether the C engine extension is built (latency can be measured)."""
    try:
        from snapfusion import _engine  # noqa: F401
    except ImportError:
        return False
    return True


def get_table(config: dict[str, Any], text_len: int = 32, batch: int = 2, path: str | None = None,
              measure: bool = False, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """A latency table for ``config``: from ``path``; else measured (``measure`` and the engine
    available); else the shipped default table when it matches; else measured if the engine is
    there; else FLOP counts."""
    if path:
        return load_table(path)
    engine = engine_available()
    if measure and engine:
        return measure_latency_table(config, text_len, batch, threads=threads, progress=progress)
    shipped = default_table(config, text_len, batch)
    if shipped is not None:
        return shipped
    if engine:
        return measure_latency_table(config, text_len, batch, threads=threads, progress=progress)
    return flop_latency_table(config, text_len, batch)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train latency --unet DIR|--config cfg.json --out table.json``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train latency",
                                description="measure the per-block engine latency table of a UNet config")
    p.add_argument("--unet", help="UNet folder (its config.json is used)")
    p.add_argument("--config", help="UNet config JSON (instead of --unet)")
    p.add_argument("--default", action="store_true", help="the default teacher config with text width 128")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--random-subnets", type=int, default=None)
    p.add_argument("--flops", action="store_true", help="count FLOPs instead of timing the engine")
    args = p.parse_args(argv)
    if args.default:
        from .world import default_unet_config

        config = default_unet_config()
    elif args.unet:
        config = json.loads((Path(args.unet) / "config.json").read_text())
    elif args.config:
        config = json.loads(Path(args.config).read_text())
    else:
        p.error("one of --unet, --config, --default is required")
    if args.flops:
        table = flop_latency_table(config, args.text_len, args.batch)
    else:
        table = measure_latency_table(config, args.text_len, args.batch, threads=args.threads,
                                      repeats=args.repeats, random_subnets=args.random_subnets)
    Path(args.out).write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"full": table["full"], "unit": table["unit"], "blocks": len(table["blocks"])}))
    return 0
