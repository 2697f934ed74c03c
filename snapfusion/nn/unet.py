"""Elastic, diffusers-compatible ``UNet2DConditionModel``.

The module tree and parameter names equal diffusers' (``conv_in``, ``time_embedding.linear_1``,
``down_blocks.{i}.resnets.{j}``, ``down_blocks.{i}.attentions.{j}.transformer_blocks.{t}``,
``mid_block.attentions.0``, ``up_blocks.{i}.upsamplers.0.conv``, ...), so a diffusers
checkpoint of the same config loads with ``load_state_dict(strict=True)``.

On top of the diffusers architecture the optional config key ``elastic_blocks``
(see :mod:`snapfusion.nn.elastic` and ``docs/elastic_blocks.md``) removes ResNet or
transformer blocks or changes transformer depths; removed blocks are absent from the
module, the remaining ones keep their diffusers layer index.  For robust training
(SnapFusion's stochastic forward propagation) :meth:`UNet2DConditionModel.set_block_drop`
makes each droppable block skip with a given probability per forward call in training
mode; a dropped block behaves exactly as if it had been removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import elastic
from .blocks import (
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Timesteps,
    Transformer2DModel,
    Upsample2D,
    activation,
)
from .serialization import DIFFUSERS_WEIGHTS, find_weights, load_into, read_config, read_safetensors, \
    write_config, write_safetensors

__all__ = ["UNet2DConditionModel"]

_RunFn = Callable[[str], bool]


class _Stage(nn.Module):
    """Common machinery of the down, mid and up stages."""

    prefix: str
    use_checkpoint: bool = False

    def _resnet(self, key: str, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        module = self.resnets[key]
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, h, temb, use_reentrant=False)
        return module(h, temb)

    def _attention(self, key: str, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        module = self.attentions[key]
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, h, ctx, use_reentrant=False)
        return module(h, ctx)


def _transformer(cfg: Mapping[str, Any], heads: int, channels: int, depth: int, cross: int | None,
                 only_cross: bool) -> Transformer2DModel:
    return Transformer2DModel(
        heads, channels, depth, cross,
        norm_num_groups=cfg["norm_num_groups"],
        use_linear_projection=bool(cfg["use_linear_projection"]),
        only_cross_attention=only_cross,
        upcast_attention=bool(cfg["upcast_attention"]),
    )


class DownStageModule(_Stage):
    """One down block (``CrossAttnDownBlock2D`` / ``DownBlock2D``) with elastic layers.

    ``resnets`` and ``attentions`` are ``ModuleDict`` keyed by the diffusers layer index.
    Every layer pushes its output as a skip connection, also when both its blocks are
    removed or dropped (then its input passes through).
    """

    def __init__(self, index: int, stage: elastic.DownStage, entries: list[dict[str, Any]],
                 cfg: Mapping[str, Any], temb_dim: int) -> None:
        super().__init__()
        self.prefix = f"down_blocks.{index}"
        self.num_layers = stage.num_layers
        self.resnets = nn.ModuleDict()
        self.attentions = nn.ModuleDict()
        for j, e in enumerate(entries):
            if e["resnet"]:
                self.resnets[str(j)] = ResnetBlock2D(
                    stage.resnet_in(j), stage.out_channels, temb_dim, groups=cfg["norm_num_groups"],
                    eps=cfg["norm_eps"], act_fn=cfg["act_fn"], dropout=cfg["dropout"])
            if e["attention"] > 0:
                self.attentions[str(j)] = _transformer(cfg, stage.heads, stage.out_channels, e["attention"],
                                                       stage.cross_attention_dim, stage.only_cross_attention)
        self.downsamplers = (
            nn.ModuleList([Downsample2D(stage.out_channels, stage.out_channels, padding=cfg["downsample_padding"])])
            if stage.downsample else None
        )

    def forward(self, h: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor | None,
                run: _RunFn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the block output and its skip tensors (one per layer, plus the downsampled one)."""
        skips = []
        for j in range(self.num_layers):
            key = str(j)
            if key in self.resnets and run(f"{self.prefix}.resnets.{j}"):
                h = self._resnet(key, h, temb)
            if key in self.attentions and run(f"{self.prefix}.attentions.{j}"):
                h = self._attention(key, h, ctx)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class MidStageModule(_Stage):
    """``UNetMidBlock2DCrossAttn``: ResNet 0, transformer 0, ResNet 1 (each optional)."""

    def __init__(self, stage: elastic.MidStage, entry: dict[str, Any], cfg: Mapping[str, Any],
                 temb_dim: int) -> None:
        super().__init__()
        self.prefix = "mid_block"
        self.resnets = nn.ModuleDict()
        self.attentions = nn.ModuleDict()
        for j, keep in enumerate(entry["resnets"]):
            if keep:
                self.resnets[str(j)] = ResnetBlock2D(
                    stage.channels, stage.channels, temb_dim, groups=cfg["norm_num_groups"], eps=cfg["norm_eps"],
                    act_fn=cfg["act_fn"], dropout=cfg["dropout"],
                    output_scale_factor=float(cfg["mid_block_scale_factor"]))
        if entry["attention"] > 0:
            self.attentions["0"] = _transformer(cfg, stage.heads, stage.channels, entry["attention"],
                                                stage.cross_attention_dim, False)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor | None, run: _RunFn) -> torch.Tensor:
        if "0" in self.resnets and run("mid_block.resnets.0"):
            h = self._resnet("0", h, temb)
        if "0" in self.attentions and run("mid_block.attentions.0"):
            h = self._attention("0", h, ctx)
        if "1" in self.resnets and run("mid_block.resnets.1"):
            h = self._resnet("1", h, temb)
        return h


class UpStageModule(_Stage):
    """One up block (``CrossAttnUpBlock2D`` / ``UpBlock2D``) with elastic layers.

    Every layer consumes one skip connection: with its ResNet present the skip is
    concatenated to the hidden state (channel dim 1, hidden first); with its ResNet
    removed or dropped the skip is discarded.
    """

    def __init__(self, index: int, stage: elastic.UpStage, entries: list[dict[str, Any]],
                 cfg: Mapping[str, Any], temb_dim: int) -> None:
        super().__init__()
        self.prefix = f"up_blocks.{index}"
        self.num_layers = stage.num_layers
        self.resnets = nn.ModuleDict()
        self.attentions = nn.ModuleDict()
        for j, e in enumerate(entries):
            if e["resnet"]:
                self.resnets[str(j)] = ResnetBlock2D(
                    stage.hidden_in(j) + stage.skip_channels(j), stage.out_channels, temb_dim,
                    groups=cfg["norm_num_groups"], eps=cfg["norm_eps"], act_fn=cfg["act_fn"],
                    dropout=cfg["dropout"])
            if e["attention"] > 0:
                self.attentions[str(j)] = _transformer(cfg, stage.heads, stage.out_channels, e["attention"],
                                                       stage.cross_attention_dim, stage.only_cross_attention)
        self.upsamplers = nn.ModuleList([Upsample2D(stage.out_channels, stage.out_channels)]) if stage.upsample \
            else None

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, ctx: torch.Tensor | None,
                run: _RunFn, upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``skips`` holds this block's skip tensors in push order; they are consumed from the end."""
        for j in range(self.num_layers):
            skip = skips[-1 - j]
            key = str(j)
            if key in self.resnets and run(f"{self.prefix}.resnets.{j}"):
                h = self._resnet(key, torch.cat([h, skip], dim=1), temb)
            if key in self.attentions and run(f"{self.prefix}.attentions.{j}"):
                h = self._attention(key, h, ctx)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, upsample_size)
        return h


def _check_prob(p: Any, what: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{what}: probability must be a number, got {p!r}")
    p = float(p)
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"{what}: probability must be in [0, 1], got {p}")
    return p


class UNet2DConditionModel(nn.Module):
    """Text-conditioned UNet compatible with diffusers ``UNet2DConditionModel``.

    Args:
        config: a diffusers UNet ``config.json`` mapping, optionally with ``elastic_blocks``.

    Attributes:
        config: the config (input keys plus the normalised ``elastic_blocks`` if given).
        layout: the resolved :class:`~snapfusion.nn.elastic.UNetLayout`.
        block_list: the normalised elastic block list (full architecture when absent).
        check_inputs: verify that ``sample`` is finite on every call (default True).
        last_dropped_blocks: ids of the blocks skipped by the last forward call.
        last_executed_blocks: ids (from :func:`~snapfusion.nn.elastic.all_block_names`) of the
            ResNet / transformer blocks that ran in the last forward call.
    """

    weights_name = DIFFUSERS_WEIGHTS

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        config = read_config(config)
        self.layout = elastic.resolve_unet_config(config)
        self.block_list = elastic.validate_block_list(config)
        if "elastic_blocks" in config and config["elastic_blocks"] is not None:
            config["elastic_blocks"] = self.block_list
        config.setdefault("_class_name", "UNet2DConditionModel")
        self.config = config
        cfg = self.layout.config
        self.check_inputs = True
        channels = [s.out_channels for s in self.layout.down]
        temb_dim = self.layout.time_embed_dim

        k_in = cfg["conv_in_kernel"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], channels[0], k_in, padding=(k_in - 1) // 2)
        self.time_proj = Timesteps(channels[0], bool(cfg["flip_sin_to_cos"]), float(cfg["freq_shift"]))
        self.time_embedding = TimestepEmbedding(channels[0], temb_dim, cfg["act_fn"], cfg["timestep_post_act"])
        self.time_embed_act = None if cfg["time_embedding_act_fn"] is None else activation(cfg["time_embedding_act_fn"])

        self.down_blocks = nn.ModuleList([
            DownStageModule(i, s, self.block_list["down_blocks"][i], cfg, temb_dim)
            for i, s in enumerate(self.layout.down)
        ])
        self.mid_block = (MidStageModule(self.layout.mid, self.block_list["mid_block"], cfg, temb_dim)
                          if self.layout.mid is not None else None)
        self.up_blocks = nn.ModuleList([
            UpStageModule(i, s, self.block_list["up_blocks"][i], cfg, temb_dim)
            for i, s in enumerate(self.layout.up)
        ])
        self.num_upsamplers = sum(1 for s in self.layout.up if s.upsample)
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], channels[0], eps=cfg["norm_eps"])
        self.conv_act = activation(cfg["act_fn"])
        k_out = cfg["conv_out_kernel"]
        self.conv_out = nn.Conv2d(channels[0], cfg["out_channels"], k_out, padding=(k_out - 1) // 2)

        self._droppable = elastic.block_names(config)
        self._all_blocks = elastic.all_block_names(config)
        self._drop_probs: dict[str, float] = {}
        self._drop_generator: torch.Generator | None = None
        self.last_dropped_blocks: tuple[str, ...] = ()
        self.last_executed_blocks: tuple[str, ...] = tuple(self._all_blocks)
        self._cross_dims = sorted({
            s.cross_attention_dim for s, e in zip(self.layout.down, self.block_list["down_blocks"])
            if any(x["attention"] for x in e)
        } | {
            s.cross_attention_dim for s, e in zip(self.layout.up, self.block_list["up_blocks"])
            if any(x["attention"] for x in e)
        } | ({self.layout.mid.cross_attention_dim}
             if self.layout.mid is not None and self.block_list["mid_block"]["attention"] else set()))

    # ------------------------------------------------------------------ construction / I/O
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike[str]) -> "UNet2DConditionModel":
        """Build a randomly initialised model from a config mapping, JSON file or folder."""
        return cls(read_config(config))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
                        config: Mapping[str, Any] | None = None) -> "UNet2DConditionModel":
        """Load a diffusers-layout folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

        Args:
            folder: model folder.
            dtype: optional dtype to cast the model to.
            config: override the folder's config (e.g. to add ``elastic_blocks``; the
                checkpoint must then hold exactly the kept blocks, see
                :meth:`load_pruned_state_dict` for loading a full checkpoint into a pruned model).

        Raises:
            OSError: missing or malformed files.  ValueError: weights do not fit the config.
        """
        cfg = read_config(folder if config is None else config)
        model = cls(cfg)
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

    def load_pruned_state_dict(self, state_dict: Mapping[str, torch.Tensor],
                               allow_missing: bool = False) -> dict[str, list[str]]:
        """Load a checkpoint of a larger architecture (e.g. full SD-v1.5) into this model.

        Keys of blocks this model does not have (removed ResNets, removed attentions,
        transformer blocks beyond the kept depth, a removed mid block) are ignored; any
        other unknown key is an error.

        Args:
            state_dict: name -> tensor.
            allow_missing: accept model parameters absent from ``state_dict`` (e.g. newly
                added attention); they keep their current values.

        Returns:
            ``{"ignored": [...], "missing": [...]}`` key lists.

        Raises:
            ValueError: unexpected keys outside removed blocks, missing keys (unless
                allowed) or shape mismatches.
        """
        own = self.state_dict()
        modules = dict(self.named_modules())
        ignored, unexpected = [], []
        pattern = re.compile(
            r"^(?P<block>(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(?:resnets|attentions)\.\d+)"
            r"(?P<tb>\.transformer_blocks\.\d+)?\.")
        for key in state_dict:
            if key in own:
                continue
            m = pattern.match(key)
            removed = False
            if key.startswith("mid_block.") and self.mid_block is None:
                removed = True
            elif m is not None:
                block = m.group("block")
                if block not in modules:
                    removed = True
                elif m.group("tb") and block + m.group("tb") not in modules:
                    removed = True
            (ignored if removed else unexpected).append(key)
        missing = sorted(set(own) - set(state_dict))
        if unexpected or (missing and not allow_missing):
            raise ValueError(f"cannot load pruned state dict: unexpected keys {sorted(unexpected)[:8]}, "
                             f"missing keys {missing[:8]}")
        subset = {k: v for k, v in state_dict.items() if k in own}
        for k in missing:
            subset[k] = own[k]
        load_into(self, subset, source="pruned state dict")
        return {"ignored": sorted(ignored), "missing": missing}

    # ------------------------------------------------------------------ elastic training
    @property
    def droppable_blocks(self) -> list[str]:
        """Ids of the blocks that stochastic forward propagation may skip."""
        return list(self._droppable)

    def set_block_drop(self, resnet_p: float = 0.0, attention_p: float = 0.0,
                       probs: Mapping[str, float] | None = None,
                       generator: torch.Generator | None = None) -> None:
        """Configure stochastic forward propagation (training mode only).

        Each droppable block (see :attr:`droppable_blocks`) is skipped independently with
        its probability, once per forward call (the whole batch).  A dropped ResNet acts as
        identity (in up blocks its skip connection is discarded); a dropped transformer acts
        as identity.  Channel-changing ResNets are never dropped.

        Args:
            resnet_p: drop probability of every droppable ResNet.
            attention_p: drop probability of every transformer (``Transformer2DModel``).
            probs: per-block overrides, block id -> probability.
            generator: torch.Generator for the drop decisions (reproducibility); a
                ``generator`` passed to :meth:`forward` takes precedence.

        Raises:
            ValueError: probability outside [0, 1] or unknown / non-droppable block id.
        """
        r = _check_prob(resnet_p, "resnet_p")
        a = _check_prob(attention_p, "attention_p")
        table = {n: (r if ".resnets." in n else a) for n in self._droppable}
        for name, p in (probs or {}).items():
            if name not in table:
                raise ValueError(f"set_block_drop: {name!r} is not a droppable block of this model "
                                 f"(droppable: {', '.join(self._droppable)})")
            table[name] = _check_prob(p, name)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self._drop_probs = {n: p for n, p in table.items() if p > 0.0}
        self._drop_generator = generator

    def sample_dropped_blocks(self, generator: torch.Generator | None = None) -> frozenset[str]:
        """Draw the set of blocks to skip for one forward call (one uniform per droppable block
        with a positive probability, in :attr:`droppable_blocks` order)."""
        if not self._drop_probs:
            return frozenset()
        names = [n for n in self._droppable if n in self._drop_probs]
        gen = generator if generator is not None else self._drop_generator
        device = gen.device if gen is not None else torch.device("cpu")
        u = torch.rand(len(names), generator=gen, device=device).tolist()
        return frozenset(n for n, x in zip(names, u) if x < self._drop_probs[n])

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute ResNet / transformer activations in the backward pass to save memory."""
        for module in self.modules():
            if isinstance(module, _Stage):
                module.use_checkpoint = enabled

    # ------------------------------------------------------------------ forward
    def _timesteps(self, timestep: Any, batch: int, device: torch.device) -> torch.Tensor:
        if isinstance(timestep, bool):
            raise TypeError("timestep must be a number or a tensor, got bool")
        if isinstance(timestep, int):
            t = torch.tensor([timestep], dtype=torch.int64, device=device)
        elif isinstance(timestep, float):
            t = torch.tensor([timestep], dtype=torch.float64, device=device)
        elif isinstance(timestep, torch.Tensor):
            t = timestep.to(device)
        else:
            try:
                import numpy as np
                if isinstance(timestep, (np.ndarray, np.number)):
                    return self._timesteps(torch.as_tensor(timestep), batch, device)
            except ImportError:  # pragma: no cover
                pass
            raise TypeError(f"timestep must be an int, float or tensor, got {type(timestep).__name__}")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"timestep dtype {t.dtype} is not supported")
        if t.ndim == 0:
            t = t[None]
        if t.ndim != 1:
            raise ValueError(f"timestep must be a scalar or a 1-D tensor, got shape {tuple(t.shape)}")
        if t.shape[0] == 1:
            t = t.expand(batch)
        elif t.shape[0] != batch:
            raise ValueError(f"timestep has {t.shape[0]} entries for a batch of {batch}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError("timestep contains NaN or infinity")
        return t

    def _check(self, sample: torch.Tensor, ctx: torch.Tensor | None) -> None:
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor, got {type(sample).__name__}")
        if sample.ndim != 4:
            raise ValueError(f"sample must be [B, C, H, W], got shape {tuple(sample.shape)}")
        if not sample.is_floating_point():
            raise TypeError(f"sample must be a floating-point tensor, got {sample.dtype}")
        cin = self.layout.config["in_channels"]
        if sample.shape[1] != cin:
            raise ValueError(f"sample has {sample.shape[1]} channels, the UNet expects {cin}")
        if sample.shape[0] == 0 or sample.shape[2] == 0 or sample.shape[3] == 0:
            raise ValueError(f"sample has an empty dimension: {tuple(sample.shape)}")
        if sample.shape[2] > 16384 or sample.shape[3] > 16384:
            raise ValueError(f"sample spatial size {tuple(sample.shape[2:])} is absurd")
        if self.check_inputs and not bool(torch.isfinite(sample).all()):
            raise ValueError("sample contains NaN or infinity")
        if self._cross_dims:
            if ctx is None:
                raise ValueError("encoder_hidden_states is required: the UNet has cross-attention")
            if not isinstance(ctx, torch.Tensor):
                raise TypeError(f"encoder_hidden_states must be a torch.Tensor, got {type(ctx).__name__}")
            if ctx.ndim != 3:
                raise ValueError(f"encoder_hidden_states must be [B, S, D], got shape {tuple(ctx.shape)}")
            if not ctx.is_floating_point():
                raise TypeError(f"encoder_hidden_states must be floating point, got {ctx.dtype}")
            if ctx.shape[0] != sample.shape[0]:
                raise ValueError(f"encoder_hidden_states batch {ctx.shape[0]} != sample batch {sample.shape[0]}")
            if len(self._cross_dims) == 1 and ctx.shape[2] != self._cross_dims[0]:
                raise ValueError(f"encoder_hidden_states width {ctx.shape[2]} != cross_attention_dim "
                                 f"{self._cross_dims[0]}")
            if ctx.shape[1] == 0:
                raise ValueError("encoder_hidden_states has no tokens")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                encoder_hidden_states: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Predict the UNet output (e.g. noise) for noisy latents.

        Args:
            sample: [B, in_channels, H, W] float latents; any H, W >= 1 (the upsamplers
                then resize to the matching skip size, as diffusers does).
            timestep: scalar (int/float/0-d tensor) or [B] / [1] tensor, int or float dtype.
            encoder_hidden_states: [B, S, cross_attention_dim] context.
            generator: torch.Generator for the block-drop decisions of this call.

        Returns:
            [B, out_channels, H, W] tensor of ``sample``'s dtype.

        Raises:
            TypeError / ValueError: malformed inputs.
        """
        self._check(sample, encoder_hidden_states)
        batch = sample.shape[0]
        dropped = self.sample_dropped_blocks(generator) if self.training else frozenset()
        self.last_dropped_blocks = tuple(n for n in self._droppable if n in dropped)
        self.last_executed_blocks = tuple(n for n in self._all_blocks if n not in dropped)
        run: _RunFn = (lambda name: name not in dropped) if dropped else (lambda name: True)

        factor = 2 ** self.num_upsamplers
        forward_size = any(s % factor for s in sample.shape[-2:])
        if self.layout.config["center_input_sample"]:
            sample = 2 * sample - 1.0

        t = self._timesteps(timestep, batch, sample.device)
        temb = self.time_embedding(self.time_proj(t).to(dtype=sample.dtype))
        if self.time_embed_act is not None:
            temb = self.time_embed_act(temb)
        ctx = encoder_hidden_states

        h = self.conv_in(sample)
        skips: list[torch.Tensor] = [h]
        for block in self.down_blocks:
            h, s = block(h, temb, ctx, run)
            skips.extend(s)
        if self.mid_block is not None:
            h = self.mid_block(h, temb, ctx, run)
        for i, block in enumerate(self.up_blocks):
            n = block.num_layers
            res, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[2:]) if (block.upsamplers is not None and forward_size) else None
            h = block(h, res, temb, ctx, run, size)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return h
