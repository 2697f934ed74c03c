#!/usr/bin/env python3
"""Shrink a finished student further, with no teacher: prune blocks, then train it on.

    python scripts/shrink_student.py --out OUT --remove mid_block.resnets.1,down_blocks.2.attentions.1
    python scripts/shrink_student.py --out OUT --budget 0.48      # choose the blocks by evolution
    python scripts/shrink_student.py --out OUT --remove none --objective data --device cuda   # retrain

A finished 8-step student (``--model``, default the embedded model) is the starting point of a
smaller copy of itself:

1. the blocks to remove are either named (``--remove``; ``none`` keeps the architecture, with
   ``--objective data`` only) or chosen by the architecture-evolution recipe from the student
   (``--budget``, a fraction of the full teacher architecture's table latency; candidates scored
   on 64 held-out prompts at the model's guidance scale by CLIP score, world-FID and the exact
   checker's attribute accuracy, ``accuracy_weight`` 1; no fine-tuning between actions).
   Evolution's latencies are fractions of the full network: its reference is the student's
   architecture without ``elastic_blocks``, with random weights (the engine's time does not
   depend on weight values);
2. the pruned student keeps the remaining weights and is trained on, ``--minutes`` of training,
   cosine decay to a tenth of ``--lr``:

   * ``--objective self-distill`` (default): step-distilled from the unpruned student at the
     same 8 steps (the distillation recipe with ``teacher_substeps: 1``: the target of a step is
     the frozen student's own DDIM step, with the CFG-aware loss on a tenth of the batches),
     lr 1e-4, EMA 0.998. The result is the student's quality at best: the student is the target;
   * ``--objective data``: trained on the world's images with the teacher recipe (``init``:
     v-prediction, min-SNR-5 weighting, captions dropped for classifier-free guidance with
     probability 0.1), lr 2e-4, EMA 0.998. Nothing bounds it by the student: on this world the
     teacher samples as well at 8 DDIM steps as at 50 (docs/training.md), so data training
     leaves no sampling error for step distillation to remove;
3. ``OUT/model`` is exported with the model's tokenizer, text encoder and autoencoder.

Training images come from a pool drawn once into ``--pool-dir`` (default ``OUT/pool``;
``--pool-only`` draws it and stops, so that several runs can share it); with
``--partial-captions P`` its captions leave out the background with probability P and,
independently, each object's size (the partial recipe's pools, docs/training.md). Every stage resumes
(re-run the same command). Prints the engine's call-latency ratio of the result against the
full architecture (batch 2, one thread) when the engine is built (docs/training.md, "A smaller
student from the shipped one").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import snapfusion  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from snapfusion._files import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    p.add_argument("--model", default=None, help="pipeline folder of the student (default: the embedded model)")
    p.add_argument("--clip", default=None, help="world CLIP folder for --budget (default: the embedded one)")
    p.add_argument("--remove", default="",
                   help="comma-separated blocks to remove, e.g. mid_block.resnets.1 ('none': keep them all)")
    p.add_argument("--budget", type=float, default=0.0, help="or: evolve to this fraction of the full latency")
    p.add_argument("--evolve-minutes", type=float, default=10.0)
    p.add_argument("--objective", default="self-distill", choices=("self-distill", "data"),
                   help="train the pruned student on its unpruned self or on the world's data")
    p.add_argument("--minutes", type=float, default=75.0, help="training minutes")
    p.add_argument("--max-steps", type=int, default=0, help="stop the training after this many steps (0: none)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-4 self-distill, 2e-4 data)")
    p.add_argument("--ema-decay", type=float, default=0.998)
    p.add_argument("--pool-size", type=int, default=32768)
    p.add_argument("--pool-dir", default=None, help="pool folder (default OUT/pool)")
    p.add_argument("--pool-seed", type=int, default=0)
    p.add_argument("--pool-only", action="store_true", help="draw the pool and stop")
    p.add_argument("--partial-captions", type=float, default=0.0,
                   help="probability that a pool caption leaves out the background, and each size (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    keep_all = args.remove.strip() == "none"
    removed = [] if keep_all else [b for b in args.remove.split(",") if b]
    if not args.pool_only and (bool(removed) or keep_all) == (args.budget > 0):
        p.error("give either --remove or --budget")
    if keep_all and args.objective != "data":
        p.error("--remove none trains the same architecture: only with --objective data")
    if not 0.0 <= args.budget < 1.0 or args.minutes <= 0 or args.evolve_minutes <= 0 or args.max_steps < 0:
        p.error("need 0 < --budget < 1, positive minutes and --max-steps >= 0")
    if args.pool_size < 64 or args.batch_size < 1 or args.pool_seed < 0:
        p.error("need --pool-size >= 64, --batch-size >= 1 and --pool-seed >= 0")
    lr = args.lr if args.lr is not None else (2e-4 if args.objective == "data" else 1e-4)
    if not (0.0 < lr < 1.0 and 0.0 <= args.ema_decay < 1.0 and 0.0 <= args.partial_captions <= 1.0):
        p.error("need 0 < --lr < 1, 0 <= --ema-decay < 1 and 0 <= --partial-captions <= 1")

    import torch

    from snapfusion._files import read_json_object
    from snapfusion.nn import UNet2DConditionModel, block_names
    from snapfusion.nn.serialization import read_config
    from snapfusion.train.data import get_pool
    from snapfusion.train.distill import DistillRecipeConfig, distill
    from snapfusion.train.evolution import EvolveRecipeConfig, _engine_latency, evolve, prune_unet
    from snapfusion.train.export import export_pipeline, folder_size_bytes
    from snapfusion.train.report import architecture_twin
    from snapfusion.train.teacher import TeacherRecipeConfig, train_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else default_model_path()
    out = Path(args.out).resolve()
    progress = not args.no_progress
    for sub in ("tokenizer", "text_encoder", "unet", "vae", "snapfusion_model.json"):
        if not (model / sub).exists():
            p.error(f"{model / sub} is missing: --model must be a pipeline folder")
    try:
        info = read_json_object(model / "snapfusion_model.json", "model info file")[1]
        steps, guidance = int(info.get("num_inference_steps", 8)), float(info.get("guidance_scale", 3.0))
    except (OSError, TypeError, ValueError) as e:
        p.error(f"{model / 'snapfusion_model.json'} is not readable: {e}")
    unet_cfg = read_config(model / "unet")
    unknown = sorted(set(removed) - set(block_names(unet_cfg)))
    if unknown:
        p.error(f"not blocks of this UNet: {unknown}")
    tok = str(model / "tokenizer")
    parts = {"tokenizer": tok, "text_encoder": str(model / "text_encoder"), "vae": str(model / "vae")}
    size = int(read_config(model / "vae").get("sample_size", 64))
    pool = Path(args.pool_dir).resolve() if args.pool_dir else out / "pool"
    get_pool(pool, args.pool_size, seed=args.pool_seed, size=size, workers=os.cpu_count() or 1, progress=progress,
             tokenizer_dir=tok, partial=args.partial_captions)
    if args.pool_only:
        print(json.dumps({"pool": str(pool), "pool_size": args.pool_size, "pool_seed": args.pool_seed}), flush=True)
        return 0
    data = {"pool_dir": str(pool), "pool_size": args.pool_size, "pool_seed": args.pool_seed, "image_size": size,
            "partial_captions": args.partial_captions}
    reference = architecture_twin(model, out) / "unet"  # the full architecture, random weights
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    if keep_all:
        pruned = model / "unet"
    elif removed:
        pruned = out / "pruned"
        if not (pruned / "config.json").is_file():
            prune_unet(UNet2DConditionModel.from_pretrained(model / "unet"), removed).save_pretrained(pruned)
    else:
        clip = Path(args.clip) if args.clip else default_model_path().parent / "world_clip"
        ecfg = EvolveRecipeConfig(**parts, clip=str(clip), init=str(model / "unet"), reference=str(reference),
                                  out=str(out / "evolve"), budget=args.budget, eval_prompts=64, eval_steps=steps,
                                  guidance=guidance, eval_seed=3, ref_images=512, finetune_steps=0, accuracy_weight=1.0,
                                  data=data,
                                  train={"batch_size": args.batch_size, "lr": 5e-5, "max_steps": 0,
                                         "max_minutes": args.evolve_minutes, "ckpt_minutes": 5, "seed": 0,
                                         "ema_decay": 0.0, "min_lr_ratio": 1.0})
        evolve(ecfg, args.device, progress)
        pruned = out / "evolve" / "unet"
        removed = sorted(set(block_names(unet_cfg)) - set(block_names(read_config(pruned))))
    times["prune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train = {"batch_size": args.batch_size, "lr": lr, "warmup_steps": 20 if args.objective == "self-distill" else 50,
             "ema_decay": args.ema_decay, "max_steps": args.max_steps, "max_minutes": args.minutes,
             "ckpt_minutes": 5 if args.device == "cpu" else 2, "log_every": 10, "seed": 7, "min_lr_ratio": 0.1}
    if args.objective == "self-distill":
        dcfg = DistillRecipeConfig(**parts, teacher=str(model / "unet"), student=str(pruned), out=str(out / "distill"),
                                   student_steps=steps, teacher_substeps=1, data=data, train=train)
        dsum = distill(dcfg, args.device, progress)
        trained = out / "distill" / "unet"
    else:
        tcfg = TeacherRecipeConfig(**parts, init=str(pruned), out=str(out / "data"), data=data, train=train)
        dsum = train_teacher(tcfg, args.device, progress)
        trained = out / "data" / "unet"
    times["train"] = time.perf_counter() - t0

    blocks = ("no block removed" if keep_all else ",".join(removed) if args.remove
              else f"evolution to {args.budget:g}")
    what = "self-distillation" if args.objective == "self-distill" else "data (teacher recipe)"
    new_info = {**info, "num_inference_steps": steps, "guidance_scale": guidance,
                "trained_with": f"{info.get('trained_with', '?')}; then scripts/shrink_student.py ({blocks}; "
                                f"{dsum['steps']} {what} steps of {args.batch_size} on {args.device}"
                                + (f", partial captions {args.partial_captions:g}" if args.partial_captions else "")
                                + ")"}
    folder = export_pipeline(out / "model", tok, parts["text_encoder"], trained, parts["vae"], info=new_info)
    lat = _engine_latency(reference, folder / "unet", int(read_config(model / "text_encoder")
                                                              .get("max_position_embeddings", 77)), 1)
    res = {"model": str(folder), "bytes": folder_size_bytes(folder), "removed": removed,
           "objective": args.objective, "train_steps": dsum["steps"], "train_summary": dsum,
           "seconds_this_session": times, **lat}
    (out / "shrink.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
