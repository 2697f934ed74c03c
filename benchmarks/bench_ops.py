"""Operator benchmark: the snapfusion engine against PyTorch on SD-v1.5's heaviest shapes.

Both sides run in the same process with the same thread count (``--threads``, default: the
physical cores; ``torch.set_num_threads`` and ``_engine.set_num_threads``), each in its native
layout (PyTorch NCHW contiguous, the engine NHWC), timed in alternation with a pause of
``--gap`` seconds after every call (so that neither side's spinning pool workers slow the
other side down); the median of ``--repeat`` runs is reported. Rows:

- conv 3x3 64x64x320 -> 320 and 32x32x640 -> 640 (batch 1, padding 1, bias),
- fully connected [4096 x 320] . [320 x 1280] (bias),
- self-attention over 4096 tokens, 8 heads of 40 (torch: F.scaled_dot_product_attention),
- cross-attention 4096 x 77 tokens, 8 heads of 40,
- the same self-attention with ``bf16=True`` (the attention of the engine's int8 models:
  bfloat16 products on AMX tiles where the CPU has them; its error column shows the cost),
- group norm (32 groups) + SiLU over 64x64x320.

Rows whose engine function does not exist (yet) are reported as "not available".

Columns: engine and torch milliseconds, ratio = torch / engine (> 1: the engine is faster),
the engine's GFLOP/s and its fraction of the machine's float32 FMA peak, measured at the start
with a small FMA program compiled on the fly (see _common.py). FLOP counts: 2 per multiply-add;
attention 4 * heads * q_len * kv_len * head_dim (QK^T and PV; softmax not counted); group norm
+ SiLU a nominal 10 per element (it is memory bound).

OMP_WAIT_POLICY: set to PASSIVE before torch is imported unless already set. With ACTIVE,
PyTorch's OpenMP workers keep spinning after each operator and take cores from the engine's
pool in the same process. For torch alone it barely matters: measured on 2 threads of an
otherwise idle 16-core Xeon (Sapphire Rapids class), ACTIVE made torch's conv and linear rows
2-3 % faster than PASSIVE, within the run-to-run noise.

Usage::

    python benchmarks/bench_ops.py [--threads N] [--repeat 10] [--json out.json] [--only conv]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402


class NotAvailable(Exception):
    """The engine side of a row does not exist in this build."""


@dataclass
class Row:
    """One benchmark row: a name, its FLOP count and a builder of (engine, torch) callables.

    The builder returns (engine_fn, torch_fn, check_fn); check_fn() returns the relative max
    error of the engine's output against torch's (computed once, outside the timing).
    """

    name: str
    flops: float
    build: Callable[[], tuple[Callable[[], Any], Callable[[], Any], Callable[[], float]]]


def _rel_err(engine_out: np.ndarray, torch_out: np.ndarray) -> float:
    ref = np.asarray(torch_out, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(engine_out, np.float64) - ref)) /
                 max(np.max(np.abs(ref)), 1e-30))


def _engine_fn(name: str) -> Callable[..., Any]:
    from snapfusion import _engine

    fn = getattr(_engine, name, None)
    if fn is None:
        raise NotAvailable(f"_engine.{name} not available")
    return fn


def make_rows(rng: np.random.Generator) -> list[Row]:
    """The benchmark rows (inputs are created lazily by each builder)."""
    import torch
    import torch.nn.functional as F

    from snapfusion import _engine

    def conv_row(hw: int, c: int) -> Row:
        def build():
            x = rng.standard_normal((1, hw, hw, c), dtype=np.float32)
            w = (rng.standard_normal((c, c, 3, 3), dtype=np.float32) / np.sqrt(9 * c)).astype(
                np.float32)
            b = rng.standard_normal(c, dtype=np.float32)
            conv = _engine.Conv2d(w, b, padding=1)
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            wt, bt = torch.from_numpy(w), torch.from_numpy(b)

            def check() -> float:
                ref = F.conv2d(xt, wt, bt, padding=1).permute(0, 2, 3, 1).numpy()
                return _rel_err(conv(x), ref)

            return (lambda: conv(x)), (lambda: F.conv2d(xt, wt, bt, padding=1)), check

        return Row(f"conv3x3 {hw}x{hw}x{c}->{c}", 2.0 * hw * hw * c * c * 9, build)

    def linear_row(m: int, k: int, n: int) -> Row:
        def build():
            x = rng.standard_normal((m, k), dtype=np.float32)
            w = (rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
            b = rng.standard_normal(n, dtype=np.float32)
            lin = _engine.Linear(w, b)
            xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)

            def check() -> float:
                return _rel_err(lin(x), F.linear(xt, wt, bt).numpy())

            return (lambda: lin(x)), (lambda: F.linear(xt, wt, bt)), check

        return Row(f"linear [{m}x{k}].[{k}x{n}]", 2.0 * m * k * n, build)

    def attention_row(label: str, q_len: int, kv_len: int, heads: int = 8, dim: int = 40,
                      bf16: bool = False) -> Row:
        def build():
            attn = _engine_fn("attention")
            q = rng.standard_normal((1, q_len, heads * dim), dtype=np.float32)
            k = rng.standard_normal((1, kv_len, heads * dim), dtype=np.float32)
            v = rng.standard_normal((1, kv_len, heads * dim), dtype=np.float32)

            def to_heads(a: np.ndarray) -> torch.Tensor:
                t = torch.from_numpy(a).reshape(1, a.shape[1], heads, dim)
                return t.permute(0, 2, 1, 3).contiguous()

            qt, kt, vt = to_heads(q), to_heads(k), to_heads(v)

            def check() -> float:
                ref = F.scaled_dot_product_attention(qt, kt, vt)
                ref = ref.permute(0, 2, 1, 3).reshape(1, q_len, heads * dim).numpy()
                return _rel_err(attn(q, k, v, heads=heads, bf16=bf16), ref)

            return ((lambda: attn(q, k, v, heads=heads, bf16=bf16)),
                    (lambda: F.scaled_dot_product_attention(qt, kt, vt)), check)

        return Row(label, 4.0 * heads * q_len * kv_len * dim, build)

    def group_norm_row(hw: int, c: int, groups: int = 32) -> Row:
        def build():
            gn = _engine_fn("group_norm")
            x = rng.standard_normal((1, hw, hw, c), dtype=np.float32)
            gamma = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
            beta = (0.1 * rng.standard_normal(c)).astype(np.float32)
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            gt, bt = torch.from_numpy(gamma), torch.from_numpy(beta)

            def check() -> float:
                ref = F.silu(F.group_norm(xt, groups, gt, bt)).permute(0, 2, 3, 1).numpy()
                return _rel_err(gn(x, groups, gamma, beta, silu=True), ref)

            return ((lambda: gn(x, groups, gamma, beta, silu=True)),
                    (lambda: F.silu(F.group_norm(xt, groups, gt, bt))), check)

        return Row(f"group_norm+silu {hw}x{hw}x{c}", 10.0 * hw * hw * c, build)

    return [
        conv_row(64, 320),
        conv_row(32, 640),
        linear_row(4096, 320, 1280),
        attention_row("self-attention 4096, 8x40", 4096, 4096),
        attention_row("cross-attention 4096x77, 8x40", 4096, 77),
        attention_row("self-attention 4096, 8x40, bf16", 4096, 4096, bf16=True),
        group_norm_row(64, 320),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both the engine and torch (default: physical cores)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per side (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per side first")
    parser.add_argument("--gap", type=float, default=0.1,
                        help="seconds of pause after every call (pool workers fall asleep)")
    parser.add_argument("--json", type=str, default=None, help="write the results there")
    parser.add_argument("--only", type=str, default=None,
                        help="only rows whose name contains this text")
    parser.add_argument("--no-peak", action="store_true", help="skip the FMA peak measurement")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.gap < 0:
        parser.error("--repeat must be >= 1, --warmup and --gap >= 0")

    from snapfusion import _engine

    threads = args.threads or _engine.physical_cores()
    if threads < 1:
        parser.error("--threads must be >= 1")
    import torch

    torch.set_num_threads(threads)
    _engine.set_num_threads(threads)

    if args.no_peak:
        peak, peak_method = float("nan"), "not measured"
    else:
        peak, peak_method = _common.measure_peak_gflops(threads)
    machine = _common.machine_info(threads, peak, peak_method)
    print(f"CPU: {machine['cpu']}; threads: {threads}; OMP_WAIT_POLICY="
          f"{machine['omp_wait_policy']}; torch {torch.__version__}; engine "
          f"{_engine.version()}")
    print(f"fp32 FMA peak on {threads} thread(s): {peak:.1f} GFLOP/s ({peak_method})")

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    header = (f"{'operator':32s} {'engine ms':>10s} {'torch ms':>10s} {'ratio':>7s} "
              f"{'GFLOP/s':>8s} {'% peak':>7s} {'rel err':>9s}")
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for row in make_rows(rng):
            if args.only and args.only not in row.name:
                continue
            try:
                engine_fn, torch_fn, check = row.build()
            except NotAvailable as exc:
                print(f"{row.name:32s} {'not available':>10s}   ({exc})")
                results[row.name] = {"engine_s": None, "torch_s": None, "ratio": None,
                                     "gflops": None, "status": "not available"}
                continue
            err = check()
            times = _common.time_interleaved({"engine": engine_fn, "torch": torch_fn},
                                             args.repeat, args.warmup, args.gap)
            te, tt = _common.median(times["engine"]), _common.median(times["torch"])
            gflops = row.flops / te / 1e9
            frac = gflops / peak if peak == peak and peak > 0 else float("nan")
            print(f"{row.name:32s} {te * 1e3:10.2f} {tt * 1e3:10.2f} {tt / te:7.2f} "
                  f"{gflops:8.1f} {100 * frac:6.1f}% {err:9.1e}", flush=True)
            results[row.name] = {
                "engine_s": te, "torch_s": tt, "ratio": tt / te, "gflops": gflops,
                "torch_gflops": row.flops / tt / 1e9, "fraction_of_peak": frac,
                "rel_err": err, "engine_min_s": min(times["engine"]),
                "torch_min_s": min(times["torch"]),
            }
    if args.json:
        _common.write_json(args.json, results, machine)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
