"""Evaluation report of a trained world run: teacher vs distilled student, on the C engine.

    python -m snapfusion.train report --run runs/default --out benchmarks/results/world_report

For ``n`` held-out prompts (colour-shape pairs never seen in training) and every guidance
scale, three models generate one image per prompt with the same seeds:

* ``teacher_50``: the full teacher UNet, 50 DDIM steps, the original decoder;
* ``student_8``: the shipped model (evolved + distilled UNet, small decoder), 8 steps;
* ``teacher_8``: the teacher at 8 steps (the baseline distillation must beat).

Per model and guidance: world-FID (Fréchet distance of the world CLIP's image embeddings
against drawn held-out scenes), world CLIP score, attribute accuracy (all prompts and the
single-object ones), UNet MACs per image (counted by the engine) and the engine latency per
image (batch 1; the six model and guidance cases timed in turns on an idle engine, so that
drifting machine speed slows all alike). Generated images are cached per (model, guidance)
in ``OUT/images/`` so an interrupted run resumes. Writes
``OUT/report.json``, ``OUT/fid_vs_clip.png`` (the paper's Fig. 4 on the world),
``OUT/accuracy.png`` and ``OUT/samples.png`` (fixed prompts and seeds, one row per model).

A new student can be reported against an earlier report of the same teacher without the
teacher's weights (``--baseline OLD/report.json``): the teacher rows (and the decoder PSNR,
which needs the teacher's decoder) are carried from it, marked as such in the JSON and the
table, after checking that prompts, seed, guidance scales and reference images agree. The
teacher's latency and MACs are still measured in this process, on an *architecture twin*: the
teacher's UNet and autoencoder configs (the student's without its pruning and small-decoder
keys) with random weights; the engine's time and MAC count depend on shapes, not on weight
values.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: Models of the report: name -> (pipeline folder key, steps).
MODELS = {"teacher_50": ("teacher", 50), "student_8": ("student", 8), "teacher_8": ("teacher", 8)}
#: The models whose rows a report with a baseline carries from it.
CARRIED = ("teacher_50", "teacher_8")
DEFAULT_GUIDANCE = (1.0, 2.0, 3.0, 5.0, 7.0)


def teacher_pipeline(run: Path, out: Path) -> Path:
    """Pipeline folder of the run's teacher (full UNet, original decoder), built once."""
    from .export import export_pipeline

    folder = out / "teacher_pipeline"
    if (folder / "model_index.json").is_file():
        return folder
    return export_pipeline(folder, run / "tokenizer" / "tokenizer", run / "clip" / "text_encoder",
                           run / "teacher" / "unet", run / "vae" / "vae",
                           info={"num_inference_steps": 50, "note": "teacher of the report"})


def architecture_twin(student: Path, out: Path) -> Path:
    """Pipeline folder of the teacher's architecture with random weights (timing and MACs only).

    The teacher's UNet config is the student's without ``elastic_blocks`` (evolution prunes
    blocks and changes nothing else); its autoencoder config is the student's without the
    ``decoder_*`` keys (decoder distillation changes only the decoder's channels and groups).
    """
    from snapfusion.nn import AutoencoderKL
    from snapfusion.nn.serialization import read_config

    from .export import export_pipeline
    from .latency import _save_random_unet

    folder = out / "teacher_twin"
    if (folder / "model_index.json").is_file():
        return folder
    parts = out / "teacher_twin_parts"
    unet_cfg = {k: v for k, v in read_config(student / "unet").items() if k != "elastic_blocks"}
    _save_random_unet(unet_cfg, parts / "unet", None)  # seeds torch
    vae_cfg = {k: v for k, v in read_config(student / "vae").items() if not k.startswith("decoder_")}
    AutoencoderKL(vae_cfg).save_pretrained(parts / "vae")
    return export_pipeline(folder, student / "tokenizer", student / "text_encoder", parts / "unet", parts / "vae",
                           info={"num_inference_steps": 50, "note": "teacher architecture, random weights"})


def load_baseline(path: str | os.PathLike[str], n: int, seed: int, gnames: Sequence[str],
                  ref_images: int) -> dict[str, Any]:
    """An earlier report whose teacher rows a new report may carry.

    Raises:
        ValueError: it was made with other prompts, seed, guidance scales or reference
            images, or lacks a teacher's rows or the decoder PSNR.
    """
    try:
        base = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"baseline {path}: not a readable report ({e})") from e
    if not isinstance(base, dict):
        raise ValueError(f"baseline {path}: not a report")
    want = {"n_prompts": n, "seed": seed, "split": "heldout", "guidance": list(gnames)}
    for key, value in want.items():
        if base.get(key) != value:
            raise ValueError(f"baseline {path}: {key} is {base.get(key)!r}, this report's is {value!r}")
    if base.get("ref_images", ref_images) != ref_images:  # older reports did not record it
        raise ValueError(f"baseline {path}: ref_images is {base['ref_images']}, this report's is {ref_images}")
    results = base.get("results")
    for name in CARRIED:
        rows = results.get(name) if isinstance(results, dict) else None
        if not isinstance(rows, dict) or sorted(rows) != sorted(gnames):
            raise ValueError(f"baseline {path}: no rows of {name} for guidance {list(gnames)}")
    if not isinstance(base.get("decoder_psnr_db"), dict):
        raise ValueError(f"baseline {path}: no decoder_psnr_db")
    return base


def _engine_info() -> dict[str, Any]:
    """What the timings depend on: the engine's version, its kernels and GEMM back end (own
    AVX-512 GEMM or XNNPACK), and the CPU's features."""
    from snapfusion import _engine

    return {**_engine.version(), "gemm": _engine.gemm_backend(),
            "cpu_features": sorted(k for k, v in _engine.cpu_features().items() if v)}


def _row_line(name: str, gname: str, m: dict[str, Any], note: str = "") -> str:
    """One printed line of a model's metrics at one guidance scale."""
    return (f"{name:11s} g={gname:>3s}  FID {m['fid']:.4f}  CLIP {m['clip_score']:.2f}  "
            f"acc {m['accuracy']:.3f}  acc(1 obj) {m['accuracy_single']:.3f}{note}")


def generate(pipe: Any, prompts: Sequence[str], steps: int, guidance: float, seed: int, chunk: int,
             progress: bool, desc: str) -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` images: chunk ``i`` of prompts drawn with seed ``seed + i``."""
    from tqdm.auto import tqdm

    out = []
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for i in range(0, len(prompts), chunk):
        res = pipe(list(prompts[i:i + chunk]), num_inference_steps=steps, guidance_scale=guidance,
                   seed=seed + i // chunk, output_type="np")
        out.append((np.asarray(res.images) * 255.0).round().clip(0, 255).astype(np.uint8))
        bar.update(len(out[-1]))
    bar.close()
    return np.concatenate(out)


def _cached_images(path: Path, pipe: Any, prompts: Sequence[str], steps: int, guidance: float, seed: int,
                   chunk: int, progress: bool, desc: str) -> tuple[np.ndarray, float]:
    """The images of one (model, guidance) set and the seconds they took, generated once."""
    if path.is_file():
        with np.load(path) as f:
            images, secs = f["images"], float(f["seconds"])
        if len(images) == len(prompts):
            return images, secs
    t0 = time.perf_counter()
    images = generate(pipe, prompts, steps, guidance, seed, chunk, progress, desc)
    secs = time.perf_counter() - t0
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, images=images, seconds=secs)
    os.replace(tmp, path)
    return images, secs


def decoder_psnr(student: Any, teacher: Any, prompts: Sequence[str], seed: int,
                 chunk: int = 32) -> dict[str, float]:
    """PSNR (dB, uint8 images) of the student's small decoder against the teacher's decoder,
    both on the engine, on the final latents of each model (8 steps, guidance 4) for
    ``prompts``: the SnapFusion decoder target ("at PSNR >= 25 dB against it")."""
    from .data import psnr_uint8

    out = {}
    for name, pipe in (("student_latents", student), ("teacher_latents", teacher)):
        small, big = [], []
        for i in range(0, len(prompts), chunk):
            part = list(prompts[i:i + chunk])
            lat = pipe(part, num_inference_steps=8, guidance_scale=4.0,
                       seed=[seed + i + j for j in range(len(part))], output_type="latent").images
            small.append(student.decode_latents(lat))
            big.append(teacher.decode_latents(lat))
        to8 = lambda a: (np.concatenate(a) * 255).round().clip(0, 255).astype(np.uint8)  # noqa: E731
        out[name] = psnr_uint8(to8(small), to8(big))
    return out


def interleaved_latency(cases: dict[str, tuple[Any, int, float]], prompt: str,
                        repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of one image (batch 1) and its stage breakdown for every
    ``name -> (pipe, steps, guidance)``, timed in turns (one image of each case per round), so
    that a machine whose speed drifts slows every case alike and the ratios stay fair."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in cases}
    for r in range(repeats + 1):
        for name, (pipe, steps, guidance) in cases.items():
            res = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, seed=r, output_type="np")
            if r:  # the first round warms the arenas
                t = res.timings
                runs[name].append({"total": t["total"], "text_encoder": t["tokenize"] + t["text_encoder"],
                                   "unet": float(sum(t["unet"])), "decoder": t["decoder"]})
    out = {}
    for name, rs in runs.items():
        rs.sort(key=lambda d: d["total"])
        out[name] = rs[len(rs) // 2]
    return out


def unet_macs_per_image(pipe: Any, steps: int, guidance: float, text_len: int) -> float:
    """UNet multiply-accumulates per image: steps x (2 with guidance) x one batch-1 call."""
    from snapfusion import _engine

    f = pipe.vae_scale_factor
    x = np.zeros((1, pipe.unet.in_channels, pipe.default_size // f, pipe.default_size // f), np.float32)
    ctx = np.zeros((1, text_len, pipe.unet.cross_attention_dim), np.float32)
    _engine.reset_mac_counter()
    pipe.unet(x, 1, ctx)
    return float(_engine.mac_counter()) * steps * (2 if guidance > 1.0 else 1)


def single_object(scenes: Sequence[Any]) -> np.ndarray:
    """Mask of the prompts that describe one object."""
    return np.array([len(s.objects) == 1 for s in scenes], bool)


def plot_report(report: dict[str, Any], out: Path) -> None:
    """FID-vs-CLIP and accuracy-vs-guidance plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, rows in report["results"].items():
        gs = sorted(rows, key=float)
        ax.plot([rows[g]["clip_score"] for g in gs], [rows[g]["fid"] for g in gs], "o-", label=name)
        for g in gs:
            ax.annotate(g, (rows[g]["clip_score"], rows[g]["fid"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    ax.set_xlabel("world CLIP score (higher is better)")
    ax.set_ylabel("world-FID (lower is better)")
    ax.set_title(f"{report['n_prompts']} held-out prompts, guidance {', '.join(report['guidance'])}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fid_vs_clip.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, rows in report["results"].items():
        gs = sorted(rows, key=float)
        ax.plot([float(g) for g in gs], [100 * rows[g]["accuracy"] for g in gs], "o-", label=f"{name} (all)")
        ax.plot([float(g) for g in gs], [100 * rows[g]["accuracy_single"] for g in gs], "s--",
                label=f"{name} (one object)")
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("attribute accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png")
    plt.close(fig)


def run_report(run: str | os.PathLike[str], out: str | os.PathLike[str], n: int = 1000,
               guidance: Sequence[float] = DEFAULT_GUIDANCE, seed: int = 1234, threads: int | None = None,
               chunk: int = 16, latency_repeats: int = 3, progress: bool = True,
               ref_images: int = 2048, generate_only: Sequence[str] | None = None,
               baseline: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Generate, score and plot; returns the report (also written to ``out/report.json``).

    Args:
        run: folder of a ``scripts/train_default.py`` run (``model/``, ``teacher/``, ``clip/`` ...).
        out: report folder (reused to resume).
        n: held-out prompts.
        guidance: guidance scales.
        seed: prompt and noise seed.
        threads: engine threads.
        chunk: prompts per pipeline call.
        latency_repeats: timed single-image generations per (model, guidance > 1).
        ref_images: drawn held-out scenes behind the world-FID statistics.
        generate_only: only generate (and cache) the images of these models, e.g.
            ``["teacher_50", "teacher_8"]`` while the student is still training; returns ``{}``.
        baseline: an earlier ``report.json`` of the same teacher: its teacher rows and decoder
            PSNR are carried (the run then needs no ``teacher/`` or ``vae/``), the teacher's
            latency and MACs are measured on :func:`architecture_twin`.

    Raises:
        ValueError: bad settings, or a baseline made with other settings (:func:`load_baseline`).
    """
    import torch

    from snapfusion.data import accuracy as attr_accuracy
    from snapfusion.data import render_grid
    from snapfusion.pipeline import Pipeline
    from snapfusion.tokenizer import CLIPTokenizer

    from .clip import WorldCLIP
    from .evaluate import WorldEvaluator

    if n < 1:
        raise ValueError("n must be positive")
    if baseline is not None and generate_only is not None:
        raise ValueError("generate_only and baseline do not go together (a baseline's teacher is not generated)")
    run, out = Path(run), Path(out)
    gnames = [f"{g:g}" for g in guidance]
    base = None if baseline is None else load_baseline(baseline, n, seed, gnames, ref_images)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if generate_only is not None:
        unknown = sorted(set(generate_only) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {sorted(MODELS)}")
        from snapfusion.data import eval_prompts

        prompts = eval_prompts(n, seed=seed, split="heldout")[0]
        torch.set_num_threads(max(1, threads or 1))
        for name in generate_only:
            key, steps = MODELS[name]
            folder = teacher_pipeline(run, out) if key == "teacher" else run / "model"
            pipe = Pipeline.from_pretrained(folder, threads=threads)
            pipe.set_progress_bar_config(disable=True)
            for g in guidance:
                _cached_images(out / "images" / f"{name}_g{g:g}.npz", pipe, prompts, steps, g, seed, chunk,
                               progress, f"{name} g={g:g}")
        return {}
    carried = CARRIED if base is not None else ()
    folders = {"teacher": architecture_twin(run / "model", out) if carried else teacher_pipeline(run, out),
               "student": run / "model"}
    pipes = {k: Pipeline.from_pretrained(v, threads=threads) for k, v in folders.items()}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    tok = CLIPTokenizer.from_pretrained(run / "tokenizer" / "tokenizer")
    ev = WorldEvaluator(WorldCLIP.load(run / "clip"), tok, "cpu", n_prompts=n, seed=seed, split="heldout",
                        ref_images=ref_images, image_size=pipes["student"].default_size)
    prompts, single = ev.prompts, single_object(ev.scenes)
    text_len = int(tok.model_max_length)
    report: dict[str, Any] = {"run": str(run), "n_prompts": n, "n_single_object": int(single.sum()),
                              "split": "heldout", "seed": seed, "guidance": gnames, "threads": threads,
                              "ref_images": ref_images, "results": {}, "latency": {}, "unet_macs_per_image": {},
                              "seconds": {}, "engine": _engine_info()}
    if base is not None:
        report["baseline"] = {"report": str(baseline), "run": base.get("run"),
                              "carried": [*(f"results.{m}" for m in carried), "decoder_psnr_db"],
                              "teacher_timing": "architecture twin (teacher configs, random weights)"}
    torch.set_num_threads(max(1, threads or 1))
    for name, (key, steps) in MODELS.items():
        if name in carried:
            report["results"][name] = base["results"][name]
            if progress:
                for gname in gnames:
                    print(_row_line(name, gname, base["results"][name][gname], "  (carried)"), flush=True)
            continue
        rows: dict[str, Any] = {}
        for g, gname in zip(guidance, gnames):
            images, secs = _cached_images(out / "images" / f"{name}_g{gname}.npz", pipes[key], prompts, steps, g,
                                          seed, chunk, progress, f"{name} g={gname}")
            metrics = {"clip_score": ev.clip_score(images, prompts), "fid": ev.fid(images)}
            acc = attr_accuracy(images, prompts)
            metrics["accuracy"] = float(acc["overall"])
            metrics.update({f"acc_{k}": float(v) for k, v in acc.items() if k not in ("overall", "n")})
            metrics["accuracy_single"] = float(attr_accuracy(images[single], [p for p, s in zip(prompts, single)
                                                                              if s])["overall"])
            metrics["generation_seconds_per_image"] = secs / len(images)
            rows[gname] = metrics
            if progress:
                print(_row_line(name, gname, metrics), flush=True)
        report["results"][name] = rows
    cases = {f"{name}_{'cfg' if cfg_on else 'nocfg'}": (pipes[key], steps, 2.0 if cfg_on else 1.0)
             for name, (key, steps) in MODELS.items() for cfg_on in (False, True)}
    report["latency"] = interleaved_latency(cases, prompts[0], latency_repeats)
    for lat_key, (pipe, steps, g) in cases.items():
        report["unet_macs_per_image"][lat_key] = unet_macs_per_image(pipe, steps, g, text_len)
    t, s = report["latency"], report["unet_macs_per_image"]
    report["speedup_end_to_end_cfg"] = t["teacher_50_cfg"]["total"] / t["student_8_cfg"]["total"]
    report["unet_call_ratio"] = (t["student_8_cfg"]["unet"] / 8) / (t["teacher_50_cfg"]["unet"] / 50)
    report["decoder_speedup"] = t["teacher_50_cfg"]["decoder"] / max(1e-9, t["student_8_cfg"]["decoder"])
    report["mac_ratio_cfg"] = s["teacher_50_cfg"] / s["student_8_cfg"]
    report["decoder_psnr_db"] = (dict(base["decoder_psnr_db"]) if base is not None else
                                 decoder_psnr(pipes["student"], pipes["teacher"], prompts[:256], seed))
    for name in MODELS:
        best = max(report["results"][name].items(), key=lambda kv: (kv[1]["clip_score"] - 100 * kv[1]["fid"]))
        report.setdefault("best_guidance", {})[name] = best[0]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out)

    # fixed prompts and seeds: 8 single-object + 4 two-object prompts, one row per model
    idx = list(np.flatnonzero(single)[:8]) + list(np.flatnonzero(~single)[:4])
    rows_img, caps = [], []
    for name, (key, steps) in MODELS.items():
        if name in carried:  # no teacher weights to draw with
            continue
        g = float(report["best_guidance"][name])
        for j, i in enumerate(idx):
            img = pipes[key](prompts[i], num_inference_steps=steps, guidance_scale=g, seed=seed + j,
                             output_type="np").images[0]
            rows_img.append((np.asarray(img) * 255).round().clip(0, 255).astype(np.uint8))
            caps.append(f"{name} g{g:g}: {prompts[i]}")
    render_grid(rows_img, caps, cols=len(idx), cell=128).save(out / "samples.png")
    return report


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of the report."""
    carried = report.get("baseline", {}).get("carried", [])
    lines = ["| model | guidance | world-FID | CLIP score | accuracy | accuracy (1 object) |",
             "|---|---|---|---|---|---|"]
    for name, rows in report["results"].items():
        label = f"{name} (carried)" if f"results.{name}" in carried else name
        for g, m in sorted(rows.items(), key=lambda kv: float(kv[0])):
            lines.append(f"| {label} | {g} | {m['fid']:.4f} | {m['clip_score']:.2f} | {100 * m['accuracy']:.1f} % | "
                         f"{100 * m['accuracy_single']:.1f} % |")
    lines += ["", "| model | engine s/image (CFG) | UNet s | decoder s | UNet GMAC/image |", "|---|---|---|---|---|"]
    for name in report["results"]:
        t = report["latency"][f"{name}_cfg"]
        lines.append(f"| {name} | {t['total']:.3f} | {t['unet']:.3f} | {t['decoder']:.4f} | "
                     f"{report['unet_macs_per_image'][f'{name}_cfg'] / 1e9:.2f} |")
    if "decoder_psnr_db" in report:
        p = report["decoder_psnr_db"]
        lines += ["", f"small decoder: {report['decoder_speedup']:.2f}x faster than the teacher's, PSNR against "
                      f"it {p['student_latents']:.1f} dB on the student's latents, "
                      f"{p['teacher_latents']:.1f} dB on the teacher's"
                      + (" (PSNR carried from the baseline)" if "decoder_psnr_db" in carried else "")]
    if carried:
        b = report["baseline"]
        lines += ["", f"carried from {b['report']}: {', '.join(carried)}; teacher timed on the {b['teacher_timing']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train report --run DIR --out DIR``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train report",
                                description="teacher vs student report of a trained world run")
    p.add_argument("--run", required=True, help="folder of a scripts/train_default.py run")
    p.add_argument("--out", required=True, help="report folder (reused to resume)")
    p.add_argument("--n", type=int, default=1000, help="held-out prompts")
    p.add_argument("--guidance", default=",".join(f"{g:g}" for g in DEFAULT_GUIDANCE))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--ref-images", type=int, default=2048)
    p.add_argument("--generate-only", default=None, help="comma-separated models: only generate their images")
    p.add_argument("--baseline", default=None, help="earlier report.json of the same teacher: carry its teacher "
                                                     "rows and decoder PSNR (no teacher weights needed)")
    p.add_argument("--latency-repeats", type=int, default=3,
                   help="timed single-image generations per model and guidance (the median counts)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.latency_repeats < 1:
        p.error("--latency-repeats must be >= 1")
    try:
        guidance = [float(g) for g in args.guidance.split(",")]
    except ValueError:
        p.error(f"--guidance must be comma-separated numbers, got {args.guidance!r}")
    only = args.generate_only.split(",") if args.generate_only else None
    report = run_report(args.run, args.out, n=args.n, guidance=guidance, seed=args.seed, threads=args.threads,
                        chunk=args.chunk, progress=not args.quiet, ref_images=args.ref_images, generate_only=only,
                        latency_repeats=args.latency_repeats, baseline=args.baseline)
    if only is None:
        print(format_table(report))
    return 0
