#!/usr/bin/env python3
"""Train the default SnapFusion model of the synthetic world from nothing, in one command.

    python scripts/train_default.py --out runs/default --device cuda --budget-minutes 8

Chain (each stage a recipe of ``snapfusion.train``, all in this process):

    tokenizer -> pool -> clip -> vae -> teacher -> robust -> evolve -> distill -> decoder -> export

* ``--budget-minutes M`` is the wall-time target of the whole run. Every stage gets a share
  of the time still left when it starts (shares in ``SHARES``), fixed when the stage first
  starts and stored in ``DIR/plan.json``; training loops stop on their share, checkpoint
  every few minutes and at the end.
* Re-running the same command continues where it stopped: finished stages (``DIR/<stage>/
  done.json``) are skipped, an interrupted stage resumes from its checkpoint.
* ``DIR/times.json`` records each stage's wall time; ``DIR/model`` is the exported pipeline
  folder (evolved UNet, 8 steps, text encoder, small decoder, tokenizer, scheduler config),
  ``DIR/final_eval.json`` its world metrics.
* Outside the budget, on a finished run: ``--distill-more M`` distils the exported student M
  more minutes; ``--teacher-more M --redistill R`` trains the teacher M more minutes on a fresh
  pool, rebuilds the evolved student from the new teacher's weights and distils it R minutes
  (the teacher is what limits the student: docs/training.md). ``--teacher-more M1,M2`` trains
  it in continuations, each on its own fresh pool at 3/4 of the previous learning rate; the
  student is then distilled on the last pool. ``--partial-tune M`` then tunes the final student
  M minutes on partial captions (``snapfusion.train.partial``: prompts that leave out sizes or
  the background). ``--data-student M1[,M2...]`` (with ``--data-remove BLOCKS``: blocks taken
  out first) trains the final student on the world's data with the teacher recipe, from its
  weights, in continuations on fresh pools (step distillation's target, the teacher at 8 steps,
  bounds a distilled student; data does not: docs/training.md, "What limited the student
  last"), and exports it with its best guidance scale. Each re-exports ``DIR/model``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import snapfusion  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("tokenizer", "pool", "clip", "vae", "teacher", "robust", "evolve", "distill", "decoder", "export",
          "distill_more", "teacher_more", "redistill", "partial_tune")
#: Share of the remaining time per training stage (tokenizer and pool take what they need; the
#: export stage, with the final evaluation, gets the fixed EXPORT_RESERVE).
SHARES = {"clip": 0.07, "vae": 0.12, "teacher": 0.40, "robust": 0.07, "evolve": 0.12, "distill": 0.15,
          "decoder": 0.07}
#: Seconds kept for the export stage, per device.
EXPORT_RESERVE = {"cuda": 25.0, "cpu": 20.0}
#: Seconds of a stage outside its training loop (loading, evaluation, saving), per device.
OVERHEAD = {"cuda": 4.0, "cpu": 3.0}
#: Size limit of the exported model folder (bytes).
MODEL_BYTES_LIMIT = 20_000_000

#: The small decoder: half the channels at the highest resolution, a quarter at the middle one,
#: half at the lowest (measured on the engine, 1 thread, 16x16x4 latents: 4.0x faster than the
#: [32, 64, 64] decoder; plain halving gives 2.75x because the middle blocks dominate).
SMALL_DECODER: dict[str, Any] = {"decoder_channels": [16, 16, 32], "decoder_groups": 8}

PROFILES: dict[str, dict[str, Any]] = {
    "cuda": {
        "pool_per_minute": 40_000, "pool_min": 20_000, "pool_max": 400_000,
        # the VAE bounds every later stage's accuracy: it gets more than the default share
        "shares": {"clip": 0.06, "vae": 0.15, "teacher": 0.42, "robust": 0.06, "evolve": 0.09, "distill": 0.15,
                   "decoder": 0.07},
        "clip": {"batch_size": 1024, "lr": 1e-3, "warmup_steps": 100, "weight_decay": 0.05, "ema_decay": 0.0},
        "vae": {"batch_size": 256, "lr": 5e-4, "warmup_steps": 100, "ema_decay": 0.999, "weight_decay": 0.0},
        "teacher": {"batch_size": 1024, "lr": 6e-4, "warmup_steps": 300, "ema_decay": 0.999},
        "robust": {"batch_size": 1024, "lr": 1e-4, "warmup_steps": 50, "ema_decay": 0.998},
        "evolve": {"batch_size": 512, "lr": 5e-5, "warmup_steps": 5},
        "evolve_opts": {"finetune_steps": 40, "eval_prompts": 64, "eval_steps": 8, "ref_images": 512},
        "distill": {"batch_size": 512, "lr": 1e-4, "warmup_steps": 50, "ema_decay": 0.998},
        "decoder": {"batch_size": 256, "lr": 5e-4, "warmup_steps": 50, "ema_decay": 0.998},
        "decoder_opts": {"n_latents": 8192, "gen_batch": 1024, "gen_steps": 16, "fg_weight": 4.0,
                         **SMALL_DECODER},
        "eval": {"prompts": 256, "ref_images": 2048, "guidances": [1.0, 2.0, 3.0, 4.0, 6.0], "teacher_steps": 16,
                 "teacher_eval_steps": 8, "pipeline_images": 16},
        "scale_images": 4096,
        "log_every": 25,
    },
    "cpu": {
        "pool_per_minute": 128, "pool_min": 256, "pool_max": 2048,
        "clip": {"batch_size": 32, "lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.05, "ema_decay": 0.0},
        "vae": {"batch_size": 8, "lr": 5e-4, "warmup_steps": 5, "ema_decay": 0.99, "weight_decay": 0.0},
        "teacher": {"batch_size": 16, "lr": 5e-4, "warmup_steps": 10, "ema_decay": 0.99},
        "robust": {"batch_size": 8, "lr": 1e-4, "warmup_steps": 2, "ema_decay": 0.99},
        "evolve": {"batch_size": 4, "lr": 5e-5, "warmup_steps": 1},
        "evolve_opts": {"finetune_steps": 2, "eval_prompts": 4, "eval_steps": 2, "ref_images": 64,
                        "max_candidates": 6},
        "distill": {"batch_size": 4, "lr": 1e-4, "warmup_steps": 2, "ema_decay": 0.99},
        "decoder": {"batch_size": 4, "lr": 5e-4, "warmup_steps": 2, "ema_decay": 0.99},
        "decoder_opts": {"n_latents": 16, "gen_batch": 16, "gen_steps": 4, **SMALL_DECODER},
        "eval": {"prompts": 4, "ref_images": 32, "guidances": [4.0], "teacher_steps": 4, "teacher_eval_steps": 2,
                 "pipeline_images": 2},
        "scale_images": 128,
        "log_every": 5,
    },
    # a real run on 2 CPU cores (budget >= 60 min): batches sized for throughput, a pool large
    # enough not to be memorised, the teacher given the largest share
    "cpu-long": {
        "pool_per_minute": 400, "pool_min": 8192, "pool_max": 32768,
        "shares": {"clip": 0.06, "vae": 0.10, "teacher": 0.50, "robust": 0.05, "evolve": 0.09, "distill": 0.14,
                   "decoder": 0.06},
        "export_reserve": 240.0,
        "clip": {"batch_size": 128, "lr": 1e-3, "warmup_steps": 50, "weight_decay": 0.05, "ema_decay": 0.0},
        "vae": {"batch_size": 32, "lr": 8e-4, "warmup_steps": 50, "ema_decay": 0.995, "weight_decay": 0.0},
        "teacher": {"batch_size": 64, "lr": 8e-4, "warmup_steps": 100, "ema_decay": 0.998},
        "robust": {"batch_size": 64, "lr": 1e-4, "warmup_steps": 20, "ema_decay": 0.995},
        "evolve": {"batch_size": 32, "lr": 5e-5, "warmup_steps": 2},
        "evolve_opts": {"finetune_steps": 15, "eval_prompts": 32, "eval_steps": 8, "ref_images": 256,
                        "max_candidates": 8},
        "distill": {"batch_size": 32, "lr": 1e-4, "warmup_steps": 20, "ema_decay": 0.995},
        "decoder": {"batch_size": 32, "lr": 5e-4, "warmup_steps": 20, "ema_decay": 0.995},
        "decoder_opts": {"n_latents": 1024, "gen_batch": 128, "gen_steps": 8, **SMALL_DECODER},
        "eval": {"prompts": 64, "ref_images": 512, "guidances": [1.0, 2.0, 3.0, 4.0, 6.0], "teacher_steps": 16,
                 "teacher_eval_steps": 8, "pipeline_images": 8},
        "scale_images": 1024,
        "log_every": 20,
    },
    # the "about 24 CPU-hours on 2 cores" (budget >= 600 min), a run that spans many
    # sessions: re-run the same command to resume. Sized from measured CPU throughputs (2
    # threads): teacher ~55 img/s, so 45 % of 24 h is ~2M images (the H100 run's teacher saw
    # 1.1M); step distillation ~58 samples/s.
    "cpu-day": {
        "pool_per_minute": 40, "pool_min": 49152, "pool_max": 49152,
        "shares": {"clip": 0.04, "vae": 0.10, "teacher": 0.45, "robust": 0.07, "evolve": 0.08, "distill": 0.21,
                   "decoder": 0.05},
        "export_reserve": 900.0,
        "clip": {"batch_size": 256, "lr": 1e-3, "warmup_steps": 100, "weight_decay": 0.05, "ema_decay": 0.0},
        "vae": {"batch_size": 32, "lr": 8e-4, "warmup_steps": 100, "ema_decay": 0.999, "weight_decay": 0.0},
        "vae_loss": {"fg": 4.0},
        "teacher": {"batch_size": 128, "lr": 6e-4, "warmup_steps": 300, "ema_decay": 0.999},
        "robust": {"batch_size": 128, "lr": 1e-4, "warmup_steps": 50, "ema_decay": 0.998},
        "evolve": {"batch_size": 64, "lr": 5e-5, "warmup_steps": 5},
        "evolve_opts": {"finetune_steps": 100, "eval_prompts": 64, "eval_steps": 8, "ref_images": 512,
                        "max_candidates": 8},
        "distill": {"batch_size": 64, "lr": 1e-4, "warmup_steps": 50, "ema_decay": 0.999},
        "decoder": {"batch_size": 64, "lr": 5e-4, "warmup_steps": 50, "ema_decay": 0.998},
        "decoder_opts": {"n_latents": 4096, "gen_batch": 128, "gen_steps": 16, "fg_weight": 4.0, **SMALL_DECODER},
        "eval": {"prompts": 256, "ref_images": 2048, "guidances": [1.0, 2.0, 3.0, 4.0, 6.0], "teacher_steps": 16,
                 "teacher_eval_steps": 8, "pipeline_images": 16},
        "scale_images": 2048,
        "log_every": 25,
    },
}


def choose_profile(device: str, budget_minutes: float) -> str:
    """The profile ``--profile auto`` picks: the device's, or for CPU budgets of at least 60
    minutes ``cpu-long`` and of at least 600 minutes ``cpu-day``."""
    if device == "cpu" and budget_minutes >= 600:
        return "cpu-day"
    if device == "cpu" and budget_minutes >= 60:
        return "cpu-long"
    return device


class Run:
    """Stage bookkeeping: plan (budgets), times, done markers."""

    def __init__(self, out: Path, budget_minutes: float, device: str, shares: dict[str, float] | None = None,
                 export_reserve: float | None = None) -> None:
        self.out = out
        self.device = device
        self.shares = dict(shares or SHARES)
        self.export_reserve = EXPORT_RESERVE[device] if export_reserve is None else float(export_reserve)
        self.budget_s = 60.0 * budget_minutes
        out.mkdir(parents=True, exist_ok=True)
        self.times_path = out / "times.json"
        self.plan_path = out / "plan.json"
        self.times: dict[str, Any] = _read_json(self.times_path) or {"stages": {}, "sessions": 0}
        self.times["sessions"] = int(self.times.get("sessions", 0)) + 1
        self.times["budget_minutes"] = budget_minutes
        self.times["device"] = device
        self.plan: dict[str, Any] = _read_json(self.plan_path) or {}
        self.prev_total = float(sum(s.get("seconds", 0.0) for s in self.times["stages"].values()))
        self.session_start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds used by this run so far (all sessions, stage time only plus this session)."""
        return self.prev_total + (time.perf_counter() - self.session_start)

    def done(self, stage: str) -> dict[str, Any] | None:
        """The stage's summary if it finished."""
        return _read_json(self.out / stage / "done.json")

    def stage_budget(self, stage: str) -> float:
        """Seconds allotted to ``stage`` (decided when it first starts)."""
        if stage in self.plan:
            return float(self.plan[stage])
        rest = [s for s in self.shares if s in STAGES[STAGES.index(stage):]]
        share = self.shares.get(stage, 0.0) / max(1e-9, sum(self.shares[s] for s in rest))
        left = max(0.0, self.budget_s - self.elapsed() - self.export_reserve)
        budget = max(5.0 if self.device == "cpu" else 10.0, share * left)
        self.plan[stage] = budget
        _write_json(self.plan_path, self.plan)
        return budget

    def run_stage(self, stage: str, fn: Callable[[float], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn(budget_seconds)`` unless done; record times and the done marker."""
        summary = self.done(stage)
        if summary is not None:
            print(f"[{stage}] done already, skipped", flush=True)
            return summary
        budget = self.stage_budget(stage) if stage in self.shares else 0.0
        print(f"[{stage}] start (budget {budget:.0f} s, run elapsed {self.elapsed():.0f} s "
              f"of {self.budget_s:.0f} s)", flush=True)
        t0 = time.perf_counter()
        rec = self.times["stages"].setdefault(stage, {"seconds": 0.0})
        base = float(rec.get("seconds", 0.0))
        try:
            summary = fn(budget)
        finally:
            rec["seconds"] = base + (time.perf_counter() - t0)
            rec["budget_s"] = budget
            self.prev_total = float(sum(s.get("seconds", 0.0) for s in self.times["stages"].values()))
            self.session_start = time.perf_counter()
            self.times["total_seconds"] = self.prev_total
            _write_json(self.times_path, self.times)
        _write_json(self.out / stage / "done.json", summary)
        print(f"[{stage}] done in {rec['seconds'] - base:.1f} s: {_short(summary)}", flush=True)
        return summary


def _minutes_list(text: str) -> list[float]:
    """``"5"`` or ``"5,6"``: minutes, one value per continuation."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes or a comma-separated list of them, got {text!r}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _short(summary: dict[str, Any]) -> str:
    keys = ("steps", "final_loss", "scaling_factor", "recon_l1", "table_ratio", "params_pruned", "bytes",
            "vocab_size", "n", "batch_acc", "cfg_batches")
    return ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                     for k in keys if k in summary)


def _train_cfg(profile: dict[str, Any], name: str, seconds: float, seed: int, overhead: float,
               log_every: int) -> dict[str, Any]:
    cfg = dict(profile[name])
    cfg.update(max_steps=0, max_minutes=max(0.05, (seconds - overhead) / 60.0), ckpt_minutes=2.0,
               log_every=log_every, seed=seed)
    return cfg


#: Where the package keeps its embedded models.
MODELS_DIR = Path(__file__).resolve().parents[1] / "snapfusion" / "models"
DEFAULT_NAME = "world-v1"


def ship(model: Path, clip: Path, models_dir: Path = MODELS_DIR, name: str = DEFAULT_NAME) -> None:
    """Install a trained run as the package's embedded default: the exported pipeline folder as
    ``models_dir/name`` and the world CLIP (the world's evaluator, float16) as
    ``models_dir/world_clip``. Existing copies are replaced only after the new ones are complete."""
    import shutil

    from safetensors.torch import load_file, save_file

    def replace(tmp: Path, dst: Path) -> None:
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        if old.exists():
            shutil.rmtree(old)

    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.iterdir():  # one default model at a time
        if stale.is_dir() and (stale / "model_index.json").is_file() and stale.name != name:
            shutil.rmtree(stale)
    tmp = models_dir / (name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model, tmp)
    replace(tmp, models_dir / name)

    tmp = models_dir / "world_clip.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(clip / "text_encoder", tmp / "text_encoder")
    shutil.copyfile(clip / "world_clip.json", tmp / "world_clip.json")
    state = load_file(str(clip / "world_clip.safetensors"))
    save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()},
              str(tmp / "world_clip.safetensors"))
    for f in (tmp / "text_encoder").glob("*.safetensors"):
        st = load_file(str(f))
        save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in st.items()}, str(f))
    replace(tmp, models_dir / "world_clip")
    print(f"shipped {model} -> {models_dir / name} and the world CLIP -> {models_dir / 'world_clip'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--out", required=True, help="run folder (re-run the same command to resume)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--budget-minutes", type=float, required=True, help="wall-time target of the whole run")
    p.add_argument("--profile", default="auto", choices=("auto", *PROFILES),
                   help="batch sizes and shares (auto: the device's; for CPU budgets cpu-long from 60 min, "
                        "cpu-day from 600 min)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pool-size", type=int, default=None, help="world images drawn up front (default: scaled)")
    p.add_argument("--workers", type=int, default=None, help="processes drawing the pool (default: CPUs)")
    p.add_argument("--latency-table", default=None, help="per-block latency table JSON for evolution")
    p.add_argument("--measure-latency", action="store_true", help="measure the table with the engine")
    p.add_argument("--latency-budget", type=float, default=0.5, help="evolved UNet latency / teacher's")
    p.add_argument("--distill-more", type=float, default=0.0, metavar="MINUTES",
                   help="after the export, distil the exported student MINUTES more (outside the budget; "
                        "it can also be asked for on a finished run) and export it again")
    p.add_argument("--teacher-more", type=_minutes_list, default=[], metavar="MINUTES[,MINUTES...]",
                   help="after the export, train the teacher MINUTES more on a fresh pool (data seed + 3; "
                        "outside the budget), then rebuild the student from it (needs --redistill); a list "
                        "trains it in continuations, each on its own fresh pool (data seed + 3 + 2k) at 3/4 "
                        "of the previous learning rate")
    p.add_argument("--redistill", type=float, default=0.0, metavar="MINUTES",
                   help="with --teacher-more: the evolved architecture filled with the new teacher's weights, "
                        "step-distilled MINUTES from it, and exported again")
    p.add_argument("--more-pool-size", type=int, default=None,
                   help="images of the fresh pool of --teacher-more (default: the run's pool size)")
    p.add_argument("--partial-captions", type=float, default=0.0, metavar="P",
                   help="probability that a pool caption leaves out the background, and that it leaves out "
                        "each object's size (so the model learns prompts that do not state them; pools drawn "
                        "with another value are drawn again)")
    p.add_argument("--partial-tune", type=float, default=0.0, metavar="MINUTES",
                   help="last, tune the final student MINUTES on partial captions (self-distillation: its "
                        "full-caption predictions are the targets for paraphrases that leave out sizes or the "
                        "background) and export it again; needs a pool of full captions")
    p.add_argument("--data-student", type=_minutes_list, default=[], metavar="MINUTES[,MINUTES...]",
                   help="after the students above, train the final student on the world's data (teacher recipe, "
                        "from its weights; outside the budget) in continuations of these minutes, each on a fresh "
                        "pool (data seed + 9 + 4k) at half the profile's teacher learning rate, a third of the "
                        "previous one's after that, and export it with its best guidance scale")
    p.add_argument("--data-remove", default="", metavar="BLOCKS",
                   help="with --data-student: comma-separated blocks of the student to remove first "
                        "(e.g. mid_block.resnets.1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ship", action="store_true",
                   help="at the end, copy the model into snapfusion/models/ (the package's default) and the "
                        "world CLIP evaluator (fp16) into snapfusion/models/world_clip/")
    args = p.parse_args(argv)
    if min(args.distill_more, args.redistill, args.partial_tune, *args.teacher_more, *args.data_student) < 0:
        p.error("--distill-more, --teacher-more, --redistill, --partial-tune and --data-student must be >= 0 "
                "minutes")
    if args.teacher_more == [0.0]:
        args.teacher_more = []
    if 0.0 in args.teacher_more:
        p.error("--teacher-more: every continuation needs > 0 minutes")
    if args.data_student == [0.0]:
        args.data_student = []
    if 0.0 in args.data_student:
        p.error("--data-student: every continuation needs > 0 minutes")
    data_remove = [b for b in args.data_remove.split(",") if b.strip()]
    if data_remove and not args.data_student:
        p.error("--data-remove needs --data-student (the blocks are removed before that training)")
    if data_remove:  # typos fail now, not after hours of training (the stage checks the student's own list)
        from snapfusion.nn import block_names
        from snapfusion.train.world import default_unet_config

        unknown = sorted(set(data_remove) - set(block_names(default_unet_config())))
        if unknown:
            p.error(f"--data-remove: not blocks of the world's UNet: {unknown}")
    if bool(args.teacher_more) != (args.redistill > 0):
        p.error("--teacher-more and --redistill go together: a new teacher needs a new student")
    if not 0.0 <= args.partial_captions <= 1.0:
        p.error("--partial-captions must be a probability in [0, 1]")
    if args.partial_tune > 0 and args.partial_captions > 0:
        p.error("--partial-tune rewrites full captions: it cannot use a pool drawn with --partial-captions")
    if not args.budget_minutes > 0:
        p.error("--budget-minutes must be positive")

    import signal

    import torch

    from snapfusion.train.common import setup_env

    def _terminate(signum: int, frame: Any) -> None:  # SIGTERM (e.g. `timeout`): checkpoint, then exit
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)

    if args.threads:
        torch.set_num_threads(args.threads)
    env = setup_env(args.device)
    if env.distributed:
        p.error("the one-shot script runs on one device; use the recipes under torchrun for DDP")
    profile = choose_profile(args.device, args.budget_minutes) if args.profile == "auto" else args.profile
    prof = PROFILES[profile]
    out = Path(args.out).resolve()
    run = Run(out, args.budget_minutes, args.device, prof.get("shares"), prof.get("export_reserve"))
    progress = not args.no_progress
    seed = args.seed
    overhead = OVERHEAD[args.device] * (4 if profile in ("cpu-long", "cpu-day") else 1)
    log_every = int(prof["log_every"])
    workers = args.workers if args.workers is not None else max(1, min(16, (os.cpu_count() or 2)))
    pool_size = args.pool_size or int(min(prof["pool_max"], max(prof["pool_min"],
                                                                 prof["pool_per_minute"] * args.budget_minutes)))
    data = {"pool_dir": str(out / "pool"), "pool_size": pool_size, "pool_seed": seed, "pool_workers": workers}
    if args.partial_captions > 0:
        data["partial_captions"] = args.partial_captions
    tok_dir = str(out / "tokenizer" / "tokenizer")
    paths = {
        "tokenizer": tok_dir,
        "text_encoder": str(out / "clip" / "text_encoder"),
        "clip": str(out / "clip"),
        "vae": str(out / "vae" / "vae"),
        "teacher": str(out / "teacher" / "unet"),
        "robust": str(out / "robust" / "unet"),
        "evolved": str(out / "evolve" / "unet"),
        "student": str(out / "distill" / "unet"),
        "small_vae": str(out / "decoder" / "vae"),
        "model": str(out / "model"),
    }
    print(f"snapfusion one-shot training: device={args.device} profile={profile} budget={args.budget_minutes} min "
          f"pool={pool_size} out={out}", flush=True)

    # ---- tokenizer (first: the pool workers tokenize with it) ----------------------------
    def st_tokenizer(_: float) -> dict[str, Any]:
        from snapfusion.train.tokenizer import build_world_tokenizer

        return build_world_tokenizer(tok_dir, n_captions=10000, seed=seed, model_max_length=32)

    def st_pool(_: float) -> dict[str, Any]:
        from snapfusion.train.data import get_pool

        t0 = time.perf_counter()
        images, captions, ids = get_pool(data["pool_dir"], pool_size, seed=seed, workers=workers,
                                         progress=progress, tokenizer_dir=tok_dir, partial=args.partial_captions)
        return {"n": len(captions), "seconds": time.perf_counter() - t0, "workers": workers,
                "has_ids": ids is not None}

    def st_clip(budget: float) -> dict[str, Any]:
        from snapfusion.train.clip import CLIPRecipeConfig, train_clip

        cfg = CLIPRecipeConfig(tokenizer=tok_dir, out=paths["clip"], data=data,
                               train=_train_cfg(prof, "clip", budget, seed, overhead, log_every))
        return train_clip(cfg, args.device, progress)

    def st_vae(budget: float) -> dict[str, Any]:
        from snapfusion.train.vae import VAERecipeConfig, train_vae

        cfg = VAERecipeConfig(out=str(out / "vae"), tokenizer=tok_dir, data=data, scale_images=prof["scale_images"],
                              train=_train_cfg(prof, "vae", budget, seed, overhead + 2, log_every))
        cfg.loss.update(prof.get("vae_loss", {}))
        return train_vae(cfg, args.device, progress)

    world_cache: dict[str, Any] = {}

    def more_name(k: int) -> str:
        # continuation k of --teacher-more: its stage (and folder) name
        return "teacher_more" if k == 0 else f"teacher_more{k + 1}"

    def data_more(k: int) -> dict[str, Any]:
        # the fresh pool of continuation k of --teacher-more (the last one also feeds --redistill)
        return {**data, "pool_dir": str(out / ("pool_more" if k == 0 else f"pool_more{k + 1}")),
                "pool_seed": seed + 3 + 2 * k, "pool_size": args.more_pool_size or pool_size}

    def world(d: dict[str, Any] | None = None) -> Any:
        d = data if d is None else d
        key = d["pool_dir"]
        if key not in world_cache:
            from snapfusion.train.world import LatentWorld

            world_cache[key] = LatentWorld(tok_dir, paths["text_encoder"], paths["vae"], env, d,
                                           seed=d["pool_seed"] + 999, progress=progress)
        return world_cache[key]

    def st_teacher(budget: float) -> dict[str, Any]:
        from snapfusion.train.teacher import TeacherRecipeConfig, train_teacher

        cfg = TeacherRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                  out=str(out / "teacher"), data=data,
                                  train=_train_cfg(prof, "teacher", budget, seed, overhead + 2, log_every))
        summary = train_teacher(cfg, args.device, progress, world=world())
        # conditioning check: per-attribute accuracy of teacher samples (colours far above
        # chance show that the text path works)
        summary["eval"] = quick_eval(paths["teacher"], steps=prof["eval"]["teacher_eval_steps"], guidance=4.0)
        return summary

    evaluator_cache: dict[str, Any] = {}

    def evaluator() -> Any:
        if "e" not in evaluator_cache:
            from snapfusion.train.clip import WorldCLIP
            from snapfusion.train.evaluate import WorldEvaluator

            evaluator_cache["e"] = WorldEvaluator(WorldCLIP.load(paths["clip"]), world().tokenizer, env.device,
                                                  n_prompts=prof["eval"]["prompts"], seed=seed + 5,
                                                  ref_images=prof["eval"]["ref_images"])
        return evaluator_cache["e"]

    def quick_eval(unet_dir: str, steps: int, guidance: float, vae_dir: str | None = None) -> dict[str, float]:
        from snapfusion.nn import AutoencoderKL, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(unet_dir).to(env.device).eval()
        unet.check_inputs = False
        vae = AutoencoderKL.from_pretrained(vae_dir).to(env.device).eval() if vae_dir else None
        ev = evaluator()
        images = world().generate(unet, ev.prompts, steps=steps, guidance=guidance, seed=seed + 6, vae=vae)
        res = ev.evaluate(images, accuracy=True)
        res.update(steps=steps, guidance=guidance)
        return res

    def st_robust(budget: float) -> dict[str, Any]:
        from snapfusion.train.robust import RobustRecipeConfig, train_robust

        cfg = RobustRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                 init=paths["teacher"], out=str(out / "robust"), data=data,
                                 train=_train_cfg(prof, "robust", budget, seed, overhead, log_every))
        return train_robust(cfg, args.device, progress, world=world())

    def st_evolve(budget: float) -> dict[str, Any]:
        from snapfusion.train.evolution import EvolveRecipeConfig, evolve

        tcfg = _train_cfg(prof, "evolve", budget, seed, overhead + 2, log_every)
        tcfg.update(ema_decay=0.0, min_lr_ratio=1.0)
        cfg = EvolveRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                 clip=paths["clip"], init=paths["robust"], out=str(out / "evolve"), data=data,
                                 budget=args.latency_budget, latency_table=args.latency_table,
                                 max_params=unet_param_budget(),
                                 measure_latency=args.measure_latency, eval_seed=seed + 3,
                                 train=tcfg, **prof["evolve_opts"])
        return evolve(cfg, args.device, progress, world=world())

    def unet_param_budget() -> int:
        """UNet parameters that keep the fp16 export under MODEL_BYTES_LIMIT (text encoder,
        encoder + small decoder VAE and a 64 KiB margin for configs and headers counted)."""
        from snapfusion.nn import AutoencoderKL, CLIPTextModel
        from snapfusion.train.decoder import small_vae_config

        te = CLIPTextModel.from_pretrained(paths["text_encoder"])
        opts = prof["decoder_opts"]
        vae = AutoencoderKL(small_vae_config(dict(AutoencoderKL.from_pretrained(paths["vae"]).config),
                                             opts.get("decoder_factor", 0.5), opts.get("decoder_groups"),
                                             opts.get("decoder_channels")))
        other = sum(p.numel() for p in te.parameters()) + sum(p.numel() for p in vae.parameters())
        return int((MODEL_BYTES_LIMIT - 65536 - 2 * other) // 2)

    def st_distill(budget: float) -> dict[str, Any]:
        from snapfusion.train.distill import DistillRecipeConfig, distill

        cfg = DistillRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                  teacher=paths["teacher"], student=paths["evolved"], out=str(out / "distill"),
                                  data=data, train=_train_cfg(prof, "distill", budget, seed, overhead, log_every))
        return distill(cfg, args.device, progress, world=world())

    def st_decoder(budget: float) -> dict[str, Any]:
        from snapfusion.train.decoder import DecoderRecipeConfig, distill_decoder

        opts = dict(prof["decoder_opts"])
        cfg = DecoderRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                  teacher=paths["teacher"], out=str(out / "decoder"), data=data,
                                  gen_minutes=0.3 * budget / 60.0, **opts,
                                  train=_train_cfg(prof, "decoder", 0.7 * budget, seed, overhead, log_every))
        return distill_decoder(cfg, args.device, progress, world=world())

    def st_export(_: float) -> dict[str, Any]:
        from snapfusion.train.export import export_pipeline, folder_size_bytes

        summary: dict[str, Any] = {}
        # guidance sweep of the final student (8 steps, small decoder) on the evaluation prompts
        sweep = {}
        for g in prof["eval"]["guidances"]:
            sweep[str(g)] = quick_eval(paths["student"], steps=8, guidance=g, vae_dir=paths["small_vae"])
        best = max(sweep, key=lambda k: (sweep[k]["accuracy"], sweep[k]["clip_score"]))
        summary["student_sweep"] = sweep
        summary["guidance_scale"] = float(best)
        summary["teacher"] = quick_eval(paths["teacher"], steps=prof["eval"]["teacher_steps"], guidance=float(best))
        summary["evolved_8_steps_before_distill"] = quick_eval(paths["evolved"], steps=8, guidance=float(best))
        info = {"num_inference_steps": 8, "guidance_scale": float(best), "prompt_completion": "shapes-world",
                "world_metrics": sweep[best], "trained_with": "scripts/train_default.py",
                "budget_minutes": args.budget_minutes, "device": args.device}
        folder = export_pipeline(paths["model"], tok_dir, paths["text_encoder"], paths["student"],
                                 paths["small_vae"], info=info)
        summary["bytes"] = folder_size_bytes(folder)
        if summary["bytes"] >= MODEL_BYTES_LIMIT:
            print(f"WARNING: exported model is {summary['bytes']} bytes (limit {MODEL_BYTES_LIMIT})", flush=True)
        summary.update(check_engine(folder, float(best)))
        _write_json(out / "final_eval.json", summary)
        return summary

    def check_engine(folder: Path, guidance: float) -> dict[str, Any]:
        res: dict[str, Any] = {}
        try:
            from snapfusion.train.export import verify_export

            res["engine_parity"] = verify_export(folder)
        except ImportError as exc:
            res["engine_parity"] = f"skipped: {exc}"
            return res
        try:
            from snapfusion.pipeline import Pipeline
        except ImportError as exc:
            res["pipeline"] = f"skipped: {exc}"
            return res
        try:
            import numpy as np

            from snapfusion.data import accuracy as attr_accuracy

            pipe = Pipeline.from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            ev = evaluator()
            n = min(prof["eval"]["pipeline_images"], len(ev.prompts))
            t0 = time.perf_counter()
            imgs = [pipe(pr, num_inference_steps=8, guidance_scale=guidance, seed=i, output_type="np").images[0]
                    for i, pr in enumerate(ev.prompts[:n])]
            dt = (time.perf_counter() - t0) / n
            u8 = (np.stack(imgs) * 255).round().astype(np.uint8)
            res["pipeline"] = {"seconds_per_image": dt, "images": n,
                               "accuracy": float(attr_accuracy(u8, ev.prompts[:n])["overall"]),
                               "clip_score": ev.clip_score(u8, ev.prompts[:n])}
            from snapfusion.data import render_grid

            render_grid(u8, ev.prompts[:n], cols=4).save(out / "samples_engine.png")
        except Exception as exc:  # noqa: BLE001 - report, do not lose the trained model
            res["pipeline"] = f"failed: {type(exc).__name__}: {exc}"
        return res

    def st_distill_more(_: float) -> dict[str, Any]:
        # more step distillation of the exported student, on the run's pool, with a fresh data
        # seed; the export is redone with the same recommended settings
        from snapfusion.train.distill import DistillRecipeConfig, distill

        tcfg = _train_cfg(prof, "distill", 60.0 * args.distill_more, seed + 1, overhead, log_every)
        cfg = DistillRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                  teacher=paths["teacher"], student=paths["student"],
                                  out=str(out / "distill_more"), data=data, train=tcfg)
        summary = distill(cfg, args.device, progress, world=world())
        summary["before"] = final.get("student_sweep", {}).get(str(final["guidance_scale"]))
        return reexport(summary, str(out / "distill_more" / "unet"),
                        f"--distill-more {args.distill_more:g}", distill_more_minutes=args.distill_more)

    def reexport(summary: dict[str, Any], unet: str, flags: str, guidance: float | None = None,
                 **extra: float) -> dict[str, Any]:
        # a new student replaces the exported one, with the same recommended settings (or the
        # guidance scale given)
        from snapfusion.train.export import export_pipeline, folder_size_bytes

        best = float(final["guidance_scale"]) if guidance is None else float(guidance)
        summary["after"] = quick_eval(unet, steps=8, guidance=best, vae_dir=paths["small_vae"])
        info = {"num_inference_steps": 8, "guidance_scale": best, "prompt_completion": "shapes-world",
                "world_metrics": summary["after"],
                "trained_with": f"scripts/train_default.py {flags}", "budget_minutes": args.budget_minutes,
                **extra, "device": args.device}
        folder = export_pipeline(paths["model"], tok_dir, paths["text_encoder"], unet, paths["small_vae"],
                                 info=info)
        summary["bytes"] = folder_size_bytes(folder)
        summary.update(check_engine(folder, best))
        return summary

    def st_teacher_more(k: int) -> Callable[[float], dict[str, Any]]:
        # the teacher bounds the student (docs/training.md): more of it, on a fresh pool, at 2/3
        # of the profile's learning rate (it starts trained), 3/4 of that per further continuation
        def stage(_: float) -> dict[str, Any]:
            from snapfusion.train.teacher import TeacherRecipeConfig, train_teacher

            d = data_more(k)
            init = paths["teacher"] if k == 0 else str(out / more_name(k - 1) / "unet")
            tcfg = _train_cfg(prof, "teacher", 60.0 * args.teacher_more[k], d["pool_seed"], overhead, log_every)
            tcfg.update(lr=tcfg["lr"] * 2.0 / 3.0 * 0.75 ** k,
                        warmup_steps=min(100, int(tcfg.get("warmup_steps", 100))))
            cfg = TeacherRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                      init=init, out=str(out / more_name(k)), data=d, train=tcfg)
            summary = train_teacher(cfg, args.device, progress, world=world(d))
            best = float(final["guidance_scale"])
            steps = prof["eval"]["teacher_eval_steps"]
            summary["before"] = quick_eval(init, steps=steps, guidance=best)
            summary["after"] = quick_eval(str(out / more_name(k) / "unet"), steps=steps, guidance=best)
            return summary

        return stage

    def st_redistill(_: float) -> dict[str, Any]:
        # the evolved architecture with the last new teacher's weights (a student distilled on
        # from its old weights barely follows a much better teacher), distilled from that
        # teacher on that teacher's last pool
        from snapfusion.train.distill import DistillRecipeConfig, distill
        from snapfusion.train.evolution import prune_like

        last = len(args.teacher_more) - 1
        d = data_more(last)
        teacher = str(out / more_name(last) / "unet")
        init = prune_like(teacher, paths["evolved"], out / "redistill" / "init")
        tcfg = _train_cfg(prof, "distill", 60.0 * args.redistill, seed + 4, overhead, log_every)
        tcfg.update(lr=2.0 * tcfg["lr"], ema_decay=min(0.995, float(tcfg.get("ema_decay", 0.995))))
        cfg = DistillRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                  teacher=teacher, student=str(init), out=str(out / "redistill"),
                                  data=d, train=tcfg)
        summary = distill(cfg, args.device, progress, world=world(d))
        more = ",".join(f"{m:g}" for m in args.teacher_more)
        return reexport(summary, str(out / "redistill" / "unet"),
                        f"--teacher-more {more} --redistill {args.redistill:g}",
                        teacher_more_minutes=sum(args.teacher_more), redistill_minutes=args.redistill)

    def data_name(k: int) -> str:
        # continuation k of --data-student: its stage (and folder) name
        return "data_student" if k == 0 else f"data_student{k + 1}"

    def data_student_pool(k: int) -> dict[str, Any]:
        return {**data, "pool_dir": str(out / ("pool_data" if k == 0 else f"pool_data{k + 1}")),
                "pool_seed": seed + 9 + 4 * k, "pool_size": args.more_pool_size or pool_size}

    def final_student() -> str:
        # the UNet of the exported model before --data-student
        if args.teacher_more:
            return str(out / "redistill" / "unet")
        if args.distill_more > 0:
            return str(out / "distill_more" / "unet")
        return paths["student"]

    def st_data_student(k: int) -> Callable[[float], dict[str, Any]]:
        # the final student (first without --data-remove's blocks) trained on the world's data
        # with the teacher recipe: v-prediction, min-SNR, caption dropout for guidance
        def stage(_: float) -> dict[str, Any]:
            from snapfusion.nn import UNet2DConditionModel, block_names
            from snapfusion.train.evolution import prune_unet
            from snapfusion.train.teacher import TeacherRecipeConfig, train_teacher

            d = data_student_pool(k)
            stage_dir = out / data_name(k)
            if k == 0:
                init = stage_dir / "init"
                if not (init / "config.json").is_file():
                    unet = UNet2DConditionModel.from_pretrained(final_student())
                    unknown = sorted(set(data_remove) - set(block_names(unet.config)))
                    if unknown:
                        raise SystemExit(f"--data-remove: not blocks of the student: {unknown}")
                    (prune_unet(unet, data_remove) if data_remove else unet).save_pretrained(init)
            else:
                init = out / data_name(k - 1) / "unet"
            tcfg = _train_cfg(prof, "teacher", 60.0 * args.data_student[k], d["pool_seed"], overhead, log_every)
            tcfg.update(lr=tcfg["lr"] * 0.5 / 3.0 ** k, warmup_steps=min(50, int(tcfg.get("warmup_steps", 50))),
                        ema_decay=0.998)
            cfg = TeacherRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                      init=str(init), out=str(stage_dir), data=d, train=tcfg)
            summary = train_teacher(cfg, args.device, progress, world=world(d))
            unet = str(stage_dir / "unet")
            if k < len(args.data_student) - 1:
                return summary
            sweep = {str(g): quick_eval(unet, steps=8, guidance=g, vae_dir=paths["small_vae"])
                     for g in prof["eval"]["guidances"]}
            best = max(sweep, key=lambda g: (sweep[g]["accuracy"], sweep[g]["clip_score"]))
            summary["sweep"] = sweep
            minutes = ",".join(f"{m:g}" for m in args.data_student)
            flags = f"--data-student {minutes}" + (f" --data-remove {','.join(data_remove)}" if data_remove else "")
            return reexport(summary, unet, flags, guidance=float(best), data_student_minutes=sum(args.data_student))

        return stage

    def st_partial_tune(_: float) -> dict[str, Any]:
        # the final student learns prompts that leave out sizes or the background, with its own
        # full-caption predictions as targets, on the pool its last distillation used
        from snapfusion.train.partial import PartialRecipeConfig, tune_partial

        if args.data_student:
            last = len(args.data_student) - 1
            unet, d = str(out / data_name(last) / "unet"), data_student_pool(last)
        elif args.teacher_more:
            unet, d = str(out / "redistill" / "unet"), data_more(len(args.teacher_more) - 1)
        elif args.distill_more > 0:
            unet, d = str(out / "distill_more" / "unet"), data
        else:
            unet, d = paths["student"], data
        tcfg = _train_cfg(prof, "distill", 60.0 * args.partial_tune, seed + 6, overhead, log_every)
        tcfg.update(ema_decay=min(0.998, float(tcfg.get("ema_decay", 0.998))))
        cfg = PartialRecipeConfig(tokenizer=tok_dir, text_encoder=paths["text_encoder"], vae=paths["vae"],
                                  unet=unet, out=str(out / "partial_tune"), data=d, train=tcfg)
        summary = tune_partial(cfg, args.device, progress, world=world(d))
        return reexport(summary, str(out / "partial_tune" / "unet"), f"--partial-tune {args.partial_tune:g}",
                        partial_tune_minutes=args.partial_tune)

    t_all = time.perf_counter()
    run.run_stage("tokenizer", st_tokenizer)
    run.run_stage("pool", st_pool)
    run.run_stage("clip", st_clip)
    run.run_stage("vae", st_vae)
    run.run_stage("teacher", st_teacher)
    run.run_stage("robust", st_robust)
    run.run_stage("evolve", st_evolve)
    run.run_stage("distill", st_distill)
    run.run_stage("decoder", st_decoder)
    final = run.run_stage("export", st_export)
    if args.distill_more > 0:
        more = run.run_stage("distill_more", st_distill_more)
        final = {**final, "bytes": more.get("bytes")}
    for k in range(len(args.teacher_more)):
        run.run_stage(more_name(k), st_teacher_more(k))
    if args.teacher_more:
        more = run.run_stage("redistill", st_redistill)
        final = {**final, "bytes": more.get("bytes")}
    for k in range(len(args.data_student)):
        more = run.run_stage(data_name(k), st_data_student(k))
    if args.data_student:
        final = {**final, "bytes": more.get("bytes"), "guidance_scale": more["after"]["guidance"]}
    if args.partial_tune > 0:
        more = run.run_stage("partial_tune", st_partial_tune)
        final = {**final, "bytes": more.get("bytes")}
    if args.ship:
        ship(Path(paths["model"]), Path(paths["clip"]))
    print(json.dumps({"session_seconds": round(time.perf_counter() - t_all, 1),
                      "run_seconds": round(run.elapsed(), 1),
                      "stages": {k: round(v["seconds"], 1) for k, v in run.times["stages"].items()},
                      "model": paths["model"], "bytes": final.get("bytes"),
                      "guidance_scale": final.get("guidance_scale")}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
