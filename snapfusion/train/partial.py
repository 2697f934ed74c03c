"""Partial-caption tuning: teach a finished (student) UNet prompts that leave attributes out.

The world's training captions state every object's size and the background. A model trained
on them reads a prompt such as ``"a red circle above a small blue square"`` out of its
distribution: with no background clause it takes the last colour word, ``blue``, for the
background. This recipe fine-tunes the model by **self-distillation with marginalised
captions**:

1. ``z_t = alpha_t z0 + sigma_t eps`` from VAE latents of world images (fully captioned), ``t``
   uniform over the student's sampling timesteps (``steps``; 0: all training timesteps);
2. the **target** is the frozen starting model's prediction for the *full* caption,
   ``v_ref(z_t, t, full)``;
3. the **input** caption is a partial paraphrase of the full one
   (:func:`snapfusion.data.partial_caption`: background and each size left out with
   probability ``partial_captions`` each), the full caption itself when nothing is left out,
   or the empty caption with probability ``caption_dropout`` (the target then is
   ``v_ref(z_t, t, empty)``, which keeps the unconditional branch that guidance uses);
4. loss ``max(SNR_t, 1) * |x_model - x_ref|^2`` in clean-latent space, as in step distillation.

For a partial caption ``c_p`` the images behind the batch are distributed as the world draws
them given ``c_p``, so the loss's minimiser is ``E[v_ref(z_t, t, c) | z_t, c_p]``: the model
learns to average the full-caption predictions over the completions the image supports,
which is what a model trained on partial captions from the start would predict. Full
captions have their own prediction as target, so what the model already draws is kept.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .common import TrainConfig, Trainer, config_dict, load_config, setup_env, step_generator, step_rng
from .diffusion import NUM_TRAIN_TIMESTEPS, trailing_timesteps, truncated_snr_weight
from .world import LatentWorld, freeze

__all__ = ["PartialRecipeConfig", "partial_captions_batch", "partial_loss", "tune_partial"]


@dataclass
class PartialRecipeConfig:
    """Settings of the partial-caption tuning recipe.

    Attributes:
        tokenizer, text_encoder, vae: frozen parts (folders).
        unet: the UNet to tune (its starting weights are also the frozen reference).
        out: output folder (model in ``out/unet``).
        steps: sampling steps whose trailing timesteps are trained (0: all training timesteps).
        partial_captions: probability of leaving out the background and, independently, each
            object's size.
        caption_dropout: probability of the empty caption.
        trainable: name substrings of the parameters to tune (empty: all), e.g. ``["attn2"]``
            for the cross-attention layers only.
        data: world data settings (a pool is required: its captions are rewritten).
        train: :class:`TrainConfig` fields.
    """

    tokenizer: str = ""
    text_encoder: str = ""
    vae: str = ""
    unet: str = ""
    out: str = ""
    steps: int = 8
    partial_captions: float = 0.5
    caption_dropout: float = 0.1
    trainable: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=lambda: {"lr": 5e-5, "batch_size": 64, "max_steps": 1000,
                                                           "warmup_steps": 50, "ema_decay": 0.999,
                                                           "weight_decay": 0.0})


def partial_captions_batch(captions: Sequence[str], rng: np.random.Generator, p: float) -> list[str]:
    """:func:`snapfusion.data.partial_caption` of every caption."""
    from snapfusion.data import partial_caption

    return [partial_caption(c, rng, p) for c in captions]


def partial_loss(model: nn.Module, reference: nn.Module, world: LatentWorld, z0: torch.Tensor,
                 full_ids: torch.Tensor, input_ids: torch.Tensor, step: int, seed: int,
                 cfg: PartialRecipeConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loss of one batch (see the module docstring).

    Args:
        full_ids: token ids of the full captions (the reference's conditioning).
        input_ids: token ids the tuned model sees (partial, full or empty captions).

    Returns:
        ``(loss, logs)``.
    """
    env = world.env
    sch = world.schedule
    g = step_generator(seed, env.rank, step, 4, env.device)
    b = z0.shape[0]
    if cfg.steps:
        steps = torch.tensor(trailing_timesteps(cfg.steps), device=env.device)
        t = steps[torch.randint(0, len(steps), (b,), generator=g, device=env.device)]
    else:
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=g, device=env.device)
    noise = torch.randn(z0.shape, generator=g, device=env.device)
    zt = sch.add_noise(z0, noise, t)
    dropped = torch.rand(b, generator=g, device=env.device) < cfg.caption_dropout
    # dropped rows: the empty caption for both the model and the reference
    full_ids = torch.where(dropped[:, None], world.data.empty_ids.expand_as(full_ids), full_ids)
    input_ids = torch.where(dropped[:, None], world.data.empty_ids.expand_as(input_ids), input_ids)
    a_t, s_t = sch.alpha_sigma(t)
    with torch.no_grad(), world.autocast():
        v_ref = reference(zt, t, world.text_states(full_ids)).float()
    x_ref = a_t * zt - s_t * v_ref
    cond = world.text_states(input_ids)
    with world.autocast():
        v = model(zt, t, cond).float()
    x = a_t * zt - s_t * v
    per = (x - x_ref).pow(2).mean(dim=(1, 2, 3))
    loss = (truncated_snr_weight(sch.snr(t)) * per).mean()
    changed = (input_ids != full_ids).any(dim=1).float().mean()
    return loss, {"x_mse": per.mean().detach(), "partial": changed.detach()}


def tune_partial(cfg: PartialRecipeConfig, device: str = "cpu", progress: bool = True,
                 world: LatentWorld | None = None) -> dict[str, Any]:
    """Tune ``cfg.unet`` on partial captions; saves EMA weights to ``out/unet`` (resumable).

    Returns:
        Summary dict (steps, first/final loss, elapsed seconds, tuned parameters).

    Raises:
        ValueError: bad settings, or a world without a pool.
    """
    from snapfusion.data.captions import check_probability
    from snapfusion.nn import UNet2DConditionModel

    env = setup_env(device)
    tcfg = load_config(TrainConfig, cfg.train)
    p = check_probability(cfg.partial_captions, "partial_captions")
    check_probability(cfg.caption_dropout, "caption_dropout")
    if isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or not 0 <= cfg.steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be an int in [0, {NUM_TRAIN_TIMESTEPS}], got {cfg.steps!r}")
    if not isinstance(cfg.trainable, (list, tuple)) or not all(isinstance(s, str) and s for s in cfg.trainable):
        raise ValueError(f"trainable must be a list of non-empty strings, got {cfg.trainable!r}")
    if world is None:
        world = LatentWorld(cfg.tokenizer, cfg.text_encoder, cfg.vae, env, cfg.data, seed=tcfg.seed + 909,
                            bf16=tcfg.bf16, progress=progress)
    if world.data.pool_captions is None:
        raise ValueError("partial-caption tuning needs a data pool (data.pool_dir and data.pool_size)")
    model = UNet2DConditionModel.from_pretrained(cfg.unet).to(env.device)
    model.check_inputs = False
    reference = freeze(copy.deepcopy(model))
    params = None
    if cfg.trainable:
        for name, prm in model.named_parameters():
            prm.requires_grad_(any(s in name for s in cfg.trainable))
        params = [prm for prm in model.parameters() if prm.requires_grad]
        if not params:
            raise ValueError(f"no parameter name contains any of {cfg.trainable}")
    n_tuned = sum(prm.numel() for prm in (params if params is not None else model.parameters()))
    trainer = Trainer("partial", Path(cfg.out), model, tcfg, env, params=params, progress=progress)

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        z0, b = world.sample(step, tcfg.batch_size)
        texts = partial_captions_batch(b.captions, step_rng(tcfg.seed, env.rank, step, 6), p)
        return partial_loss(trainer.ddp_model, reference, world, z0, b.ids, world.data.tokenize(texts), step,
                            tcfg.seed, cfg)

    res = trainer.run(step_fn, plot_keys=("loss", "x_mse"))
    summary = {"steps": res.steps, "first_loss": res.first_loss, "final_loss": res.final_loss,
               "elapsed": res.elapsed, "tuned_params": n_tuned}
    if env.is_main:
        out = Path(cfg.out)
        with trainer.ema_weights() as m:
            m.save_pretrained(out / "unet")
        (out / "recipe_config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train partial --config cfg.json [--device cuda]``."""
    ap = argparse.ArgumentParser(prog="python -m snapfusion.train partial")
    ap.add_argument("--config", required=True, help="JSON of PartialRecipeConfig fields")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args(argv)
    print(json.dumps(tune_partial(load_config(PartialRecipeConfig, args.config), args.device)))
    return 0
