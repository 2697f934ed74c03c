#!/usr/bin/env python3
"""Evolve and distil a new student from a finished run's teacher, on the CPU.

    python scripts/restudent_cpu.py --run RUN --out OUT [--threads 2]

A finished ``scripts/train_default.py`` run (``RUN``: tokenizer, world CLIP, VAE, teacher,
small decoder) gets a new student in two recipes, each resumable (re-run the same command):

1. architecture evolution from the teacher (``--evolve-minutes``, latency budget ``--budget``
   of the teacher's table latency; 8 candidates per action, 48 evaluation prompts, 40
   fine-tuning steps of batch 64 between actions; the budget is checked against the engine's
   measured ratio, ``engine_budget``), then, when ``--tighten`` is given, the same evolution
   resumed with that lower budget; ``--keep`` protects blocks;
2. step distillation of the evolved UNet from the teacher (``--distill-minutes``, batch 64,
   lr 1e-4 with cosine decay to 1e-5, EMA 0.999);

then exports ``OUT/model`` (evolved + distilled UNet, 8 steps, the run's small decoder) with
the guidance scale ``--guidance``. Training images come from a pool drawn once into
``OUT/pool`` (``--pool-size`` images, seed 0). The H100 run's short evolution stage had no
time to evaluate its candidates (14 of 16 removals were forced); this is how the shipped
student was rebuilt on 2 CPU cores (docs/training.md).
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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--run", required=True, help="finished scripts/train_default.py run folder")
    p.add_argument("--out", required=True, help="output folder (re-run the same command to resume)")
    p.add_argument("--budget", type=float, default=0.5, help="evolution latency budget (fraction)")
    p.add_argument("--tighten", type=float, default=0.0, help="then resume the evolution with this budget (0: no)")
    p.add_argument("--evolve-minutes", type=float, default=35.0)
    p.add_argument("--distill-minutes", type=float, default=45.0)
    p.add_argument("--keep", default="", help="comma-separated blocks evolution never removes, e.g. "
                   "down_blocks.0.attentions.0,up_blocks.3.attentions.2")
    p.add_argument("--guidance", type=float, default=4.0, help="recommended guidance scale of the export")
    p.add_argument("--pool-size", type=int, default=32768)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0.0 < args.budget <= 1.0 or not 0.0 <= args.tighten < args.budget:
        p.error("need 0 < --budget <= 1 and 0 <= --tighten < --budget")
    if args.evolve_minutes <= 0 or args.distill_minutes <= 0 or args.pool_size < 64:
        p.error("minutes must be positive and --pool-size >= 64")

    import torch

    from snapfusion.train.data import get_pool
    from snapfusion.train.distill import DistillRecipeConfig, distill
    from snapfusion.train.evolution import EvolveRecipeConfig, evolve
    from snapfusion.train.export import export_pipeline, folder_size_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    run, out = Path(args.run).resolve(), Path(args.out).resolve()
    progress = not args.no_progress
    tok = str(run / "tokenizer" / "tokenizer")
    parts = {"tokenizer": tok, "text_encoder": str(run / "clip" / "text_encoder"), "vae": str(run / "vae" / "vae")}
    for path in (*parts.values(), run / "teacher" / "unet", run / "decoder" / "vae", run / "clip"):
        if not Path(path).is_dir():
            p.error(f"{path} is missing: --run must be a finished scripts/train_default.py run")
    get_pool(out / "pool", args.pool_size, seed=0, workers=os.cpu_count() or 1, progress=progress,
             tokenizer_dir=tok)
    data = {"pool_dir": str(out / "pool"), "pool_size": args.pool_size, "pool_seed": 0}
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    minutes = args.evolve_minutes
    for budget in (args.budget, args.tighten) if args.tighten > 0 else (args.budget,):
        ecfg = EvolveRecipeConfig(**parts, clip=str(run / "clip"), init=str(run / "teacher" / "unet"),
                                  out=str(out / "evolve"), budget=budget, max_params=0, eval_prompts=48,
                                  eval_steps=8, eval_seed=3, ref_images=512, max_candidates=8, finetune_steps=40,
                                  keep=[b for b in args.keep.split(",") if b],
                                  data=data, train={"batch_size": 64, "lr": 5e-5, "warmup_steps": 5, "max_steps": 0,
                                                    "max_minutes": minutes, "ckpt_minutes": 5, "log_every": 10,
                                                    "seed": 0, "ema_decay": 0.0, "min_lr_ratio": 1.0})
        summary = evolve(ecfg, "cpu", progress)
        minutes += 25.0  # room for the resumed search (its deadline is 75 % of max_minutes)
    times["evolve"] = time.perf_counter() - t0
    print(json.dumps({k: summary[k] for k in ("table_ratio", "engine_latency", "final_eval") if k in summary}),
          flush=True)

    t0 = time.perf_counter()
    dcfg = DistillRecipeConfig(**parts, teacher=str(run / "teacher" / "unet"), student=str(out / "evolve" / "unet"),
                               out=str(out / "distill"), data=data,
                               train={"batch_size": 64, "lr": 1e-4, "warmup_steps": 50, "ema_decay": 0.999,
                                      "max_steps": 0, "max_minutes": args.distill_minutes, "ckpt_minutes": 5,
                                      "log_every": 10, "seed": 7, "min_lr_ratio": 0.1})
    dsum = distill(dcfg, "cpu", progress)
    times["distill"] = time.perf_counter() - t0

    info = {"num_inference_steps": 8, "guidance_scale": args.guidance, "prompt_completion": "shapes-world",
            "trained_with": f"scripts/restudent_cpu.py --budget {args.budget:g} --tighten {args.tighten:g} "
                            f"--evolve-minutes {args.evolve_minutes:g} --distill-minutes {args.distill_minutes:g} "
                            f"on the teacher of {run.name}"}
    folder = export_pipeline(out / "model", tok, parts["text_encoder"], out / "distill" / "unet",
                             run / "decoder" / "vae", info=info)
    res = {"model": str(folder), "bytes": folder_size_bytes(folder), "seconds_this_session": times,
           "distill_steps": dsum["steps"]}
    (out / "restudent.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
