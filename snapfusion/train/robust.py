"""Robust training (SnapFusion section 3.2): stochastic forward propagation.

The UNet is fine-tuned with every droppable cross-attention (``Transformer2DModel``) and
ResNet block skipped with a configurable probability, independently, once per forward call
(:meth:`snapfusion.nn.UNet2DConditionModel.set_block_drop`), so that the network learns
to survive the removals that architecture evolution will make permanent. The objective is
the teacher's denoising loss plus, by default, matching the frozen full teacher's output
(``kd_weight``), which keeps the full network's predictions while sub-networks improve.
The block-drop decisions of step ``s`` come from a generator seeded by ``(seed, s)`` (the
same on every rank, so DDP ranks run the same sub-network).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .common import TrainConfig, Trainer, config_dict, load_config, setup_env, step_generator
from .world import DiffusionLossConfig, LatentWorld, diffusion_loss, freeze

__all__ = ["RobustRecipeConfig", "train_robust", "DropConfig", "apply_drop"]


@dataclass
class DropConfig:
    """Block-drop probabilities.

    Attributes:
        resnet_p: probability of skipping each droppable ResNet block.
        attention_p: probability of skipping each cross-attention block.
        probs: per-block overrides (block id -> probability).
    """

    resnet_p: float = 0.1
    attention_p: float = 0.1
    probs: dict[str, float] = field(default_factory=dict)


def apply_drop(unet: torch.nn.Module, drop: DropConfig, forced: Sequence[str] = ()) -> None:
    """Configure ``unet.set_block_drop`` with ``drop`` and blocks ``forced`` to probability 1."""
    probs: dict[str, float] = dict(drop.probs)
    probs.update({b: 1.0 for b in forced})
    unet.set_block_drop(resnet_p=drop.resnet_p, attention_p=drop.attention_p, probs=probs)


@dataclass
class RobustRecipeConfig:
    """Settings of the robust-training recipe.

    Attributes:
        tokenizer, text_encoder, vae: frozen parts (folders).
        init: UNet folder to fine-tune (the teacher).
        out: output folder (model in ``out/unet``).
        drop: :class:`DropConfig` fields.
        kd_weight: weight of the output distillation from the frozen ``init`` network.
        loss: :class:`DiffusionLossConfig` fields.
        data: world data settings.
        train: :class:`TrainConfig` fields.
    """

    tokenizer: str = ""
    text_encoder: str = ""
    vae: str = ""
    init: str = ""
    out: str = ""
    drop: dict[str, Any] = field(default_factory=dict)
    kd_weight: float = 1.0
    loss: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=lambda: {"lr": 1e-4, "batch_size": 64, "max_steps": 1000,
                                                           "warmup_steps": 50, "ema_decay": 0.999,
                                                           "weight_decay": 0.01})


def drop_generator(seed: int, step: int) -> torch.Generator:
    """The block-drop generator of a step (rank-independent; on the CPU, so drawing the
    decisions never waits for the GPU)."""
    return step_generator(seed, 0, step, 3, "cpu")


def train_robust(cfg: RobustRecipeConfig, device: str = "cpu", progress: bool = True,
                 world: LatentWorld | None = None) -> dict[str, Any]:
    """Robust-train the UNet; saves EMA weights to ``out/unet`` (resumable).

    Returns:
        Summary dict; ``drop_counts`` counts how often each block was skipped.
    """
    from snapfusion.nn import UNet2DConditionModel

    env = setup_env(device)
    tcfg = load_config(TrainConfig, cfg.train)
    lcfg = load_config(DiffusionLossConfig, cfg.loss)
    dcfg = load_config(DropConfig, cfg.drop)
    if world is None:
        world = LatentWorld(cfg.tokenizer, cfg.text_encoder, cfg.vae, env, cfg.data, seed=tcfg.seed + 404,
                            bf16=tcfg.bf16, progress=progress)
    unet = UNet2DConditionModel.from_pretrained(cfg.init).to(env.device)
    unet.check_inputs = False
    teacher = None
    if cfg.kd_weight > 0:
        teacher = freeze(UNet2DConditionModel.from_pretrained(cfg.init).to(env.device))
        teacher.check_inputs = False
    apply_drop(unet, dcfg)
    out = Path(cfg.out)
    counts: dict[str, int] = {n: 0 for n in unet.droppable_blocks}
    trainer = Trainer("robust", out, unet, tcfg, env, find_unused_parameters=True, progress=progress,
                      extra_state=(lambda: {"drop_counts": dict(counts)},
                                   lambda s: counts.update(s.get("drop_counts", {}))))

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        z0, ids = world.batch(step, tcfg.batch_size)
        loss, logs = diffusion_loss(trainer.ddp_model, world, z0, ids, step, tcfg.seed, lcfg, teacher,
                                    cfg.kd_weight, drop_generator=drop_generator(tcfg.seed, step))
        for name in unet.last_dropped_blocks:
            counts[name] += 1
        logs["dropped"] = float(len(unet.last_dropped_blocks))
        return loss, logs

    res = trainer.run(step_fn, plot_keys=("loss", "mse", "kd"))
    summary = {"steps": res.steps, "first_loss": res.first_loss, "final_loss": res.final_loss,
               "elapsed": res.elapsed, "drop_counts": counts}
    if env.is_main:
        with trainer.ema_weights() as model:
            model.set_block_drop()  # the saved config carries no drop settings anyway
            model.save_pretrained(out / "unet")
        (out / "recipe_config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    apply_drop(unet, dcfg)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train robust --config cfg.json [--device cuda]``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train robust")
    p.add_argument("--config", required=True, help="JSON of RobustRecipeConfig fields")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    print(json.dumps(train_robust(load_config(RobustRecipeConfig, args.config), args.device)))
    return 0

