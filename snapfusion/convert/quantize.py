"""Model conversion: 16-bit and int8 (W8A8) weights, with calibration.

:func:`convert` reads a diffusers-layout folder (a whole pipeline or one component) or an
original single-file SD-v1.x checkpoint and writes a diffusers-layout folder whose weights are
float32, float16, bfloat16 or int8 (docs/quantization.md describes the format):

- ``fp16``/``bf16``: every float tensor stored in 16 bits (the engine widens them to float32
  once, at load).
- ``int8``: the weights of the UNet's and the VAE's convolutions and linear layers become int8
  with one float32 scale per output channel (``<layer>.weight_scale``); the activation
  parameters found by calibration (``<layer>.input_scale`` / ``<layer>.input_zero_point``, and
  ``<layer>.output_scale`` / ``<layer>.output_zero_point`` for XNNPACK's int8 operators) are
  stored beside them. Layers matching the ``keep_fp32`` patterns stay float.

Each component's ``config.json`` gets a ``"quantization"`` entry saying what was done. The
output is written into a temporary folder next to the destination and renamed into place at the
end; the source is never modified (a destination equal to the source, inside it or containing
it is refused).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _engine
from .._files import read_json_object
from . import calibrate as cal
from .safetensors_io import f32_to_bf16_bits, save_safetensors

PathLike = str | os.PathLike[str]

#: Storage formats of :func:`convert`.
WEIGHT_DTYPES = ("fp32", "fp16", "bf16", "int8")

#: Layers kept in float by default in int8 models (glob patterns on tensor names, also matched
#: as ``<component>/<name>``): the first and last convolutions (3 or 4 channels on one side:
#: little compute, and their errors reach the output directly), the 1x1 latent convolutions of
#: the VAE, the time embedding MLP (one row per image: nothing to gain), and the text encoder
#: (run once per image). The attention projections and the per-ResNet time-embedding
#: projections are quantized: measured, they cost almost no accuracy (docs/quantization.md),
#: and the projections are 26 M of SD-v1.5's parameters (100 MB in float32).
DEFAULT_KEEP_FP32 = (
    "conv_in.*", "conv_out.*", "*.conv_in.*", "*.conv_out.*",
    "quant_conv.*", "post_quant_conv.*",
    "time_embedding.*",
    "text_encoder/*",
)

#: Components that int8 conversion quantizes (others keep float weights).
INT8_COMPONENTS = ("unet", "vae", "text_encoder")

_COMPONENTS = ("unet", "vae", "text_encoder")
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------- helpers


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d:
        raise ValueError(f"{dst}: the destination is the source; convert never overwrites its "
                         "input")
    if d.is_relative_to(s):
        raise ValueError(f"{dst}: the destination is inside the source {src}")
    if s.is_relative_to(d):
        raise ValueError(f"{dst}: the destination contains the source {src}")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst}: exists and is not empty (pass overwrite=True / "
                              "--overwrite to replace it)")


def _component_kind(config: dict[str, Any]) -> str | None:
    cls = config.get("_class_name")
    if cls == "UNet2DConditionModel":
        return "unet"
    if cls == "AutoencoderKL":
        return "vae"
    arch = config.get("architectures") or []
    if "CLIPTextModel" in arch or config.get("model_type") == "clip_text_model":
        return "text_encoder"
    return None


def _matches(patterns: Sequence[str], component: str, tensor: str) -> bool:
    return any(fnmatch.fnmatchcase(tensor, p) or fnmatch.fnmatchcase(f"{component}/{tensor}", p)
               for p in patterns)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantization.

    Args:
        w: float ``(out, ...)`` weights (a linear ``(out, in)`` or convolution
            ``(out, in, kh, kw)``).

    Returns:
        (int8 array of ``w``'s shape, float32 scales ``(out,)``) with ``w ~ scale * q``,
        ``scale = max|w_o| / 127`` (1 for an all-zero channel).

    Raises:
        ValueError: non-finite weights.
    """
    w2 = np.asarray(w, np.float32).reshape(w.shape[0], -1)
    if not np.isfinite(w2).all():
        raise ValueError("non-finite weights cannot be quantized")
    m = np.abs(w2).max(axis=1)
    scale = np.where(m > 0, m / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w2 / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale


def _to_16(a: np.ndarray, dtype: str, name: str) -> np.ndarray:
    if dtype == "fp16":
        big = np.abs(a[np.isfinite(a)]).max(initial=0.0)
        if big > 65504.0:
            raise ValueError(f"{name}: |value| {big:g} exceeds the float16 range; use bf16")
        return a.astype(np.float16)
    return f32_to_bf16_bits(a)


def _read_tensors(path: Path, names: Iterable[str] | None = None,
                  renames: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """float32 copies of the tensors of a safetensors file (I8 data is refused)."""
    out: dict[str, np.ndarray] = {}
    with _engine.SafeTensors(path) as st:
        keys = list(renames.items()) if renames is not None else [(k, k) for k in
                                                                   (names or st.keys())]
        for model_name, file_name in keys:
            dtype, _ = st.info(file_name)
            if dtype == "I8":
                raise ValueError(f"{path}: tensor '{file_name}' is already int8; convert reads "
                                 "float models")
            out[model_name] = np.array(st.get(file_name, dtype="float32"))
    return out


def _write_component(folder: Path, config: dict[str, Any], tensors: dict[str, np.ndarray],
                     bf16: set[str], weight_name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / weight_name, tensors, metadata={"format": "pt"}, bf16=bf16)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------- single files


def _single_file_to_folder(src: Path, out: Path, tokenizer: Path | None,
                           allow_pickle: bool) -> None:
    """Write an original single-file checkpoint as a float32 diffusers folder."""
    from ..pipeline import save_model_index
    from .single_file import SD15_SCHEDULER, _pickle_to_safetensors, infer_configs, renames_for

    tmp = None
    try:
        if src.suffix in (".ckpt", ".pt", ".pth", ".bin"):
            if not allow_pickle:
                raise ValueError(f"{src}: a pickled checkpoint; pass allow_pickle=True (only for "
                                 "files you trust)")
            tmp = tempfile.TemporaryDirectory(prefix="snapfusion-convert-")
            src = _pickle_to_safetensors(src, Path(tmp.name) / "model.safetensors")
        with _engine.SafeTensors(src) as st:
            info = {k: st.info(k) for k in st.keys()}
        configs = infer_configs(info)
        for comp in _COMPONENTS:
            override = src.parent / comp / "config.json"
            if override.is_file():
                configs[comp].update(read_json_object(override, "config file")[1])
        renames = renames_for(info, configs)
        tok = Path(tokenizer) if tokenizer else src.parent / "tokenizer"
        if not (tok / "vocab.json").is_file():
            raise OSError(f"{src}: single-file checkpoints carry no tokenizer; put the CLIP "
                          f"tokenizer (vocab.json, merges.txt) in {tok} or pass tokenizer=")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tok, out / "tokenizer")
        for comp, weight_name in (("unet", "diffusion_pytorch_model.safetensors"),
                                  ("vae", "diffusion_pytorch_model.safetensors"),
                                  ("text_encoder", "model.safetensors")):
            tensors = _read_tensors(src, renames=renames[comp])
            cfg = {k: v for k, v in configs[comp].items() if not k.startswith("_")
                   or k == "_class_name"}
            _write_component(out / comp, cfg, tensors, set(), weight_name)
        (out / "scheduler").mkdir(exist_ok=True)
        (out / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(SD15_SCHEDULER, indent=2) + "\n")
        save_model_index(out, SD15_SCHEDULER["_class_name"])
    finally:
        if tmp is not None:
            tmp.cleanup()


# ---------------------------------------------------------------------------- conversion


def _discover(folder: Path, kinds: dict[str, str], is_pipeline: bool,
              calibrate: Any, steps: int, guidance_scale: float,
              size: tuple[int, int] | None, progress: bool) -> tuple[list[dict[str, Any]], str]:
    """Build the float models under an observer (and run them when calibrating). Returns the
    observer's layers and the activation mode ("static" or "dynamic")."""
    from ..components import AutoencoderKL, TextEncoder, UNet

    classes = {"unet": UNet, "vae": AutoencoderKL, "text_encoder": TextEncoder}
    if calibrate is False:
        def build() -> None:
            for comp, kind in kinds.items():
                path = folder / comp if is_pipeline else folder
                classes[kind](path)

        return cal.observe(build), "dynamic"
    if callable(calibrate):
        def run() -> None:
            models: dict[str, Any] = {}
            for comp, kind in kinds.items():
                models[comp] = classes[kind](folder / comp if is_pipeline else folder)
            if is_pipeline:
                from ..pipeline import Pipeline

                models["pipeline"] = Pipeline.from_pretrained(folder)
            calibrate(models)

        return cal.observe(run), "static"
    if not is_pipeline:
        raise ValueError(f"{folder}: calibrating a single component needs a callable "
                         "calibrate=fn(models) that runs it (prompts need a whole pipeline), "
                         "or calibrate=False for dynamic activation quantization")
    prompts = cal.read_prompts(calibrate) if calibrate is not None else list(cal.DEFAULT_PROMPTS)
    return cal.calibrate_pipeline(folder, prompts, steps=steps, guidance_scale=guidance_scale,
                                  size=size, progress=progress), "static"


def _convert_component(src: Path, dst: Path, comp: str, kind: str, weights: str,
                       float_dtype: str, ranges: dict[str, cal.LayerRange],
                       keep: Sequence[str], info: dict[str, Any], progress: bool) -> None:
    from ..components import find_weights, read_config

    _, config = read_config(src)
    wfile = find_weights(src)
    tensors = _read_tensors(wfile)
    out: dict[str, np.ndarray] = {}
    bf16: set[str] = set()
    store = weights if weights != "int8" else float_dtype
    kept: list[str] = []
    int8_layers: list[str] = []
    # layers (groups of fused layers) to quantize
    quantize: set[str] = set()
    if weights == "int8" and kind in INT8_COMPONENTS:
        seen: set[int] = set()
        for r in ranges.values():
            if id(r) in seen:
                continue
            seen.add(id(r))
            names = [n for n in r.names if f"{n}.weight" in tensors]
            if len(names) != len(r.names):
                continue  # another component's layer
            ok = all(tensors[f"{n}.weight"].ndim in (2, 4) for n in names)
            if ok and not any(_matches(keep, comp, f"{n}.weight") for n in names):
                quantize.update(names)
                int8_layers.extend(names)
            else:
                kept.extend(names)
    items: Iterable[str] = sorted(tensors)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(list(items), desc=f"writing {comp}", unit="tensor", leave=False)
    for name in items:
        a = tensors[name]
        layer = name[: -len(".weight")] if name.endswith(".weight") else None
        if layer is not None and layer in quantize:
            q, scale = quantize_weight(a)
            out[name] = q
            out[f"{layer}.weight_scale"] = scale
            r = ranges[layer]
            for what, rng in (("input", r.input), ("output", r.output)):
                if rng is not None:
                    s, z = cal.qparams_from_range(*rng)
                    out[f"{layer}.{what}_scale"] = np.array([s], np.float32)
                    out[f"{layer}.{what}_zero_point"] = np.array([z], np.int8)
            continue
        if store == "fp32":
            out[name] = a.astype(np.float32)
        else:
            out[name] = _to_16(a, store, f"{wfile}: {name}")
            if store == "bf16":
                bf16.add(name)
    q_entry: dict[str, Any] = {
        "format": "snapfusion", "version": _FORMAT_VERSION,
        "scheme": "w8a8" if int8_layers else weights,
        "float_dtype": store,
    }
    if weights == "int8":
        q_entry.update({
            "weights": {"dtype": "int8", "granularity": "per_output_channel",
                        "symmetric": True, "range": [-127, 127]},
            "activations": {"dtype": "int8", "granularity": "per_tensor", "symmetric": False,
                            "mode": info["mode"]},
            "int8_layers": len(int8_layers),
            "kept_fp32": sorted(kept),
            "keep_fp32_patterns": list(keep),
        })
        if info["mode"] == "static":
            q_entry["activations"]["calibration"] = info["calibration"]
    config = dict(config)
    config["quantization"] = q_entry
    _write_component(dst, config, out, bf16, wfile.name)
    for entry in sorted(src.iterdir()):  # other files of the folder (not weights) come along
        if entry.is_file() and entry.name != "config.json" and \
                entry.suffix not in (".safetensors", ".bin", ".ckpt", ".pt", ".pth"):
            shutil.copy2(entry, dst / entry.name)


def convert(src: PathLike, dst: PathLike, *, weights: str = "fp16",
            calibrate: PathLike | Sequence[str] | Callable[[dict[str, Any]], Any] | bool |
            None = None, keep_fp32: Sequence[str] | None = None, float_dtype: str = "fp32",
            percentile: float = cal.DEFAULT_PERCENTILE, calibration_steps: int = 8,
            guidance_scale: float = 7.5, calibration_size: tuple[int, int] | None = None,
            tokenizer: PathLike | None = None, allow_pickle: bool = False,
            overwrite: bool = False, progress: bool = True) -> Path:
    """Convert a model's weights to another storage format.

    Args:
        src: a diffusers pipeline folder (``model_index.json``), one component folder
            (``config.json`` + safetensors), or an original single-file SD-v1.x checkpoint.
        dst: the output folder (must not exist, be empty, or ``overwrite`` must be set; never
            the source, inside it or around it).
        weights: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``.
        calibrate: int8 only. None: the default prompts (pipelines); a prompts file path or a
            list of prompts; a callable receiving ``{component name: float model}`` (plus
            ``"pipeline"`` for pipelines) that runs them on representative inputs; False: no
            calibration (activations quantized from each input's min/max at run time).
        keep_fp32: glob patterns on tensor names (also matched as ``component/name``) of layers
            that stay float; None: :data:`DEFAULT_KEEP_FP32`; ``[]``: quantize every layer.
        float_dtype: storage of the float tensors of an int8 model (``"fp32"``, ``"fp16"``,
            ``"bf16"``).
        percentile: calibration clipping percentile of each tail (100: min/max).
        calibration_steps: denoising steps per calibration prompt.
        guidance_scale: classifier-free guidance during calibration.
        calibration_size: ``(height, width)`` of the calibration images (default: the model's
            default size).
        tokenizer: for single-file sources, the CLIP tokenizer folder (default: ``tokenizer/``
            next to the file).
        allow_pickle: allow a pickled single-file ``.ckpt`` (only for files you trust).
        overwrite: replace a non-empty destination.
        progress: show progress bars.

    Returns:
        the destination folder.

    Raises:
        ValueError: bad arguments, a destination overlapping the source, non-finite or
            out-of-range weights, an already quantized source. OSError: missing files.
        FileExistsError: a non-empty destination without ``overwrite``.
    """
    if weights not in WEIGHT_DTYPES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_DTYPES)}, got {weights!r}")
    if float_dtype not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"float_dtype must be fp32, fp16 or bf16, got {float_dtype!r}")
    if weights != "int8" and calibrate not in (None, False):
        raise ValueError("calibrate applies to int8 conversion only")
    if isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int) \
            or calibration_steps < 1:
        raise ValueError(f"calibration_steps must be a positive int, got {calibration_steps!r}")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    keep = list(DEFAULT_KEEP_FP32 if keep_fp32 is None else keep_fp32)
    if not all(isinstance(p, str) for p in keep):
        raise TypeError("keep_fp32 must be a list of glob patterns (str)")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise OSError(f"{src}: no such model folder or file")
    _check_paths(src, dst, overwrite)

    parent = dst.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=parent))
    try:
        out = work / "out"
        if src.is_file():
            floatdir = work / "float"
            _single_file_to_folder(src, floatdir, Path(tokenizer) if tokenizer else None,
                                   allow_pickle)
            root = floatdir
        else:
            root = src
        is_pipeline = (root / "model_index.json").is_file()
        if is_pipeline:
            comps: dict[str, str] = {}
            for comp in _COMPONENTS:
                if (root / comp / "config.json").is_file():
                    from ..components import read_config

                    kind = _component_kind(read_config(root / comp)[1]) or comp
                    comps[comp] = kind
        else:
            from ..components import read_config

            kind = _component_kind(read_config(root)[1])
            if kind is None:
                raise ValueError(f"{root}: not a UNet, VAE or CLIP text encoder folder "
                                 "(config.json's _class_name / architectures)")
            comps = {"": kind}
        ranges: dict[str, cal.LayerRange] = {}
        info: dict[str, Any] = {"mode": "none"}
        if weights == "int8":
            layers, mode = _discover(root, comps, is_pipeline, calibrate, calibration_steps,
                                     guidance_scale, calibration_size, progress)
            ranges = cal.ranges(layers, float(percentile))
            info["mode"] = mode
            info["calibration"] = {
                "method": "histogram_percentile", "percentile": float(percentile),
                "observed": "input and output of every convolution and linear layer",
            }
            if mode == "static" and not callable(calibrate):
                prompts = (cal.read_prompts(calibrate) if calibrate is not None
                           else list(cal.DEFAULT_PROMPTS))
                info["calibration"].update({
                    "prompts": len(prompts), "steps": calibration_steps,
                    "guidance_scale": guidance_scale,
                    "size": list(calibration_size) if calibration_size else "default"})
        # write the components, copy everything else
        if is_pipeline:
            out.mkdir()
            for entry in sorted(root.iterdir()):
                if entry.name in comps:
                    _convert_component(entry, out / entry.name, entry.name, comps[entry.name],
                                       weights, float_dtype, ranges, keep, info, progress)
                elif entry.is_dir():
                    shutil.copytree(entry, out / entry.name)
                elif entry.is_file():
                    shutil.copy2(entry, out / entry.name)
        else:
            _convert_component(root, out, comps[""], comps[""], weights, float_dtype, ranges,
                               keep, info, progress)
        # into place
        if dst.exists():
            old = work / "old"
            os.replace(dst, old)
        os.replace(out, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dst


__all__ = ["DEFAULT_KEEP_FP32", "WEIGHT_DTYPES", "convert", "quantize_weight"]
