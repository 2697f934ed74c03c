"""Throughput of the evaluation metrics on CPU.

Prints images/s through ``FIDInception.features`` (64x64 uint8 images, resized
to 299x299, 2048-d features) and image/caption pairs/s through
``CLIPScore.pair_scores`` on the tiny reference CLIP checkpoint.

Runs with 2 torch threads and ``OMP_WAIT_POLICY=PASSIVE`` (set before torch
is imported). The FID network uses the reference weights of the same
architecture (random values: the speed is that of the real network).

Usage::

    python benchmarks/bench_eval.py [--fid-images 64] [--clip-pairs 512] [--repeats 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import gzip  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _golden_eval_dir() -> Path:
    env = os.environ.get("SNAPFUSION_GOLDEN_EVAL")
    return Path(env) if env else REPO.parent / "shared" / "golden-eval"


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _report(name: str, n: int, times: list[float]) -> None:
    rates = [n / t for t in times]
    print(f"{name}: {max(rates):8.2f} /s best, {statistics.median(rates):8.2f} /s median "
          f"({n} per run, {len(times)} runs)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fid-images", type=int, default=64)
    parser.add_argument("--fid-batch", type=int, default=32)
    parser.add_argument("--clip-pairs", type=int, default=512)
    parser.add_argument("--clip-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from snapfusion.eval import CLIPScore, FIDInception

    golden = _golden_eval_dir()
    if not golden.is_dir():
        sys.exit(f"reference data not found at {golden} (set SNAPFUSION_GOLDEN_EVAL)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "fid.safetensors"
        with gzip.open(golden / "fid_inception" / "model.safetensors.gz", "rb") as fin, \
                open(weights, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 24)
        model = FIDInception.from_pretrained(weights)
    images = rng.integers(0, 256, (args.fid_images, 64, 64, 3), dtype=np.uint8)
    model.features(images[:2], progress=False)  # warm-up
    _report("FIDInception 64x64 -> 2048-d features, images",
            args.fid_images,
            _timed(lambda: model.features(images, batch_size=args.fid_batch, progress=False),
                   args.repeats))

    clip = CLIPScore.from_pretrained(golden / "clip_tiny")
    words = ["a", "photo", "of", "cat", "dog", "red", "cube", "castle", "moon", "horse"]
    captions = [" ".join(rng.choice(words, size=int(rng.integers(3, 15)))) for _ in range(args.clip_pairs)]
    clip_images = rng.integers(0, 256, (args.clip_pairs, 3, 64, 64), dtype=np.uint8)
    clip.pair_scores(clip_images[:2], captions[:2])  # warm-up
    _report("CLIPScore tiny CLIP (48x48 crop of 64x64), pairs",
            args.clip_pairs,
            _timed(lambda: clip.pair_scores(clip_images, captions, batch_size=args.clip_batch,
                                            progress=False), args.repeats))
    t_pre = _timed(lambda: clip.preprocess_images(clip_images), 1)
    _report("  of which CLIP image preprocessing only (Pillow resize + crop + normalize)",
            args.clip_pairs, t_pre)


if __name__ == "__main__":
    main()
