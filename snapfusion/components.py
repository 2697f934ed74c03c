"""Model components on the C engine, with diffusers' array layouts.

Each component loads from a diffusers-layout folder (``config.json`` plus a
safetensors file) and is callable on numpy arrays in the layouts diffusers and
transformers use (NCHW images and latents, ``(B, L, D)`` token states). The
engine computes in NHWC; the conversions happen here, once per call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import _engine
from ._files import read_json_object

PathLike = str | os.PathLike[str]

#: Weight file names tried in a component folder, in order.
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
#: Pickle-based weight files: refused unless the caller passes ``allow_pickle=True``.
PICKLE_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "model.ckpt")


def read_config(folder: PathLike) -> tuple[str, dict[str, Any]]:
    """Read ``folder/config.json``; returns its text and parsed dict.

    Raises:
        OSError: the file is missing or unreadable.
        ValueError: the file is not a JSON object.
    """
    return read_json_object(Path(folder) / "config.json", "config file")


def find_weights(folder: PathLike) -> Path:
    """The safetensors weight file of a component folder.

    Raises:
        OSError: no safetensors file (with a hint when only pickle files exist).
    """
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    pickles = [n for n in PICKLE_NAMES if (folder / n).is_file()]
    if pickles:
        raise OSError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); snapfusion reads safetensors. "
            "Convert them with `snapfusion convert` (which needs allow_pickle=True to open them)."
        )
    raise OSError(f"{folder}: no weights file (looked for {', '.join(WEIGHT_NAMES)})")


def _nchw_to_nhwc(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D (B, C, H, W) array, got shape {x.shape}")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)


def _nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class _EngineModel:
    """The engine object of a component, with its weights in memory or not.

    ``unload()`` frees the weights (and activations); the next use loads them again from the
    same file, as when the component was built. Between the two the file must not change
    (a changed file is loaded and validated again, not trusted).
    """

    _make: Any
    _handle: Any

    def _init_engine(self, make: Any) -> None:
        self._make = make
        self._handle = make()

    @property
    def _engine(self) -> Any:
        if self._handle is None:
            self._handle = self._make()
        return self._handle

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (False after ``unload()`` until the next use)."""
        return self._handle is not None

    def unload(self) -> None:
        """Free the weights and activations now; the next call loads them again (seconds for
        an SD-v1.5 UNet). ``Pipeline.enable_low_memory(unload_models=True)`` does this after
        each stage, so that one model at a time is in memory."""
        self._handle = None

    def release_memory(self) -> None:
        """Free the activation memory kept between calls (the next call allocates it again):
        lowers a generation's peak memory when several models take turns."""
        if self._handle is not None:
            self._handle.release_memory()


class UNet(_EngineModel):
    """A diffusers ``UNet2DConditionModel`` on the engine.

    Args:
        folder: the ``unet/`` folder (``config.json`` + safetensors).
        strict: refuse weights the architecture does not use.
    """

    def __init__(self, folder: PathLike | None = None, *, strict: bool = True,
                 config: dict[str, Any] | None = None, weights: PathLike | None = None,
                 renames: dict[str, str] | None = None) -> None:
        if folder is not None:
            text, self.config = read_config(folder)
            weights = find_weights(folder)
        elif config is not None and weights is not None:
            self.config, text = dict(config), json.dumps(config)
        else:
            raise TypeError("UNet needs a folder, or config= and weights=")
        self._init_engine(lambda: _engine.UNet(text, weights, strict=strict, renames=renames))
        self.in_channels = int(self._engine.config["in_channels"])
        self.cross_attention_dim = int(self._engine.config["cross_attention_dim"])

    @classmethod
    def from_pretrained(cls, folder: PathLike, **kwargs: Any) -> UNet:
        """Load from a diffusers ``unet/`` folder."""
        return cls(folder, **kwargs)

    def __call__(self, sample: np.ndarray, timestep: Any, encoder_hidden_states: np.ndarray,
                 *, return_hooks: bool = False) -> Any:
        """Predict the model output.

        Args:
            sample: float32 ``(B, C, h, w)`` latents.
            timestep: a scalar or ``(B,)`` array (int or float).
            encoder_hidden_states: float32 ``(B, L, D)`` text states.
            return_hooks: also return a dict of per-stage activations (NCHW).

        Returns:
            float32 ``(B, out_channels, h, w)`` (and the hooks dict if asked).
        """
        x = _nchw_to_nhwc(sample, "sample")
        t = np.asarray(timestep)
        if t.ndim == 0:
            t = np.full((x.shape[0],), t, dtype=np.float32)
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"timestep: expected a scalar or ({x.shape[0]},), got {t.shape}")
        if not np.issubdtype(t.dtype, np.number) or np.issubdtype(t.dtype, np.complexfloating):
            raise TypeError(f"timestep: expected numbers, got dtype {t.dtype}")
        t = t.astype(np.float32)
        ctx = np.asarray(encoder_hidden_states)
        if return_hooks:
            out, hooks = self._engine(x, t, ctx, hooks=True)
            return _nhwc_to_nchw(out), hooks
        return _nhwc_to_nchw(self._engine(x, t, ctx))


class AutoencoderKL(_EngineModel):
    """A diffusers ``AutoencoderKL`` (VAE) on the engine.

    Args:
        folder: the ``vae/`` folder.
        encoder, decoder: which halves to build (the decoder alone for text-to-image).
        strict: refuse unused weights (checked when both halves are built).
    """

    def __init__(self, folder: PathLike | None = None, *, encoder: bool = True,
                 decoder: bool = True, strict: bool = True, config: dict[str, Any] | None = None,
                 weights: PathLike | None = None, renames: dict[str, str] | None = None) -> None:
        if folder is not None:
            text, self.config = read_config(folder)
            weights = find_weights(folder)
        elif config is not None and weights is not None:
            self.config, text = dict(config), json.dumps(config)
        else:
            raise TypeError("AutoencoderKL needs a folder, or config= and weights=")
        self._init_engine(lambda: _engine.VAE(text, weights, strict=strict, encoder=encoder,
                                              decoder=decoder, renames=renames))
        self.scaling_factor = float(self._engine.scaling_factor)

    @classmethod
    def from_pretrained(cls, folder: PathLike, **kwargs: Any) -> AutoencoderKL:
        """Load from a diffusers ``vae/`` folder."""
        return cls(folder, **kwargs)

    def decode(self, latents: np.ndarray, *, return_hooks: bool = False) -> Any:
        """Decode float32 ``(B, C, h, w)`` latents (already divided by ``scaling_factor``)
        into float32 ``(B, 3, H, W)`` images in about [-1, 1] (unclamped)."""
        z = _nchw_to_nhwc(latents, "latents")
        if return_hooks:
            img, hooks = self._engine.decode(z, hooks=True)
            return _nhwc_to_nchw(img), hooks
        return _nhwc_to_nchw(self._engine.decode(z))

    def encode(self, images: np.ndarray, *, return_hooks: bool = False) -> Any:
        """Encode float32 ``(B, 3, H, W)`` images in [-1, 1].

        Returns:
            a ``LatentDistribution`` with ``mean``, ``std`` and ``logvar`` (each NCHW).
        """
        x = _nchw_to_nhwc(images, "images")
        res = self._engine.encode(x, hooks=return_hooks)
        dist = LatentDistribution(*(_nhwc_to_nchw(a) for a in res[:3]))
        return (dist, res[3]) if return_hooks else dist


class LatentDistribution:
    """The diagonal Gaussian a VAE encoder predicts (NCHW arrays)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, logvar: np.ndarray) -> None:
        self.mean = mean
        self.std = std
        self.logvar = logvar

    def sample(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """Draw ``mean + std * N(0, 1)``."""
        rng = rng or np.random.default_rng()
        return (self.mean + self.std * rng.standard_normal(self.mean.shape)).astype(np.float32)

    def mode(self) -> np.ndarray:
        """The mean."""
        return self.mean


class TextEncoder(_EngineModel):
    """A transformers ``CLIPTextModel`` on the engine.

    Args:
        folder: the ``text_encoder/`` folder.
        strict: refuse unused weights.
    """

    def __init__(self, folder: PathLike | None = None, *, strict: bool = True,
                 config: dict[str, Any] | None = None, weights: PathLike | None = None,
                 renames: dict[str, str] | None = None) -> None:
        if folder is not None:
            text, self.config = read_config(folder)
            weights = find_weights(folder)
        elif config is not None and weights is not None:
            self.config, text = dict(config), json.dumps(config)
        else:
            raise TypeError("TextEncoder needs a folder, or config= and weights=")
        self._init_engine(lambda: _engine.TextEncoder(text, weights, strict=strict,
                                                      renames=renames))
        self.hidden_size = int(self._engine.hidden_size)

    @classmethod
    def from_pretrained(cls, folder: PathLike, **kwargs: Any) -> TextEncoder:
        """Load from a transformers ``text_encoder/`` folder."""
        return cls(folder, **kwargs)

    def __call__(self, input_ids: np.ndarray, *, clip_skip: int | None = None,
                 return_pooled: bool = False) -> Any:
        """Encode token ids.

        Args:
            input_ids: integer ``(B, L)`` ids, ``L <= max_position_embeddings``.
            clip_skip: as diffusers: use the output of the layer ``clip_skip`` before the last
                (then the final layer norm). ``None`` or 0: the last hidden state.
            return_pooled: also return the pooled ``(B, D)`` states.

        Returns:
            float32 ``(B, L, D)`` (and the pooled states if asked).
        """
        ids = np.asarray(input_ids)
        res = self._engine(ids, clip_skip=int(clip_skip or 0), pooled=return_pooled)
        return res
