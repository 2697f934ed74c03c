"""The ``snapfusion`` command line: generate, info, selfcheck, eval."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x512, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _cmd_generate(args: argparse.Namespace) -> int:
    from PIL import PngImagePlugin

    from .pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model, threads=args.threads, scheduler=args.scheduler,
                                    low_memory=args.low_memory)
    # unset: the model's recommendation (snapfusion_model.json), else 25 steps and 7.5
    if args.steps is None:
        args.steps = int(pipe.recommended.get("num_inference_steps", 25))
    if args.guidance is None:
        args.guidance = float(pipe.recommended.get("guidance_scale", 7.5))
    width, height = args.size if args.size else (None, None)
    out = pipe(args.prompt, negative_prompt=args.negative, num_inference_steps=args.steps,
               guidance_scale=args.guidance, height=height, width=width, seed=args.seed,
               complete_prompt=False if args.no_complete else None)
    image = out.images[0]
    drawn = out.prompts[0]
    if drawn != args.prompt:
        print(f"prompt completed to {drawn!r} (--no-complete draws it as given)")
    if args.upscale > 1:  # for viewing small models' pictures; nearest keeps the pixels exact
        from PIL import Image

        image = image.resize((image.size[0] * args.upscale, image.size[1] * args.upscale), Image.NEAREST)
    params = {
        "prompt": args.prompt, "negative_prompt": args.negative, "steps": args.steps,
        "guidance_scale": args.guidance, "seed": args.seed, "size": list(image.size),
        "scheduler": type(pipe.scheduler).__name__, "model": pipe.name, "upscale": args.upscale,
    }
    if drawn != args.prompt:
        params["completed_prompt"] = drawn
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(params))
    info.add_text("software", "snapfusion")
    path = Path(args.output)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    image.save(path, pnginfo=info)
    t = out.timings
    print(f"wrote {path} ({image.size[0]}x{image.size[1]}) in {t['total']:.2f} s: "
          f"text {t['text_encoder']:.3f} s, UNet {sum(t['unet']):.2f} s over {len(t['unet'])} "
          f"steps, decoder {t['decoder']:.2f} s")
    return 0


def _count_params(folder: Path) -> int:
    from . import _engine
    from .components import find_weights

    total = 0
    with _engine.SafeTensors(find_weights(folder)) as st:
        for name in st.keys():
            _, shape = st.info(name)
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def _cmd_info(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline, default_model_path

    root = Path(args.model) if args.model else default_model_path()
    pipe = Pipeline.from_pretrained(root, threads=args.threads)
    print(f"model: {root}")
    for comp in ("text_encoder", "unet", "vae"):
        n = _count_params(root / comp)
        print(f"  {comp:13s} {n / 1e6:10.3f} M parameters")
    print(f"  scheduler     {type(pipe.scheduler).__name__}")
    width, height = args.size if args.size else (pipe.default_size, pipe.default_size)
    macs = unet_macs(pipe, height, width)
    print(f"  UNet at {width}x{height}: {macs / 1e9:.2f} GMAC per call (batch 1)")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from . import _engine
    from .convert.quantize import convert

    if args.threads is not None:
        _engine.set_num_threads(args.threads)
    if args.calibrate is not None and args.no_calibrate:
        raise ValueError("--calibrate and --no-calibrate exclude each other")
    if args.weights != "int8" and (args.calibrate is not None or args.no_calibrate):
        raise ValueError("--calibrate/--no-calibrate apply to --weights int8 only")
    calibrate: Any = False if args.no_calibrate else args.calibrate
    kwargs: dict[str, Any] = {}
    if args.percentile is not None:
        kwargs["percentile"] = args.percentile
    if args.calibration_size is not None:
        w, h = args.calibration_size
        kwargs["calibration_size"] = (h, w)
    out = convert(args.src, args.output, weights=args.weights, calibrate=calibrate,
                  keep_fp32=args.keep_fp32, float_dtype=args.float_dtype,
                  calibration_steps=args.calibration_steps, tokenizer=args.tokenizer,
                  allow_pickle=args.allow_pickle, overwrite=args.overwrite, **kwargs)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    print(f"wrote {out} ({args.weights} weights, {size / 2**20:.1f} MiB)")
    return 0


def unet_macs(pipe: Any, height: int, width: int) -> float:
    """Multiply-accumulates of one UNet call at batch 1, counted by the engine while it runs."""
    return float(pipe.unet_macs(height, width))


def _guidance_list(text: str) -> list[float]:
    from .eval.report import parse_guidance

    try:
        return parse_guidance(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval.report import EvalSettings, run_evaluation

    settings = EvalSettings(
        student=args.student, teacher=args.teacher, prompts=args.prompts,
        reference_images=args.reference_images, n=args.n, steps_student=args.steps_student,
        steps_teacher=args.steps_teacher, guidance=args.guidance, seeds=args.seeds,
        size=args.size, negative_prompt=args.negative, fid_weights=args.fid_weights,
        clip_model=args.clip_model, output=args.output, dask=args.dask,
        swap_decoder=args.swap_decoder, threads=args.threads, shard_size=args.shard_size,
        accuracy={"auto": "auto", "on": True, "off": False}[args.accuracy],
        fid_dims=args.fid_dims, progress=not args.quiet)
    try:
        report = run_evaluation(settings)
    except RuntimeError as exc:  # a Dask shard that kept failing
        print(f"snapfusion eval: error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.output)
    ref = report["reference"]
    ref_text = (f"{ref['n']} reference images" if ref["kind"] == "images"
                else f"teacher images at guidance {ref['guidance']:g}")
    print(f"FID against {ref_text}; {report['generation']['generated']} images generated, "
          f"{report['generation']['reused']} reused")
    print(f"{'model':8s} {'guidance':>8s} {'FID':>10s} {'CLIP':>8s} {'accuracy':>8s}")
    for model, rows in report["results"].items():
        for r in rows:
            acc = f"{r['accuracy']['overall']:.3f}" if r["accuracy"] else "-"
            print(f"{model:8s} {r['guidance']:8g} {r['fid']:10.3f} {r['clip_score']:8.3f} "
                  f"{acc:>8s}")
    for model, lat in report["latency"].items():
        if lat.get("images"):
            print(f"{model}: text encoder {lat['text_encoder_ms']:.1f} ms, UNet "
                  f"{lat['unet_steps']} x {lat['unet_step_ms']:.1f} ms, decoder "
                  f"{lat['decoder_ms']:.1f} ms, total {lat['total_ms']:.1f} ms (median)")
    print(f"wrote {out / 'report.json'} and plots in {out / 'plots'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapfusion`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="snapfusion",
                                     description="Fast text-to-image diffusion on CPUs.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate an image from a prompt")
    g.add_argument("prompt")
    g.add_argument("--model", default=None, help="model folder or file (default: embedded)")
    g.add_argument("-o", "--output", default="out.png", help="PNG to write")
    g.add_argument("--negative", default=None, help="negative prompt")
    g.add_argument("--steps", type=_positive, default=None,
                   help="denoising steps (default: the model's recommendation, else 25)")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's recommendation, else 7.5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=_size, default=None, help="WxH, e.g. 512x512")
    g.add_argument("--scheduler", default=None, help="scheduler class name")
    g.add_argument("--threads", type=_positive, default=None)
    g.add_argument("--low-memory", action="store_true",
                   help="one model in memory at a time (loaded for its stage only)")
    g.add_argument("--upscale", type=_positive, default=1,
                   help="enlarge the written PNG N times (nearest neighbour), e.g. 4 for 64x64 models")
    g.add_argument("--no-complete", action="store_true",
                   help="draw the prompt as given, even for a model that completes prompts of its "
                        "world that leave attributes out (the embedded model)")

    i = sub.add_parser("info", help="components, parameter counts and MACs of a model")
    i.add_argument("model", nargs="?", default=None)
    i.add_argument("--size", type=_size, default=None, help="WxH for the MAC count")
    i.add_argument("--threads", type=_positive, default=None)

    s = sub.add_parser("selfcheck", help="engine versions, CPU features, SD-sized blocks timed")
    s.add_argument("--threads", type=_positive, default=None, help="engine threads")
    s.add_argument("--repeat", type=_positive, default=3, help="timed repeats per block")

    e = sub.add_parser("eval", help="student vs teacher: FID, CLIP score and latency per "
                                    "guidance scale, with a report and plots")
    e.add_argument("--student", default=None,
                   help="student model folder or file (default: the embedded model)")
    e.add_argument("--teacher", required=True, help="teacher model folder or file")
    e.add_argument("--prompts", required=True,
                   help="prompt file: one prompt per line (# comments) or a JSON list")
    e.add_argument("--reference-images", default=None,
                   help="folder of reference images for FID (default: the teacher's images "
                        "at the first guidance scale)")
    e.add_argument("--n", type=_positive, default=None,
                   help="images per model and guidance scale (default: one per prompt; "
                        "more cycles the prompts)")
    e.add_argument("--steps-student", type=_positive, default=8)
    e.add_argument("--steps-teacher", type=_positive, default=50)
    e.add_argument("--guidance", type=_guidance_list, default=[1.5, 3.0, 4.5, 6.0, 7.5],
                   help="comma-separated guidance scales (default 1.5,3,4.5,6,7.5)")
    e.add_argument("--seeds", default=None,
                   help="first seed (7), a list (0,4,9) or a range (0-99); default 0, 1, ...")
    e.add_argument("--size", type=_size, default=None, help="WxH (default: each model's)")
    e.add_argument("--negative", default=None, help="negative prompt")
    e.add_argument("--fid-weights", required=True,
                   help="FID Inception weights (.safetensors or .safetensors.gz)")
    e.add_argument("--fid-dims", type=int, default=2048, choices=(64, 192, 768, 2048))
    e.add_argument("--clip-model", required=True, help="CLIP checkpoint folder")
    e.add_argument("-o", "--output", required=True, help="report folder (reused to resume)")
    e.add_argument("--dask", default=None, metavar="ADDRESS",
                   help="Dask scheduler address: generate on its workers")
    e.add_argument("--shard-size", type=_positive, default=None,
                   help="prompts per Dask task")
    e.add_argument("--swap-decoder", choices=("teacher", "student"), default=None,
                   help="both models decode with this model's VAE decoder")
    e.add_argument("--accuracy", choices=("auto", "on", "off"), default="auto",
                   help="attribute accuracy of world captions (auto: when all prompts parse)")
    e.add_argument("--threads", type=_positive, default=None,
                   help="engine threads (per Dask worker with --dask)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("convert", help="convert a model's weights to fp16, bf16 or int8",
                       description="Write a diffusers-layout copy of a model (folder or "
                       "single-file checkpoint) with 16-bit or int8 weights; int8 calibrates "
                       "activation ranges by running the float model (docs/quantization.md).")
    c.add_argument("src", help="diffusers folder (pipeline or component) or single-file "
                   "checkpoint")
    c.add_argument("-o", "--output", required=True, help="destination folder")
    c.add_argument("--weights", choices=("fp32", "fp16", "bf16", "int8"), default="fp16")
    c.add_argument("--calibrate", metavar="PROMPTS.txt", default=None,
                   help="int8: calibration prompts, one per line (default: built-in prompts)")
    c.add_argument("--no-calibrate", action="store_true",
                   help="int8: no calibration (activation ranges computed at run time)")
    c.add_argument("--keep-fp32", nargs="*", metavar="PATTERN", default=None,
                   help="int8: glob patterns on tensor names of layers kept float (replace "
                   "the defaults; give none to quantize every layer)")
    c.add_argument("--float-dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="int8: storage of the tensors that stay float")
    c.add_argument("--percentile", type=float, default=None,
                   help="int8: calibration clipping percentile of each tail (100: min/max)")
    c.add_argument("--calibration-steps", type=_positive, default=8,
                   help="int8: denoising steps per calibration prompt")
    c.add_argument("--calibration-size", type=_size, default=None,
                   help="int8: WxH of the calibration images (default: the model's)")
    c.add_argument("--tokenizer", default=None,
                   help="single-file sources: the CLIP tokenizer folder")
    c.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickled .ckpt source (only for files you trust)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    c.add_argument("--threads", type=_positive, default=None)

    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return _cmd_generate(args)
        if args.command == "info":
            return _cmd_info(args)
        if args.command == "convert":
            return _cmd_convert(args)
        if args.command == "eval":
            return _cmd_eval(args)
        from . import selfcheck

        return selfcheck.main(threads=args.threads, repeat=args.repeat)
    except (OSError, ValueError, TypeError) as exc:
        print(f"snapfusion {args.command}: error: {exc}", file=sys.stderr)
        return 1
