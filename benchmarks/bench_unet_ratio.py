"""The world student's UNet call against its teacher's, per batch size and GEMM back end.

The issue's latency target is a ratio: the evolved student's UNet call takes at most half of the
teacher's in the engine. This script times it the way that isolates the UNet: the embedded
student and the teacher's architecture (its architecture twin: the student's configs without
the pruning, random weights; the engine's time does not depend on weight values, see
``snapfusion.train.report.architecture_twin``) run one UNet call after another, in turns, on
fixed random inputs of the deployment shape (16x16x4 latents, 77 text tokens), at batch 1
(no guidance) and batch 2 (classifier-free guidance: both halves in one call), on one engine
thread, for each GEMM back end this CPU has:

- ``own``: the engine's own AVX-512 GEMM and Winograd convolution (CPUs with AVX-512F);
- ``xnnpack``: XNNPACK's convolution and fully connected operators (every other CPU, or
  ``SNAPFUSION_GEMM=xnnpack``).

The back end is chosen when a layer is created, so both pairs are loaded in this one process
and all four models are timed in the same rounds. Each round times ``--calls`` calls of each
model; the median round counts. Prints a table and writes JSON (``--json``).

Usage::

    python benchmarks/bench_unet_ratio.py [--rounds 15] [--calls 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import snapfusion  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load_pair(student: Path, teacher: Path, backend: str) -> dict[str, object]:
    """The two UNets, their layers created for ``backend``."""
    from snapfusion.components import UNet

    old = os.environ.get("SNAPFUSION_GEMM")
    try:
        if backend == "xnnpack":
            os.environ["SNAPFUSION_GEMM"] = "xnnpack"
        else:
            os.environ.pop("SNAPFUSION_GEMM", None)
        return {"student": UNet(student / "unet"), "teacher": UNet(teacher / "unet")}
    finally:
        if old is None:
            os.environ.pop("SNAPFUSION_GEMM", None)
        else:
            os.environ["SNAPFUSION_GEMM"] = old


def main(argv: list[str] | None = None) -> int:
    from snapfusion import _engine
    from snapfusion.pipeline import Pipeline, default_model_path
    from snapfusion.train.report import architecture_twin

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="student pipeline folder (default: the embedded model)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=20, help="UNet calls of each model per round")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        p.error("--rounds and --calls must be >= 1")

    student = Path(args.model) if args.model else default_model_path()
    _engine.set_num_threads(1)
    backends = ["own", "xnnpack"] if _engine.gemm_backend() == "own avx512" else ["xnnpack"]
    with tempfile.TemporaryDirectory() as tmp:
        teacher = architecture_twin(student, Path(tmp))
        models = {(b, name): u for b in backends for name, u in _load_pair(student, teacher, b).items()}
        macs = {name: Pipeline.from_pretrained(path, threads=1).unet_macs()
                for name, path in (("student", student), ("teacher", teacher))}
        results: dict[str, dict[str, float]] = {}
        for batch in (1, 2):
            rng = np.random.default_rng(0)
            u0 = models[(backends[0], "student")]
            x = rng.standard_normal((batch, u0.in_channels, 16, 16)).astype(np.float32)
            ctx = rng.standard_normal((batch, 77, u0.cross_attention_dim)).astype(np.float32)
            t = np.full((batch,), 500.0, np.float32)
            for u in models.values():  # warm up: allocations, first-touch of the weights
                for _ in range(3):
                    u(x, t, ctx)
            times: dict[tuple[str, str], list[float]] = {k: [] for k in models}
            for _ in range(args.rounds):
                for k, u in models.items():
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        u(x, t, ctx)
                    times[k].append((time.perf_counter() - t0) / args.calls)
            for b in backends:
                s = float(np.median(times[(b, "student")]))
                te = float(np.median(times[(b, "teacher")]))
                results[f"{b}_batch{batch}"] = {"student_ms": 1e3 * s, "teacher_ms": 1e3 * te, "ratio": s / te}

    print(f"UNet call, student / teacher (architecture twin), one thread, median of {args.rounds} rounds "
          f"of {args.calls} calls each, in turns")
    print(f"MACs per call at batch 1: student {macs['student'] / 1e6:.1f} M, teacher {macs['teacher'] / 1e6:.1f} M, "
          f"ratio {macs['student'] / macs['teacher']:.3f}")
    print("| back end | batch | student ms | teacher ms | student / teacher |\n|---|---|---|---|---|")
    for key, r in results.items():
        b, batch = key.split("_batch")
        print(f"| {b} | {batch} | {r['student_ms']:.2f} | {r['teacher_ms']:.2f} | {r['ratio']:.3f} |")
    if args.json:
        out = {"machine": platform.processor() or platform.machine(), "engine": _engine.version(),
               "rounds": args.rounds, "calls": args.calls, "threads": 1, "macs_per_call": macs,
               "results": results}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
