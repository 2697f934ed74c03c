"""transformers-compatible CLIP text encoder (``CLIPTextModel``).

Parameter names equal ``transformers.CLIPTextModel.state_dict()`` keys
(``text_model.embeddings.token_embedding.weight``,
``text_model.encoder.layers.0.self_attn.q_proj.weight``, ``text_model.final_layer_norm.bias``, ...).
Older checkpoints that also store ``text_model.embeddings.position_ids`` load as well
(the buffer is recomputed, not read).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .serialization import TRANSFORMERS_WEIGHTS, find_weights, load_into, read_config, read_safetensors, \
    write_config, write_safetensors

__all__ = ["CLIPTextModel", "CLIPTextOutput", "CLIP_TEXT_DEFAULTS", "resolve_clip_text_config"]

#: transformers ``CLIPTextConfig`` defaults for the keys used here.
CLIP_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

_ACTS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    return F.silu(x)


def resolve_clip_text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Apply transformers defaults and validate a CLIP text config.

    A full ``CLIPModel`` config (``model_type == "clip"`` with ``text_config``) is
    reduced to its ``text_config``.

    Raises:
        TypeError / ValueError: invalid configuration.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"CLIP config must be a mapping, got {type(config).__name__}")
    if "text_config" in config and isinstance(config["text_config"], Mapping):
        config = config["text_config"]
    cfg = dict(CLIP_TEXT_DEFAULTS)
    cfg.update(config)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"CLIP config: '{key}' must be an int, got {v!r}")
        if v <= 0 or v > 1 << 22:
            raise ValueError(f"CLIP config: '{key}' = {v} out of range")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError(f"CLIP config: hidden_size {cfg['hidden_size']} not divisible by "
                         f"{cfg['num_attention_heads']} heads")
    if cfg["hidden_act"] not in _ACTS:
        raise ValueError(f"CLIP config: unsupported hidden_act {cfg['hidden_act']!r} (supported: {_ACTS})")
    eps = cfg["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"CLIP config: layer_norm_eps must be positive, got {eps!r}")
    eos = cfg["eos_token_id"]
    if eos is not None and (isinstance(eos, bool) or not isinstance(eos, int)):
        raise TypeError(f"CLIP config: eos_token_id must be an int, got {eos!r}")
    return cfg


class CLIPTextOutput(NamedTuple):
    """Outputs of :class:`CLIPTextModel`.

    Attributes:
        last_hidden_state: [B, L, D] after the final LayerNorm.
        pooler_output: [B, D] the final state at the EOS position of each row.
        hidden_states: None, or a tuple of N+1 tensors [B, L, D]: embeddings, then each
            layer's output (without the final LayerNorm).  ``hidden_states[-(k+1)]`` passed
            through ``final_layer_norm`` is diffusers' ``clip_skip = k``.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, dim: int, positions: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.position_embedding = nn.Embedding(positions, dim)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding(self.position_ids[:, : ids.shape[1]])


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_act(self.act, self.fc1(x)))


class _EncoderLayer(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.self_attn = _SelfAttention(d, cfg["num_attention_heads"])
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.mlp = _MLP(d, cfg["intermediate_size"], cfg["hidden_act"])
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_EncoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])


class _TextTransformer(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg["vocab_size"], cfg["hidden_size"], cfg["max_position_embeddings"])
        self.encoder = _Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])


class CLIPTextModel(nn.Module):
    """CLIP text transformer compatible with transformers ``CLIPTextModel``.

    Args:
        config: transformers ``config.json`` mapping (``CLIPTextConfig`` keys).
    """

    weights_name = TRANSFORMERS_WEIGHTS

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        config = read_config(config)
        self.resolved = resolve_clip_text_config(config)
        config.setdefault("architectures", ["CLIPTextModel"])
        config.setdefault("model_type", "clip_text_model")
        self.config = config
        self.eos_token_id = self.resolved["eos_token_id"]
        self.text_model = _TextTransformer(self.resolved)
        self._register_load_state_dict_pre_hook(_drop_position_ids)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike[str]) -> "CLIPTextModel":
        """Build a randomly initialised model from a config mapping, JSON file or folder."""
        return cls(read_config(config))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> "CLIPTextModel":
        """Load a transformers-layout folder (``config.json`` + ``model.safetensors``)."""
        model = cls(read_config(folder))
        path = find_weights(folder, cls.weights_name)
        load_into(model, cls.convert_state_dict(read_safetensors(path)), source=str(path))
        if dtype is not None:
            model.to(dtype)
        return model

    load_safetensors = from_pretrained

    @staticmethod
    def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise a CLIP text state dict to the ``text_model.*`` names used here.

        Accepts the transformers 4.x / Stable Diffusion layout (``text_model.`` prefix, maybe
        with the ``position_ids`` buffer) and the transformers 5.x ``CLIPTextModel`` layout
        (no prefix).  The ``position_ids`` buffer is dropped.
        """
        out = {}
        prefixed = any(k.startswith("text_model.") for k in state_dict)
        for k, v in state_dict.items():
            key = k if prefixed else "text_model." + k
            if key != "text_model.embeddings.position_ids":
                out[key] = v
        return out

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_config(self.config, folder / "config.json")
        write_safetensors(self.state_dict(), folder / self.weights_name)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> CLIPTextOutput:
        """Encode token ids (causal self-attention, as CLIP).

        Args:
            input_ids: [B, L] integer token ids, L <= max_position_embeddings.
            attention_mask: optional [B, L] padding mask (1 = attend, 0 = padding), combined
                with the causal mask.  Stable Diffusion pipelines pass none.
            output_hidden_states: also return the per-layer hidden states.

        Returns:
            :class:`CLIPTextOutput`.  Pooling: with the legacy ``eos_token_id == 2`` the row's
            argmax token id (EOS is the largest id); otherwise the first ``eos_token_id``.

        Raises:
            TypeError / ValueError: malformed ids.
        """
        cfg = self.resolved
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        b, n = input_ids.shape
        if b == 0 or n == 0:
            raise ValueError(f"input_ids has an empty dimension: {tuple(input_ids.shape)}")
        if n > cfg["max_position_embeddings"]:
            raise ValueError(f"sequence length {n} exceeds max_position_embeddings {cfg['max_position_embeddings']}")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg["vocab_size"]:
            raise ValueError(f"token ids must lie in [0, {cfg['vocab_size']}), got range [{lo}, {hi}]")

        tm = self.text_model
        x = tm.embeddings(input_ids)
        dtype = x.dtype
        allowed = torch.ones((n, n), dtype=torch.bool, device=x.device).tril()[None, None]
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (b, n):
                raise ValueError(f"attention_mask must be a [B, L] = {(b, n)} tensor")
            allowed = allowed & (attention_mask.to(x.device) != 0)[:, None, None, :]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=x.device).masked_fill(~allowed, torch.finfo(dtype).min)
        hidden = [x] if output_hidden_states else None
        for layer in tm.encoder.layers:
            x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
        last = tm.final_layer_norm(x)
        ids = input_ids.to(device=last.device)
        if self.eos_token_id == 2:
            pos = ids.to(torch.int).argmax(dim=-1)
        else:
            pos = (ids.to(torch.int) == self.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(b, device=last.device), pos]
        return CLIPTextOutput(last, pooled, tuple(hidden) if hidden is not None else None)


def _drop_position_ids(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    state_dict.pop(prefix + "text_model.embeddings.position_ids", None)
