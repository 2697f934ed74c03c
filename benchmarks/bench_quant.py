"""Quantized weights on SD-v1.5: fp32, fp16-stored, int8 on XNNPACK and int8 on our kernels
(AMX-INT8 and AVX512-VNNI).

Three parts:

1. Kernels: SD-v1.5's big convolutions (3x3 at 320/640/1280 channels, the 2560 -> 1280 of the
   up blocks, a 1x1 feed-forward projection, VAE decoder convolutions) as single int8 layers
   (``_engine.QConv2d``, float32 in and out: the times include quantizing the input; the
   output array is reused) on our AMX and VNNI kernels and on XNNPACK's qc8 operator, and as
   float32 ``_engine.Conv2d`` (a new output array per call): GOP/s (2 operations per
   multiply-accumulate), best of ``--repeat`` rounds, and the fractions of the VNNI and AMX
   peaks, from small C loops of independent ``vpdpbusd`` chains and of ``tdpbusd`` on four
   tiles (compiled on the fly with ``cc -O3 -march=native``, like the FMA peak of _common.py)
   run before each round; the best peaks seen are used.
2. Models: the SD-v1.5 UNet (one call, batch 2 = classifier-free guidance) and VAE decoder (one
   call, batch 1) at 256x256 and 512x512 images, random weights (bench_pipeline.py's cache),
   in five variants: ``fp32``; ``fp16`` (16-bit files, widened to float32 at load);
   ``int8_xnnpack``, ``int8_vnni`` and ``int8_own`` (the same int8 files, calibrated on random
   latents, run with SNAPFUSION_INT8=xnnpack; vnni with SNAPFUSION_ATTENTION_ISA=avx512, as on
   a CPU with VNNI and no AMX; and auto: AMX-INT8 layers and AMX-BF16 attention here). Timing:
   each variant runs in a process of its own together with the fp32 model, the two called in
   alternation (the machine is shared: a burst of load hits both alike), so the speed-up is
   measured within one time window. Memory: each variant is loaded and run once in a process
   of its own; peak RSS is its VmHWM (ru_maxrss would carry the parent's peak over fork +
   exec); the RSS right after loading is reported too. Reported: median seconds, speed-up over
   fp32, GOP/s (MACs counted by the engine x 2 / time) and fractions of the VNNI and AMX peaks,
   peak RSS, size on disk of the component folder. Then the peak RSS of a whole generation
   (text encoder, two UNet steps with CFG, decoder): ``pipeline_<size>_<variant>`` with one
   model in memory at a time (``Pipeline.from_pretrained(..., low_memory=True)``) and
   ``..._resident`` with the three models loaded throughout.
3. Accuracy, on the trained default model (``snapfusion/models/``; its weights are stored in
   float16 and computed in float32, so that is the reference): bf16 and int8 copies
   (calibrated on 32 world prompts of the training distribution) generate images for
   ``--accuracy-n`` held-out prompts with the same seeds; reported: image PSNR against the
   reference (mean and minimum over the images), and the world CLIP score, world-FID and
   attribute accuracy of every variant (the shipped world CLIP and checker). Also, on the
   golden random-weight sd_tiny pipeline: PSNR of fp16 and int8 images against fp32.

Usage::

    python benchmarks/bench_quant.py [--threads N] [--repeat R] [--sizes 256,512]
        [--parts kernels,models,accuracy] [--cache DIR] [--json PATH]

``--json`` writes ``{name: {"s", "fp32_s", "speedup", "rss_mb", "size_mb", ...}}`` with names
``<unet|decoder>_<size>_<fp32|fp16|int8_xnnpack|int8_vnni|int8_own>`` and
``pipeline_<size>_<fp32|int8_own>[_resident]`` (plus ``kernel_*`` and ``accuracy_*`` entries
and ``_machine``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (REPO, machine_info, measure_peak_gflops, median,  # noqa: E402
                     time_interleaved)

VARIANTS = ("fp32", "fp16", "int8_xnnpack", "int8_vnni", "int8_own")

#: The two int8 peak programs share this C driver: `threads` threads each run `iters` rounds
#: of the kernel (OPS operations per round), after SETUP; prints GOP/s.
_PEAK_DRIVER = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static long iters;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
@KERNEL@
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    iters = atol(argv[2]);
    pthread_t th[1024];
    int out[1024];
    if (n < 1 || n > 1024) return 2;
    @SETUP@
    double t0 = now();
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, run, &out[i]);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    double t = now() - t0;
    printf("%.3f %d\n", (double)n * iters * (@OPS@) / t / 1e9, out[0]);
    return 0;
}
"""

#: 16 independent vpdpbusd chains (more than latency x ports); 64 multiply-accumulates (16
#: lanes x 4 bytes) = 128 operations per instruction.
_VNNI_KERNEL = (r"""
#define CHAINS 16
static void *run(void *arg) {
    __m512i a[CHAINS], b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(5);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
    __m512i s = a[0];
    for (int i = 1; i < CHAINS; i++) s = _mm512_add_epi32(s, a[i]);
    *(int *)arg = _mm512_reduce_add_epi32(s);
    return NULL;
}
""", "", "CHAINS * 128.0")

#: 4 independent tdpbusd on 16 x 16 x 64 tiles per round, after Linux's permission for the
#: tile state (ARCH_REQ_XCOMP_PERM, XTILEDATA) and a configuration of 8 tiles of 16 x 64 bytes.
_AMX_KERNEL = (r"""
static unsigned char cfg[64] __attribute__((aligned(64)));
static void *run(void *arg) {
    static unsigned char a[1024] __attribute__((aligned(64)));
    _tile_loadconfig(cfg);
    _tile_loadd(4, a, 64); _tile_loadd(5, a, 64); _tile_loadd(6, a, 64); _tile_loadd(7, a, 64);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (long it = 0; it < iters; it++) {
        _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    }
    int out[256];
    _tile_stored(0, out, 64);
    *(int *)arg = out[0];
    _tile_release();
    return NULL;
}
""", r"""if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 3;
    cfg[0] = 1;
    for (int i = 0; i < 8; i++) { cfg[16 + 2 * i] = 64; cfg[48 + i] = 16; }""",
               "4 * 16 * 16 * 64 * 2.0")


def _peak_source(kind: str) -> str:
    kernel, setup, ops = _VNNI_KERNEL if kind == "vnni" else _AMX_KERNEL
    return (_PEAK_DRIVER.replace("@KERNEL@", kernel).replace("@SETUP@", setup)
            .replace("@OPS@", ops))


#: SD-v1.5 shapes: (name, batch, h, w, in, out, kernel)
KERNEL_CASES = (
    ("unet conv3x3 64x64 320->320 b2", 2, 64, 64, 320, 320, 3),
    ("unet conv3x3 32x32 640->640 b2", 2, 32, 32, 640, 640, 3),
    ("unet conv3x3 16x16 1280->1280 b2", 2, 16, 16, 1280, 1280, 3),
    ("unet conv3x3 16x16 2560->1280 b2", 2, 16, 16, 2560, 1280, 3),
    ("unet ff 1x1 8192 rows 320->2560", 1, 8192, 1, 320, 2560, 1),
    ("vae conv3x3 64x64 512->512", 1, 64, 64, 512, 512, 3),
    ("vae conv3x3 128x256 256->256", 1, 128, 256, 256, 256, 3),
)


class IntPeak:
    """An int8 peak in GOP/s, measured with a small C loop of independent multiply-accumulate
    chains on ``threads`` threads (compiled on the fly with ``cc -O3 -march=native``):
    ``kind="vnni"`` (``vpdpbusd``) or ``"amx"`` (``tdpbusd`` on four tiles). ``available`` is
    False without a C compiler or the instructions. ``trial(seconds)`` runs it once; ``best``
    is the largest figure seen (other load only ever lowers it)."""

    def __init__(self, threads: int, kind: str = "vnni") -> None:
        from snapfusion import _engine

        self.threads = threads
        self.kind = kind
        self.best = 0.0
        self._tmp = tempfile.TemporaryDirectory(prefix=f"sf_{kind}_")
        self._exe = Path(self._tmp.name, kind)
        self._iters_per_s = 0.0
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        self.available = bool(cc) and bool(_engine.int8_backends()[kind])
        if self.available:
            src = Path(self._tmp.name, f"{kind}.c")
            src.write_text(_peak_source(kind))
            build = subprocess.run([str(cc), "-O3", "-march=native", "-pthread", str(src), "-o",
                                    str(self._exe)], capture_output=True, text=True, check=False)
            self.available = build.returncode == 0
        if self.available:
            n = 2_000_000 if kind == "vnni" else 200_000
            t0 = time.perf_counter()
            self._run(n)
            self._iters_per_s = n / max(time.perf_counter() - t0, 1e-3)

    def _run(self, iters: int) -> float:
        out = subprocess.run([str(self._exe), str(self.threads), str(iters)],
                             capture_output=True, text=True, check=True).stdout
        return float(out.split()[0])

    def trial(self, seconds: float = 0.2) -> float:
        if not self.available:
            return float("nan")
        g = self._run(max(100_000, int(self._iters_per_s * seconds)))
        self.best = max(self.best, g)
        return g


def kernels(threads: int, repeat: int, peaks: dict[str, IntPeak]) -> dict[str, Any]:
    """Each case: `repeat` rounds of (peak trials, our AMX and VNNI kernels, XNNPACK qc8,
    fp32), the best time of each (load only ever adds time), GOP/s against the best peaks
    seen."""
    import numpy as np

    from snapfusion import _engine

    _engine.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    nan = float("nan")
    print(f"{'kernel':36s} {'GOP':>6s} {'AMX GOP/s':>10s} {'%AMX':>6s} {'VNNI GOP/s':>11s} "
          f"{'%VNNI':>6s} {'xnn GOP/s':>10s} {'fp32 GFLOP/s':>13s}")
    for name, b, h, w, ci, co, k in KERNEL_CASES:
        wq = rng.integers(-127, 128, (co, ci, k, k), dtype=np.int8)
        ws = np.full(co, 0.01, np.float32)
        x = rng.standard_normal((b, h, w, ci)).astype(np.float32)
        gop = 2.0 * b * h * w * co * ci * k * k / 1e9
        layers = {}
        for be in ("amx", "vnni"):
            if _engine.int8_backends()[be]:
                layers[be] = _engine.QConv2d(wq, ws, None, padding=k // 2, input_scale=0.03,
                                             input_zero_point=0, backend=be)
        layers["xnnpack"] = _engine.QConv2d(wq, ws, None, padding=k // 2, input_scale=0.03,
                                            input_zero_point=0, output_scale=1.0,
                                            output_zero_point=0, backend="xnnpack")
        layers["fp32"] = _engine.Conv2d(rng.standard_normal((co, ci, k, k)).astype(np.float32),
                                        None, padding=k // 2)
        best = {key: float("inf") for key in layers}
        y = layers["xnnpack"](x)  # int8 layers write into this (no page faults per call)
        calls = {key: (lambda layer=layer: layer(x, out=y)) if key != "fp32" else
                 (lambda layer=layer: layer(x)) for key, layer in layers.items()}
        for _ in range(repeat):
            for peak in peaks.values():
                peak.trial()
            for key, call in calls.items():
                t0 = time.perf_counter()
                call()
                best[key] = min(best[key], time.perf_counter() - t0)
                time.sleep(0.05)
        row: dict[str, Any] = {"gop": gop}
        for key in layers:
            row[f"{key}_s"] = best[key]
            row[f"{key}_gops"] = gop / best[key]
        out["kernel_" + name.replace(" ", "_").replace(">", "").replace("-", "_")] = row
        row["_name"] = name
    # fractions against the best peaks of the whole run
    for row in out.values():
        name = row.pop("_name")
        for key in ("amx", "vnni", "xnnpack", "fp32"):
            for pk, peak in peaks.items():
                if f"{key}_gops" in row and peak.best:
                    row[f"{key}_{pk}_fraction"] = row[f"{key}_gops"] / peak.best
        print(f"{name:36s} {row['gop']:6.2f} {row.get('amx_gops', nan):10.1f} "
              f"{100 * row.get('amx_amx_fraction', nan):5.1f}% {row.get('vnni_gops', nan):11.1f} "
              f"{100 * row.get('vnni_vnni_fraction', nan):5.1f}% {row['xnnpack_gops']:10.1f} "
              f"{row['fp32_gops']:13.1f}", flush=True)
    for pk, peak in peaks.items():
        print(f"{pk.upper()} peak (best trial): {peak.best:.0f} GOP/s")
    return out


# --------------------------------------------------------------------------------- models


def _folder_size(path: Path | list[Path]) -> float:
    paths = path if isinstance(path, list) else [path]
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file()) / 2**20


def prepare_variants(cache: Path, qcache: Path) -> None:
    """fp16 and int8 copies of the cached SD-1.5 UNet and VAE (once)."""
    import numpy as np

    from snapfusion import _engine
    from snapfusion.convert import convert
    from snapfusion.convert.quantize import DEFAULT_KEEP_FP32

    _engine.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(1)

    def cal_unet(models: dict[str, Any]) -> None:
        unet = models[""] if "" in models else next(iter(models.values()))
        for t in (999, 500, 20):  # latents of a 256x256 image, batch 2
            unet(rng.standard_normal((2, 4, 32, 32)).astype(np.float32), t,
                 rng.standard_normal((2, 77, 768)).astype(np.float32))

    def cal_vae(models: dict[str, Any]) -> None:
        vae = models[""] if "" in models else next(iter(models.values()))
        for _ in range(2):
            vae.decode(rng.standard_normal((1, 4, 32, 32)).astype(np.float32))

    def cal_te(models: dict[str, Any]) -> None:
        te = models[""] if "" in models else next(iter(models.values()))
        te(rng.integers(0, 49408, (2, 77)).astype(np.int64))

    for comp, cal in (("unet", cal_unet), ("vae", cal_vae), ("text_encoder", cal_te)):
        for weights in ("fp16", "int8"):
            if comp == "text_encoder" and weights == "fp16":
                continue
            dst = qcache / f"{comp}_{weights}"
            if (dst / "config.json").is_file():
                q = json.loads((dst / "config.json").read_text()).get("quantization", {})
                if weights != "int8" or q.get("keep_fp32_patterns") == list(DEFAULT_KEEP_FP32):
                    continue  # converted with today's defaults
            print(f"converting {comp} to {weights} ...", flush=True)
            convert(cache / comp, dst, weights=weights,
                    calibrate=cal if weights == "int8" else None, overwrite=True)


def _peak_rss_mb() -> float:
    """Peak resident set of this process: VmHWM (the high-water mark of this program's memory;
    ru_maxrss also carries the parent's peak over fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(variant: str, comp: str, size: int, cache: Path, qcache: Path) -> tuple[Any, Path]:
    """The model of a variant and the function running one call on random inputs."""
    import numpy as np

    from snapfusion.components import AutoencoderKL, UNet

    folder_name = "unet" if comp == "unet" else "vae"
    if variant == "fp32":
        folder = cache / folder_name
    else:
        folder = qcache / f"{folder_name}_{'fp16' if variant == 'fp16' else 'int8'}"
    # the int8 back end is chosen when the layers are created
    os.environ["SNAPFUSION_INT8"] = {"int8_xnnpack": "xnnpack", "int8_vnni": "vnni"}.get(variant,
                                                                                      "auto")
    if variant == "int8_vnni":  # as on a CPU with AVX512-VNNI but no AMX: float32 attention too
        os.environ["SNAPFUSION_ATTENTION_ISA"] = "avx512"
    rng = np.random.default_rng(0)
    lat = size // 8
    if comp in ("pipeline", "pipeline_resident"):
        # a whole generation: text encoder, 2 UNet steps with CFG, decoder. "pipeline": one
        # model in memory at a time, as Pipeline.from_pretrained(..., low_memory=True) (each
        # is loaded and checked, unloaded, and loaded again for its stage only);
        # "pipeline_resident": the three models stay loaded and each stage frees its
        # activations when it ends (Pipeline.enable_low_memory())
        from snapfusion.components import TextEncoder

        resident = comp == "pipeline_resident"
        q = variant.split("_")[0]
        folders = [qcache / "text_encoder_int8" if q == "int8" else cache / "text_encoder",
                   qcache / f"unet_{q}" if q != "fp32" else cache / "unet",
                   qcache / f"vae_{q}" if q != "fp32" else cache / "vae"]
        models = []
        for make, f in ((TextEncoder, folders[0]), (UNet, folders[1]), (AutoencoderKL, folders[2])):
            m = make(f, encoder=False, strict=False) if make is AutoencoderKL else make(f)
            if not resident:
                m.unload()
            models.append(m)
        te, unet, vae = models
        ids = np.full((2, 77), 49407, np.int64)
        ids[:, 0] = 49406

        def done(m: Any) -> None:
            if resident:
                m.release_memory()
            else:
                m.unload()

        def generation() -> None:
            ctx = te(ids)
            done(te)
            x = rng.standard_normal((1, 4, lat, lat)).astype(np.float32)
            for t in (999, 500):
                e = unet(np.concatenate([x, x]), t, ctx)
                x = x - 0.1 * (e[1:] + 7.5 * (e[1:] - e[:1]))
            done(unet)
            vae.decode(x)
            done(vae)
        return generation, folders
    if comp == "unet":
        model = UNet(folder)
        x = rng.standard_normal((2, 4, lat, lat)).astype(np.float32)
        ctx = rng.standard_normal((2, 77, 768)).astype(np.float32)
        return (lambda: model(x, 500, ctx)), folder
    model = AutoencoderKL(folder, encoder=False, strict=False)
    z = rng.standard_normal((1, 4, lat, lat)).astype(np.float32)
    return (lambda: model.decode(z)), folder


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Timing: fp32 and one other variant in this process, called in alternation (so that the
    load of a shared machine hits both alike). Memory (--rss): one variant alone, loaded and
    run once; its peak resident set."""
    from _common import time_interleaved

    from snapfusion import _engine

    _engine.set_num_threads(args.threads)
    cache, qcache = Path(args.cache), Path(args.qcache)
    if args.rss:
        rss0 = _peak_rss_mb()
        fn, folder = _build(args.variant, args.component, args.size, cache, qcache)
        rss_load = _current_rss_mb()
        fn()
        return {"rss_mb": _peak_rss_mb(), "rss_before_mb": rss0, "rss_after_load_mb": rss_load,
                "size_mb": _folder_size(folder)}
    fns = {}
    for variant in dict.fromkeys(("fp32", args.variant)):
        fns[variant], _ = _build(variant, args.component, args.size, cache, qcache)
    variant_fn = fns[args.variant]
    _engine.reset_mac_counter()
    variant_fn()
    macs = _engine.mac_counter()
    times = time_interleaved(fns, args.repeat, warmup=1, gap_s=0.2)
    return {"s": median(times[args.variant]), "fp32_s": median(times["fp32"]),
            "times": times[args.variant], "fp32_times": times["fp32"], "macs": macs}


def _current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def run_worker(variant: str, comp: str, size: int, args: argparse.Namespace,
               rss: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--component", comp,
           "--size", str(size), "--threads", str(args.threads), "--repeat", str(args.repeat),
           "--cache", str(args.cache), "--qcache", str(args.qcache)] + (["--rss"] if rss else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} {comp} {size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def models(args: argparse.Namespace, peaks: dict[str, float]) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_pipeline import prepare

    cache, qcache = Path(args.cache), Path(args.qcache)
    cache.mkdir(parents=True, exist_ok=True)
    prepare(cache)
    prepare_variants(cache, qcache)
    results: dict[str, Any] = {}
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'model':24s} {'s':>8s} {'fp32 s':>8s} {'speedup':>8s} {'GOP/s':>8s} {'%VNNI':>6s} "
          f"{'%AMX':>6s} {'RSS MB':>8s} {'load MB':>8s} {'disk MB':>8s}")
    for comp in ("unet", "decoder"):
        for size in sizes:
            for variant in VARIANTS:
                r = run_worker(variant, comp, size, args)
                m = run_worker(variant, comp, size, args, rss=True)
                gops = 2 * r["macs"] / r["s"] / 1e9
                row = {"s": r["s"], "fp32_s": r["fp32_s"], "speedup": r["fp32_s"] / r["s"],
                       "rss_mb": m["rss_mb"], "rss_after_load_mb": m["rss_after_load_mb"],
                       "size_mb": m["size_mb"], "gops": gops, "times": r["times"],
                       "fp32_times": r["fp32_times"]}
                for kind, peak in peaks.items():
                    row[f"{kind}_fraction"] = gops / peak
                name = f"{comp}_{size}_{variant}"
                results[name] = row
                print(f"{name:24s} {r['s']:8.3f} {r['fp32_s']:8.3f} {row['speedup']:8.2f} "
                      f"{gops:8.1f} {100 * row.get('vnni_fraction', float('nan')):5.1f}% "
                      f"{100 * row.get('amx_fraction', float('nan')):5.1f}% {m['rss_mb']:8.0f} {m['rss_after_load_mb']:8.0f} {m['size_mb']:8.0f}",
                      flush=True)
    # peak memory of a whole generation (text encoder, UNet with CFG, decoder), each variant in
    # a process of its own: one model in memory at a time (low_memory=True), and all resident
    for size in sizes:
        for variant, comp in (("fp32", "pipeline_resident"), ("int8_own", "pipeline_resident"),
                              ("fp32", "pipeline"), ("int8_own", "pipeline")):
            m = run_worker(variant, comp, size, args, rss=True)
            name = f"pipeline_{size}_{variant}" + ("_resident" if comp != "pipeline" else "")
            results[name] = {"rss_mb": m["rss_mb"], "rss_after_load_mb": m["rss_after_load_mb"],
                             "size_mb": m["size_mb"]}
            print(f"{name:24s} {'':8s} {'':8s} {'':8s} {'':8s} {'':6s} {'':6s} {m['rss_mb']:8.0f} "
                  f"{m['rss_after_load_mb']:8.0f} {m['size_mb']:8.0f}", flush=True)
    return results


# ------------------------------------------------------------------------------- accuracy


def accuracy_worker(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from snapfusion import _engine
    from snapfusion.pipeline import Pipeline

    _engine.set_num_threads(args.threads)
    ref = Pipeline.from_pretrained(Path(args.golden) / "sd_tiny")
    pipe = Pipeline.from_pretrained(args.model)
    prompts = ["a photo of an astronaut riding a horse on the moon", "a red circle",
               "blurry, low quality", "a watercolor of a harbor"]
    psnrs = []
    for p in (ref, pipe):
        p.set_progress_bar_config(disable=True)
    for i, prompt in enumerate(prompts):
        a = ref(prompt, num_inference_steps=8, seed=i, height=64, width=64,
                output_type="np").images
        b = pipe(prompt, num_inference_steps=8, seed=i, height=64, width=64,
                 output_type="np").images
        mse = float(np.mean((a - b) ** 2))
        psnrs.append(10 * np.log10(1.0 / mse) if mse > 0 else float("inf"))
    return {"psnr": psnrs}


def default_accuracy_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Images of the held-out prompts from one variant of the default model, saved to ``args.out``."""
    import numpy as np

    from snapfusion import _engine
    from snapfusion.data import eval_prompts
    from snapfusion.pipeline import Pipeline

    _engine.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompts, _ = eval_prompts(args.accuracy_n, seed=77, split="heldout")
    t0 = time.perf_counter()
    images = []
    for i in range(0, len(prompts), 16):
        out = pipe(prompts[i:i + 16], seed=i, output_type="np").images
        images.append((np.asarray(out) * 255).round().clip(0, 255).astype(np.uint8))
    np.save(args.out, np.concatenate(images))
    return {"seconds": time.perf_counter() - t0}


def worst_image_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Where the int8 model's worst image (held-out prompt ``args.index``) departs from the
    float model's: the relative error of every UNet stage for identical inputs (the first
    step's), and of the two samplers' latents after every step."""
    import numpy as np

    from snapfusion import _engine
    from snapfusion.data import eval_prompts
    from snapfusion.pipeline import Pipeline

    _engine.set_num_threads(args.threads)
    ref, q = Pipeline.from_pretrained(args.model), Pipeline.from_pretrained(args.int8_model)
    prompts, _ = eval_prompts(args.accuracy_n, seed=77, split="heldout")
    i0 = args.index // 16 * 16  # the worker's batch of 16 (its seed is i0)
    batch, k = prompts[i0:i0 + 16], args.index - i0

    def rel(a: Any, b: Any) -> float:
        return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))

    lat: dict[str, list[Any]] = {"ref": [], "int8": []}
    for name, pipe in (("ref", ref), ("int8", q)):
        pipe.set_progress_bar_config(disable=True)
        pipe(batch, seed=i0, output_type="latent",
             callback_on_step_end=lambda i, t, x, name=name: lat[name].append(x[k].copy()))
    g = float(ref.recommended.get("guidance_scale", 7.5))
    ctx = ref.encode_prompt([batch[k]], None, g > 1.0)
    side = ref.default_size // ref.vae_scale_factor
    x0 = np.random.default_rng(0).standard_normal((1, ref.unet.in_channels, side, side))
    x0 = np.concatenate([x0, x0]).astype(np.float32) if g > 1.0 else x0.astype(np.float32)
    t = int(ref.scheduler.timesteps[0]) if len(ref.scheduler.timesteps) else 999
    yr, hr = ref.unet(x0, t, ctx, return_hooks=True)
    yq, hq = q.unet(x0, t, ctx, return_hooks=True)
    return {"index": args.index, "prompt": batch[k],
            "unet_stage_rel_error": {**{n: rel(hq[n], hr[n]) for n in hr}, "out": rel(yq, yr)},
            "latent_rel_error_per_step": [rel(a, b) for a, b in zip(lat["int8"], lat["ref"])]}


def default_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """bf16 and int8 copies of the default model against the shipped one (module docstring)."""
    import numpy as np

    from snapfusion.convert import convert
    from snapfusion.data import eval_prompts
    from snapfusion.pipeline import default_model_path

    try:
        model = default_model_path()
        from snapfusion.train.evaluate import default_world_evaluator

        ev = default_world_evaluator(n_prompts=args.accuracy_n, seed=77, split="heldout", ref_images=2048)
    except OSError as exc:
        print(f"accuracy on the default model: {exc}; skipped")
        return {}
    prompts = ev.prompts
    assert prompts == eval_prompts(args.accuracy_n, seed=77, split="heldout")[0]
    cal_prompts, _ = eval_prompts(32, seed=5, split="eval")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sf_quant_default_") as tmp:
        folders = {"fp16_shipped": model,
                   "bf16": convert(model, Path(tmp) / "bf16", weights="bf16", progress=False),
                   "int8": convert(model, Path(tmp) / "int8", weights="int8", calibrate=cal_prompts,
                                   progress=False)}
        images: dict[str, Any] = {}
        for variant, folder in (("fp16_shipped", folders["fp16_shipped"]), ("bf16", folders["bf16"]),
                                ("int8_own", folders["int8"]), ("int8_xnnpack", folders["int8"])):
            env = dict(os.environ)
            env["SNAPFUSION_INT8"] = "xnnpack" if variant == "int8_xnnpack" else "auto"
            path = Path(tmp) / f"{variant}.npy"
            cmd = [sys.executable, __file__, "--default-accuracy-worker", "--model", str(folder),
                   "--out", str(path), "--accuracy-n", str(args.accuracy_n), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"default-model accuracy {variant} failed:\n{out.stderr[-3000:]}")
            images[variant] = np.load(path)
        ref = images["fp16_shipped"].astype(np.float64) / 255.0
        print(f"accuracy on the default model ({len(prompts)} held-out prompts, its recommended steps and "
              f"guidance; PSNR of each image vs the shipped fp16-stored model computed in fp32)")
        print(f"  {'variant':14s} {'PSNR mean':>10s} {'PSNR min':>9s} {'CLIP':>7s} {'FID':>8s} {'accuracy':>9s}")
        for variant, imgs in images.items():
            mse = ((imgs.astype(np.float64) / 255.0 - ref) ** 2).reshape(len(imgs), -1).mean(1)
            psnr = np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-30)), np.inf)
            m = ev.evaluate(imgs, prompts, accuracy=True)
            finite = psnr[np.isfinite(psnr)]
            row = {"psnr_mean_db": float(finite.mean()) if finite.size else float("inf"),
                   "psnr_min_db": float(psnr.min()), "identical_images": int((~np.isfinite(psnr)).sum()),
                   "clip_score": m["clip_score"], "fid": m["fid"], "accuracy": m["accuracy"],
                   "size_mb": _folder_size(folders["int8" if variant.startswith("int8") else variant])}
            results[f"accuracy_default_{variant}"] = row
            print(f"  {variant:14s} {row['psnr_mean_db']:10.1f} {row['psnr_min_db']:9.1f} {row['clip_score']:7.2f} "
                  f"{row['fid']:8.4f} {100 * row['accuracy']:8.1f}%  ({row['size_mb']:.1f} MB)")
            if variant == "int8_own":
                worst = int(np.argmin(psnr))
        # where the worst int8 image departs: per UNet stage for identical inputs, per step
        cmd = [sys.executable, __file__, "--worst-image-worker", "--model", str(model),
               "--int8-model", str(folders["int8"]), "--index", str(worst),
               "--accuracy-n", str(args.accuracy_n), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"worst-image analysis failed:\n{out.stderr[-3000:]}")
        w = json.loads(out.stdout.strip().splitlines()[-1])
        w["psnr_db"] = results["accuracy_default_int8_own"]["psnr_min_db"]
        results["accuracy_default_int8_own_worst"] = w
        print(f"  worst int8 image: #{w['index']} {w['prompt']!r}, {w['psnr_db']:.1f} dB; relative "
              "error of each UNet stage for identical inputs (first step):")
        print("    " + ", ".join(f"{n} {e:.1e}" for n, e in w["unet_stage_rel_error"].items()))
        print("    latents after each step: " +
              ", ".join(f"{e:.1e}" for e in w["latent_rel_error_per_step"]))
    return results


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from snapfusion.convert import convert

    golden = Path(args.golden)
    if not (golden / "sd_tiny").is_dir():
        print(f"accuracy: no golden sd_tiny under {golden}; skipped")
        return {}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sf_quant_acc_") as tmp:
        fp16 = convert(golden / "sd_tiny", Path(tmp) / "fp16", weights="fp16", progress=False)
        int8 = convert(golden / "sd_tiny", Path(tmp) / "int8", weights="int8",
                       calibration_size=(64, 64), progress=False)
        print("accuracy on the golden random-weight sd_tiny (8 steps, 64x64, CFG 7.5; PSNR of "
              "the image vs fp32)")
        for variant, model in (("fp16", fp16), ("int8_own", int8), ("int8_xnnpack", int8)):
            env = dict(os.environ)
            env["SNAPFUSION_INT8"] = "xnnpack" if variant == "int8_xnnpack" else "auto"
            cmd = [sys.executable, __file__, "--accuracy-worker", "--model", str(model),
                   "--golden", str(golden), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO,
                                 check=False)
            if out.returncode != 0:
                raise RuntimeError(f"accuracy {variant} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[f"accuracy_sd_tiny_{variant}"] = {"psnr_db": r["psnr"],
                                                      "psnr_min_db": min(r["psnr"])}
            print(f"  {variant:14s} PSNR dB: " + ", ".join(f"{p:.1f}" for p in r["psnr"]))
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--parts", default="kernels,models,accuracy")
    p.add_argument("--cache", default="/tmp/snapfusion-bench-sd15")
    p.add_argument("--qcache", default=None, help="converted copies (default: CACHE-quant)")
    p.add_argument("--golden", default=str(REPO.parent / "shared" / "golden"))
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--accuracy-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--default-accuracy-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worst-image-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--int8-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--accuracy-n", type=int, default=256, help="held-out prompts of the default-model accuracy")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--component", default="unet", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rss", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.qcache is None:
        args.qcache = args.cache.rstrip("/") + "-quant"
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.accuracy_worker:
        print(json.dumps(accuracy_worker(args)))
        return 0
    if args.default_accuracy_worker:
        print(json.dumps(default_accuracy_worker(args)))
        return 0
    if args.worst_image_worker:
        print(json.dumps(worst_image_worker(args)))
        return 0
    parts = set(args.parts.split(","))
    fma_peak, method = measure_peak_gflops(args.threads)
    peaks = {kind: IntPeak(args.threads, kind) for kind in ("vnni", "amx")}
    peaks = {kind: peak for kind, peak in peaks.items() if peak.available}
    for _ in range(3):
        for peak in peaks.values():
            peak.trial(0.4)
    print(f"threads {args.threads}; fp32 FMA peak {fma_peak:.0f} GFLOP/s ({method}); int8 peaks "
          + ", ".join(f"{k.upper()} {p.best:.0f} GOP/s" for k, p in peaks.items())
          + " (best of the trials so far)")
    results: dict[str, Any] = {}
    if "kernels" in parts:
        results.update(kernels(args.threads, args.repeat, peaks))
    if "models" in parts:
        results.update(models(args, {k: p.best for k, p in peaks.items() if p.best}))
    if "accuracy" in parts:
        results.update(default_accuracy(args))
        results.update(accuracy(args))
    if args.json:
        info = machine_info(args.threads, fma_peak, method)
        for kind, peak in peaks.items():
            info[f"{kind}_peak_gops"] = peak.best or None
        Path(args.json).write_text(json.dumps({**results, "_machine": info}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
