"""diffusers-compatible ``AutoencoderKL`` (KL-regularised VAE of Stable Diffusion).

Parameter names equal diffusers' (``encoder.down_blocks.0.resnets.0.conv1.weight``,
``decoder.mid_block.attentions.0.to_q.weight``, ``quant_conv.weight``, ...).

Config keys (diffusers ``vae/config.json``): ``in_channels``, ``out_channels``,
``down_block_types`` (``DownEncoderBlock2D``), ``up_block_types`` (``UpDecoderBlock2D``),
``block_out_channels``, ``layers_per_block``, ``act_fn``, ``latent_channels``,
``norm_num_groups``, ``sample_size``, ``scaling_factor``, ``shift_factor``,
``use_quant_conv``, ``use_post_quant_conv``, ``mid_block_add_attention``.

Extensions for channel-reduced decoders (absent = same as the encoder; documented in
``docs/elastic_blocks.md``):

* ``decoder_block_out_channels``: the decoder's own per-level channels, listed in the
  encoder order (level 0 = full resolution), so the decoder uses them reversed.
* ``decoder_layers_per_block``: decoder ResNets per level minus one (diffusers uses
  ``layers_per_block + 1`` ResNets per decoder level).
* ``decoder_norm_num_groups``: GroupNorm groups of the decoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .blocks import Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D, activation
from .elastic import ACTIVATIONS
from .serialization import DIFFUSERS_WEIGHTS, find_weights, load_into, read_config, read_safetensors, \
    write_config, write_safetensors

__all__ = ["AutoencoderKL", "Encoder", "Decoder", "VAE_DEFAULTS", "resolve_vae_config"]

VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "decoder_block_out_channels": None,
    "decoder_layers_per_block": None,
    "decoder_norm_num_groups": None,
}


def _pos_int(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"VAE config: '{key}' must be an int, got {v!r}")
    if v <= 0 or v > 1 << 20:
        raise ValueError(f"VAE config: '{key}' = {v} out of range")
    return v


def _channels(v: Any, key: str, n: int | None, groups: int) -> list[int]:
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"VAE config: '{key}' must be a non-empty list, got {v!r}")
    if n is not None and len(v) != n:
        raise ValueError(f"VAE config: '{key}' has {len(v)} entries, expected {n}")
    out = [_pos_int(c, key) for c in v]
    for c in out:
        if c % groups:
            raise ValueError(f"VAE config: channel count {c} in '{key}' is not divisible by {groups} groups")
    return out


def resolve_vae_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Apply defaults and validate an ``AutoencoderKL`` config.

    Returns:
        A dict with every key of :data:`VAE_DEFAULTS` plus resolved ``enc_channels``,
        ``dec_channels``, ``dec_layers``, ``dec_groups``.

    Raises:
        ValueError / TypeError: invalid or unsupported configuration.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"VAE config must be a mapping, got {type(config).__name__}")
    cfg = dict(VAE_DEFAULTS)
    cfg.update(config)
    n = len(cfg["block_out_channels"]) if isinstance(cfg["block_out_channels"], (list, tuple)) else None
    for t in cfg["down_block_types"]:
        if t != "DownEncoderBlock2D":
            raise ValueError(f"VAE config: unsupported down block type {t!r}")
    for t in cfg["up_block_types"]:
        if t != "UpDecoderBlock2D":
            raise ValueError(f"VAE config: unsupported up block type {t!r}")
    if cfg["act_fn"] not in ACTIVATIONS:
        raise ValueError(f"VAE config: unsupported act_fn {cfg['act_fn']!r}")
    groups = _pos_int(cfg["norm_num_groups"], "norm_num_groups")
    enc = _channels(cfg["block_out_channels"], "block_out_channels", None, groups)
    if len(cfg["down_block_types"]) != len(enc):
        raise ValueError(f"VAE config: {len(cfg['down_block_types'])} down blocks for {len(enc)} channel levels")
    if len(cfg["up_block_types"]) != len(enc):
        raise ValueError(f"VAE config: {len(cfg['up_block_types'])} up blocks for {len(enc)} channel levels")
    dec_groups = groups if cfg["decoder_norm_num_groups"] is None else _pos_int(cfg["decoder_norm_num_groups"],
                                                                             "decoder_norm_num_groups")
    dec = enc if cfg["decoder_block_out_channels"] is None else _channels(
        cfg["decoder_block_out_channels"], "decoder_block_out_channels", len(enc), dec_groups)
    if cfg["decoder_block_out_channels"] is None:
        for c in dec:
            if c % dec_groups:
                raise ValueError(f"VAE config: decoder channel count {c} is not divisible by {dec_groups} groups")
    layers = _pos_int(cfg["layers_per_block"], "layers_per_block")
    dec_layers = layers if cfg["decoder_layers_per_block"] is None else _pos_int(cfg["decoder_layers_per_block"],
                                                                                  "decoder_layers_per_block")
    for key in ("in_channels", "out_channels", "latent_channels"):
        _pos_int(cfg[key], key)
    for key in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
        if not isinstance(cfg[key], bool):
            raise TypeError(f"VAE config: '{key}' must be a bool, got {cfg[key]!r}")
    sf = cfg["scaling_factor"]
    if isinstance(sf, bool) or not isinstance(sf, (int, float)) or not sf > 0:
        raise ValueError(f"VAE config: scaling_factor must be a positive number, got {sf!r}")
    cfg.update(enc_channels=enc, dec_channels=dec, dec_layers=dec_layers, dec_groups=dec_groups)
    return cfg


class _MidBlock(nn.Module):
    """``UNetMidBlock2D`` of the VAE: ResNet, optional self-attention, ResNet."""

    def __init__(self, channels: int, groups: int, act_fn: str, add_attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(channels, channels, None, groups=groups, eps=1e-6, act_fn=act_fn) for _ in range(2)
        ])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, channels, groups)]) if add_attention \
            else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.resnets[0](h)
        if self.attentions is not None:
            h = self.attentions[0](h)
        return self.resnets[1](h)


class _DownEncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act_fn: str, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(cin if j == 0 else cout, cout, None, groups=groups, eps=1e-6, act_fn=act_fn)
            for j in range(layers)
        ])
        self.downsamplers = nn.ModuleList([Downsample2D(cout, cout, padding=0)]) if downsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            h = r(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
        return h


class _UpDecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, act_fn: str, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(cin if j == 0 else cout, cout, None, groups=groups, eps=1e-6, act_fn=act_fn)
            for j in range(layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(cout, cout)]) if upsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            h = r(h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


class Encoder(nn.Module):
    """VAE encoder: image [B, in_channels, H, W] -> moments [B, 2*latent_channels, ~H/f, ~W/f].

    Each downsampler pads right/bottom by one and applies a stride-2 3x3 convolution, so a
    level maps a size ``H`` to ``floor(H / 2)``.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: list[int], layers: int, groups: int,
                 act_fn: str = "silu", add_attention: bool = True) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks = []
        cout = channels[0]
        for i, c in enumerate(channels):
            cin, cout = cout, c
            blocks.append(_DownEncoderBlock(cin, cout, layers, groups, act_fn, downsample=i < len(channels) - 1))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = _MidBlock(channels[-1], groups, act_fn, add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=1e-6)
        self.conv_act = activation(act_fn)
        self.conv_out = nn.Conv2d(channels[-1], 2 * out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """VAE decoder: latent [B, latent_channels, h, w] -> image [B, out_channels, h*f, w*f].

    Args:
        channels: per-level channels in encoder order (used reversed).
        layers: ``layers_per_block``; each level has ``layers + 1`` ResNets.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: list[int], layers: int, groups: int,
                 act_fn: str = "silu", add_attention: bool = True) -> None:
        super().__init__()
        rev = list(reversed(channels))
        self.conv_in = nn.Conv2d(in_channels, rev[0], 3, padding=1)
        self.mid_block = _MidBlock(rev[0], groups, act_fn, add_attention)
        blocks = []
        cout = rev[0]
        for i, c in enumerate(rev):
            cin, cout = cout, c
            blocks.append(_UpDecoderBlock(cin, cout, layers + 1, groups, act_fn, upsample=i < len(rev) - 1))
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=1e-6)
        self.conv_act = activation(act_fn)
        self.conv_out = nn.Conv2d(rev[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


def _check_image(x: Any, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{what} must be [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{what} has {x.shape[1]} channels, expected {channels}")
    if min(x.shape) == 0:
        raise ValueError(f"{what} has an empty dimension: {tuple(x.shape)}")
    if max(x.shape[2:]) > 1 << 15:
        raise ValueError(f"{what} spatial size {tuple(x.shape[2:])} is absurd")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or infinity")


class AutoencoderKL(nn.Module):
    """KL autoencoder compatible with diffusers ``AutoencoderKL``.

    Args:
        config: diffusers ``vae/config.json`` mapping (plus the decoder extensions above).

    Attributes:
        config: the config dict; scaling_factor: latent scale used by pipelines.
    """

    weights_name = DIFFUSERS_WEIGHTS

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        config = read_config(config)
        cfg = resolve_vae_config(config)
        config.setdefault("_class_name", "AutoencoderKL")
        self.config = config
        self.resolved = cfg
        self.scaling_factor = float(cfg["scaling_factor"])
        self.shift_factor = None if cfg["shift_factor"] is None else float(cfg["shift_factor"])
        lat = cfg["latent_channels"]
        self.encoder = Encoder(cfg["in_channels"], lat, cfg["enc_channels"], cfg["layers_per_block"],
                               cfg["norm_num_groups"], cfg["act_fn"], cfg["mid_block_add_attention"])
        self.decoder = Decoder(lat, cfg["out_channels"], cfg["dec_channels"], cfg["dec_layers"],
                               cfg["dec_groups"], cfg["act_fn"], cfg["mid_block_add_attention"])
        self.quant_conv = nn.Conv2d(2 * lat, 2 * lat, 1) if cfg["use_quant_conv"] else None
        self.post_quant_conv = nn.Conv2d(lat, lat, 1) if cfg["use_post_quant_conv"] else None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike[str]) -> "AutoencoderKL":
        """Build a randomly initialised model from a config mapping, JSON file or folder."""
        return cls(read_config(config))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> "AutoencoderKL":
        """Load a diffusers-layout folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
        model = cls(read_config(folder))
        path = find_weights(folder, cls.weights_name)
        load_into(model, read_safetensors(path), source=str(path))
        if dtype is not None:
            model.to(dtype)
        return model

    load_safetensors = from_pretrained

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_config(self.config, folder / "config.json")
        write_safetensors(self.state_dict(), folder / self.weights_name)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of images.

        Args:
            x: [B, in_channels, H, W] float images in [-1, 1].

        Returns:
            ``(mean, logvar)``, each [B, latent_channels, h, w]; ``logvar`` clamped to [-30, 20].
        """
        _check_image(x, self.resolved["in_channels"], "x")
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    @staticmethod
    def sample_latent(mean: torch.Tensor, logvar: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``mean + exp(logvar / 2) * N(0, 1)`` (same shape/dtype as ``mean``)."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents (NOT divided by ``scaling_factor`` here).

        Args:
            z: [B, latent_channels, h, w] float latents.

        Returns:
            [B, out_channels, h*f, w*f] images (unclamped, nominally in [-1, 1]).
        """
        _check_image(z, self.resolved["latent_channels"], "z")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruct images: encode, take the mean (or a sample), decode."""
        mean, logvar = self.encode(x)
        z = self.sample_latent(mean, logvar, generator) if sample_posterior else mean
        return self.decode(z)
