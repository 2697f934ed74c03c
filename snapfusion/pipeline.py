"""Text-to-image pipeline on the C engine, shaped like diffusers' StableDiffusionPipeline.

>>> pipe = Pipeline.from_pretrained("path/to/model")          # doctest: +SKIP
>>> out = pipe("a red circle above a small blue square", num_inference_steps=8, seed=0)
>>> out.images[0].save("out.png"); out.timings["unet"]        # doctest: +SKIP

Each stage is a component callable on numpy arrays (``pipe.tokenizer``,
``pipe.text_encoder``, ``pipe.unet``, ``pipe.scheduler``, ``pipe.vae``); ``__call__``
composes them and reports the seconds spent in each.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _engine
from ._files import DEFAULT_MODEL_DIR, default_model_path, read_json_object  # noqa: F401 (re-exported)
from .components import AutoencoderKL, PathLike, TextEncoder, UNet
from .schedulers import scheduler_from_config
from .tokenizer import CLIPTokenizer

#: Prompt completions a model folder may ask for (``"prompt_completion"`` in its
#: ``snapfusion_model.json``): ``"shapes-world"`` fills in what a caption of the synthetic
#: world leaves out (:func:`snapfusion.data.complete_caption`).
PROMPT_COMPLETIONS = ("shapes-world",)


@dataclass
class PipelineOutput:
    """Result of a pipeline call.

    Attributes:
        images: PIL images, or for ``output_type="np"`` float32 ``(B, H, W, 3)`` in [0, 1],
            or for ``output_type="latent"`` the final float32 ``(B, C, h, w)`` latents.
        timings: seconds per stage: ``tokenize``, ``text_encoder``, ``unet`` (one entry per
            denoising step), ``scheduler`` (all steps), ``decoder`` and ``total``.
        stopped_early: True if ``callback_on_step_end`` returned False.
        prompts: the prompt each image was drawn from, as the text encoder read it: the
            caller's prompt, or its completion (see ``Pipeline.__call__``'s
            ``complete_prompt``).
    """

    images: Any
    timings: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    prompts: list[str] = field(default_factory=list)


#: UNet calls (batch 1, default size) under this many multiply-accumulates run on one thread
#: unless a thread count is given.
SMALL_UNET_MACS = 2_000_000_000
#: Largest default image side for which the UNet is counted at load (counting runs one call).
_SMALL_SIDE = 128
_auto_single_thread = False


def _auto_threads(pipe: Pipeline) -> None:
    """The default thread count for ``pipe`` (see ``Pipeline.from_pretrained``)."""
    global _auto_single_thread
    small = pipe.default_size <= _SMALL_SIDE and pipe.unet_macs() < SMALL_UNET_MACS
    if small:
        _engine.set_num_threads(1)
        _auto_single_thread = True
    elif _auto_single_thread:  # undo an earlier automatic choice, not the user's own
        _engine.set_num_threads(_engine.physical_cores())
        _auto_single_thread = False


def _resolve_generator(generator: Any, seed: int | None) -> Any:
    """One noise source for the whole call: a numpy Generator (from a seed, or fresh), a
    torch.Generator, or a list of them (one per image)."""
    if generator is None:
        generator = seed
    if generator is None:
        return np.random.default_rng()
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    if isinstance(generator, (list, tuple)):
        return [_resolve_generator(g, None) for g in generator]
    if isinstance(generator, np.random.Generator) or type(generator).__module__.startswith("torch"):
        return generator
    raise TypeError("generator must be an int seed, numpy.random.Generator or torch.Generator, "
                    f"not {type(generator).__name__}")


def _noise(shape: tuple[int, ...], generator: Any) -> np.ndarray:
    """N(0, 1) float32 of `shape` from a resolved generator (see _resolve_generator)."""
    if isinstance(generator, np.random.Generator):
        return generator.standard_normal(shape, dtype=np.float32)
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return np.concatenate([_noise((1, *shape[1:]), g) for g in generator])
    import torch  # only when the caller passes a torch.Generator

    # as diffusers' randn_tensor on the CPU: one draw of the whole batch
    return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()


class Pipeline:
    """A Stable Diffusion v1.x-class text-to-image pipeline on the C engine.

    Build it with :meth:`from_pretrained`. The components are public attributes.
    """

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: TextEncoder, unet: UNet,
                 vae: AutoencoderKL, scheduler: Any, *, name: str = "") -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.name = name
        #: settings the model's trainer recommends (``snapfusion_model.json``): used for the
        #: arguments of ``__call__`` left as None
        self.recommended: dict[str, Any] = {}
        self.low_memory = False
        self.unload_models = False
        self.progress_bar = True
        vae_blocks = len(vae.config.get("block_out_channels", [64]))
        self.vae_scale_factor = 2 ** (vae_blocks - 1)
        sample_size = unet.config.get("sample_size", 64)
        if isinstance(sample_size, (list, tuple)):
            sample_size = sample_size[0]
        self.default_size = int(sample_size) * self.vae_scale_factor

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: PathLike | None = None, *, threads: int | None = None,
                        scheduler: str | None = None, allow_pickle: bool = False,
                        tokenizer: PathLike | None = None, low_memory: bool = False) -> Pipeline:
        """Load a diffusers-layout model folder (or the embedded default when ``path`` is None).

        Args:
            path: a folder with ``model_index.json``, ``tokenizer/``, ``text_encoder/``,
                ``unet/``, ``vae/`` and ``scheduler/``; or a single-file SD-v1.x
                ``.safetensors`` checkpoint.
            threads: engine threads. By default the machine's physical cores, except for
                models whose UNet call at their default size is under
                ``SMALL_UNET_MACS`` multiply-accumulates (the embedded 64x64 world model):
                they run on one thread, which is as fast on an idle machine and avoids the
                threads' synchronisation cost, many times the work itself, on a busy one.
                The thread count is the engine's, shared by every model of the process.
            scheduler: a scheduler class name to use instead of the model's.
            allow_pickle: allow pickled ``.ckpt``/``.bin`` checkpoints (never by default).
            tokenizer: for single-file checkpoints, the CLIP tokenizer folder (default: a
                ``tokenizer/`` folder next to the file).
            low_memory: keep one model in memory at a time: each is loaded (and checked) and
                unloaded again before the next (a single-file checkpoint's models are loaded
                together, then unloaded), and a generation loads each for its stage only
                (``enable_low_memory(unload_models=True)``). The peak is then the largest
                model plus its activations instead of all three models plus the largest
                activations; each generation reads the weights again (about a second per GB).

        Raises:
            OSError: missing files. ValueError: malformed configs or weights (the message names
            the file and tensor).
        """
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int):
                raise TypeError(f"threads must be an int, got {type(threads).__name__}")
            _engine.set_num_threads(threads)
        root = default_model_path() if path is None else Path(path)
        if root.is_file():
            from .convert.single_file import load_single_file

            pipe = load_single_file(cls, root, scheduler=scheduler, allow_pickle=allow_pickle,
                                    tokenizer=Path(tokenizer) if tokenizer else None)
        else:
            if not root.is_dir():
                raise OSError(f"{root}: no such model folder or file")
            if not (root / "model_index.json").is_file():
                raise OSError(f"{root}: not a diffusers model folder (no model_index.json)")

            def load(model: Any) -> Any:  # with low_memory, unloaded before the next loads
                if low_memory:
                    model.unload()
                return model

            pipe = cls(CLIPTokenizer.from_pretrained(root / "tokenizer"),
                       load(TextEncoder(root / "text_encoder")), load(UNet(root / "unet")),
                       load(AutoencoderKL(root / "vae", encoder=(root / "vae").is_dir())),
                       scheduler_from_config(root / "scheduler", name=scheduler), name=str(root))
            pipe.recommended = _read_recommended(root / "snapfusion_model.json")
        if threads is None:
            _auto_threads(pipe)
        if low_memory:
            pipe.enable_low_memory(unload_models=True)
        return pipe

    def _image_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """``(height, width)``, the model's default where None; ValueError unless each is a
        multiple of the VAE factor in [factor, 8192]."""
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        f = self.vae_scale_factor
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < f or v % f or v > 8192:
                raise ValueError(f"{name} must be a multiple of {f} in [{f}, 8192], got {v!r}")
        return height, width

    def unet_macs(self, height: int | None = None, width: int | None = None) -> int:
        """Multiply-accumulates of one UNet call at batch 1 (default: the model's size),
        counted by the engine while it runs one call on zeros (the engine's running count
        goes on, it is not reset)."""
        height, width = self._image_size(height, width)
        f = self.vae_scale_factor
        h, w = height // f, width // f
        x = np.zeros((1, self.unet.in_channels, h, w), np.float32)
        ctx = np.zeros((1, 77, self.unet.cross_attention_dim), np.float32)
        before = _engine.mac_counter()  # the difference: the caller's count is left alone
        self.unet(x, 1, ctx)
        return int(_engine.mac_counter() - before)

    # ------------------------------------------------------------------ stages
    def encode_prompt(self, prompt: Sequence[str], negative_prompt: Sequence[str] | None,
                      do_cfg: bool, clip_skip: int | None = None,
                      timings: dict[str, Any] | None = None) -> np.ndarray:
        """Text states for the prompts: ``(B, 77, D)``, or ``(2B, 77, D)`` with CFG
        (negative first, as diffusers concatenates them). As in diffusers, ``clip_skip``
        applies to the prompts only: negative prompts use the last hidden state."""
        t0 = time.perf_counter()
        texts = list(prompt)
        if do_cfg:
            neg = list(negative_prompt) if negative_prompt is not None else [""] * len(texts)
            texts = neg + texts
        ids = self.tokenizer(texts)
        t1 = time.perf_counter()
        if do_cfg and clip_skip:
            n = len(texts) // 2
            states = np.concatenate([self.text_encoder(ids[:n]),
                                     self.text_encoder(ids[n:], clip_skip=clip_skip)])
        else:
            states = self.text_encoder(ids, clip_skip=clip_skip)
        if timings is not None:
            timings["tokenize"] = t1 - t0
            timings["text_encoder"] = time.perf_counter() - t1
        return states

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Final latents ``(B, C, h, w)`` -> float32 images ``(B, H, W, 3)`` in [0, 1]."""
        img = self.vae.decode(latents / self.vae.scaling_factor)
        return np.clip(img / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        seed: int | None = None,
        generator: Any = None,
        num_images_per_prompt: int = 1,
        latents: np.ndarray | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[[int, Any, np.ndarray], Any] | None = None,
        clip_skip: int | None = None,
        complete_prompt: bool | None = None,
    ) -> PipelineOutput:
        """Generate images. Arguments as diffusers' ``StableDiffusionPipeline.__call__``.

        ``num_inference_steps`` / ``guidance_scale`` left as None take the model's recommended
        values (``pipe.recommended``, e.g. 8 steps for the distilled default model), else
        diffusers' 50 and 7.5. ``guidance_scale <= 1`` skips the unconditional pass. ``seed`` (or an int
        ``generator``) draws the initial noise with numpy's PCG64: the same seed gives the
        same image bit for bit at the same thread count; a ``torch.Generator`` draws it
        exactly as diffusers does. ``callback_on_step_end(step, timestep, latents)`` runs
        after each step; returning ``False`` stops the loop.

        ``complete_prompt`` (default: on for models whose ``snapfusion_model.json`` names a
        ``prompt_completion``, the embedded world model's ``"shapes-world"``): a prompt of the
        synthetic world's grammar that leaves out a size, a colour or the background (which
        its training captions always state) is completed first, the missing attributes drawn
        as the world draws them given the stated ones (:func:`snapfusion.data.complete_caption`),
        independently for each image and reproducibly from its initial noise. Other prompts,
        and prompts that state everything, are read as given. ``PipelineOutput.prompts`` has
        what was drawn; negative prompts are never completed.
        """
        t_start = time.perf_counter()
        prompts = self._as_list(prompt, "prompt")
        negs = None if negative_prompt is None else self._as_list(negative_prompt,
                                                                   "negative_prompt")
        if negs is not None and len(negs) == 1 and len(prompts) > 1:
            negs = negs * len(prompts)
        if negs is not None and len(negs) != len(prompts):
            raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts")
        if num_inference_steps is None:
            num_inference_steps = int(self.recommended.get("num_inference_steps", 50))
        if guidance_scale is None:
            guidance_scale = float(self.recommended.get("guidance_scale", 7.5))
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got "
                             f"{num_inference_steps!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ValueError("num_images_per_prompt must be a positive int")
        g = float(guidance_scale)
        if not np.isfinite(g):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'latent', not {output_type!r}")
        height, width = self._image_size(height, width)
        if complete_prompt is None:
            complete_prompt = self.recommended.get("prompt_completion") is not None
        if not isinstance(complete_prompt, bool):
            raise TypeError(f"complete_prompt must be a bool or None, got {type(complete_prompt).__name__}")
        do_cfg = g > 1.0
        timings: dict[str, Any] = {}

        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        if negs is not None:
            negs = [p for p in negs for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        shape = (batch, self.unet.in_channels, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        gen = _resolve_generator(generator, seed)
        if latents is None:
            latents = _noise(shape, gen)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"latents: expected shape {shape}, got {latents.shape}")
        if complete_prompt:
            prompts = _complete_prompts(prompts, latents)
        ctx = self.encode_prompt(prompts, negs, do_cfg, clip_skip, timings)
        self._stage_done(self.text_encoder)
        sch = self.scheduler
        sch.set_timesteps(num_inference_steps)
        latents = (latents * np.float32(sch.init_noise_sigma)).astype(np.float32)

        unet_times: list[float] = []
        sched_time = 0.0
        stopped = False
        steps = list(sch.timesteps)
        bar = self._progress(len(steps))
        try:
            for i, t in enumerate(steps):
                t0 = time.perf_counter()
                x = np.concatenate([latents, latents]) if do_cfg else latents
                x = sch.scale_model_input(x, t)
                t1 = time.perf_counter()
                eps = self.unet(x, np.full((x.shape[0],), t, dtype=np.float32), ctx)
                t2 = time.perf_counter()
                if do_cfg:
                    eps_u, eps_c = eps[:batch], eps[batch:]
                    eps = eps_u + np.float32(g) * (eps_c - eps_u)
                if getattr(sch, "needs_noise", False):
                    # stochastic schedulers draw from the same source as the initial noise
                    latents = sch.step(eps, t, latents, noise=_noise(latents.shape, gen)).prev_sample
                else:
                    latents = sch.step(eps, t, latents).prev_sample
                t3 = time.perf_counter()
                unet_times.append(t2 - t1)
                sched_time += (t1 - t0) + (t3 - t2)
                if bar is not None:
                    bar.update(1)
                if callback_on_step_end is not None:
                    if callback_on_step_end(i, t, latents) is False:
                        stopped = True
                        break
        finally:
            if bar is not None:
                bar.close()
            self._stage_done(self.unet)
        timings["unet"] = unet_times
        timings["scheduler"] = sched_time
        if output_type == "latent":
            images: Any = latents
            timings["decoder"] = 0.0
        else:
            t0 = time.perf_counter()
            try:
                images = self.decode_latents(latents)
            finally:
                self._stage_done(self.vae)
            timings["decoder"] = time.perf_counter() - t0
            if output_type == "pil":
                from PIL import Image

                images = [Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]
        timings["total"] = time.perf_counter() - t_start
        return PipelineOutput(images=images, timings=timings, stopped_early=stopped, prompts=prompts)

    generate = __call__

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _as_list(p: Any, name: str) -> list[str]:
        if isinstance(p, str):
            return [p]
        if isinstance(p, (list, tuple)) and p and all(isinstance(s, str) for s in p):
            return list(p)
        raise TypeError(f"{name} must be a str or a non-empty list of str, got {type(p).__name__}")

    def _progress(self, total: int) -> Any:
        if not self.progress_bar or total < 2:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="denoising", leave=False)

    def enable_low_memory(self, enabled: bool = True, *, unload_models: bool = False) -> None:
        """Free each stage's activation memory when the stage ends (text encoder, UNet,
        decoder), so that a generation's peak is the weights plus the largest stage rather than
        the sum of all stages; each call then allocates its activations again (slightly
        slower).

        With ``unload_models``, each model's weights are freed too when its stage ends (and
        now), and loaded again from their files when next needed: one model in memory at a
        time (``from_pretrained(..., low_memory=True)`` also loads them one at a time).
        """
        self.low_memory = bool(enabled)
        self.unload_models = bool(enabled and unload_models)
        if self.unload_models:
            for model in (self.text_encoder, self.unet, self.vae):
                model.unload()

    def _stage_done(self, model: Any) -> None:
        """Free what the low-memory settings ask for at the end of a model's stage."""
        if self.unload_models:
            model.unload()
        elif self.low_memory:
            model.release_memory()

    def set_progress_bar_config(self, disable: bool = False) -> None:
        """Show (default) or hide the denoising progress bar."""
        self.progress_bar = not disable

    def info(self) -> dict[str, Any]:
        """A summary of the components and their configs."""
        return {
            "path": self.name,
            "unet": self.unet.config,
            "vae": self.vae.config,
            "text_encoder": self.text_encoder.config,
            "scheduler": getattr(self.scheduler, "config", {}),
            "threads": _engine.get_num_threads(),
        }


def _complete_prompts(prompts: list[str], latents: np.ndarray) -> list[str]:
    """Each prompt completed (:func:`snapfusion.data.complete_caption`) with a random source
    seeded by a hash of its image's initial noise: the same noise, the same completion."""
    from .data.captions import complete_caption

    out = []
    for prompt, noise in zip(prompts, latents):
        digest = hashlib.blake2b(np.ascontiguousarray(noise).tobytes(), digest_size=16).digest()
        rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32).tolist())
        out.append(complete_caption(prompt, rng))
    return out


def _read_recommended(path: Path) -> dict[str, Any]:
    """``num_inference_steps``, ``guidance_scale`` and ``prompt_completion`` from a model's
    ``snapfusion_model.json`` (absent file: none; a malformed one is an error naming the
    file)."""
    if not path.is_file():
        return {}
    info = read_json_object(path, "model info file")[1]
    out: dict[str, Any] = {}
    steps = info.get("num_inference_steps")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise ValueError(f"{path}: num_inference_steps must be an int in [1, 1000], got {steps!r}")
        out["num_inference_steps"] = steps
    g = info.get("guidance_scale")
    if g is not None:
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not np.isfinite(g):
            raise ValueError(f"{path}: guidance_scale must be a finite number, got {g!r}")
        out["guidance_scale"] = float(g)
    completion = info.get("prompt_completion")
    if completion is not None:
        if completion not in PROMPT_COMPLETIONS:
            raise ValueError(f"{path}: prompt_completion must be one of {PROMPT_COMPLETIONS}, "
                             f"got {completion!r}")
        out["prompt_completion"] = completion
    return out


def save_model_index(folder: PathLike, scheduler_class: str) -> None:
    """Write a minimal diffusers ``model_index.json`` for a folder of components."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    Path(folder, "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


__all__ = ["PROMPT_COMPLETIONS", "Pipeline", "PipelineOutput", "default_model_path", "save_model_index"]
