"""Winograd F(2x2, 3x3) against the own GEMM's direct convolution on SD-v1.5's 3x3 shapes.

Two ``_engine.Conv2d`` objects per shape in one process, created with SNAPFUSION_WINOGRAD=0
(direct) and SNAPFUSION_WINOGRAD=force (Winograd, also on the shapes the size heuristic leaves
to the direct GEMM: the 1280-channel layers and tiny outputs), timed in alternation; the minimum
of ``--repeat`` runs is reported, both as wall time and as the calling thread's CPU time (with
one engine thread the engine computes on the calling thread, and the CPU time is the steadier
figure on a shared machine). ``diff``: max |winograd - direct| / max |direct|.

Usage::

    python benchmarks/bench_winograd.py [--threads 1] [--repeat 5] [--shapes 0,2,5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from snapfusion import _engine

# (batch, h, w, in, out): the UNet's levels at 512x512 images (64x64 .. 8x8 latents), small
# outputs, the VAE decoder's 128x128x512, 256x256x256 and (at half size) 512x512x128 layers
SHAPES = [
    (1, 64, 64, 320, 320), (1, 64, 64, 640, 320), (1, 32, 32, 640, 640),
    (1, 32, 32, 1280, 640), (1, 16, 16, 1280, 1280), (1, 16, 16, 640, 640),
    (1, 8, 8, 1280, 1280), (1, 8, 8, 640, 640), (1, 4, 4, 640, 640), (1, 2, 2, 640, 640),
    (1, 128, 128, 512, 512), (1, 256, 256, 256, 256), (1, 256, 256, 128, 128),
]


def make_conv(mode: str, wt: np.ndarray, bias: np.ndarray) -> object:
    before = os.environ.get("SNAPFUSION_WINOGRAD")
    os.environ["SNAPFUSION_WINOGRAD"] = mode
    try:
        return _engine.Conv2d(wt, bias, padding=1)
    finally:
        if before is None:
            del os.environ["SNAPFUSION_WINOGRAD"]
        else:
            os.environ["SNAPFUSION_WINOGRAD"] = before


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--shapes", default=None, help="comma-separated indices into SHAPES")
    args = p.parse_args()
    _engine.set_num_threads(args.threads)
    shapes = SHAPES
    if args.shapes:
        shapes = [SHAPES[int(i)] for i in args.shapes.split(",")]
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, min of {args.repeat}")
    print(f"{'batch,h,w,in,out':>22s} {'direct ms':>10s} {'wino ms':>8s} {'ratio':>6s} "
          f"{'direct cpu':>10s} {'wino cpu':>8s} {'ratio':>6s} {'diff':>8s}")
    for b, h, w, cin, cout in shapes:
        x = rng.standard_normal((b, h, w, cin), dtype=np.float32)
        wt = (rng.standard_normal((cout, cin, 3, 3), dtype=np.float32)
              / np.float32(np.sqrt(9 * cin)))
        bias = rng.standard_normal(cout, dtype=np.float32)
        direct, wino = make_conv("0", wt, bias), make_conv("force", wt, bias)
        yd, yw = direct(x), wino(x)
        diff = float(np.abs(yd.astype(np.float64) - yw).max() / np.abs(yd).max())
        wall = {"d": [], "w": []}
        cpu = {"d": [], "w": []}
        for _ in range(args.repeat):
            for key, conv in (("d", direct), ("w", wino)):
                t0, c0 = time.perf_counter(), time.thread_time()
                conv(x)
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.thread_time() - c0)
        wd, ww = 1e3 * min(wall["d"]), 1e3 * min(wall["w"])
        cd, cw = 1e3 * min(cpu["d"]), 1e3 * min(cpu["w"])
        name = ",".join(str(v) for v in (b, h, w, cin, cout))
        print(f"{name:>22s} {wd:10.2f} {ww:8.2f} {wd / ww:6.2f} {cd:10.2f} {cw:8.2f} "
              f"{cd / cw:6.2f} {diff:8.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
