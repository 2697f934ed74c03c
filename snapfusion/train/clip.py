"""A small CLIP for the synthetic world, trained contrastively on (image, caption) pairs.

* Text tower: :class:`snapfusion.nn.CLIPTextModel` (transformers layout) + a linear
  ``text_projection`` of its pooled (EOS) state. Frozen, its ``last_hidden_state`` is the
  diffusion model's text encoder, as SD uses OpenAI CLIP's text tower.
* Image tower: a small CNN (:class:`ImageTower`) that keeps the 4x4 spatial grid of its last
  feature map (flattened, not averaged: the captions speak of left/right/above/below) +
  a linear ``visual_projection``.
* Loss: symmetric InfoNCE with a learned temperature; rows whose token ids are identical
  (the world repeats short captions) are all counted as positives of each other.

The image embeddings give the world CLIP score (``100 * cos``, as torchmetrics' CLIP score)
and the features of the world-FID (:mod:`snapfusion.train.evaluate`).

Saved layout::

    clip/
      text_encoder/        config.json + model.safetensors (CLIPTextModel)
      world_clip.json      image tower config, projection size
      world_clip.safetensors   image tower, projections, logit_scale
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import TrainConfig, Trainer, autocast_ctx, config_dict, load_config, setup_env
from .data import make_world_data, to_float_images

__all__ = ["ImageTower", "WorldCLIP", "CLIPRecipeConfig", "train_clip", "default_text_config"]


def default_text_config(vocab_size: int, bos: int, eos: int, max_length: int = 32, width: int = 128,
                        layers: int = 4, heads: int = 4) -> dict[str, Any]:
    """The default text-tower config (transformers ``CLIPTextConfig`` keys)."""
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": max_length,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": width,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
    }


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, stride=stride) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ImageTower(nn.Module):
    """CNN image encoder: stride-2 residual stages down to a 4x4 grid, flattened, MLP.

    Args:
        image_size: input side (a power of two >= 8).
        channels: channels of the stages (each halves the resolution) until 4x4.
        embed_dim: output feature width.
        groups: GroupNorm groups.
    """

    def __init__(self, image_size: int = 64, channels: Sequence[int] = (32, 64, 128, 128),
                 embed_dim: int = 256, groups: int = 8) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
        n_down = int(math.log2(image_size // 4))
        chans = list(channels)
        if len(chans) != n_down:
            raise ValueError(f"{image_size}x{image_size} -> 4x4 needs {n_down} stages, got {len(chans)} channels")
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        blocks = []
        c = chans[0]
        for co in chans:
            blocks.append(_ResBlock(c, co, 2, groups))
            c = co
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(min(groups, c), c)
        self.fc1 = nn.Linear(16 * c, embed_dim)
        self.fc2 = nn.Linear(embed_dim, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[B, 3, S, S]`` in [-1, 1] -> ``[B, embed_dim]``."""
        h = self.conv_in(x)
        for b in self.blocks:
            h = b(h)
        h = F.silu(self.norm_out(h)).flatten(1)
        return self.fc2(F.silu(self.fc1(h)))


class WorldCLIP(nn.Module):
    """Text tower + image tower + projections + temperature.

    Args:
        text_config: ``CLIPTextModel`` config.
        image_config: :class:`ImageTower` keyword arguments.
        projection_dim: joint embedding width.
    """

    def __init__(self, text_config: dict[str, Any], image_config: dict[str, Any] | None = None,
                 projection_dim: int = 64) -> None:
        super().__init__()
        from snapfusion.nn import CLIPTextModel

        self.text_model = CLIPTextModel(text_config)
        self.image_config = dict(image_config or {})
        self.image_model = ImageTower(**self.image_config)
        width = self.text_model.resolved["hidden_size"]
        self.projection_dim = projection_dim
        self.text_projection = nn.Linear(width, projection_dim, bias=False)
        self.visual_projection = nn.Linear(self.image_model.embed_dim, projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """int ``[B, L]`` -> unit-norm ``[B, P]``."""
        pooled = self.text_model(ids).pooler_output
        return F.normalize(self.text_projection(pooled).float(), dim=-1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """float ``[B, 3, S, S]`` in [-1, 1] -> unit-norm ``[B, P]``."""
        return F.normalize(self.visual_projection(self.image_model(x)).float(), dim=-1)

    def loss(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetric InfoNCE; identical captions are mutual positives."""
        img = self.encode_image(images)
        txt = self.encode_text(ids)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * img @ txt.t()
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        li = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
        lt = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
        acc = (logits.argmax(1) == torch.arange(len(ids), device=ids.device)).float().mean()
        return 0.5 * (li + lt), {"acc": acc.detach(), "scale": scale.detach()}

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss (:meth:`loss`); ``forward`` so that DDP sees the call."""
        return self.loss(images, ids)

    # ---------------------------------------------------------------------------- I/O
    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``text_encoder/``, ``world_clip.json`` and ``world_clip.safetensors``."""
        from snapfusion.nn.serialization import write_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.text_model.save_pretrained(folder / "text_encoder")
        (folder / "world_clip.json").write_text(json.dumps(
            {"image_config": self.image_config, "projection_dim": self.projection_dim}, indent=2) + "\n")
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("text_model.")}
        write_safetensors(state, folder / "world_clip.safetensors")

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "WorldCLIP":
        """Read a folder written by :meth:`save`.

        Raises:
            OSError: missing files. ValueError: weights that do not fit.
        """
        from snapfusion.nn import CLIPTextModel
        from snapfusion.nn.serialization import load_into, read_config, read_safetensors

        folder = Path(folder)
        meta_path = folder / "world_clip.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no world_clip.json in {folder}")
        meta = json.loads(meta_path.read_text())
        model = cls(read_config(folder / "text_encoder"), meta.get("image_config"), int(meta["projection_dim"]))
        model.text_model = CLIPTextModel.from_pretrained(folder / "text_encoder")
        state = read_safetensors(folder / "world_clip.safetensors")
        state.update({"text_model." + k: v for k, v in model.text_model.state_dict().items()})
        load_into(model, state, source=str(folder))
        return model


@dataclass
class CLIPRecipeConfig:
    """Settings of the CLIP recipe.

    Attributes:
        tokenizer: tokenizer folder.
        out: output folder.
        data: world data settings (:data:`snapfusion.train.data.DATA_DEFAULTS`).
        text: overrides of :func:`default_text_config` (``width``, ``layers``, ``heads``).
        image: :class:`ImageTower` keyword arguments.
        projection_dim: joint embedding width.
        train: :class:`TrainConfig` fields.
    """

    tokenizer: str = ""
    out: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=lambda: {"width": 128, "layers": 4, "heads": 4})
    image: dict[str, Any] = field(default_factory=lambda: {"channels": [32, 64, 128, 128], "embed_dim": 256})
    projection_dim: int = 64
    train: dict[str, Any] = field(default_factory=lambda: {"lr": 5e-4, "batch_size": 256, "max_steps": 2000,
                                                           "warmup_steps": 100, "ema_decay": 0.0,
                                                           "weight_decay": 0.05})


def train_clip(cfg: CLIPRecipeConfig, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train the world CLIP and save it to ``cfg.out`` (resumes from ``cfg.out/checkpoint.pt``).

    Returns:
        Summary dict (steps, losses, final batch retrieval accuracy).
    """
    from snapfusion.tokenizer import CLIPTokenizer

    env = setup_env(device)
    tcfg = load_config(TrainConfig, cfg.train)
    tok = CLIPTokenizer.from_pretrained(cfg.tokenizer)
    text_cfg = default_text_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.model_max_length, **cfg.text)
    torch.manual_seed(tcfg.seed)
    model = WorldCLIP(text_cfg, cfg.image, cfg.projection_dim).to(env.device)
    data = make_world_data(tok, cfg.data, tcfg.seed + 101, env.rank, env.device, progress and env.is_main,
                           tokenizer_dir=cfg.tokenizer)
    out = Path(cfg.out)
    trainer = Trainer("clip", out, model, tcfg, env, progress=progress)
    last: dict[str, float] = {}

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        b = data.batch(step, tcfg.batch_size)
        x = to_float_images(b.images)
        with autocast_ctx(env, tcfg.bf16):
            loss, logs = trainer.ddp_model(x, b.ids)
        return loss, logs

    res = trainer.run(step_fn, plot_keys=("loss",), on_log=lambda r: last.update(r))
    if env.is_main:
        model.save(out)
        (out / "recipe_config.json").write_text(json.dumps(config_dict(cfg), indent=2) + "\n")
    return {"steps": res.steps, "first_loss": res.first_loss, "final_loss": res.final_loss,
            "batch_acc": last.get("acc"), "elapsed": res.elapsed}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train clip --config cfg.json [--device cuda]``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train clip")
    p.add_argument("--config", required=True, help="JSON of CLIPRecipeConfig fields")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    print(json.dumps(train_clip(load_config(CLIPRecipeConfig, args.config), args.device)))
    return 0

