"""Export trained parts as a diffusers-layout pipeline folder and check it on the C engine.

Layout written by :func:`export_pipeline`::

    model/
      model_index.json
      tokenizer/       vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
      text_encoder/    config.json, model.safetensors
      unet/            config.json (with elastic_blocks when pruned), diffusion_pytorch_model.safetensors
      vae/             config.json (scaling_factor, decoder_block_out_channels), diffusion_pytorch_model.safetensors
      scheduler/       scheduler_config.json (prediction_type v_prediction, timestep_spacing trailing)
      snapfusion_model.json   recommended num_inference_steps / guidance_scale, provenance

Weights are stored as float16 by default (``dtype``); the engine reads F16 safetensors.
:func:`verify_export` runs the engine components and the PyTorch modules of the folder on the
same inputs and reports the largest differences.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["export_pipeline", "verify_export", "folder_size_bytes", "write_model_index"]

_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def write_model_index(folder: str | os.PathLike[str], scheduler_class: str = "DDIMScheduler") -> None:
    """A diffusers ``model_index.json`` for a StableDiffusionPipeline folder."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.25.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    Path(folder, "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _save_component(src: str | os.PathLike[str], dst: Path, dtype: str) -> None:
    """Copy a model folder, re-storing its weights in ``dtype`` ("float16", "bfloat16", "float32")."""
    import torch
    from safetensors.torch import load_file, save_file

    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(dtype)
    if dt is None:
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    src = Path(src)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "config.json", dst / "config.json")
    weights = [p for p in src.glob("*.safetensors")]
    if len(weights) != 1:
        raise FileNotFoundError(f"{src}: expected exactly one safetensors file, found {len(weights)}")
    tensors = load_file(str(weights[0]))
    save_file({k: (v.to(dt) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
              str(dst / weights[0].name), metadata={"format": "pt"})


def export_pipeline(out: str | os.PathLike[str], tokenizer: str | os.PathLike[str],
                    text_encoder: str | os.PathLike[str], unet: str | os.PathLike[str],
                    vae: str | os.PathLike[str], scheduler_class: str = "DDIMScheduler", dtype: str = "float16",
                    info: dict[str, Any] | None = None) -> Path:
    """Assemble a pipeline folder from component folders.

    Args:
        out: output folder (replaced if it exists).
        tokenizer, text_encoder, unet, vae: component folders.
        scheduler_class: "DDIMScheduler" or "EulerDiscreteScheduler".
        dtype: weight storage dtype.
        info: extra content for ``snapfusion_model.json`` (e.g. recommended steps/guidance).

    Returns:
        The folder.

    Raises:
        OSError: missing component files.
    """
    from .diffusion import scheduler_config

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "tokenizer").mkdir(parents=True)
    for name in _TOKENIZER_FILES:
        src = Path(tokenizer) / name
        if not src.is_file():
            raise FileNotFoundError(f"tokenizer file missing: {src}")
        shutil.copyfile(src, tmp / "tokenizer" / name)
    _save_component(text_encoder, tmp / "text_encoder", dtype)
    _save_component(unet, tmp / "unet", dtype)
    _save_component(vae, tmp / "vae", dtype)
    unet_cfg = json.loads((tmp / "unet" / "config.json").read_text())
    sched = scheduler_config("v_prediction", scheduler_class)
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
    write_model_index(tmp, scheduler_class)
    meta = {"num_inference_steps": 8, "guidance_scale": 4.0, "prediction_type": "v_prediction",
            "weights_dtype": dtype, "pruned": unet_cfg.get("elastic_blocks") is not None}
    meta.update(info or {})
    (tmp / "snapfusion_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def folder_size_bytes(folder: str | os.PathLike[str]) -> int:
    """Total size of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def verify_export(folder: str | os.PathLike[str], seed: int = 0, batch: int = 2,
                  prompts: Sequence[str] = ("a big red circle on a white background",
                                            "a small blue square above a large yellow triangle on a black "
                                            "background")) -> dict[str, float]:
    """Run the engine components and the PyTorch modules of a pipeline folder on the same inputs.

    The PyTorch side loads the folder's (possibly float16) weights and computes in float32,
    as the engine does.

    Returns:
        Max absolute differences and reference magnitudes: ``text_encoder``, ``unet``,
        ``vae_decoder`` (and ``*_scale`` = max |reference|).

    Raises:
        ImportError: the engine extension is not built.
    """
    import torch

    from snapfusion.components import AutoencoderKL as EVAE
    from snapfusion.components import TextEncoder as EText
    from snapfusion.components import UNet as EUNet
    from snapfusion.nn import AutoencoderKL, CLIPTextModel, UNet2DConditionModel
    from snapfusion.tokenizer import CLIPTokenizer

    folder = Path(folder)
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids = tok(list(prompts)[:batch])
    res: dict[str, float] = {}
    te = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval()
    with torch.no_grad():
        ref_txt = te(torch.from_numpy(ids)).last_hidden_state.numpy()
    eng_txt = EText(folder / "text_encoder")(ids)
    res["text_encoder"] = float(np.abs(eng_txt - ref_txt).max())
    res["text_encoder_scale"] = float(np.abs(ref_txt).max())

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32).eval()
    size = unet.config.get("sample_size", 16)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(ids), unet.config.get("in_channels", 4), size, size)).astype(np.float32)
    t = np.array([999.0, 374.0][: len(ids)] + [500.0] * max(0, len(ids) - 2), dtype=np.float32)
    with torch.no_grad():
        ref_u = unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ref_txt)).numpy()
    eng_u = EUNet(folder / "unet")(x, t, ref_txt)
    res["unet"] = float(np.abs(eng_u - ref_u).max())
    res["unet_scale"] = float(np.abs(ref_u).max())

    vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=torch.float32).eval()
    z = rng.standard_normal((len(ids), vae.resolved["latent_channels"], size, size)).astype(np.float32)
    with torch.no_grad():
        ref_img = vae.decode(torch.from_numpy(z)).numpy()
    eng_img = EVAE(folder / "vae").decode(z)
    res["vae_decoder"] = float(np.abs(eng_img - ref_img).max())
    res["vae_decoder_scale"] = float(np.abs(ref_img).max())
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m snapfusion.train export --out DIR --tokenizer T --text-encoder E --unet U --vae V``."""
    p = argparse.ArgumentParser(prog="python -m snapfusion.train export")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--text-encoder", required=True)
    p.add_argument("--unet", required=True)
    p.add_argument("--vae", required=True)
    p.add_argument("--scheduler", default="DDIMScheduler", choices=("DDIMScheduler", "EulerDiscreteScheduler"))
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--verify", action="store_true", help="compare engine and PyTorch outputs")
    args = p.parse_args(argv)
    folder = export_pipeline(args.out, args.tokenizer, args.text_encoder, args.unet, args.vae,
                             args.scheduler, args.dtype)
    info: dict[str, Any] = {"folder": str(folder), "bytes": folder_size_bytes(folder)}
    if args.verify:
        info["verify"] = verify_export(folder)
    print(json.dumps(info))
    return 0
