"""Engine self-check: versions, CPU features, threads, and SD-sized blocks timed.

Run with ``python -m snapfusion selfcheck``. Each block is built from the engine's
operators exactly as Stable Diffusion v1.5 composes them at a 64x64 latent
(512x512 images), with random weights; the timings show what one UNet block costs
on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _engine


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up: packs nothing, but touches memory and sizes caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def resnet_block(rng: np.random.Generator, h: int, w: int, c: int, temb_dim: int = 1280):
    """SD ResNet block (in = out = c): GN+SiLU, conv3x3, +temb, GN+SiLU, conv3x3, residual.

    Returns a closure computing one forward pass on a (1, h, w, c) NHWC input, and the MACs.
    """
    conv1 = _engine.Conv2d(_rand(rng, c, c, 3, 3, scale=(9 * c) ** -0.5), _rand(rng, c), padding=1)
    conv2 = _engine.Conv2d(_rand(rng, c, c, 3, 3, scale=(9 * c) ** -0.5), _rand(rng, c), padding=1)
    temb_proj = _engine.Linear(_rand(rng, c, temb_dim, scale=temb_dim**-0.5), _rand(rng, c))
    g1, b1, g2, b2 = (_rand(rng, c) for _ in range(4))
    x = _rand(rng, 1, h, w, c)
    temb = _rand(rng, 1, temb_dim)

    def run() -> np.ndarray:
        hid = _engine.group_norm(x, 32, g1, b1, eps=1e-5, silu=True)
        hid = conv1(hid)
        hid = _engine.add_rows(hid, temb_proj(_engine.silu(temb)))
        hid = _engine.group_norm(hid, 32, g2, b2, eps=1e-5, silu=True)
        hid = conv2(hid)
        return _engine.add(hid, x)

    macs = 2 * h * w * c * c * 9
    return run, macs


def attention_block(rng: np.random.Generator, h: int, w: int, c: int, heads: int = 8,
                    ctx_len: int = 77, ctx_dim: int = 768):
    """SD transformer block: GN, proj_in, self-attn, cross-attn, GEGLU FF, proj_out, residual."""
    lin = lambda o, i, bias=True: _engine.Linear(  # noqa: E731
        _rand(rng, o, i, scale=i**-0.5), _rand(rng, o) if bias else None)
    proj_in, proj_out = lin(c, c), lin(c, c)
    q1, k1, v1, o1 = lin(c, c, False), lin(c, c, False), lin(c, c, False), lin(c, c)
    q2, k2, v2, o2 = lin(c, c, False), lin(c, ctx_dim, False), lin(c, ctx_dim, False), lin(c, c)
    ff1, ff2 = lin(8 * c, c), lin(c, 4 * c)
    norms = [(_rand(rng, c) * 0.1 + 1, _rand(rng, c) * 0.1) for _ in range(4)]
    x = _rand(rng, 1, h * w, c)
    ctx = _rand(rng, 1, ctx_len, ctx_dim)

    def run() -> np.ndarray:
        hid = _engine.group_norm(x, 32, *norms[0], eps=1e-6)
        hid = proj_in(hid)
        n = _engine.layer_norm(hid, *norms[1])
        hid = _engine.add(hid, o1(_engine.attention(q1(n), k1(n), v1(n), heads)))
        n = _engine.layer_norm(hid, *norms[2])
        hid = _engine.add(hid, o2(_engine.attention(q2(n), k2(ctx), v2(ctx), heads)))
        n = _engine.layer_norm(hid, *norms[3])
        hid = _engine.add(hid, ff2(_engine.geglu(ff1(n))))
        return _engine.add(proj_out(hid), x)

    L = h * w
    macs = (L * c * c * 6 + 2 * L * L * c + 2 * L * ctx_len * c + 2 * ctx_len * ctx_dim * c
            + L * c * 8 * c + L * 4 * c * c)
    return run, macs


def main(threads: int | None = None, repeat: int = 3) -> int:
    """Print the self-check report; returns a process exit code."""
    if threads is not None:
        _engine.set_num_threads(threads)
    v = _engine.version()
    feats = _engine.cpu_features()
    print("snapfusion engine self-check")
    print(f"  engine {v['engine']}  XNNPACK {v['xnnpack']}  kernels: {v['kernels']}")
    print("  CPU features: " + " ".join(k for k, on in feats.items() if on))
    print(f"  threads: {_engine.get_num_threads()} (physical cores: {_engine.physical_cores()})")
    rng = np.random.default_rng(0)
    rows = []
    for name, (fn, macs) in [
        ("ResNet block 64x64x320", resnet_block(rng, 64, 64, 320)),
        ("attention block 64x64x320", attention_block(rng, 64, 64, 320)),
    ]:
        out = fn()
        if not np.all(np.isfinite(out)):
            print(f"  {name}: non-finite output")
            return 1
        t = _median_time(fn, repeat)
        rows.append((name, t, macs))
    for name, t, macs in rows:
        print(f"  {name:28s} {t * 1e3:8.1f} ms   {2 * macs / t / 1e9:6.1f} GFLOP/s")
    print("self-check passed")
    return 0
