"""Seeded random-weight models for the parity tests (diffusers / transformers / snapfusion.nn).

Every parameter is re-randomised after the library's own initialisation, so that no layer
initialised to zero (diffusers zero-inits ``proj_out`` and ``conv_out`` of several blocks)
can hide a skipped or misplaced computation:

* GroupNorm / LayerNorm weight ``1 + 0.1 N``, bias ``0.05 N``;
* convolution / linear weight ``N / sqrt(fan_in)``, bias ``0.05 N``;
* embedding tables ``0.1 N``.

Also: a tiny CLIP BPE tokenizer folder (the Hugging Face ``vocab.json`` / ``merges.txt``
format) and a writer that re-stores a safetensors file in float16 / bfloat16.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "randomize_",
    "unet_config",
    "diffusers_unet",
    "snapfusion_unet",
    "clip_config",
    "transformers_clip",
    "vae_config",
    "diffusers_vae",
    "snapfusion_vae",
    "write_tokenizer",
    "TOKENIZER_MERGES",
    "store_as",
    "round_state_dict",
]


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter of ``module`` in place with seeded random values.

    Args:
        module: any torch module (parameters visited in ``named_modules`` order).
        seed: seed of the ``torch.Generator`` that draws all values.

    Returns:
        ``module`` itself.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            is_norm = isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            is_embedding = isinstance(mod, torch.nn.Embedding)
            for name, p in mod.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                if is_norm and name == "weight":
                    value = 1.0 + 0.1 * noise
                elif is_embedding:
                    value = 0.1 * noise
                elif name == "bias" or p.ndim < 2:
                    value = 0.05 * noise
                else:
                    fan_in = p[0].numel()
                    value = noise / math.sqrt(fan_in)
                p.copy_(value.to(p.dtype))
    return module


# ------------------------------------------------------------------------------------- UNet

def unet_config(**overrides: Any) -> dict[str, Any]:
    """A small diffusers ``UNet2DConditionModel`` config (2 levels) updated by ``overrides``."""
    cfg: dict[str, Any] = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 24,
        "attention_head_dim": 2,
    }
    cfg.update(overrides)
    return cfg


def diffusers_unet(config: dict[str, Any], seed: int) -> Any:
    """A diffusers ``UNet2DConditionModel`` of ``config`` with random weights (eval mode)."""
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**config)
    return randomize_(model, seed).eval()


def snapfusion_unet(config: dict[str, Any], seed: int) -> Any:
    """A ``snapfusion.nn`` elastic UNet of ``config`` with random weights (eval mode)."""
    from snapfusion.nn.unet import UNet2DConditionModel

    model = UNet2DConditionModel(dict(config))
    return randomize_(model, seed).eval()


# ------------------------------------------------------------------------------------- CLIP

def clip_config(**overrides: Any) -> dict[str, Any]:
    """A small transformers ``CLIPTextConfig`` dict updated by ``overrides``."""
    cfg: dict[str, Any] = {
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 48,
        "projection_dim": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    cfg.update(overrides)
    return cfg


def transformers_clip(config: dict[str, Any], seed: int) -> Any:
    """A transformers ``CLIPTextModel`` with random weights (eval mode)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**config))
    return randomize_(model, seed).eval()


# ------------------------------------------------------------------------------------- VAE

def vae_config(**overrides: Any) -> dict[str, Any]:
    """A small diffusers ``AutoencoderKL`` config (2 levels) updated by ``overrides``."""
    cfg: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 16,
    }
    cfg.update(overrides)
    return cfg


def diffusers_vae(config: dict[str, Any], seed: int) -> Any:
    """A diffusers ``AutoencoderKL`` with random weights (eval mode)."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL(**config)
    return randomize_(model, seed).eval()


def snapfusion_vae(config: dict[str, Any], seed: int) -> Any:
    """A ``snapfusion.nn`` ``AutoencoderKL`` (may carry the decoder extension keys)."""
    from snapfusion.nn.vae import AutoencoderKL

    model = AutoencoderKL(dict(config))
    return randomize_(model, seed).eval()


# ------------------------------------------------------------------------------- tokenizer

def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of the bytes 0..255, in byte order (GPT-2 / CLIP BPE):
    printable Latin-1 bytes map to themselves, the others to code points from 256 upwards."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, extra = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


#: Merges of the test tokenizer: enough to make the test prompts multi-character tokens.
TOKENIZER_MERGES: tuple[tuple[str, str], ...] = (
    ("o", "f</w>"), ("c", "a"), ("ca", "t</w>"), ("r", "e"), ("e", "d</w>"),
    ("t", "h"), ("th", "e</w>"), ("o", "n</w>"), ("s", "t"), ("re", "d</w>"), ("b", "l"),
    ("bl", "u"), ("blu", "e</w>"), ("h", "o"), ("ho", "r"), ("hor", "s"), ("hors", "e</w>"),
    ("l", "o"), ("lo", "w</w>"), ("i", "n"), ("in", "g</w>"),
)


def write_tokenizer(folder: Path) -> int:
    """Write a tiny CLIP BPE tokenizer (``vocab.json``, ``merges.txt`` and the SD-1.x configs).

    Returns:
        The vocabulary size (byte symbols, their ``</w>`` forms, one token per merge, then
        ``<|startoftext|>`` and ``<|endoftext|>``; padding with ``<|endoftext|>``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    byte_syms = _byte_symbols()
    tokens = byte_syms + [s + "</w>" for s in byte_syms] + ["".join(m) for m in TOKENIZER_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TOKENIZER_MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    tok_cfg = dict(special, model_max_length=77, do_lower_case=True, errors="replace",
                   add_prefix_space=False, tokenizer_class="CLIPTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return len(tokens)


# --------------------------------------------------------------------------- weight dtypes

_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def store_as(src: Path, dst: Path, dtype: str) -> None:
    """Copy a component folder, re-storing its safetensors weights as ``dtype`` (F16/BF16)."""
    shutil.copytree(src, dst)
    for path in dst.glob("*.safetensors"):
        tensors = load_file(str(path))
        save_file({k: v.to(_DTYPES[dtype]).contiguous() for k, v in tensors.items()}, str(path),
                  metadata={"format": "pt"})


def round_state_dict(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """Round every parameter of ``model`` to ``dtype`` and back to float32, in place."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(_DTYPES[dtype]).to(torch.float32))
    return model
