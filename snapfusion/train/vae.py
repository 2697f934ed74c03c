"""VAE recipe: a diffusers ``AutoencoderKL`` with 4 latent channels and f = 4 on world images.

Loss per image: ``l1 * |x' - x| + l2 * (x' - x)^2 + edge * |grad x' - grad x|`` (means over
pixels; ``grad`` = horizontal and vertical finite differences, a cheap perceptual-ish term
that keeps shape edges sharp) ``+ kl * KL(q(z|x) || N(0, 1))`` (mean over latent elements).
The decoder sees a posterior sample ``z = mean + std * eps`` during training.

With ``fg > 0`` the pixel means become weighted means, pixel weight ``1 + fg * m`` where ``m``
is a soft foreground mask (:func:`foreground_weight`: colour distance from the image's border
median, dilated by one pixel). World objects cover a few percent of the pixels, so with plain
means a VAE learns the background first and blurs small shapes: a small cross comes back as a
diamond. ``fg`` is meant for images on a plain background like the world's; 0 turns it off.

After training, ``scaling_factor`` = 1 / std of the posterior means over a batch of
images is measured and written into the saved ``config.json`` (SD's 0.18215 was measured
the same way); the diffusion recipes use ``mean * scaling_factor`` as latents.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import TrainConfig, Trainer, autocast_ctx, config_dict, load_config, setup_env, step_generator
from .data import WorldData, make_world_data, psnr_uint8, to_float_images, to_uint8_images

__all__ = ["VAERecipeConfig", "default_vae_config", "foreground_weight", "train_vae", "vae_loss",
           "measure_scaling_factor"]


#: Weights a VAE loss config may set (:func:`vae_loss`).
LOSS_KEYS = frozenset({"l1", "l2", "edge", "kl", "fg"})


def default_vae_config() -> dict[str, Any]:
    """Default VAE: (32, 64, 64) channels, 3 levels (f = 4), 4 latent channels."""
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": 64,
        "scaling_factor": 1.0,
        "mid_block_add_attention": True,
    }


def foreground_weight(x: torch.Tensor, fg: float, threshold: float = 0.1) -> torch.Tensor | None:
    """Per-pixel loss weights ``1 + fg * m`` of images on a plain background.

    Args:
        x: float images ``[B, C, H, W]`` in [-1, 1].
        fg: extra weight of foreground pixels (``<= 0``: no weighting, returns ``None``).
        threshold: colour distance (max over channels, in [-1, 1] units) from the background
            at which a pixel counts fully as foreground; nearer pixels count in proportion.

    Returns:
        ``[B, 1, H, W]`` weights, or ``None`` when ``fg <= 0``. The background colour of an
        image is the per-channel median of its border pixels; the mask is dilated by one pixel
        so that colour bleeding around a shape is penalised too.
    """
    if not fg > 0:
        return None
    x = x.detach().float()
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    bg = border.median(dim=-1).values[..., None, None]
    m = ((x - bg).abs().amax(dim=1, keepdim=True) / threshold).clamp(max=1.0)
    m = torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)
    return 1.0 + fg * m


def weighted_mean(e: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``e`` (``[B, C, H, W]``) weighted by ``w`` (``[B, 1, H, W]``; ``None``: plain mean)."""
    if w is None:
        return e.mean()
    return (e * w).mean() / w.mean()


def vae_loss(vae: torch.nn.Module, x: torch.Tensor, weights: dict[str, float],
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The VAE training loss of a batch ``x`` (float ``[B, 3, H, W]`` in [-1, 1])."""
    mean, logvar = vae.encode(x)
    z = vae.sample_latent(mean.float(), logvar.float(), generator)
    rec = vae.decode(z.to(mean.dtype)).float()
    x = x.float()
    w = foreground_weight(x, weights.get("fg", 0.0))
    l1 = weighted_mean((rec - x).abs(), w)
    l2 = weighted_mean((rec - x).pow(2), w)

    def grads(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a[..., 1:, :] - a[..., :-1, :], a[..., :, 1:] - a[..., :, :-1]

    (ry, rx), (xy, xx) = grads(rec), grads(x)
    wy, wx = (None, None) if w is None else (w[..., 1:, :], w[..., :, 1:])
    edge = 0.5 * (weighted_mean((ry - xy).abs(), wy) + weighted_mean((rx - xx).abs(), wx))
    lv = logvar.float()
    kl = 0.5 * (mean.float().pow(2) + lv.exp() - 1.0 - lv).mean()
    loss = (weights.get("l1", 1.0) * l1 + weights.get("l2", 1.0) * l2 + weights.get("edge", 0.5) * edge
            + weights.get("kl", 1e-6) * kl)
    return loss, {"l1": l1.detach(), "l2": l2.detach(), "kl": kl.detach()}


@torch.no_grad()
def measure_scaling_factor(vae: torch.nn.Module, data: WorldData, n: int = 2048, batch: int = 256,
                           step: int = 10 ** 9) -> float:
    """``1 / std`` of the posterior means of ``n`` images (float)."""
    vals = []
    done = 0
    k = 0
    while done < n:
        m = min(batch, n - done)
        b = data.batch(step + k, m, stream=7)
        mean, _ = vae.encode(to_float_images(b.images))
        vals.append(mean.float().flatten().cpu())
        done += m
        k += 1
    std = float(torch.cat(vals).std())
    if not std > 0:
        raise FloatingPointError("latents have zero spread; the VAE is degenerate")
    return 1.0 / std


@dataclass
class VAERecipeConfig:
    """Settings of the VAE recipe.

    Attributes:
        out: output folder (the model is saved to ``out/vae``).
        vae: ``AutoencoderKL`` config (default :func:`default_vae_config`).
        init: optional folder of a trained ``AutoencoderKL`` to start from (fine-tuning);
            its config replaces ``vae``.
        loss: weights ``l1``, ``l2``, ``edge``, ``kl`` and ``fg`` (foreground weighting, see
            :func:`foreground_weight`; 0 = off).
        tokenizer: tokenizer folder (only to read captions of fresh draws; may be empty).
        data: world data settings.
        scale_images: images used to measure ``scaling_factor``.
        train: :class:`TrainConfig` fields.
    """

    out: str = ""
    vae: dict[str, Any] = field(default_factory=default_vae_config)
    init: str = ""
    loss: dict[str, float] = field(default_factory=lambda: {"l1": 1.0, "l2": 1.0, "edge": 0.5, "kl": 1e-6,
                                                            "fg": 0.0})
    tokenizer: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    scale_images: int = 2048
    train: dict[str, Any] = field(default_factory=lambda: {"lr": 1e-3, "batch_size": 64, "max_steps": 2000,
                                                           "warmup_steps": 100, "ema_decay": 0.999,
                                                           "weight_decay": 0.0})


class _NullTokenizer:
    """Stands in for a tokenizer when only images are needed."""

    model_max_length = 2
    eos_token_id = 0

    def __len__(self) -> int:
        return 1

    def __call__(self, texts: Sequence[str]) -> Any:
        import numpy as np

        return np.zeros((len(texts), 2), dtype=np.int64)


def train_vae(cfg: VAERecipeConfig, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train the VAE, measure ``scaling_factor``, save ``out/vae`` (resumable).

    Returns:
        Summary dict (steps, losses, scaling factor, reconstruction L1 of the EMA model).
    """
    from snapfusion.nn import AutoencoderKL

    env = setup_env(device)
    tcfg = load_config(TrainConfig, cfg.train)
    unknown = set(cfg.loss) - LOSS_KEYS
    if unknown:
        raise ValueError(f"unknown VAE loss weights: {sorted(unknown)}")
    tok: Any = _NullTokenizer()
    if cfg.tokenizer:
        from snapfusion.tokenizer import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(cfg.tokenizer)
    torch.manual_seed(tcfg.seed)
    vae = (AutoencoderKL.from_pretrained(cfg.init) if cfg.init else AutoencoderKL(cfg.vae)).to(env.device)
    data = make_world_data(tok, cfg.data, tcfg.seed + 202, env.rank, env.device, progress and env.is_main,
                           tokenizer_dir=cfg.tokenizer or None)
    out = Path(cfg.out)

    class _Loss(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
            return vae_loss(self.m, x, cfg.loss, g)

    trainer = Trainer("vae", out, vae, tcfg, env, forward_module=_Loss(vae), progress=progress)

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        b = data.batch(step, tcfg.batch_size)
        x = to_float_images(b.images)
        g = step_generator(tcfg.seed, env.rank, step, 1, env.device)
        with autocast_ctx(env, tcfg.bf16):
            return trainer.ddp_model(x, g)

    res = trainer.run(step_fn, plot_keys=("loss", "l1"))
    summary: dict[str, Any] = {"steps": res.steps, "first_loss": res.first_loss, "final_loss": res.final_loss,
                               "elapsed": res.elapsed}
    with trainer.ema_weights() as model:
        model.eval()
        sf = measure_scaling_factor(model, data, n=cfg.scale_images)
        b = data.batch(10 ** 9 + 99, 64, stream=8)
        with torch.no_grad():
            x = to_float_images(b.images)
            rec = model.decode(model.encode(x)[0]).float()
        summary["scaling_factor"] = sf
        summary["recon_l1"] = float((rec - x).abs().mean())
        summary.update(reconstruction_metrics(model, int(x.shape[-1]), x.device))
        if env.is_main:
            model.config["scaling_factor"] = sf
            model.scaling_factor = sf
            model.save_pretrained(out / "vae")
            (out / "recipe_config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        model.train()
    return summary


@torch.no_grad()
def reconstruction_metrics(vae: torch.nn.Module, size: int, device: torch.device, n: int = 256,
                           seed: int = 12345) -> dict[str, Any]:
    """PSNR and attribute-checker accuracy of ``vae`` reconstructions of ``n`` freshly drawn
    held-out scenes: the ceiling of every diffusion model decoded by this VAE."""
    from snapfusion.data import accuracy, draw_scenes, eval_prompts

    _, scenes = eval_prompts(n, seed=seed, split="heldout")
    x8 = draw_scenes(scenes, size=size)
    rec8 = []
    for i in range(0, n, 64):
        x = to_float_images(torch.from_numpy(x8[i:i + 64]).to(device))
        rec8.append(to_uint8_images(vae.decode(vae.encode(x)[0]).float()))
    rec = np.concatenate(rec8)
    return {"recon_psnr": psnr_uint8(rec, x8), "recon_accuracy": accuracy(rec, scenes)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train vae --config cfg.json [--device cuda]``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train vae")
    p.add_argument("--config", required=True, help="JSON of VAERecipeConfig fields")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    print(json.dumps(train_vae(load_config(VAERecipeConfig, args.config), args.device)))
    return 0

