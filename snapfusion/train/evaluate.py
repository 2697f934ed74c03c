"""World metrics of generated images: world CLIP score, world-FID and attribute accuracy.

* **world CLIP score**: ``max(100 * mean cos(image, caption), 0)`` with the world CLIP's
  embeddings (the torchmetrics definition with our CLIP instead of OpenAI's).
* **world-FID**: Fréchet distance (:mod:`snapfusion.eval.metrics`) between Gaussian fits of
  the world CLIP's unit-norm image embeddings of the generated images and of real world
  images drawn from the evaluation distribution (``ref_images`` of them, another seed).
* **accuracy**: fraction of images whose caption the exact attribute checker
  (:func:`snapfusion.data.accuracy`) accepts (slower; optional).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data import to_float_images

__all__ = ["WorldEvaluator", "packaged_world_clip", "default_world_evaluator", "world_metrics"]


class WorldEvaluator:
    """Scores generated images of fixed evaluation prompts.

    Args:
        clip: a trained :class:`snapfusion.train.clip.WorldCLIP` (moved to ``device``, eval mode).
        tokenizer: the tokenizer.
        device: torch device.
        n_prompts: evaluation prompts (``eval_prompts(n, seed, split)``).
        seed: prompt seed.
        split: "eval" or "heldout".
        ref_images: real images for the FID reference statistics (0: none, no :meth:`fid`).
        image_size: side of the world images.
    """

    def __init__(self, clip: torch.nn.Module, tokenizer: Any, device: torch.device | str, n_prompts: int = 64,
                 seed: int = 0, split: str = "eval", ref_images: int = 512, image_size: int = 64) -> None:
        from snapfusion.data import draw_scenes, eval_prompts
        from snapfusion.eval.metrics import activation_statistics

        self.clip = clip.to(device).eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.prompts, self.scenes = eval_prompts(n_prompts, seed=seed, split=split)
        self.ref_stats = None  # without reference images: a scorer only (no fid())
        if ref_images:
            _, ref_scenes = eval_prompts(ref_images, seed=seed + 1, split=split)
            ref = draw_scenes(ref_scenes, size=image_size)
            self.ref_stats = activation_statistics(self.features(ref))

    @torch.no_grad()
    def features(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        """Unit-norm image embeddings ``[N, P]`` (float64) of uint8 ``[N, H, W, 3]`` images."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
        out = []
        for i in range(0, len(images), batch):
            x = to_float_images(torch.from_numpy(images[i:i + batch]).to(self.device))
            out.append(self.clip.encode_image(x).double().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def clip_score(self, images: np.ndarray, captions: Sequence[str]) -> float:
        """``max(100 * mean cos, 0)`` over the pairs."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        img = torch.from_numpy(self.features(images)).float().to(self.device)
        ids = torch.as_tensor(self.tokenizer(list(captions)), dtype=torch.long, device=self.device)
        txt = self.clip.encode_text(ids)
        return max(float(100.0 * (img * txt).sum(-1).mean()), 0.0)

    def fid(self, images: np.ndarray) -> float:
        """world-FID of the images against the reference statistics."""
        import warnings

        from snapfusion.eval.metrics import activation_statistics, frechet_distance

        if self.ref_stats is None:
            raise ValueError("this evaluator has no reference images (ref_images=0)")
        mu, sigma = activation_statistics(self.features(images))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(frechet_distance(mu, sigma, *self.ref_stats))

    def evaluate(self, images: np.ndarray, captions: Sequence[str] | None = None,
                 accuracy: bool = False) -> dict[str, float]:
        """All metrics of images generated for ``captions`` (default: the evaluation prompts)."""
        caps = list(self.prompts if captions is None else captions)
        res = {"clip_score": self.clip_score(images, caps), "fid": self.fid(images)}
        if accuracy:
            from snapfusion.data import accuracy as attr_accuracy

            acc = attr_accuracy(np.asarray(images), caps)
            res["accuracy"] = float(acc["overall"])
            res.update({f"acc_{k}": float(v) for k, v in acc.items() if k not in ("overall", "n")})
        return res


def packaged_world_clip() -> "Path":
    """Folder of the world CLIP shipped with the package (``snapfusion/models/world_clip``).

    Raises:
        OSError: this install has none.
    """
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "models" / "world_clip"
    if not (folder / "world_clip.json").is_file():
        raise FileNotFoundError(f"no world CLIP evaluator under {folder}")
    return folder


def default_world_evaluator(n_prompts: int = 256, seed: int = 0, split: str = "heldout", ref_images: int = 1024,
                            device: str = "cpu") -> WorldEvaluator:
    """A :class:`WorldEvaluator` from the shipped world CLIP and the default model's tokenizer.

    Raises:
        OSError: no shipped default model or world CLIP.
    """
    from snapfusion._files import default_model_path
    from snapfusion.tokenizer import CLIPTokenizer

    from .clip import WorldCLIP

    tok = CLIPTokenizer.from_pretrained(default_model_path() / "tokenizer")
    return WorldEvaluator(WorldCLIP.load(packaged_world_clip()), tok, device, n_prompts=n_prompts, seed=seed,
                          split=split, ref_images=ref_images)


def world_metrics(sets: dict[Any, np.ndarray], captions: Sequence[str],
                  reference: np.ndarray | None = None) -> dict[Any, dict[str, float]] | None:
    """World CLIP score and world-FID of image sets with the shipped world CLIP.

    Args:
        sets: uint8 ``[N, S, S, 3]`` images per key, each generated for ``captions``.
        captions: the N world captions.
        reference: uint8 reference images for the world-FID (default: the first set).

    Returns:
        ``{key: {"world_clip_score", "world_fid"}}``, or None when this install has no world
        CLIP or the images are not of its size.
    """
    import warnings

    from snapfusion.eval.metrics import activation_statistics, frechet_distance
    from snapfusion._files import default_model_path
    from snapfusion.tokenizer import CLIPTokenizer

    from .clip import WorldCLIP

    try:
        clip = WorldCLIP.load(packaged_world_clip()).eval()
        tok = CLIPTokenizer.from_pretrained(default_model_path() / "tokenizer")
    except OSError:
        return None
    size = int(clip.image_config.get("image_size", 64)) if isinstance(clip.image_config, dict) else 64
    arrays = {k: np.asarray(v) for k, v in sets.items()}
    if any(a.ndim != 4 or a.shape[1:] != (size, size, 3) for a in arrays.values()):
        return None
    ev = WorldEvaluator(clip, tok, "cpu", n_prompts=0, ref_images=0)  # a scorer: the reference is given
    feats = {k: ev.features(a) for k, a in arrays.items()}
    ref = ev.features(np.asarray(reference)) if reference is not None else next(iter(feats.values()))
    mu_r, sig_r = activation_statistics(ref)
    out = {}
    for k, f in feats.items():
        mu, sig = activation_statistics(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fid = float(frechet_distance(mu, sig, mu_r, sig_r))
        out[k] = {"world_clip_score": ev.clip_score(arrays[k], list(captions)), "world_fid": fid}
    return out
