"""The frozen parts of the latent diffusion model and the shared diffusion training step.

:class:`LatentWorld` holds the tokenizer, the frozen text encoder (the world CLIP's text
tower), the frozen VAE and the noise schedule, and turns world batches into
``(latents, token ids)``. With a pool, the pool's latents (``mean * scaling_factor`` of
the VAE posterior) are computed once and kept on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .common import DistEnv, autocast_ctx, step_generator
from .data import WorldBatch, WorldData, make_world_data, to_float_images, to_uint8_images
from .diffusion import NoiseSchedule, ddim_sample, min_snr_weight

__all__ = ["LatentWorld", "DiffusionLossConfig", "diffusion_loss", "default_unet_config", "freeze"]


def default_unet_config(cross_attention_dim: int = 128, channels: Sequence[int] = (32, 64, 128, 128),
                        layers_per_block: int = 2, heads: int = 4, sample_size: int = 16) -> dict[str, Any]:
    """SD-v1.5 topology scaled down: 3 CrossAttn down blocks + 1 plain, mid block with attention,
    1 plain + 3 CrossAttn up blocks, 2 layers per block (≈ 8.8 M parameters by default)."""
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": list(channels),
        "layers_per_block": layers_per_block,
        "norm_num_groups": 16,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": heads,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class LatentWorld:
    """Tokenizer + frozen text encoder + frozen VAE + schedule + data.

    Args:
        tokenizer_dir: tokenizer folder.
        text_encoder_dir: ``CLIPTextModel`` folder.
        vae_dir: ``AutoencoderKL`` folder (with the measured ``scaling_factor``).
        env: device / rank.
        data: recipe ``data`` section.
        seed: data seed.
        bf16: autocast for the frozen networks on CUDA.
        cache_latents: with a pool, encode it once (else encode each batch).
        progress: progress bars.
    """

    def __init__(self, tokenizer_dir: str, text_encoder_dir: str, vae_dir: str, env: DistEnv,
                 data: dict[str, Any] | None = None, seed: int = 0, bf16: bool = True,
                 cache_latents: bool = True, progress: bool = True) -> None:
        from snapfusion.nn import AutoencoderKL, CLIPTextModel
        from snapfusion.tokenizer import CLIPTokenizer

        self.env = env
        self.bf16 = bf16
        self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        self.text_encoder = freeze(CLIPTextModel.from_pretrained(text_encoder_dir).to(env.device))
        self.vae = freeze(AutoencoderKL.from_pretrained(vae_dir).to(env.device))
        self.scaling_factor = float(self.vae.scaling_factor)
        self.schedule = NoiseSchedule(env.device)
        self.data: WorldData = make_world_data(self.tokenizer, data, seed, env.rank, env.device,
                                               progress and env.is_main, tokenizer_dir=tokenizer_dir)
        self.latents: torch.Tensor | None = None
        if cache_latents and self.data.pool_size:
            self.latents = self._encode_pool(progress and env.is_main)
        self._empty_states: torch.Tensor | None = None

    @property
    def vae_factor(self) -> int:
        """Spatial down-sampling factor of the VAE."""
        return 2 ** (len(self.vae.resolved["enc_channels"]) - 1)

    def autocast(self) -> Any:
        """The autocast context of this run."""
        return autocast_ctx(self.env, self.bf16)

    @torch.no_grad()
    def _encode_pool(self, progress: bool) -> torch.Tensor:
        from .data import _DEVICE_POOLS  # shared per-process cache

        state = self.vae.state_dict()
        fingerprint = float(sum(v.float().sum() for v in state.values()))
        key = ("latents", id(self.data.pool_images), len(state), fingerprint, self.scaling_factor)
        if key in _DEVICE_POOLS:
            return _DEVICE_POOLS[key][0]
        n = self.data.pool_size
        bs = 1024 if self.env.cuda else 64
        chunks = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="encode pool", dynamic_ncols=True, mininterval=1.0)
        for i in range(0, n, bs):
            x = to_float_images(self.data.pool_images[i:i + bs])
            with self.autocast():
                mean, _ = self.vae.encode(x)
            chunks.append(mean.float() * self.scaling_factor)
            if bar is not None:
                bar.update(len(x))
        if bar is not None:
            bar.close()
        out = torch.cat(chunks)
        _DEVICE_POOLS[key] = (out, out)
        return out

    # ------------------------------------------------------------------------ batches
    def sample(self, step: int, n: int, stream: int = 0) -> tuple[torch.Tensor, WorldBatch]:
        """``(z0, batch)``: scaled latents ``[n, 4, h, w]`` of the :class:`WorldBatch` of
        ``step`` (its images, token ids and captions)."""
        b = self.data.batch(step, n, stream)
        if self.latents is not None and b.index is not None:
            return self.latents[b.index], b
        with torch.no_grad(), self.autocast():
            mean, _ = self.vae.encode(to_float_images(b.images))
        return mean.float() * self.scaling_factor, b

    def batch(self, step: int, n: int, stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z0, ids)``: scaled latents ``[n, 4, h, w]`` and token ids ``[n, L]`` of ``step``."""
        z0, b = self.sample(step, n, stream)
        return z0, b.ids

    @torch.no_grad()
    def text_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen text-encoder ``last_hidden_state`` ``[B, L, D]`` (float32)."""
        with self.autocast():
            return self.text_encoder(ids).last_hidden_state.float()

    def empty_states(self, n: int) -> torch.Tensor:
        """Text states of the empty prompt, ``[n, L, D]``."""
        if self._empty_states is None:
            self._empty_states = self.text_states(self.data.empty_ids)
        return self._empty_states.expand(n, -1, -1)

    def prompt_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids of prompts on the device."""
        return self.data.tokenize(list(prompts))

    # ------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, unet: nn.Module, prompts: Sequence[str], steps: int = 8, guidance: float = 4.0,
                 seed: int = 0, batch: int = 256, decode: bool = True,
                 vae: nn.Module | None = None) -> np.ndarray | torch.Tensor:
        """Text-to-image with DDIM (trailing spacing) and CFG.

        Args:
            unet: the denoiser (eval mode is the caller's choice: training mode keeps any
                configured block drops active).
            prompts: prompts.
            steps: sampling steps.
            guidance: CFG scale.
            seed: noise seed (noise of prompt ``i`` depends only on ``seed`` and ``i``).
            batch: prompts per forward.
            decode: return uint8 images (else the scaled latents).
            vae: decoder to use (default: the frozen VAE).

        Returns:
            uint8 ``[N, H, W, 3]`` images, or float ``[N, 4, h, w]`` latents.
        """
        n = len(prompts)
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        size = self.data.size // self.vae_factor
        noise_all = torch.randn((n, self.vae.resolved["latent_channels"], size, size), generator=g)
        outs = []
        for i in range(0, n, batch):
            ids = self.prompt_ids(prompts[i:i + batch])
            cond = self.text_states(ids)
            unc = self.empty_states(len(ids))
            z = ddim_sample(unet, self.schedule, cond, unc, steps, guidance,
                            noise_all[i:i + batch].to(self.env.device), autocast=self.autocast)
            if decode:
                outs.append(self.decode(z, vae))
            else:
                outs.append(z)
        if decode:
            return np.concatenate(outs)
        return torch.cat(outs)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, vae: nn.Module | None = None) -> np.ndarray:
        """Scaled latents -> uint8 ``[B, H, W, 3]`` images."""
        v = self.vae if vae is None else vae
        with self.autocast():
            x = v.decode(z / self.scaling_factor)
        return to_uint8_images(x)


@dataclass
class DiffusionLossConfig:
    """Settings of the denoising loss.

    Attributes:
        caption_dropout: probability of replacing a caption by the empty one (for CFG).
        weighting: "min_snr" (min-SNR-gamma on the v loss) or "none" (plain v MSE).
        snr_gamma: gamma of min-SNR weighting.
    """

    caption_dropout: float = 0.1
    weighting: str = "min_snr"
    snr_gamma: float = 5.0


def diffusion_loss(unet: nn.Module, world: LatentWorld, z0: torch.Tensor, ids: torch.Tensor, step: int,
                   seed: int, cfg: DiffusionLossConfig, teacher: nn.Module | None = None,
                   kd_weight: float = 0.0, drop_generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """v-prediction denoising loss of one batch (optionally plus output distillation).

    Args:
        unet: the trained network (possibly DDP-wrapped).
        world: frozen parts.
        z0: [B, 4, h, w] scaled latents.
        ids: [B, L] token ids.
        step: training step (seeds noise, timesteps and caption dropout).
        seed: run seed.
        cfg: loss settings.
        teacher: optional frozen network whose v prediction the output also matches.
        kd_weight: weight of that output-distillation term.
        drop_generator: generator of the block-drop decisions (passed to the UNet's forward).

    Returns:
        ``(loss, logs)``.
    """
    env = world.env
    g = step_generator(seed, env.rank, step, 2, env.device)
    b = z0.shape[0]
    ids = world.data.drop_captions(ids, cfg.caption_dropout, g)
    ctx = world.text_states(ids)
    t = torch.randint(0, world.schedule.alphas_cumprod.shape[0], (b,), generator=g, device=env.device)
    noise = torch.randn(z0.shape, generator=g, device=env.device)
    zt = world.schedule.add_noise(z0, noise, t)
    target = world.schedule.v_target(z0, noise, t)
    with world.autocast():
        pred = (unet(zt, t, ctx) if drop_generator is None else unet(zt, t, ctx, generator=drop_generator)).float()
    err = (pred - target).pow(2).mean(dim=(1, 2, 3))
    if cfg.weighting == "min_snr":
        w = min_snr_weight(world.schedule.snr(t), cfg.snr_gamma)
        # normalised to average 1 over uniform t (so the LR means the same for both weightings)
        err = err * w / world.schedule.mean_min_snr_weight(cfg.snr_gamma)
    elif cfg.weighting != "none":
        raise ValueError(f"unknown loss weighting {cfg.weighting!r}")
    loss = err.mean()
    logs: dict[str, torch.Tensor] = {"mse": (pred - target).pow(2).mean().detach()}
    if teacher is not None and kd_weight > 0:
        with torch.no_grad(), world.autocast():
            tv = teacher(zt, t, ctx).float()
        kd = (pred - tv).pow(2).mean()
        loss = loss + kd_weight * kd
        logs["kd"] = kd.detach()
    return loss, logs

