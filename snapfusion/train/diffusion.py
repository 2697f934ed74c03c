"""Noise schedule, training targets and a DDIM sampler in PyTorch.

The math matches diffusers' ``DDIMScheduler`` (and our ``snapfusion.schedulers``) with the
configuration this package exports (:func:`scheduler_config`):

* ``beta_schedule="scaled_linear"``: ``betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2``,
  ``alphas_cumprod = cumprod(1 - betas)``;
* ``z_t = alpha_t z_0 + sigma_t eps`` with ``alpha_t = sqrt(alphas_cumprod[t])``,
  ``sigma_t = sqrt(1 - alphas_cumprod[t])``;
* ``prediction_type="v_prediction"``: the network predicts ``v = alpha_t eps - sigma_t z_0``;
* ``timestep_spacing="trailing"``: ``round(arange(1000, 0, -1000 / n)) - 1`` (for 8 steps
  999, 874, ..., 124); a DDIM step goes from ``t`` to ``t - 1000 // n`` and the last one to
  ``alphas_cumprod = 1`` (``set_alpha_to_one=True``), i.e. to the predicted clean latents.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "NoiseSchedule",
    "scheduler_config",
    "trailing_timesteps",
    "ddim_sample",
]

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scheduler_config(prediction_type: str = "v_prediction", class_name: str = "DDIMScheduler") -> dict[str, Any]:
    """The diffusers ``scheduler_config.json`` matching :class:`NoiseSchedule`."""
    if class_name not in ("DDIMScheduler", "EulerDiscreteScheduler"):
        raise ValueError(f"unsupported scheduler class {class_name!r}")
    cfg: dict[str, Any] = {
        "_class_name": class_name,
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "timestep_spacing": "trailing",
        "steps_offset": 0,
    }
    if class_name == "DDIMScheduler":
        cfg.update(clip_sample=False, set_alpha_to_one=True, thresholding=False)
    return cfg


def trailing_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """diffusers' "trailing" timestep spacing, e.g. 8 steps -> [999, 874, ..., 124]."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be an int in [1, {num_train_timesteps}], got {num_steps!r}")
    ratio = num_train_timesteps / num_steps
    return [int(t) for t in (np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1)]


class NoiseSchedule:
    """The SD noise schedule on a device (float64 tables, float32 results).

    Args:
        device: where the tables live.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(device)
        self.device = torch.device(device)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` as float32 ``[B, 1, 1, 1]`` for integer timesteps ``t`` in [-1, 999]
        (``-1`` means the clean end of the chain: alpha 1, sigma 0)."""
        t = t.to(self.device).long()
        if t.device.type == "cpu" and bool(((t < -1) | (t >= NUM_TRAIN_TIMESTEPS)).any()):
            raise ValueError("timesteps must lie in [-1, 999]")  # checked on the CPU only: no GPU syncs
        ac = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones_like(t, dtype=torch.float64))
        a = ac.sqrt().float().view(-1, 1, 1, 1)
        s = (1.0 - ac).clamp(min=0).sqrt().float().view(-1, 1, 1, 1)
        return a, s

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha^2 / sigma^2`` as float32 ``[B]``."""
        a, s = self.alpha_sigma(t)
        return (a * a / (s * s).clamp(min=1e-20)).flatten()

    def mean_min_snr_weight(self, gamma: float) -> float:
        """Mean of the min-SNR-gamma weight (v loss) over the 1000 training timesteps."""
        ac = self.alphas_cumprod
        snr = ac / (1 - ac)
        return float((torch.clamp(snr, max=gamma) / (snr + 1)).mean())

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``alpha_t z0 + sigma_t noise`` (all ``[B, C, H, W]``)."""
        a, s = self.alpha_sigma(t)
        return a * z0 + s * noise

    def v_target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v = alpha_t noise - sigma_t z0``."""
        a, s = self.alpha_sigma(t)
        return a * noise - s * z0

    def to_x0_eps(self, zt: torch.Tensor, out: torch.Tensor, t: torch.Tensor,
                  prediction_type: str = "v_prediction") -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted ``(z0, eps)`` from a network output of the given prediction type."""
        a, s = self.alpha_sigma(t)
        if prediction_type == "v_prediction":
            return a * zt - s * out, s * zt + a * out
        if prediction_type == "epsilon":
            x0 = (zt - s * out) / a
            return x0, out
        raise ValueError(f"unknown prediction_type {prediction_type!r}")

    def ddim_step(self, zt: torch.Tensor, out: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
                  prediction_type: str = "v_prediction") -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from ``t`` to ``t_prev`` (``-1``: to ``z0``)."""
        x0, eps = self.to_x0_eps(zt, out, t, prediction_type)
        a, s = self.alpha_sigma(t_prev)
        return a * x0 + s * eps


def _full(value: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long, device=device)


@torch.no_grad()
def ddim_sample(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, cond: torch.Tensor,
                uncond: torch.Tensor | None, num_steps: int, guidance_scale: float,
                noise: torch.Tensor, prediction_type: str = "v_prediction",
                autocast: Callable[[], Any] | None = None) -> torch.Tensor:
    """Sample latents with trailing-spaced DDIM and classifier-free guidance.

    Args:
        model: ``model(z, t, ctx) -> output`` (a UNet).
        schedule: the noise schedule.
        cond: [B, L, D] text states of the prompts.
        uncond: [B, L, D] text states of the empty prompt (needed when ``guidance_scale > 1``).
        num_steps: sampling steps.
        guidance_scale: CFG scale ``w`` (``out = u + w (c - u)``); <= 1 disables guidance.
        noise: [B, C, h, w] initial latents (``init_noise_sigma`` is 1 for DDIM).
        prediction_type: "v_prediction" or "epsilon".
        autocast: optional context-manager factory around the network calls.

    Returns:
        [B, C, h, w] float32 clean latents (scaled by the VAE's ``scaling_factor``).
    """
    steps = trailing_timesteps(num_steps)
    jump = NUM_TRAIN_TIMESTEPS // num_steps
    z = noise.float()
    b = z.shape[0]
    cfg = guidance_scale > 1.0
    if cfg and uncond is None:
        raise ValueError("guidance_scale > 1 needs the unconditional text states")
    ctx = torch.cat([uncond, cond]) if cfg else cond
    for t in steps:
        tt = _full(t, b, z.device)
        zin = torch.cat([z, z]) if cfg else z
        if autocast is not None:
            with autocast():
                out = model(zin, _full(t, zin.shape[0], z.device), ctx).float()
        else:
            out = model(zin, _full(t, zin.shape[0], z.device), ctx).float()
        if cfg:
            u, c = out.chunk(2)
            out = u + guidance_scale * (c - u)
        z = schedule.ddim_step(z, out, tt, _full(max(t - jump, -1), b, z.device), prediction_type)
    return z


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str = "v_prediction") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for a loss on the network output."""
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr.clamp(min=1e-8)


def truncated_snr_weight(snr: torch.Tensor) -> torch.Tensor:
    """``max(snr, 1)``: the truncated-SNR weight of progressive distillation's x-space loss."""
    return torch.clamp(snr, min=1.0)


