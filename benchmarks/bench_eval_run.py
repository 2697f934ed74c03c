"""Evaluation throughput and the cost of a student-vs-teacher run on the tiny model.

Prints:

1. images/s through ``FIDInception.features`` (uint8 images of the run's size, resized to
   299x299, 2048-d features; the reference weights file, random values, real network) and
   image/caption pairs/s through ``CLIPScore.pair_scores`` (the tiny reference CLIP: a real
   CLIP ViT-L/14 is far slower);
2. the seconds of one Fréchet distance at 2048 dimensions (``scipy.linalg.sqrtm``; one per
   scored set, independent of the number of images);
3. the wall time of ``snapfusion eval`` (:func:`snapfusion.eval.report.run_evaluation`) with
   the golden ``sd_tiny`` as both student and teacher, measured at ``--n`` images per set,
   and the time of a ``--target``-image run (default 1,000) **extrapolated** from the
   measured parts: per-image generation time of each model, FID and CLIP throughput (linear
   in the images) plus one Fréchet distance per set and the model loading (constant). Pass
   ``--n 1000`` to measure the full run instead (hours on a small machine).

Usage::

    python benchmarks/bench_eval_run.py [--n 4] [--target 1000] [--threads 1]
        [--steps-student 8] [--steps-teacher 50] [--guidance 1.5,3,4.5,6,7.5] [--size 64x64]
        [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _shared(env: str, name: str) -> Path:
    value = os.environ.get(env)
    return Path(value) if value else REPO.parent / "shared" / name


def _best_rate(fn, n: int, repeats: int) -> tuple[float, float]:
    """(best, median) items per second over ``repeats`` timed calls after one warm-up."""
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="images per set in the measured run")
    parser.add_argument("--target", type=int, default=1000, help="images per set to estimate")
    parser.add_argument("--threads", type=int, default=1, help="engine and torch threads")
    parser.add_argument("--steps-student", type=int, default=8)
    parser.add_argument("--steps-teacher", type=int, default=50)
    parser.add_argument("--guidance", default="1.5,3,4.5,6,7.5")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--fid-images", type=int, default=32)
    parser.add_argument("--clip-pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()

    import torch

    from snapfusion.data import eval_prompts
    from snapfusion.eval import CLIPScore, FIDInception, activation_statistics, frechet_distance
    from snapfusion.eval.report import EvalSettings, parse_guidance, run_evaluation

    torch.set_num_threads(args.threads)
    golden, golden_eval = _shared("SNAPFUSION_GOLDEN", "golden"), _shared(
        "SNAPFUSION_GOLDEN_EVAL", "golden-eval")
    model = golden / "sd_tiny"
    fid_weights = golden_eval / "fid_inception" / "model.safetensors.gz"
    clip_dir = golden_eval / "clip_tiny"
    for p in (model, fid_weights, clip_dir):
        if not p.exists():
            print(f"missing reference data: {p} (set SNAPFUSION_GOLDEN / SNAPFUSION_GOLDEN_EVAL)")
            return 1
    width, height = (int(v) for v in args.size.lower().split("x"))
    guidance = parse_guidance(args.guidance)
    sets = 2 * len(guidance)
    results: dict[str, object] = {"threads": args.threads, "size": [width, height],
                                  "guidance": guidance, "steps_student": args.steps_student,
                                  "steps_teacher": args.steps_teacher}
    print(f"threads {args.threads}, images {width}x{height}, {len(guidance)} guidance scales, "
          f"steps {args.steps_student} (student) / {args.steps_teacher} (teacher)", flush=True)

    # ------------------------------------------------------------ metric throughput
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(args.fid_images, args.clip_pairs), height, width, 3),
                          dtype=np.uint8)
    fid_model = FIDInception.from_pretrained(fid_weights)
    fid_best, fid_med = _best_rate(
        lambda: fid_model.features(images[:args.fid_images], dims=2048, batch_size=32,
                                   progress=False), args.fid_images, args.repeats)
    print(f"FIDInception features (2048-d): {fid_best:7.2f} img/s best, {fid_med:7.2f} median",
          flush=True)
    clip = CLIPScore.from_pretrained(clip_dir)
    captions, _ = eval_prompts(args.clip_pairs, seed=0)
    clip_best, clip_med = _best_rate(
        lambda: clip.pair_scores(list(images[:args.clip_pairs]), captions, layout="HWC",
                                 progress=False), args.clip_pairs, args.repeats)
    print(f"CLIP score (tiny CLIP):         {clip_best:7.1f} pairs/s best, {clip_med:7.1f} median",
          flush=True)
    feats = rng.standard_normal((64, 2048))
    mu1, s1 = activation_statistics(feats)
    mu2, s2 = activation_statistics(feats + 0.1 * rng.standard_normal(feats.shape))
    t0 = time.perf_counter()
    frechet_distance(mu1, s1, mu2, s2)
    t_frechet = time.perf_counter() - t0
    print(f"Frechet distance at 2048-d:     {t_frechet:7.2f} s per set", flush=True)
    results.update(fid_img_per_s=fid_best, fid_img_per_s_median=fid_med, clip_pairs_per_s=clip_best,
                   clip_pairs_per_s_median=clip_med, frechet_2048_s=t_frechet)

    # ------------------------------------------------------------ a measured run
    with tempfile.TemporaryDirectory(prefix="sf_bench_eval_") as tmp:
        prompts, _ = eval_prompts(args.n, seed=0)
        pfile = Path(tmp) / "prompts.txt"
        pfile.write_text("\n".join(prompts) + "\n")
        settings = EvalSettings(student=model, teacher=model, prompts=pfile, n=args.n,
                                steps_student=args.steps_student,
                                steps_teacher=args.steps_teacher, guidance=guidance,
                                size=(width, height), fid_weights=fid_weights, fid_dims=2048,
                                clip_model=clip_dir, output=Path(tmp) / "report",
                                threads=args.threads, progress=True)
        t0 = time.perf_counter()
        report = run_evaluation(settings)
        wall = time.perf_counter() - t0
    timing = report["timing"]
    lat = report["latency"]
    per_image = {m: lat[m]["total_ms"] / 1e3 for m in ("student", "teacher")}
    print(f"\nmeasured run: {args.n} images per set, {sets} sets "
          f"({sets * args.n} images): wall {wall:.1f} s", flush=True)
    print(f"  generate {timing['generate_s']:.1f} s, FID {timing['fid_s']:.1f} s, CLIP "
          f"{timing['clip_s']:.2f} s, attribute check {timing['accuracy_s']:.2f} s, metric "
          f"models {timing['load_metrics_s']:.1f} s")
    for m in ("student", "teacher"):
        print(f"  {m}: {per_image[m] * 1e3:.1f} ms per image (text encoder "
              f"{lat[m]['text_encoder_ms']:.2f} ms, UNet {lat[m]['unet_steps']} x "
              f"{lat[m]['unet_step_ms']:.2f} ms, decoder {lat[m]['decoder_ms']:.2f} ms)")

    # ------------------------------------------------------------ extrapolation
    def estimate(n: int) -> dict[str, float]:
        images_per_model = n * len(guidance)
        gen = images_per_model * (per_image["student"] + per_image["teacher"])
        fid_t = (sets * n) / fid_best + (sets - 1) * t_frechet
        clip_t = (sets * n) / clip_best
        acc_t = timing["accuracy_s"] / max(1, args.n) * n
        fixed = timing["load_metrics_s"] + 3.0  # model loading, plots, report
        return {"generate_s": gen, "fid_s": fid_t, "clip_s": clip_t, "accuracy_s": acc_t,
                "fixed_s": fixed, "total_s": gen + fid_t + clip_t + acc_t + fixed}

    check = estimate(args.n)
    target = estimate(args.target)
    print(f"\nmodel of the run time at n={args.n}: {check['total_s']:.1f} s "
          f"(measured {wall:.1f} s)")
    label = "measured" if args.target == args.n else "EXTRAPOLATED from the parts above"
    print(f"{args.target}-image evaluation ({args.target} prompts x {len(guidance)} guidance "
          f"scales x 2 models = {sets * args.target} images), {label}:")
    for k, v in target.items():
        print(f"  {k:11s} {v:10.0f} s  ({v / 3600:.2f} h)")
    results.update(measured_n=args.n, measured_wall_s=wall, measured_timing=timing,
                   per_image_s=per_image, model_at_measured_n=check,
                   target_n=args.target, target_estimate=target, target_is_extrapolated=
                   args.target != args.n)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
