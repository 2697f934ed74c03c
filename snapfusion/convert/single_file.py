"""Original single-file Stable Diffusion v1.x checkpoints (LDM tensor names).

An original checkpoint holds the UNet under ``model.diffusion_model.``, the VAE under
``first_stage_model.`` and the CLIP text encoder under ``cond_stage_model.transformer.``.
We map every tensor name to its diffusers name (:func:`ldm_to_diffusers`), infer the configs
from the tensor shapes, and hand the engine a rename table: the file is read in place, never
rewritten. Pickled ``.ckpt`` files are opened only with ``allow_pickle=True``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from .. import _engine

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

#: SD-1.5's scheduler configuration (PNDM, as in the original release).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "trained_betas": None,
    "skip_prk_steps": True, "set_alpha_to_one": False, "prediction_type": "epsilon",
    "timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False,
}

_RESNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."),
           ("emb_layers.1.", "time_emb_proj."), ("out_layers.0.", "norm2."),
           ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
_VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."),
             ("proj_out.", "to_out.0.")]


def _sub(rest: str, table: list[tuple[str, str]]) -> str:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _unet_layout(keys: list[str]) -> tuple[int, int]:
    """(number of levels, layers per block) of an LDM UNet from its tensor names."""
    downs = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))}
    outs = {int(m.group(1)) for k in keys if (m := re.match(r"output_blocks\.(\d+)\.", k))}
    levels = len(downs) + 1
    if not outs or len(outs) % levels:
        raise ValueError("single-file checkpoint: cannot infer the UNet layout "
                         f"({len(outs)} output blocks for {levels} levels)")
    return levels, len(outs) // levels - 1


def ldm_unet_to_diffusers(key: str, levels: int, layers: int) -> str:
    """Diffusers name of an LDM UNet tensor name (without the ``model.diffusion_model.``)."""
    fixed = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.":
             "time_embedding.linear_2.", "input_blocks.0.0.": "conv_in.",
             "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"middle_block\.(\d)\.(.*)", key)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{idx // 2}.{_sub(rest, _RESNET)}"
    m = re.match(r"input_blocks\.(\d+)\.(\d)\.(.*)", key)
    if m:
        k, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        i, j = divmod(k - 1, layers + 1)
        if j == layers:  # the downsampler
            return f"down_blocks.{i}.downsamplers.0.conv.{rest[len('op.'):]}"
        if part == 0:
            return f"down_blocks.{i}.resnets.{j}.{_sub(rest, _RESNET)}"
        return f"down_blocks.{i}.attentions.{j}.{rest}"
    m = re.match(r"output_blocks\.(\d+)\.(\d)\.(.*)", key)
    if m:
        k, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        i, j = divmod(k, layers + 1)
        if part == 0:
            return f"up_blocks.{i}.resnets.{j}.{_sub(rest, _RESNET)}"
        if rest.startswith("conv."):
            return f"up_blocks.{i}.upsamplers.0.{rest}"
        return f"up_blocks.{i}.attentions.{j}.{rest}"
    raise ValueError(f"single-file checkpoint: unknown UNet tensor '{UNET_PREFIX}{key}'")


def ldm_vae_to_diffusers(key: str, levels: int) -> str:
    """Diffusers name of an LDM VAE tensor name (without ``first_stage_model.``)."""
    m = re.match(r"(encoder|decoder)\.(.*)", key)
    if not m:
        if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            return key
        raise ValueError(f"single-file checkpoint: unknown VAE tensor '{VAE_PREFIX}{key}'")
    part, rest = m.groups()
    for old, new in (("norm_out.", "conv_norm_out."), ("conv_in.", "conv_in."),
                     ("conv_out.", "conv_out.")):
        if rest.startswith(old):
            return f"{part}.{new}{rest[len(old):]}"
    m = re.match(r"mid\.(block_1|block_2|attn_1)\.(.*)", rest)
    if m:
        which, r = m.groups()
        if which == "attn_1":
            return f"{part}.mid_block.attentions.0.{_sub(r, _VAE_ATTN)}"
        idx = 0 if which == "block_1" else 1
        return f"{part}.mid_block.resnets.{idx}.{r.replace('nin_shortcut.', 'conv_shortcut.')}"
    m = re.match(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.*)", rest)
    if m:
        kind, i_s, what, j_s, r = m.groups()
        i = int(i_s)
        blocks = "down_blocks" if kind == "down" else "up_blocks"
        if kind == "up":
            i = levels - 1 - i  # LDM lists the decoder's levels from the lowest resolution up
        if what.startswith("block"):
            return f"{part}.{blocks}.{i}.resnets.{j_s}.{r.replace('nin_shortcut.', 'conv_shortcut.')}"
        sampler = "downsamplers" if kind == "down" else "upsamplers"
        return f"{part}.{blocks}.{i}.{sampler}.0.{r}"
    raise ValueError(f"single-file checkpoint: unknown VAE tensor '{VAE_PREFIX}{key}'")


def _shape(info: dict[str, tuple[str, tuple[int, ...]]], name: str) -> tuple[int, ...]:
    if name not in info:
        raise ValueError(f"single-file checkpoint: missing tensor '{name}'")
    return info[name][1]


def infer_configs(info: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, dict[str, Any]]:
    """diffusers/transformers configs of the three models, from the tensor shapes."""
    ukeys = [k[len(UNET_PREFIX):] for k in info if k.startswith(UNET_PREFIX)]
    if not ukeys:
        raise ValueError("single-file checkpoint: no UNet tensors (model.diffusion_model.*)")
    levels, layers = _unet_layout(ukeys)
    u = UNET_PREFIX
    channels, down, up = [], [], []
    for i in range(levels):
        k = 1 + i * (layers + 1)
        channels.append(_shape(info, f"{u}input_blocks.{k}.0.in_layers.2.weight")[0])
        has_attn = f"{u}input_blocks.{k}.1.proj_in.weight" in info
        down.append("CrossAttnDownBlock2D" if has_attn else "DownBlock2D")
        has_attn = f"{u}output_blocks.{i * (layers + 1)}.1.proj_in.weight" in info
        up.append("CrossAttnUpBlock2D" if has_attn else "UpBlock2D")
    ctx_keys = [k for k in info if k.startswith(u) and k.endswith("attn2.to_k.weight")]
    cross = _shape(info, ctx_keys[0])[1] if ctx_keys else 768
    proj = [k for k in info if k.startswith(u) and k.endswith("proj_in.weight")]
    linear = bool(proj) and len(_shape(info, proj[0])) == 2
    heads: Any = 8 if cross == 768 else [max(1, c // 64) for c in channels]
    unet = {
        "_class_name": "UNet2DConditionModel", "sample_size": 64,
        "in_channels": _shape(info, f"{u}input_blocks.0.0.weight")[1],
        "out_channels": _shape(info, f"{u}out.2.weight")[0],
        "block_out_channels": channels, "layers_per_block": layers,
        "down_block_types": down, "up_block_types": up, "cross_attention_dim": cross,
        "attention_head_dim": heads, "use_linear_projection": linear,
        "mid_block_type": ("UNetMidBlock2DCrossAttn"
                           if f"{u}middle_block.0.in_layers.0.weight" in info else None),
    }
    v = VAE_PREFIX
    vlevels = 1 + len({k for k in info if re.match(rf"{re.escape(v)}encoder\.down\.\d+\.downsample\.conv\.weight", k)})
    vae = {
        "_class_name": "AutoencoderKL", "in_channels": _shape(info, f"{v}encoder.conv_in.weight")[1],
        "out_channels": _shape(info, f"{v}decoder.conv_out.weight")[0],
        "latent_channels": _shape(info, f"{v}post_quant_conv.weight")[0],
        "block_out_channels": [_shape(info, f"{v}encoder.down.{i}.block.0.conv1.weight")[0]
                               for i in range(vlevels)],
        "layers_per_block": len({k.split(".")[4] for k in info
                                 if k.startswith(f"{v}encoder.down.0.block.")}),
        "down_block_types": ["DownEncoderBlock2D"] * vlevels,
        "up_block_types": ["UpDecoderBlock2D"] * vlevels, "norm_num_groups": 32,
        "scaling_factor": 0.18215, "sample_size": 512,
    }
    t = TEXT_PREFIX + ("text_model." if f"{TEXT_PREFIX}text_model.embeddings.token_embedding.weight"
                       in info else "")
    vocab, hidden = _shape(info, f"{t}embeddings.token_embedding.weight")
    n_layers = len({k.split(".")[len(t.split(".")) + 1] for k in info
                    if k.startswith(f"{t}encoder.layers.")})
    text = {
        "architectures": ["CLIPTextModel"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": _shape(info, f"{t}encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": n_layers, "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": _shape(info, f"{t}embeddings.position_embedding.weight")[0],
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0,
        "eos_token_id": 2, "pad_token_id": 1,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text, "_text_prefix": {"prefix": t},
            "_unet_layout": {"levels": levels, "layers": layers}}


def renames_for(info: dict[str, tuple[str, tuple[int, ...]]],
                configs: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per component: diffusers name -> name in the file. Every tensor of each component's
    part of the file is mapped (an unknown name raises ValueError)."""
    levels, layers = configs["_unet_layout"]["levels"], configs["_unet_layout"]["layers"]
    vlevels = len(configs["vae"]["block_out_channels"])
    tprefix = configs["_text_prefix"]["prefix"]
    out: dict[str, dict[str, str]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    for name in info:
        if name.startswith(UNET_PREFIX):
            out["unet"][ldm_unet_to_diffusers(name[len(UNET_PREFIX):], levels, layers)] = name
        elif name.startswith(VAE_PREFIX):
            out["vae"][ldm_vae_to_diffusers(name[len(VAE_PREFIX):], vlevels)] = name
        elif name.startswith(tprefix):
            rest = name[len(tprefix):]
            if rest != "embeddings.position_ids":
                out["text_encoder"]["text_model." + rest] = name
    return out


def load_single_file(pipeline_cls: Any, path: Path, *, scheduler: str | None = None,
                     allow_pickle: bool = False, tokenizer: Path | None = None) -> Any:
    """Build a pipeline from an original single-file SD-v1.x checkpoint.

    Args:
        pipeline_cls: the Pipeline class.
        path: a ``.safetensors`` file (or a pickled ``.ckpt`` with ``allow_pickle=True``).
        tokenizer: a folder with the CLIP ``vocab.json``/``merges.txt`` (single files carry no
            tokenizer); by default a ``tokenizer/`` folder next to the file.

    The configs are inferred from the tensor shapes with SD-1.x conventions (8 heads, CLIP
    ViT-L/14 heads of 64); ``unet/config.json``, ``vae/config.json`` or
    ``text_encoder/config.json`` files next to the checkpoint override them key by key.
    """
    from ..components import AutoencoderKL, TextEncoder, UNet
    from ..schedulers import scheduler_from_config
    from ..tokenizer import CLIPTokenizer

    path = Path(path)
    tmpdir = None
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        if not allow_pickle:
            raise ValueError(f"{path}: a pickled checkpoint; snapfusion never unpickles files "
                             "unless you pass allow_pickle=True (only for files you trust)")
        tmpdir = tempfile.TemporaryDirectory(prefix="snapfusion-")
        path = _pickle_to_safetensors(path, Path(tmpdir.name) / "model.safetensors")
    try:
        with _engine.SafeTensors(path) as st:
            info = {k: st.info(k) for k in st.keys()}
        configs = infer_configs(info)
        # head counts cannot be read from weights: SD-1.x conventions are assumed unless a
        # `<component>/config.json` next to the file says otherwise (its keys win)
        for comp in ("unet", "vae", "text_encoder"):
            override = path.parent / comp / "config.json"
            if override.is_file():
                from ..components import read_config

                configs[comp].update(read_config(override.parent)[1])
        renames = renames_for(info, configs)
        tok_dir = Path(tokenizer) if tokenizer else path.parent / "tokenizer"
        if not (tok_dir / "vocab.json").is_file():
            raise OSError(f"{path}: single-file checkpoints carry no tokenizer; put the CLIP "
                          f"tokenizer (vocab.json, merges.txt) in {tok_dir}")
        tok = CLIPTokenizer.from_pretrained(tok_dir)
        enc = TextEncoder(config=configs["text_encoder"], weights=path,
                          renames=renames["text_encoder"], strict=False)
        unet = UNet(config=configs["unet"], weights=path, renames=renames["unet"], strict=False)
        vae = AutoencoderKL(config=configs["vae"], weights=path, renames=renames["vae"],
                            strict=False)
        sched = scheduler_from_config(dict(SD15_SCHEDULER), name=scheduler)
        return pipeline_cls(tok, enc, unet, vae, sched, name=str(path))
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


def _pickle_to_safetensors(src: Path, dst: Path) -> Path:
    """Unpickle a trusted ``.ckpt`` (torch) and write its tensors as safetensors."""
    import numpy as np
    import torch

    from .safetensors_io import save_safetensors

    obj = torch.load(src, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{src}: no state dict inside")
    tensors = {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
               for k, v in state.items() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point}
    tensors = {k: (a.astype(np.float32) if a.dtype not in (np.float32, np.float16) else a)
               for k, a in tensors.items()}
    save_safetensors(dst, tensors)
    return dst
