"""Noise schedulers with the interface of diffusers, computed by the C engine.

Each class mirrors its diffusers namesake (same configuration keys and defaults, same
``timesteps``, ``init_noise_sigma``, ``scale_model_input``, ``step`` and ``add_noise``) and
reproduces diffusers v0.25.1 to float32 rounding. Samples are numpy float32 arrays of any shape
(NCHW latents in pipelines)::

    from snapfusion.schedulers import scheduler_from_config

    sch = scheduler_from_config("path/to/pipeline")          # scheduler/scheduler_config.json
    sch.set_timesteps(25)
    x = noise * sch.init_noise_sigma
    for t in sch.timesteps:
        eps = unet(sch.scale_model_input(x, t), t)
        x = sch.step(eps, t, x).prev_sample

Stochastic schedulers (Euler ancestral, LCM) take ``noise=`` (an array of the sample's shape) or
``generator=``: a ``torch.Generator`` (the same draws as diffusers: ``torch.randn(shape,
generator=g)``), a list of them (one per batch item), a ``numpy.random.Generator``, or an int
seed (a fresh ``numpy.random.default_rng(seed)`` for that call).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from . import _engine
from ._files import read_json_object

__all__ = [
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "load_scheduler_config",
    "scheduler_from_config",
]

ConfigSource = Union[Mapping[str, Any], str, os.PathLike]

_COMMON: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}


class SchedulerConfig(dict):
    """A scheduler's resolved configuration: a read-only dict whose keys also read as
    attributes (build another scheduler with ``from_config(config, key=value)`` to change one).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no key {name!r}") from None

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "a scheduler's config is read-only: build a new scheduler with "
            "from_config(config, key=value)"
        )

    __setitem__ = __delitem__ = _read_only  # type: ignore[assignment]
    update = setdefault = pop = popitem = clear = _read_only  # type: ignore[assignment]


@dataclass
class SchedulerOutput:
    """Result of ``step``.

    Attributes:
        prev_sample: float32 array, the sample's shape: the sample at the next timestep.
        pred_original_sample: float32 array or None: the predicted clean sample (DDIM, Euler,
            Euler ancestral, LMS, DPM-Solver; None for PNDM).
        denoised: float32 array or None: LCM's denoised prediction (None for the others).
    """

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray | None = None
    denoised: np.ndarray | None = None

    def to_tuple(self) -> tuple[np.ndarray, ...]:
        """The non-None fields in order."""
        return tuple(
            v for v in (self.prev_sample, self.pred_original_sample, self.denoised) if v is not None
        )


def load_scheduler_config(source: ConfigSource) -> dict[str, Any]:
    """Read a scheduler configuration.

    Args:
        source: a mapping, the path of a ``scheduler_config.json``, a folder holding one, or a
            pipeline folder with ``scheduler/scheduler_config.json``.

    Returns:
        A new dict with the configuration keys.

    Raises:
        OSError: the file cannot be found or read.
        ValueError: the file is not a JSON object.
        TypeError: ``source`` is of another type.
    """
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "scheduler config must be a dict or a path to scheduler_config.json, got "
            f"{type(source).__name__}"
        )
    path = Path(source)
    if path.is_dir():
        for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if cand.is_file():
                path = cand
                break
        else:
            raise OSError(f"no scheduler_config.json in {str(source)!r} or its scheduler/ folder")
    return read_json_object(path, "scheduler config")[1]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"scheduler config value of type {type(obj).__name__} is not JSON-serializable")


def _timestep_value(timestep: Any) -> float:
    """A timestep as a float (Python number, numpy scalar, one-element array or tensor)."""
    if isinstance(timestep, (bool, np.bool_)):
        raise TypeError("timestep must be a number, got bool")
    if isinstance(timestep, (int, float, np.integer, np.floating)):
        return float(timestep)
    if hasattr(timestep, "detach"):  # a torch tensor
        timestep = timestep.detach().cpu().numpy()
    arr = np.asarray(timestep)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"timestep must be a number, got {type(timestep).__name__}")
    if arr.size != 1:
        raise ValueError(f"timestep must be a single value, got {arr.size} values")
    return float(arr.reshape(-1)[0])


def _torch_generator_type() -> Any:
    torch = sys.modules.get("torch")
    return getattr(torch, "Generator", None) if torch is not None else None


def _draw_noise(shape: tuple[int, ...], generator: Any) -> np.ndarray:
    """Standard normal float32 noise of `shape` from a generator (see the module docstring)."""
    if generator is None:
        return np.random.default_rng().standard_normal(shape, dtype=np.float32)
    if isinstance(generator, np.random.Generator):
        return generator.standard_normal(shape, dtype=np.float32)
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, (bool, np.bool_)):
        if generator < 0:
            raise ValueError(f"generator seed must be non-negative, got {generator}")
        return np.random.default_rng(int(generator)).standard_normal(shape, dtype=np.float32)
    gen_type = _torch_generator_type()
    if isinstance(generator, (list, tuple)) and generator:
        if gen_type is None or not all(isinstance(g, gen_type) for g in generator):
            raise TypeError("a list generator must hold torch.Generator objects")
        if len(shape) == 0 or len(generator) != shape[0]:
            raise ValueError(
                f"got {len(generator)} generators for a batch of "
                f"{shape[0] if shape else 0}"
            )
        import torch

        parts = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator]
        return torch.cat(parts, dim=0).numpy()
    if gen_type is not None and isinstance(generator, gen_type):
        import torch

        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got {generator.device}")
        return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()
    raise TypeError(
        "generator must be a torch.Generator, a list of them, a numpy.random.Generator, an int "
        f"seed or None, got {type(generator).__name__}"
    )


class _Scheduler:
    """Base of the scheduler classes (see the subclasses)."""

    _class_name: str = ""
    _defaults: dict[str, Any] = {}
    _timestep_dtype: Any = np.int64
    _index_by_first_match = False  # PNDM: a repeated timestep is entered at its first index
    _uses_timestep_value = False   # DDIM: step() may be given any timestep of the schedule
    _check_timestep = True         # step() refuses a timestep other than the expected one
    _has_pred = True               # step() returns a predicted clean sample
    order = 1

    def __init__(self, **config: Any) -> None:
        """Build the scheduler from configuration keys (diffusers' constructor arguments).

        Keys the class does not take are ignored, as diffusers does.

        Raises:
            ValueError: a bad or unsupported value (the message names the key).
            TypeError: a value that cannot be written as JSON.
        """
        resolved = dict(self._defaults)
        for key, value in config.items():
            if key in self._defaults:
                resolved[key] = value
        resolved["_class_name"] = self._class_name
        if isinstance(resolved.get("trained_betas"), np.ndarray):
            resolved["trained_betas"] = resolved["trained_betas"].tolist()
        text = json.dumps(resolved, default=_json_default)
        self._engine = _engine.Scheduler(text)
        self.config = SchedulerConfig(resolved)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ConfigSource, **kwargs: Any) -> "_Scheduler":
        """Build from a configuration (dict, scheduler_config.json or its folder).

        Args:
            config: see ``load_scheduler_config``; its ``_class_name`` is ignored (the class is
                this one, as in diffusers).
            **kwargs: keys overriding the configuration.

        Returns:
            The scheduler.
        """
        cfg = load_scheduler_config(config)
        cfg.update(kwargs)
        return cls(**{k: v for k, v in cfg.items() if not k.startswith("_")})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None,
                        **kwargs: Any) -> "_Scheduler":
        """Build from a folder holding scheduler_config.json (or its `subfolder`)."""
        folder = Path(path) / subfolder if subfolder else Path(path)
        return cls.from_config(folder, **kwargs)

    # ---- schedule ---------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """Compute the inference timesteps and start a new trajectory.

        Args:
            num_inference_steps: 1 <= n <= num_train_timesteps (LCM: <= original_inference_steps).
            device: ignored (accepted for diffusers compatibility).

        Raises:
            ValueError: n out of range. TypeError: n is not an int.
        """
        del device
        if isinstance(num_inference_steps, (bool, np.bool_)) or not isinstance(
            num_inference_steps, (int, np.integer)
        ):
            raise TypeError(
                f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}"
            )
        self._engine.set_timesteps(int(num_inference_steps))
        self._step_index = None
        self._begin_index = None

    @property
    def timesteps(self) -> np.ndarray | None:
        """The timesteps to run: (count,) int64 (float32 for Euler, Euler ancestral, LMS), or
        None before set_timesteps."""
        ts = self._engine.timesteps
        return None if ts is None else ts.astype(self._timestep_dtype)

    @property
    def sigmas(self) -> np.ndarray | None:
        """(count + 1,) float32 sigmas of sigma-based schedulers, else None."""
        return self._engine.sigmas

    @property
    def betas(self) -> np.ndarray:
        """(num_train_timesteps,) float32 training betas."""
        return self._engine.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """(num_train_timesteps,) float32 cumulative products of 1 - beta."""
        return self._engine.alphas_cumprod

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise."""
        return self._engine.init_noise_sigma

    @property
    def num_inference_steps(self) -> int | None:
        """Steps of the last set_timesteps (None before)."""
        n = self._engine.num_inference_steps
        return n or None

    @property
    def num_train_timesteps(self) -> int:
        """Number of training timesteps."""
        return self._engine.num_train_timesteps

    @property
    def needs_noise(self) -> bool:
        """Whether the next step draws noise (Euler ancestral; LCM except on its last step;
        SDE DPM-Solver)."""
        return bool(self._engine.needs_noise)

    @property
    def step_index(self) -> int | None:
        """Index of the next step (None until the first step or scale_model_input)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index the next trajectory starts at (set_begin_index), or None."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the trajectory at an index (img2img) instead of locating the first timestep."""
        self._begin_index = int(begin_index)

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(dict(self.config), default=_json_default)})"

    # ---- stepping ---------------------------------------------------------------------------

    def _require_timesteps(self, what: str) -> np.ndarray:
        ts = self._engine.timesteps
        if ts is None:
            raise RuntimeError(
                f"{type(self).__name__}.{what}: call set_timesteps before {what}"
            )
        return ts

    def _index_of(self, t: float, ts: np.ndarray) -> int:
        if self._index_by_first_match:
            hits = np.nonzero(ts == t)[0]
            if len(hits) == 0:
                raise ValueError(
                    f"{type(self).__name__}: timestep {t:g} is not in the schedule {ts.tolist()}"
                )
            return int(hits[0])
        return int(self._engine.index_for_timestep(t))

    def _init_step_index(self, timestep: Any, what: str = "step") -> None:
        ts = self._require_timesteps(what)
        if self._begin_index is not None:
            if not 0 <= self._begin_index < len(ts):
                raise ValueError(
                    f"{type(self).__name__}: begin_index {self._begin_index} out of range "
                    f"[0, {len(ts)})"
                )
            idx = self._begin_index
        else:
            idx = self._index_of(_timestep_value(timestep), ts)
        self._engine.step_index = idx
        self._step_index = idx

    def _sync_step_index(self, timestep: Any) -> None:
        """Place the engine at the index of `timestep` (diffusers' step_index logic)."""
        ts = self._require_timesteps("step")
        if self._step_index is None:
            self._init_step_index(timestep)
            return
        idx = self._step_index
        if idx >= len(ts):
            raise RuntimeError(
                f"{type(self).__name__}.step: all {len(ts)} timesteps have been stepped "
                "(call set_timesteps to start again)"
            )
        if timestep is None:
            return
        t = _timestep_value(timestep)
        if t == ts[idx]:
            return
        if self._uses_timestep_value:
            idx = self._index_of(t, ts)
            self._engine.step_index = idx
            self._step_index = idx
        elif self._check_timestep:
            raise ValueError(
                f"{type(self).__name__}.step: timestep {t:g} is not the expected "
                f"timesteps[{idx}] = {ts[idx]:g}"
            )

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """The UNet input for `sample` at `timestep`.

        Args:
            sample: float32 array of any shape, e.g. (B, 4, H, W).
            timestep: the current timestep (a value of ``timesteps``).

        Returns:
            float32 array of the sample's shape (the sample itself for schedulers that do not
            scale).
        """
        return np.asarray(sample, dtype=np.float32)

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        generator: Any = None,
        *,
        noise: np.ndarray | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[np.ndarray, ...]:
        """One denoising step from `timestep` to the next one of the schedule.

        Args:
            model_output: float32 array of the sample's shape (the UNet's prediction).
            timestep: the current timestep (a value of ``timesteps``).
            sample: float32 array, e.g. (B, 4, H, W).
            generator: noise source for stochastic schedulers (see the module docstring).
            noise: standard normal float32 array of the sample's shape (instead of generator).
            return_dict: False returns ``SchedulerOutput.to_tuple()``.

        Returns:
            SchedulerOutput with ``prev_sample`` (and the predicted clean sample).

        Raises:
            RuntimeError: set_timesteps was not called, or the schedule is finished.
            ValueError: shapes differ, the timestep does not fit the schedule.
            TypeError: non-numeric arrays or a bad generator.
        """
        self._sync_step_index(timestep)
        mo = np.asarray(model_output)
        x = np.asarray(sample)
        if mo.shape != x.shape:
            raise ValueError(
                f"{type(self).__name__}.step: model_output has shape {mo.shape} but sample has "
                f"shape {x.shape}"
            )
        nz = None
        if self._engine.needs_noise:
            nz = noise if noise is not None else _draw_noise(x.shape, generator)
        want_pred = self._has_pred
        res = self._engine.step(mo, x, nz, want_pred)
        prev, pred = (res if want_pred else (res, None))
        self._step_index = self._engine.step_index
        out = self._make_output(prev, pred)
        return out if return_dict else out.to_tuple()

    def _make_output(self, prev: np.ndarray, pred: np.ndarray | None) -> SchedulerOutput:
        return SchedulerOutput(prev_sample=prev, pred_original_sample=pred)

    def add_noise(
        self, original_samples: np.ndarray, noise: np.ndarray, timesteps: Any
    ) -> np.ndarray:
        """Forward diffusion of clean samples to timesteps (img2img, training).

        Args:
            original_samples: float32 (B, ...) clean samples.
            noise: standard normal float32 array of the same shape.
            timesteps: one timestep, or (B,) timesteps (one per sample); values of the schedule
                for the sigma-based schedulers, integers in [0, num_train_timesteps) otherwise.

        Returns:
            float32 array of the samples' shape.

        Raises:
            ValueError: shapes do not agree or a timestep is not valid.
        """
        x = np.asarray(original_samples, dtype=np.float32)
        n = np.asarray(noise, dtype=np.float32)
        if x.shape != n.shape:
            raise ValueError(
                f"add_noise: noise has shape {n.shape} but original_samples has shape {x.shape}"
            )
        if hasattr(timesteps, "detach"):
            timesteps = timesteps.detach().cpu().numpy()
        t = np.asarray(timesteps, dtype=np.float64).reshape(-1)
        if t.size == 0:
            raise ValueError("add_noise: timesteps is empty")
        if t.size == 1:
            return self._engine.add_noise(x, n, float(t[0]))
        if x.ndim == 0 or x.shape[0] != t.size:
            raise ValueError(
                f"add_noise: {t.size} timesteps for samples of shape {x.shape} (expected one or "
                "one per batch item)"
            )
        out = np.empty_like(x)
        for b in range(t.size):
            out[b] = self._engine.add_noise(x[b], n[b], float(t[b]))
        return out


class _SigmaScheduler(_Scheduler):
    """Euler-style schedulers: the model input is scaled by 1 / sqrt(sigma^2 + 1)."""

    _timestep_dtype = np.float32
    _check_timestep = False  # diffusers steps by its own index, whatever timestep is passed

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """``sample / sqrt(sigma^2 + 1)`` at the current step (see ``_Scheduler``)."""
        if self._step_index is None:
            self._init_step_index(timestep, "scale_model_input")
        ts = self._require_timesteps("scale_model_input")
        if self._step_index >= len(ts):
            raise RuntimeError(
                f"{type(self).__name__}.scale_model_input: all {len(ts)} timesteps have been "
                "stepped (call set_timesteps to start again)"
            )
        return self._engine.scale_model_input(sample, self._step_index)


class PNDMScheduler(_Scheduler):
    """diffusers' PNDMScheduler (pseudo numerical methods; PLMS with skip_prk_steps)."""

    _class_name = "PNDMScheduler"
    _defaults = {
        **_COMMON,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    _index_by_first_match = True
    _has_pred = False


class DDIMScheduler(_Scheduler):
    """diffusers' DDIMScheduler (deterministic, eta = 0)."""

    _class_name = "DDIMScheduler"
    _defaults = {
        **_COMMON,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    _uses_timestep_value = True

    def step(  # type: ignore[override]
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Any = None,
        variance_noise: np.ndarray | None = None,
        return_dict: bool = True,
        *,
        noise: np.ndarray | None = None,
    ) -> SchedulerOutput | tuple[np.ndarray, ...]:
        """DDIM step (eta = 0 only, which draws no noise; see ``_Scheduler.step``).

        Raises:
            ValueError: eta != 0 or use_clipped_model_output (not supported).
        """
        del generator, variance_noise, noise
        if eta != 0:
            raise ValueError(f"DDIMScheduler.step: eta = {eta} is not supported (only 0)")
        if use_clipped_model_output:
            raise ValueError("DDIMScheduler.step: use_clipped_model_output is not supported")
        return super().step(model_output, timestep, sample, return_dict=return_dict)


class EulerDiscreteScheduler(_SigmaScheduler):
    """diffusers' EulerDiscreteScheduler (optionally with Karras sigmas)."""

    _class_name = "EulerDiscreteScheduler"
    _defaults = {
        **_COMMON,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
    }


class EulerAncestralDiscreteScheduler(_SigmaScheduler):
    """diffusers' EulerAncestralDiscreteScheduler (draws noise every step)."""

    _class_name = "EulerAncestralDiscreteScheduler"
    _defaults = {
        **_COMMON,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


class LMSDiscreteScheduler(_SigmaScheduler):
    """diffusers' LMSDiscreteScheduler (4th-order linear multistep)."""

    _class_name = "LMSDiscreteScheduler"
    _defaults = {
        **_COMMON,
        "use_karras_sigmas": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
    }


class DPMSolverMultistepScheduler(_Scheduler):
    """diffusers' DPMSolverMultistepScheduler (DPM-Solver++ 2M by default).

    ``final_sigmas_type`` None (the default) is diffusers v0.25.1's behaviour; "zero" and
    "sigma_min" are those of later releases.
    """

    _class_name = "DPMSolverMultistepScheduler"
    _defaults = {
        **_COMMON,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_lu_lambdas": False,
        "lambda_min_clipped": -math.inf,
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": None,
        "rescale_betas_zero_snr": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "use_dynamic_shifting": False,
    }
    _check_timestep = False
    _has_pred = False  # diffusers' output has prev_sample only


class LCMScheduler(_Scheduler):
    """diffusers' LCMScheduler (latent consistency models; noise on all but the last step)."""

    _class_name = "LCMScheduler"
    _defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
    }

    def _make_output(self, prev: np.ndarray, pred: np.ndarray | None) -> SchedulerOutput:
        return SchedulerOutput(prev_sample=prev, denoised=pred)


_CLASSES: dict[str, type[_Scheduler]] = {
    c._class_name: c
    for c in (
        PNDMScheduler,
        DDIMScheduler,
        EulerDiscreteScheduler,
        EulerAncestralDiscreteScheduler,
        DPMSolverMultistepScheduler,
        LCMScheduler,
        LMSDiscreteScheduler,
    )
}


def scheduler_from_config(config: ConfigSource, name: str | None = None,
                          **kwargs: Any) -> _Scheduler:
    """Build the scheduler a configuration names.

    Args:
        config: dict, scheduler_config.json, its folder or a pipeline folder.
        name: class name overriding the configuration's ``_class_name``.
        **kwargs: keys overriding the configuration.

    Returns:
        An instance of the named class.

    Raises:
        ValueError: no class name, or a class that is not supported.
    """
    cfg = load_scheduler_config(config)
    cls_name = name if name is not None else cfg.get("_class_name")
    if cls_name is None:
        raise ValueError("scheduler config has no '_class_name' and no name was given")
    if cls_name not in _CLASSES:
        raise ValueError(
            f"scheduler class {cls_name!r} is not supported (supported: "
            f"{', '.join(sorted(_CLASSES))})"
        )
    return _CLASSES[cls_name].from_config(cfg, **kwargs)


def supported_schedulers() -> Sequence[str]:
    """Names of the supported scheduler classes."""
    return tuple(sorted(_CLASSES))
