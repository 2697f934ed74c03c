"""Step distillation (SnapFusion section 4): a many-step teacher -> an 8-step student.

Student timesteps are the 8 "trailing" DDIM timesteps (999, 874, ..., 124) the exported
scheduler uses; a student step goes from ``t`` to ``t' = t - 125`` (``-1`` = the clean end).
Per training batch:

1. ``z_t = alpha_t z0 + sigma_t eps`` from VAE latents of world images, ``t`` uniform over the
   student timesteps;
2. the frozen teacher takes **two DDIM steps** ``t -> t - 62 -> t'`` (v-prediction);
3. the target is the clean-latent estimate ``x`` for which a single DDIM step from ``z_t``
   lands on the teacher's ``z_t'``:
   ``x = (z_t' - (sigma_t'/sigma_t) z_t) / (alpha_t' - (sigma_t'/sigma_t) alpha_t)``;
4. loss ``max(SNR_t, 1) * |x_student - x|^2`` with ``x_student = alpha_t z_t - sigma_t v_student``
   (the truncated-SNR weighting of progressive distillation).

**Vanilla** loss: teacher and student are conditional (with 10 % caption dropout, so the
student also learns the unconditional branch that CFG needs). **CFG-aware** loss (used for a
batch with probability ``cfg_prob``, default 0.1 as in the paper): a guidance scale ``w`` is
drawn uniformly from ``guidance_range`` (default [2, 14]); the teacher's two steps use its
CFG output ``v_u + w (v_c - v_u)`` and the student's prediction is its own CFG combination with
the same ``w``, so the distilled student is correct *after* guidance.

Departures from the paper: the teacher is our v-prediction teacher (the paper first
fine-tunes SD-v1.5 to v-prediction); the student starts from the evolved UNet's weights and
the teacher is the full teacher UNet (``teacher``), so step distillation also recovers
what pruning lost.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import TrainConfig, Trainer, config_dict, load_config, setup_env, step_generator
from .diffusion import NUM_TRAIN_TIMESTEPS, trailing_timesteps, truncated_snr_weight
from .world import LatentWorld, freeze

__all__ = ["DistillRecipeConfig", "distill", "distill_loss"]


@dataclass
class DistillRecipeConfig:
    """Settings of the step-distillation recipe.

    Attributes:
        tokenizer, text_encoder, vae: frozen parts (folders).
        teacher: teacher UNet folder.
        student: student UNet folder (its initial weights; default the teacher).
        out: output folder (model in ``out/unet``).
        student_steps: sampling steps of the student.
        teacher_substeps: DDIM steps the teacher takes per student step.
        cfg_prob: probability that a batch uses the CFG-aware loss.
        guidance_range: range of the guidance scale drawn per CFG-aware batch.
        caption_dropout: caption dropout of vanilla batches.
        data: world data settings.
        train: :class:`TrainConfig` fields.
    """

    tokenizer: str = ""
    text_encoder: str = ""
    vae: str = ""
    teacher: str = ""
    student: str | None = None
    out: str = ""
    student_steps: int = 8
    teacher_substeps: int = 2
    cfg_prob: float = 0.1
    guidance_range: tuple[float, float] = (2.0, 14.0)
    caption_dropout: float = 0.1
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=lambda: {"lr": 5e-5, "batch_size": 64, "max_steps": 1000,
                                                           "warmup_steps": 50, "ema_decay": 0.999,
                                                           "weight_decay": 0.0})


def distill_loss(student: nn.Module, teacher: nn.Module, world: LatentWorld, z0: torch.Tensor, ids: torch.Tensor,
                 step: int, seed: int, cfg: DistillRecipeConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The distillation loss of one batch (vanilla or, with probability ``cfg_prob``, CFG-aware).

    Returns:
        ``(loss, logs)``; ``logs["cfg"]`` is 1.0 for a CFG-aware batch, and
        ``logs["w"]`` its guidance scale (1.0 for vanilla batches).
    """
    env = world.env
    sch = world.schedule
    g = step_generator(seed, env.rank, step, 4, env.device)
    # branch choice and guidance from a CPU generator (no GPU sync)
    gc = step_generator(seed, 0, step, 5, "cpu")
    use_cfg = bool(torch.rand((), generator=gc) < cfg.cfg_prob)
    lo, hi = cfg.guidance_range
    w = float(lo + (hi - lo) * torch.rand((), generator=gc)) if use_cfg else 1.0
    b = z0.shape[0]
    steps = trailing_timesteps(cfg.student_steps)
    jump = NUM_TRAIN_TIMESTEPS // cfg.student_steps
    k = torch.randint(0, len(steps), (b,), generator=g, device=env.device)
    t = torch.tensor(steps, device=env.device)[k]
    t_next = (t - jump).clamp(min=-1)
    noise = torch.randn(z0.shape, generator=g, device=env.device)
    zt = sch.add_noise(z0, noise, t)
    if not use_cfg:
        ids = world.data.drop_captions(ids, cfg.caption_dropout, g)
    cond = world.text_states(ids)
    unc = world.empty_states(b) if use_cfg else None

    def guided(model: nn.Module, z: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        if not use_cfg:
            return model(z, tt, cond).float()
        out = model(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([unc, cond])).float()
        u, c = out.chunk(2)
        return u + w * (c - u)

    # teacher: `teacher_substeps` DDIM steps from t to t_next
    with torch.no_grad():
        z = zt
        cur = t
        for i in range(cfg.teacher_substeps):
            nxt = t - (jump * (i + 1)) // cfg.teacher_substeps
            nxt = torch.where(nxt < 0, torch.full_like(nxt, -1), nxt)
            if i == cfg.teacher_substeps - 1:
                nxt = t_next
            with world.autocast():
                v = guided(teacher, z, cur)
            z = sch.ddim_step(z, v, cur, nxt)
            cur = nxt
        a_t, s_t = sch.alpha_sigma(t)
        a_n, s_n = sch.alpha_sigma(t_next)
        ratio = s_n / s_t
        x_target = (z - ratio * zt) / (a_n - ratio * a_t)
    with world.autocast():
        v_s = guided(student, zt, t)
    x_student = a_t * zt - s_t * v_s
    weight = truncated_snr_weight(sch.snr(t))
    per = (x_student - x_target).pow(2).mean(dim=(1, 2, 3))
    loss = (weight * per).mean()
    return loss, {"cfg": float(use_cfg), "w": w, "x_mse": per.mean().detach()}


def distill(cfg: DistillRecipeConfig, device: str = "cpu", progress: bool = True,
            world: LatentWorld | None = None) -> dict[str, Any]:
    """Step-distil the student; saves EMA weights to ``out/unet`` (resumable).

    Returns:
        Summary dict (steps, losses, number of CFG-aware batches).
    """
    from snapfusion.nn import UNet2DConditionModel

    env = setup_env(device)
    tcfg = load_config(TrainConfig, cfg.train)
    if cfg.teacher_substeps < 1 or cfg.student_steps < 1:
        raise ValueError("student_steps and teacher_substeps must be >= 1")
    if not 0.0 <= cfg.cfg_prob <= 1.0:
        raise ValueError(f"cfg_prob must be in [0, 1], got {cfg.cfg_prob}")
    if world is None:
        world = LatentWorld(cfg.tokenizer, cfg.text_encoder, cfg.vae, env, cfg.data, seed=tcfg.seed + 606,
                            bf16=tcfg.bf16, progress=progress)
    teacher = freeze(UNet2DConditionModel.from_pretrained(cfg.teacher).to(env.device))
    teacher.check_inputs = False
    student = UNet2DConditionModel.from_pretrained(cfg.student or cfg.teacher).to(env.device)
    student.check_inputs = False
    out = Path(cfg.out)
    counts = {"cfg_batches": 0}
    trainer = Trainer("distill", out, student, tcfg, env, progress=progress,
                      extra_state=(lambda: dict(counts), lambda s: counts.update(s)))

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        z0, ids = world.batch(step, tcfg.batch_size)
        loss, logs = distill_loss(trainer.ddp_model, teacher, world, z0, ids, step, tcfg.seed, cfg)
        counts["cfg_batches"] += int(logs["cfg"])
        return loss, logs

    res = trainer.run(step_fn, plot_keys=("loss", "x_mse"))
    summary = {"steps": res.steps, "first_loss": res.first_loss, "final_loss": res.final_loss,
               "elapsed": res.elapsed, "cfg_batches": counts["cfg_batches"]}
    if env.is_main:
        with trainer.ema_weights() as model:
            model.save_pretrained(out / "unet")
        (out / "recipe_config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train distill --config cfg.json [--device cuda]``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train distill")
    p.add_argument("--config", required=True, help="JSON of DistillRecipeConfig fields")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    print(json.dumps(distill(load_config(DistillRecipeConfig, args.config), args.device)))
    return 0
