"""UNet configuration resolution and the elastic block list (torch-free).

The elastic UNet is described by a diffusers ``UNet2DConditionModel`` ``config.json``
plus an optional ``"elastic_blocks"`` key that states, per stage and per layer, which
ResNet block is kept and how many transformer blocks the layer's ``Transformer2DModel``
has.  The schema is documented in ``docs/elastic_blocks.md``; the C engine reads the
same schema.  This module has no torch dependency so that architecture search code and
the inference side can reason about block lists cheaply.

Public helpers:

* :func:`resolve_unet_config` -- normalise a diffusers UNet config (defaults, per-block
  lists, the ``attention_head_dim`` naming quirk) into a :class:`UNetLayout`.
* :func:`full_block_list` -- the block list of the full diffusers architecture.
* :func:`validate_block_list` -- check a config's ``elastic_blocks`` and return the
  normalised block list (``ValueError`` with a precise location on failure).
* :func:`block_names` -- the flat list of removable / droppable block ids.
* :func:`with_blocks_removed` -- a new config with some blocks removed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = [
    "UNET_DEFAULTS",
    "DownStage",
    "MidStage",
    "UpStage",
    "UNetLayout",
    "resolve_unet_config",
    "full_block_list",
    "validate_block_list",
    "block_names",
    "all_block_names",
    "with_blocks_removed",
]

#: diffusers ``UNet2DConditionModel`` defaults for the keys this implementation reads.
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1.0,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "use_linear_projection": False,
    "upcast_attention": False,
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}

# Keys whose non-default values select diffusers features this implementation lacks.
_UNSUPPORTED_UNET_KEYS: dict[str, Any] = {
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None,
    "time_cond_proj_dim": None,
    "dual_cross_attention": False,
    "class_embeddings_concat": False,
    "attention_type": "default",
    "cross_attention_norm": None,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
}

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
_MID_TYPES = ("UNetMidBlock2DCrossAttn", None)
ACTIVATIONS = ("silu", "swish", "gelu", "mish", "relu")
#: largest transformer depth per layer accepted in ``elastic_blocks`` (the C engine's limit too)
MAX_ATTENTION_DEPTH = 64


@dataclass(frozen=True)
class DownStage:
    """Resolved geometry of one down block.

    Attributes:
        block_type: diffusers block type name.
        in_channels: channels entering the block.
        out_channels: channels of every layer output.
        num_layers: number of (ResNet, attention) layers.
        heads: attention heads used by any transformer of the block.
        cross_attention_dim: context width for cross-attention (None: none configured).
        only_cross_attention: diffusers ``only_cross_attention`` for this block.
        transformer_depth: full transformer depth per layer (0 for plain blocks).
        downsample: whether the block ends with a stride-2 convolution.
    """

    block_type: str
    in_channels: int
    out_channels: int
    num_layers: int
    heads: int
    cross_attention_dim: int | None
    only_cross_attention: bool
    transformer_depth: tuple[int, ...]
    downsample: bool

    def resnet_in(self, j: int) -> int:
        """Channels entering the ResNet of layer ``j``."""
        return self.in_channels if j == 0 else self.out_channels


@dataclass(frozen=True)
class MidStage:
    """Resolved geometry of the ``UNetMidBlock2DCrossAttn``."""

    channels: int
    heads: int
    cross_attention_dim: int | None
    transformer_depth: int


@dataclass(frozen=True)
class UpStage:
    """Resolved geometry of one up block.

    Attributes:
        block_type: diffusers block type name.
        prev_channels: channels entering the block (output of the stage below).
        out_channels: channels of every layer output.
        skip_in_channels: channels of the skip consumed by the last layer.
        num_layers: number of layers (``layers_per_block + 1``).
        heads: attention heads.
        cross_attention_dim: context width for cross-attention.
        only_cross_attention: diffusers ``only_cross_attention`` for this block.
        transformer_depth: full transformer depth per layer (0 for plain blocks).
        upsample: whether the block ends with a nearest-neighbour upsampler.
    """

    block_type: str
    prev_channels: int
    out_channels: int
    skip_in_channels: int
    num_layers: int
    heads: int
    cross_attention_dim: int | None
    only_cross_attention: bool
    transformer_depth: tuple[int, ...]
    upsample: bool

    def hidden_in(self, j: int) -> int:
        """Channels of the hidden state entering layer ``j`` (without the skip)."""
        return self.prev_channels if j == 0 else self.out_channels

    def skip_channels(self, j: int) -> int:
        """Channels of the skip connection consumed by layer ``j``."""
        return self.skip_in_channels if j == self.num_layers - 1 else self.out_channels


@dataclass(frozen=True)
class UNetLayout:
    """Normalised UNet configuration (all per-block values resolved)."""

    config: dict[str, Any]
    down: tuple[DownStage, ...]
    mid: MidStage | None
    up: tuple[UpStage, ...]
    time_embed_dim: int


def _fail(msg: str) -> None:
    raise ValueError(msg)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _per_block(value: Any, n: int, key: str, *, allow_none: bool = False) -> list[Any]:
    """Expand an int (or None) into a per-block list, or check a list's length."""
    if value is None and allow_none:
        return [None] * n
    if _is_int(value):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            _fail(f"UNet config: '{key}' has {len(value)} entries, expected {n} (one per down block)")
        return list(value)
    raise TypeError(f"UNet config: '{key}' must be an int or a list of ints, got {type(value).__name__}")


def _positive_int(value: Any, key: str) -> int:
    if not _is_int(value):
        raise TypeError(f"UNet config: '{key}' must be an int, got {value!r}")
    if value <= 0:
        _fail(f"UNet config: '{key}' must be positive, got {value}")
    if value > 1 << 20:
        _fail(f"UNet config: '{key}' = {value} is absurdly large")
    return value


def _depth_list(value: Any, num_layers: int, key: str) -> tuple[int, ...]:
    if _is_int(value):
        depths = [value] * num_layers
    elif isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            _fail(f"UNet config: '{key}' has {len(value)} entries, expected {num_layers} (one per layer)")
        depths = list(value)
    else:
        raise TypeError(f"UNet config: '{key}' must be an int or a list of ints, got {value!r}")
    for d in depths:
        if not _is_int(d) or d < 0 or d > MAX_ATTENTION_DEPTH:
            _fail(f"UNet config: '{key}' holds an invalid transformer depth {d!r}")
    return tuple(depths)


def _merged(config: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise TypeError(f"UNet config must be a mapping, got {type(config).__name__}")
    merged = dict(UNET_DEFAULTS)
    merged.update(config)
    for key, default in _UNSUPPORTED_UNET_KEYS.items():
        if key in config and config[key] != default:
            _fail(f"UNet config: '{key}' = {config[key]!r} is not supported (only {default!r})")
    return merged


def resolve_unet_config(config: Mapping[str, Any]) -> UNetLayout:
    """Normalise a diffusers ``UNet2DConditionModel`` config.

    Applies the diffusers defaults, expands per-block values and resolves the naming quirk
    (``num_attention_heads`` defaults to ``attention_head_dim``, which for SD-1.x configs
    is the number of heads).  The ``elastic_blocks`` key is ignored here.

    Args:
        config: the config mapping (as read from ``config.json``).

    Returns:
        The resolved :class:`UNetLayout`.

    Raises:
        ValueError: inconsistent or unsupported configuration.
        TypeError: a key of the wrong type.
    """
    cfg = _merged(config)
    down_types = cfg["down_block_types"]
    up_types = cfg["up_block_types"]
    if not isinstance(down_types, (list, tuple)) or not isinstance(up_types, (list, tuple)):
        raise TypeError("UNet config: 'down_block_types' and 'up_block_types' must be lists")
    n = len(down_types)
    if n == 0:
        _fail("UNet config: 'down_block_types' is empty")
    if len(up_types) != n:
        _fail(f"UNet config: {n} down blocks but {len(up_types)} up blocks")
    for t in down_types:
        if t not in _DOWN_TYPES:
            _fail(f"UNet config: unsupported down block type {t!r} (supported: {', '.join(_DOWN_TYPES)})")
    for t in up_types:
        if t not in _UP_TYPES:
            _fail(f"UNet config: unsupported up block type {t!r} (supported: {', '.join(_UP_TYPES)})")
    if cfg["mid_block_type"] not in _MID_TYPES:
        _fail(f"UNet config: unsupported mid_block_type {cfg['mid_block_type']!r} (UNetMidBlock2DCrossAttn or null)")
    if cfg["act_fn"] not in ACTIVATIONS:
        _fail(f"UNet config: unsupported act_fn {cfg['act_fn']!r} (supported: {', '.join(ACTIVATIONS)})")
    for key in ("time_embedding_act_fn", "timestep_post_act"):
        if cfg[key] is not None and cfg[key] not in ACTIVATIONS:
            _fail(f"UNet config: unsupported {key} {cfg[key]!r}")

    channels = cfg["block_out_channels"]
    if not isinstance(channels, (list, tuple)) or len(channels) != n:
        _fail(f"UNet config: 'block_out_channels' must list {n} channel counts, got {channels!r}")
    channels = [_positive_int(c, "block_out_channels") for c in channels]
    groups = cfg["norm_num_groups"]
    if groups is None:
        _fail("UNet config: norm_num_groups = null is not supported")
    groups = _positive_int(groups, "norm_num_groups")
    for c in channels:
        if c % groups:
            _fail(f"UNet config: channel count {c} is not divisible by norm_num_groups={groups}")
    _positive_int(cfg["in_channels"], "in_channels")
    _positive_int(cfg["out_channels"], "out_channels")
    for key in ("conv_in_kernel", "conv_out_kernel"):
        k = _positive_int(cfg[key], key)
        if k % 2 == 0:
            _fail(f"UNet config: '{key}' must be odd, got {k}")
    if not isinstance(cfg["norm_eps"], (int, float)) or not cfg["norm_eps"] > 0:
        _fail(f"UNet config: norm_eps must be a positive number, got {cfg['norm_eps']!r}")

    layers = [_positive_int(v, "layers_per_block") for v in _per_block(cfg["layers_per_block"], n, "layers_per_block")]
    heads_src = cfg["num_attention_heads"] if cfg["num_attention_heads"] is not None else cfg["attention_head_dim"]
    heads = _per_block(heads_src, n, "attention_head_dim / num_attention_heads")
    heads = [_positive_int(h, "attention_head_dim / num_attention_heads") for h in heads]
    cross = _per_block(cfg["cross_attention_dim"], n, "cross_attention_dim", allow_none=True)
    for c in cross:
        if c is not None:
            _positive_int(c, "cross_attention_dim")
    oca = cfg["only_cross_attention"]
    if isinstance(oca, bool):
        only_cross = [oca] * n
    elif isinstance(oca, (list, tuple)) and len(oca) == n and all(isinstance(b, bool) for b in oca):
        only_cross = list(oca)
    else:
        _fail(f"UNet config: 'only_cross_attention' must be a bool or {n} bools, got {oca!r}")

    tlpb = cfg["transformer_layers_per_block"]
    tlpb_blocks = _per_block(tlpb, n, "transformer_layers_per_block")
    rev = cfg["reverse_transformer_layers_per_block"]
    if rev is None:
        if any(isinstance(t, (list, tuple)) for t in tlpb_blocks):
            _fail("UNet config: 'reverse_transformer_layers_per_block' is required when "
                  "'transformer_layers_per_block' gives per-layer lists")
        rev_blocks = list(reversed(tlpb_blocks))
    else:
        rev_blocks = _per_block(rev, n, "reverse_transformer_layers_per_block")

    # Time embedding width.
    ted = cfg["time_embedding_dim"]
    time_embed_dim = channels[0] * 4 if ted is None else _positive_int(ted, "time_embedding_dim")

    down: list[DownStage] = []
    out_c = channels[0]
    for i, btype in enumerate(down_types):
        in_c, out_c = out_c, channels[i]
        depth = _depth_list(tlpb_blocks[i], layers[i], "transformer_layers_per_block")
        has_attn = btype == "CrossAttnDownBlock2D"
        if has_attn:
            if cross[i] is None:
                _fail(f"UNet config: down block {i} ({btype}) needs cross_attention_dim")
            if out_c % heads[i]:
                _fail(f"UNet config: down block {i}: {out_c} channels not divisible by {heads[i]} heads")
        down.append(DownStage(
            block_type=btype, in_channels=in_c, out_channels=out_c, num_layers=layers[i], heads=heads[i],
            cross_attention_dim=cross[i], only_cross_attention=only_cross[i],
            transformer_depth=depth if has_attn else (0,) * layers[i], downsample=i < n - 1,
        ))

    mid: MidStage | None = None
    if cfg["mid_block_type"] is not None:
        last = tlpb_blocks[-1]
        mid_depth = last if _is_int(last) else (last[0] if len(last) else 1)
        if not _is_int(mid_depth) or mid_depth < 0:
            _fail(f"UNet config: invalid mid block transformer depth {mid_depth!r}")
        if cross[-1] is None:
            _fail("UNet config: the cross-attention mid block needs cross_attention_dim")
        if channels[-1] % heads[-1]:
            _fail(f"UNet config: mid block: {channels[-1]} channels not divisible by {heads[-1]} heads")
        mid = MidStage(channels=channels[-1], heads=heads[-1], cross_attention_dim=cross[-1],
                       transformer_depth=mid_depth)

    up: list[UpStage] = []
    rch = list(reversed(channels))
    r_heads = list(reversed(heads))
    r_layers = list(reversed(layers))
    r_cross = list(reversed(cross))
    r_only = list(reversed(only_cross))
    out_c = rch[0]
    for i, btype in enumerate(up_types):
        prev_c, out_c = out_c, rch[i]
        in_c = rch[min(i + 1, n - 1)]
        nl = r_layers[i] + 1
        depth = _depth_list(rev_blocks[i], nl, "reverse_transformer_layers_per_block")
        has_attn = btype == "CrossAttnUpBlock2D"
        if has_attn:
            if r_cross[i] is None:
                _fail(f"UNet config: up block {i} ({btype}) needs cross_attention_dim")
            if out_c % r_heads[i]:
                _fail(f"UNet config: up block {i}: {out_c} channels not divisible by {r_heads[i]} heads")
        up.append(UpStage(
            block_type=btype, prev_channels=prev_c, out_channels=out_c, skip_in_channels=in_c, num_layers=nl,
            heads=r_heads[i], cross_attention_dim=r_cross[i], only_cross_attention=r_only[i],
            transformer_depth=depth if has_attn else (0,) * nl, upsample=i < n - 1,
        ))

    return UNetLayout(config=cfg, down=tuple(down), mid=mid, up=tuple(up), time_embed_dim=time_embed_dim)


def full_block_list(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``elastic_blocks`` value describing the full diffusers architecture.

    Args:
        config: a diffusers UNet config (its own ``elastic_blocks`` key is ignored).

    Returns:
        A fresh ``{"down_blocks": ..., "mid_block": ..., "up_blocks": ...}`` dict;
        ``mid_block`` is None when ``mid_block_type`` is null.
    """
    layout = resolve_unet_config(config)
    return {
        "down_blocks": [
            [{"resnet": True, "attention": int(s.transformer_depth[j])} for j in range(s.num_layers)]
            for s in layout.down
        ],
        "mid_block": None if layout.mid is None else {
            "resnets": [True, True], "attention": int(layout.mid.transformer_depth),
        },
        "up_blocks": [
            [{"resnet": True, "attention": int(s.transformer_depth[j])} for j in range(s.num_layers)]
            for s in layout.up
        ],
    }


def _check_entry(entry: Any, where: str) -> tuple[bool, int]:
    if not isinstance(entry, Mapping):
        _fail(f"{where}: expected an object {{\"resnet\": bool, \"attention\": int}}, got {entry!r}")
    unknown = set(entry) - {"resnet", "attention"}
    if unknown:
        _fail(f"{where}: unknown keys {sorted(unknown)}")
    if "resnet" not in entry or "attention" not in entry:
        _fail(f"{where}: both 'resnet' and 'attention' are required")
    resnet, attn = entry["resnet"], entry["attention"]
    if not isinstance(resnet, bool):
        _fail(f"{where}.resnet: expected true/false, got {resnet!r}")
    if not _is_int(attn) or attn < 0:
        _fail(f"{where}.attention: expected a transformer-block count >= 0, got {attn!r}")
    if attn > MAX_ATTENTION_DEPTH:
        _fail(f"{where}.attention: {attn} transformer blocks exceed the limit {MAX_ATTENTION_DEPTH}")
    return resnet, attn


def _check_attention_possible(attn: int, channels: int, heads: int, cross: int | None, where: str) -> None:
    if attn == 0:
        return
    if cross is None:
        _fail(f"{where}: attention needs cross_attention_dim, which is not configured for this block")
    if channels % heads:
        _fail(f"{where}: {channels} channels are not divisible by {heads} attention heads")


def validate_block_list(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``config["elastic_blocks"]`` against the UNet config.

    Without an ``elastic_blocks`` key (or with it null) the full architecture is returned.

    Rules: every stage lists one entry per layer; a ResNet may be removed only when
    identity is possible (down/mid: input channels equal output channels; up: the hidden
    state without the skip already has the output channels, the skip is then discarded);
    attention depth ``k > 0`` needs ``cross_attention_dim`` and channels divisible by the
    block's heads.

    Args:
        config: a diffusers UNet config, optionally with ``elastic_blocks``.

    Returns:
        The normalised block list (plain dicts/lists/bools/ints, safe to JSON-serialise).

    Raises:
        ValueError: the block list does not fit the configuration (message names the entry).
    """
    layout = resolve_unet_config(config)
    blocks = config.get("elastic_blocks") if isinstance(config, Mapping) else None
    if blocks is None:
        return full_block_list(config)
    if not isinstance(blocks, Mapping):
        _fail(f"elastic_blocks: expected an object, got {type(blocks).__name__}")
    unknown = set(blocks) - {"down_blocks", "mid_block", "up_blocks"}
    if unknown:
        _fail(f"elastic_blocks: unknown keys {sorted(unknown)}")
    out: dict[str, Any] = {"down_blocks": [], "mid_block": None, "up_blocks": []}

    downs = blocks.get("down_blocks")
    if not isinstance(downs, (list, tuple)) or len(downs) != len(layout.down):
        _fail(f"elastic_blocks.down_blocks: expected a list of {len(layout.down)} stages, got {downs!r}"[:300])
    for i, (stage, entries) in enumerate(zip(layout.down, downs)):
        where = f"elastic_blocks.down_blocks[{i}]"
        if not isinstance(entries, (list, tuple)) or len(entries) != stage.num_layers:
            _fail(f"{where}: expected {stage.num_layers} layer entries (layers_per_block), got {entries!r}"[:300])
        norm = []
        for j, entry in enumerate(entries):
            w = f"{where}[{j}]"
            resnet, attn = _check_entry(entry, w)
            cin = stage.resnet_in(j)
            if not resnet and cin != stage.out_channels:
                _fail(f"{w}: the ResNet down_blocks.{i}.resnets.{j} changes channels {cin} -> "
                      f"{stage.out_channels} and cannot be removed")
            _check_attention_possible(attn, stage.out_channels, stage.heads, stage.cross_attention_dim, w)
            norm.append({"resnet": resnet, "attention": attn})
        out["down_blocks"].append(norm)

    mid = blocks.get("mid_block")
    if layout.mid is None:
        if mid is not None:
            _fail("elastic_blocks.mid_block: the config has mid_block_type null, so mid_block must be null/absent")
    else:
        if mid is None:
            _fail("elastic_blocks.mid_block: required (the config has a UNetMidBlock2DCrossAttn); "
                  "use mid_block_type null to drop the whole mid block")
        if not isinstance(mid, Mapping):
            _fail(f"elastic_blocks.mid_block: expected an object, got {mid!r}")
        unknown = set(mid) - {"resnets", "attention"}
        if unknown:
            _fail(f"elastic_blocks.mid_block: unknown keys {sorted(unknown)}")
        resnets = mid.get("resnets")
        if (not isinstance(resnets, (list, tuple)) or len(resnets) != 2
                or not all(isinstance(r, bool) for r in resnets)):
            _fail(f"elastic_blocks.mid_block.resnets: expected two booleans, got {resnets!r}")
        attn = mid.get("attention")
        if not _is_int(attn) or attn < 0 or attn > MAX_ATTENTION_DEPTH:
            _fail(f"elastic_blocks.mid_block.attention: expected a transformer-block count >= 0, got {attn!r}")
        _check_attention_possible(attn, layout.mid.channels, layout.mid.heads, layout.mid.cross_attention_dim,
                                  "elastic_blocks.mid_block")
        out["mid_block"] = {"resnets": list(resnets), "attention": attn}

    ups = blocks.get("up_blocks")
    if not isinstance(ups, (list, tuple)) or len(ups) != len(layout.up):
        _fail(f"elastic_blocks.up_blocks: expected a list of {len(layout.up)} stages, got {ups!r}"[:300])
    for i, (stage, entries) in enumerate(zip(layout.up, ups)):
        where = f"elastic_blocks.up_blocks[{i}]"
        if not isinstance(entries, (list, tuple)) or len(entries) != stage.num_layers:
            _fail(f"{where}: expected {stage.num_layers} layer entries (layers_per_block + 1), got {entries!r}"[:300])
        norm = []
        for j, entry in enumerate(entries):
            w = f"{where}[{j}]"
            resnet, attn = _check_entry(entry, w)
            hin = stage.hidden_in(j)
            if not resnet and hin != stage.out_channels:
                _fail(f"{w}: the ResNet up_blocks.{i}.resnets.{j} maps {hin} (+{stage.skip_channels(j)} skip) -> "
                      f"{stage.out_channels} channels; it can be removed only when the hidden state already "
                      f"has {stage.out_channels} channels")
            _check_attention_possible(attn, stage.out_channels, stage.heads, stage.cross_attention_dim, w)
            norm.append({"resnet": resnet, "attention": attn})
        out["up_blocks"].append(norm)
    return out


def _names(layout: UNetLayout, blocks: Mapping[str, Any], removable_only: bool) -> list[str]:
    names: list[str] = []
    for i, (stage, entries) in enumerate(zip(layout.down, blocks["down_blocks"])):
        for j, e in enumerate(entries):
            if e["resnet"] and (not removable_only or stage.resnet_in(j) == stage.out_channels):
                names.append(f"down_blocks.{i}.resnets.{j}")
            if e["attention"] > 0:
                names.append(f"down_blocks.{i}.attentions.{j}")
    mid = blocks["mid_block"]
    if mid is not None:
        if mid["resnets"][0]:
            names.append("mid_block.resnets.0")
        if mid["attention"] > 0:
            names.append("mid_block.attentions.0")
        if mid["resnets"][1]:
            names.append("mid_block.resnets.1")
    for i, (stage, entries) in enumerate(zip(layout.up, blocks["up_blocks"])):
        for j, e in enumerate(entries):
            if e["resnet"] and (not removable_only or stage.hidden_in(j) == stage.out_channels):
                names.append(f"up_blocks.{i}.resnets.{j}")
            if e["attention"] > 0:
                names.append(f"up_blocks.{i}.attentions.{j}")
    return names


def block_names(config: Mapping[str, Any]) -> list[str]:
    """Ids of the blocks present in ``config`` that may be removed or dropped.

    Ids look like ``down_blocks.0.resnets.1``, ``down_blocks.0.attentions.1``,
    ``mid_block.attentions.0``, ``up_blocks.2.resnets.0``; they are the module prefixes
    of the blocks' weights.  ResNets that change the channel count are not listed.
    Order: down blocks, mid block, up blocks; per layer ResNet before attention.

    Args:
        config: a UNet config, optionally with ``elastic_blocks``.

    Returns:
        The list of droppable block ids.
    """
    return _names(resolve_unet_config(config), validate_block_list(config), removable_only=True)


def all_block_names(config: Mapping[str, Any]) -> list[str]:
    """Like :func:`block_names` but also lists the fixed (channel-changing) ResNets."""
    return _names(resolve_unet_config(config), validate_block_list(config), removable_only=False)


def _parse_name(name: str) -> tuple[str, int | None, str, int]:
    if not isinstance(name, str):
        raise TypeError(f"block id must be a string, got {type(name).__name__}")
    parts = name.split(".")
    try:
        if parts[0] == "mid_block" and len(parts) == 3 and parts[1] in ("resnets", "attentions"):
            return "mid_block", None, parts[1], int(parts[2])
        if parts[0] in ("down_blocks", "up_blocks") and len(parts) == 4 and parts[2] in ("resnets", "attentions"):
            return parts[0], int(parts[1]), parts[2], int(parts[3])
    except ValueError:
        pass
    raise ValueError(f"malformed block id {name!r} (expected e.g. 'down_blocks.0.resnets.1' or "
                     f"'mid_block.attentions.0')")


def with_blocks_removed(config: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``config`` whose ``elastic_blocks`` no longer has ``names``.

    Removing an attention sets that layer's transformer count to 0; removing a ResNet
    sets ``resnet`` to false.

    Args:
        config: a UNet config (with or without ``elastic_blocks``).
        names: block ids as returned by :func:`block_names`.

    Returns:
        A new config dict (the input is not modified), validated.

    Raises:
        ValueError: an id is unknown, already removed or not removable.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    present = set(block_names(config))
    blocks = copy.deepcopy(validate_block_list(config))
    for name in names:
        where, i, kind, j = _parse_name(name)
        if name not in present:
            _fail(f"cannot remove {name!r}: no such removable block in this configuration "
                  f"(absent, already removed, or a channel-changing ResNet)")
        if where == "mid_block":
            if kind == "resnets":
                blocks["mid_block"]["resnets"][j] = False
            else:
                blocks["mid_block"]["attention"] = 0
        else:
            entry = blocks[where][i][j]
            if kind == "resnets":
                entry["resnet"] = False
            else:
                entry["attention"] = 0
    new = copy.deepcopy(dict(config))
    new["elastic_blocks"] = blocks
    validate_block_list(new)
    return new
