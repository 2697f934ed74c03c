"""Shared helpers of the benchmarks: timing, the machine's FMA peak, machine info, JSON output.

Timing: :func:`time_interleaved` runs the compared functions in alternation (A, B, A, B, ...)
so that a burst of load from other processes on a shared machine hits both sides alike, with a
pause after every call: thread pools keep their workers spinning for a while after an operator
(pthreadpool up to 10^6 pause instructions, tens of milliseconds on recent Intel cores; OpenMP
with OMP_WAIT_POLICY=ACTIVE), and without the pause one side's spinning workers would take
cores from the other side's next call.

Peak: :func:`measure_peak_gflops` compiles a small C program on the fly (``cc -O3
-march=native``) that runs independent fused multiply-add chains (AVX-512, else AVX2/FMA,
else scalar) on N threads and reports the best of a few trials in GFLOP/s (2 FLOP per lane
per FMA). Without a C compiler it falls back to a NumPy float32 matrix product, labelled
``numpy-estimate`` (a lower bound of the peak).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

_PEAK_SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#define LANES 16
typedef __m512 vec;
#define VSET(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
#define ISA "avx512f"
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LANES 8
typedef __m256 vec;
#define VSET(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
static float VSUM(__m256 v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0;
                              for (int i = 0; i < 8; i++) s += t[i]; return s; }
#define ISA "avx2-fma"
#else
#define LANES 1
typedef float vec;
#define VSET(x) (x)
#define VFMA(a, b, c) __builtin_fmaf(a, b, c)
#define VSUM(v) (v)
#define ISA "scalar"
#endif
#define CHAINS 16 /* more independent chains than FMA latency x ports */
static long iters;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
static void *run(void *arg) {
    vec a[CHAINS], b = VSET(0.999999f), c = VSET(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = VSET((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < CHAINS; i++) a[i] = VFMA(a[i], b, c);
    vec s = a[0];
    for (int i = 1; i < CHAINS; i++) s = s + a[i];
    *(float *)arg = VSUM(s);
    return NULL;
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    iters = atol(argv[2]);
    pthread_t th[1024];
    float out[1024];
    if (n < 1 || n > 1024) return 2;
    double t0 = now();
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, run, &out[i]);
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    double t = now() - t0;
    printf("%s %.3f %g\n", ISA, (double)n * iters * CHAINS * LANES * 2.0 / t / 1e9, out[0]);
    return 0;
}
"""


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(values)


def time_interleaved(fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 2,
                     gap_s: float = 0.1) -> dict[str, list[float]]:
    """Time several functions in alternation.

    Args:
        fns: name -> function of no argument (its result is discarded).
        repeat: timed calls of each function.
        warmup: untimed calls of each function first (allocations, packing, thread start).
        gap_s: pause after every call, so that the workers of one side's thread pool are
            asleep when the other side runs (0: none).

    Returns:
        name -> the list of ``repeat`` wall times in seconds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            time.sleep(gap_s)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if gap_s > 0:
                time.sleep(gap_s)
    return times


def measure_peak_gflops(threads: int, seconds: float = 0.4, trials: int = 3) -> tuple[float, str]:
    """The float32 FMA peak of this machine on ``threads`` threads.

    Args:
        threads: threads running FMA chains at once.
        seconds: rough duration of one trial.
        trials: trials; the best one is reported (other load only ever lowers it).

    Returns:
        (GFLOP/s, method) where method names the instruction set measured ("avx512f",
        "avx2-fma", "scalar") or "numpy-estimate" when no C compiler was found.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc:
        with tempfile.TemporaryDirectory(prefix="sf_peak_") as tmp:
            src, exe = Path(tmp, "peak.c"), Path(tmp, "peak")
            src.write_text(_PEAK_SOURCE)
            build = subprocess.run([cc, "-O3", "-march=native", "-pthread", str(src), "-o",
                                    str(exe)], capture_output=True, text=True, check=False)
            if build.returncode == 0:
                # calibrate: iterations of one chain group per second, from a short run
                iters = 2_000_000
                best, isa = 0.0, "?"
                for trial in range(trials + 1):
                    t0 = time.perf_counter()
                    out = subprocess.run([str(exe), str(threads), str(iters)],
                                         capture_output=True, text=True, check=True).stdout
                    dt = time.perf_counter() - t0
                    isa, gflops = out.split()[0], float(out.split()[1])
                    if trial == 0:  # calibration run
                        iters = max(iters, int(iters * seconds / max(dt, 1e-3)))
                        continue
                    best = max(best, gflops)
                return best, isa
    return _numpy_peak_estimate(threads), "numpy-estimate"


def _numpy_peak_estimate(threads: int) -> float:
    """A float32 matrix product through NumPy's BLAS (a lower bound of the FMA peak)."""
    import numpy as np

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        best = max(best, 2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, peak_gflops: float, peak_method: str) -> dict[str, Any]:
    """Description of the machine and the software versions, for JSON reports."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    try:
        import numpy

        versions["numpy"] = numpy.__version__
    except ImportError:
        pass
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    try:
        from snapfusion import _engine

        versions["engine"] = _engine.version()
    except ImportError:
        pass
    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "peak_gflops": round(peak_gflops, 1),
        "peak_method": peak_method,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": versions,
    }


def write_json(path: str | Path, results: dict[str, Any], machine: dict[str, Any]) -> None:
    """Write ``results`` plus a ``"_machine"`` entry to ``path`` (indented JSON)."""
    payload = dict(results)
    payload["_machine"] = machine
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
