"""Teacher recipe: the SD-v1.5-topology UNet (scaled down) trained on VAE latents of the world.

* Objective: **v-prediction** (``v = alpha eps - sigma z0``) with **min-SNR-5 weighting**
  (Hang et al. 2023; weights ``min(SNR, 5) / (SNR + 1)`` normalised to mean 1 over t),
  timesteps uniform over the 1000 training steps of the SD schedule.
* Conditioning: the frozen world-CLIP text tower's ``last_hidden_state`` through
  cross-attention; captions are replaced by the empty caption with probability 0.1 so that
  classifier-free guidance works.
* EMA of the weights (decay 0.999 by default); the EMA weights are saved as ``out/unet``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .common import TrainConfig, Trainer, config_dict, load_config, setup_env
from .world import DiffusionLossConfig, LatentWorld, default_unet_config, diffusion_loss

__all__ = ["TeacherRecipeConfig", "train_teacher", "save_unet"]


@dataclass
class TeacherRecipeConfig:
    """Settings of the teacher recipe.

    Attributes:
        tokenizer: tokenizer folder.
        text_encoder: frozen text encoder folder (the world CLIP's ``text_encoder``).
        vae: VAE folder.
        out: output folder (model in ``out/unet``).
        unet: UNet config (default :func:`default_unet_config` with the text width); the
            ``cross_attention_dim`` is set from the text encoder when absent.
        init: optional UNet folder to start from.
        loss: :class:`DiffusionLossConfig` fields.
        data: world data settings.
        train: :class:`TrainConfig` fields.
    """

    tokenizer: str = ""
    text_encoder: str = ""
    vae: str = ""
    out: str = ""
    unet: dict[str, Any] | None = None
    init: str | None = None
    loss: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=lambda: {"lr": 5e-4, "batch_size": 64, "max_steps": 5000,
                                                           "warmup_steps": 200, "ema_decay": 0.999,
                                                           "weight_decay": 0.01})


def save_unet(model: torch.nn.Module, folder: str | Path) -> None:
    """``save_pretrained`` in float32."""
    model.save_pretrained(folder)


def train_teacher(cfg: TeacherRecipeConfig, device: str = "cpu", progress: bool = True,
                  world: LatentWorld | None = None) -> dict[str, Any]:
    """Train the teacher UNet; saves the EMA weights to ``out/unet`` (resumable).

    Returns:
        Summary dict (steps, first/final loss, images seen, elapsed seconds).
    """
    from snapfusion.nn import UNet2DConditionModel

    env = setup_env(device)
    tcfg = load_config(TrainConfig, cfg.train)
    lcfg = load_config(DiffusionLossConfig, cfg.loss)
    if world is None:
        world = LatentWorld(cfg.tokenizer, cfg.text_encoder, cfg.vae, env, cfg.data, seed=tcfg.seed + 303,
                            bf16=tcfg.bf16, progress=progress)
    width = world.text_encoder.resolved["hidden_size"]
    torch.manual_seed(tcfg.seed)
    if cfg.init:
        unet = UNet2DConditionModel.from_pretrained(cfg.init)
    else:
        ucfg = dict(cfg.unet) if cfg.unet is not None else default_unet_config(width)
        ucfg.setdefault("cross_attention_dim", width)
        unet = UNet2DConditionModel(ucfg)
    unet = unet.to(env.device)
    unet.check_inputs = False  # the finiteness check syncs the GPU every call
    out = Path(cfg.out)
    trainer = Trainer("teacher", out, unet, tcfg, env, progress=progress)

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        z0, ids = world.batch(step, tcfg.batch_size)
        return diffusion_loss(trainer.ddp_model, world, z0, ids, step, tcfg.seed, lcfg)

    res = trainer.run(step_fn, plot_keys=("loss", "mse"))
    summary = {"steps": res.steps, "first_loss": res.first_loss, "final_loss": res.final_loss,
               "images": res.steps * tcfg.batch_size * env.world_size, "elapsed": res.elapsed,
               "params": sum(p.numel() for p in unet.parameters())}
    if env.is_main:
        with trainer.ema_weights() as model:
            save_unet(model, out / "unet")
        (out / "recipe_config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train teacher --config cfg.json [--device cuda]``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train teacher")
    p.add_argument("--config", required=True, help="JSON of TeacherRecipeConfig fields")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    print(json.dumps(train_teacher(load_config(TeacherRecipeConfig, args.config), args.device)))
    return 0
