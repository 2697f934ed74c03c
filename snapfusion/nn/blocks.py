"""Building blocks shared by the UNet and the VAE.

Module and parameter names follow diffusers so that ``state_dict()`` keys match
(``norm1``, ``conv1``, ``time_emb_proj``, ``to_q``, ``to_out.0``, ``ff.net.0.proj``, ...).
All tensors are NCHW float tensors unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "activation",
    "timestep_embedding",
    "Timesteps",
    "TimestepEmbedding",
    "ResnetBlock2D",
    "Downsample2D",
    "Upsample2D",
    "Attention",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "Transformer2DModel",
    "SpatialSelfAttention",
]


def activation(name: str) -> nn.Module:
    """Activation module for a diffusers ``act_fn`` name (silu/swish, gelu, mish, relu)."""
    if name in ("silu", "swish"):
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU()
    if name == "mish":
        return nn.Mish()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported activation {name!r}")


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = False,
    shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal timestep features (DDPM / diffusers ``get_timestep_embedding``).

    Args:
        timesteps: [N] timesteps, any numeric dtype (converted to float32).
        dim: feature width.
        flip_sin_to_cos: put cosines first.
        shift: ``downscale_freq_shift``: frequencies are ``exp(-ln(max_period) * k / (dim/2 - shift))``.
        max_period: longest period.

    Returns:
        [N, dim] float32 features.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - shift))
    args = timesteps[:, None].float() * freqs[None, :]
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    else:
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of timesteps ([N] -> [N, dim] float32)."""

    def __init__(self, dim: int, flip_sin_to_cos: bool, shift: float) -> None:
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.shift = shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.dim, self.flip_sin_to_cos, self.shift)


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on timestep features: ``linear_2(act(linear_1(x)))`` (+ optional post act)."""

    def __init__(self, in_dim: int, dim: int, act_fn: str = "silu", post_act_fn: str | None = None) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = activation(act_fn)
        self.linear_2 = nn.Linear(dim, dim)
        self.post_act = None if post_act_fn is None else activation(post_act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_2(self.act(self.linear_1(x)))
        return x if self.post_act is None else self.post_act(x)


class ResnetBlock2D(nn.Module):
    """Pre-norm residual block with optional time conditioning.

    ``out = (shortcut(x) + conv2(drop(act(norm2(conv1(act(norm1(x))) + proj(act(temb))))))) / scale``.

    Args:
        in_channels: input channels.
        out_channels: output channels (a 1x1 ``conv_shortcut`` is added when they differ).
        temb_channels: width of the time embedding, or None for the unconditional VAE blocks.
        groups: GroupNorm groups.
        eps: GroupNorm epsilon.
        act_fn: activation name.
        dropout: dropout probability before ``conv2``.
        output_scale_factor: divisor of the sum.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int = 32,
        eps: float = 1e-6,
        act_fn: str = "silu",
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = activation(act_fn)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x [B, Cin, H, W]; temb [B, T] or None. Returns [B, Cout, H, W]."""
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution.

    With ``padding == 0`` the input is zero-padded on the right and bottom only
    (``(0, 1, 0, 1)``), as in the VAE encoder; otherwise symmetric padding is used.
    """

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C', ceil-ish(H/2), ceil-ish(W/2)]."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 upsampling (or to an explicit size) followed by a 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, C, H, W] -> [B, C', 2H, 2W] (or ``output_size``)."""
        if x.shape[0] >= 64:
            x = x.contiguous()
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(int(s) for s in output_size), mode="nearest")
        return self.conv(x)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, upcast: bool) -> torch.Tensor:
    """Multi-head attention on [B, Lq, H*D] / [B, Lk, H*D] -> [B, Lq, H*D]."""
    b, lq, inner = q.shape
    d = inner // heads
    dtype = q.dtype
    if upcast and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    q = q.view(b, lq, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    v = v.view(b, -1, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, lq, inner).to(dtype)


class Attention(nn.Module):
    """Multi-head (cross-)attention of the UNet transformer blocks.

    Args:
        query_dim: width of the query tokens.
        heads: number of heads.
        dim_head: width per head.
        cross_attention_dim: width of the context tokens (None: self-attention).
        bias: whether ``to_q/to_k/to_v`` have biases.
        dropout: dropout after the output projection.
        upcast: compute attention in float32 for half-precision inputs.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        upcast: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        ctx = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.upcast = upcast
        self.is_cross = cross_attention_dim is not None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(ctx, inner, bias=bias)
        self.to_v = nn.Linear(ctx, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x [B, L, query_dim]; context [B, S, ctx_dim] or None. Returns [B, L, query_dim]."""
        ctx = x if context is None else context
        out = _sdpa(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads, self.upcast)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """``a * gelu(b)`` where ``[a, b] = proj(x)`` split in halves."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """``net = [GEGLU(dim, 4*dim), Dropout, Linear(4*dim, dim)]``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and GEGLU feed-forward, each pre-LayerNorm and residual.

    With ``only_cross_attention`` the first attention also attends to the context.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int | None,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(dim, heads, dim_head, cross_attention_dim if only_cross_attention else None,
                               dropout=dropout, upcast=upcast_attention)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, dropout=dropout, upcast=upcast_attention)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Args: x [B, L, dim]; context [B, S, cross_dim]. Returns [B, L, dim]."""
        x = x + self.attn1(self.norm1(x), context if self.only_cross_attention else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """Spatial transformer: GroupNorm, projection in, ``num_layers`` transformer blocks,
    projection out, residual.

    Args:
        heads: attention heads.
        channels: feature channels (= heads * head width).
        num_layers: transformer blocks (>= 1).
        cross_attention_dim: context width.
        norm_num_groups: GroupNorm groups (epsilon 1e-6).
        use_linear_projection: ``proj_in/proj_out`` as Linear (SD-2) instead of 1x1 Conv2d.
        only_cross_attention: see :class:`BasicTransformerBlock`.
        upcast_attention: float32 attention for half-precision inputs.
        dropout: dropout in attention and feed-forward.
    """

    def __init__(
        self,
        heads: int,
        channels: int,
        num_layers: int,
        cross_attention_dim: int | None,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim,
                                  only_cross_attention=only_cross_attention, upcast_attention=upcast_attention,
                                  dropout=dropout)
            for _ in range(num_layers)
        ])
        if use_linear_projection:
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Args: x [B, C, H, W]; context [B, S, cross_dim]. Returns [B, C, H, W]."""
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear_projection:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        else:
            x = self.proj_in(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        for block in self.transformer_blocks:
            x = block(x, context)
        if not self.use_linear_projection:
            x = self.proj_out(x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous())
        else:
            x = self.proj_out(x).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return x + residual


class SpatialSelfAttention(nn.Module):
    """Single-stage self-attention over pixels used in the VAE mid blocks.

    ``out = x + to_out(attention(to_q(n), to_k(n), to_v(n)))`` with ``n = group_norm(x)``
    over [B, H*W, C] tokens, ``heads = channels // head_dim``, biased projections.
    """

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"VAE attention: {channels} channels not divisible by head width {head_dim}")
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        b, c, h, w = x.shape
        n = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        out = _sdpa(self.to_q(n), self.to_k(n), self.to_v(n), self.heads, upcast=True)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return x + out
