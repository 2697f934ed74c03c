"""CLIP score exactly as torchmetrics (``clip_score`` / ``CLIPScore``, v1.5-1.9) computes it.

For images and captions paired one to one:

1. Images are preprocessed one by one as transformers' ``CLIPImageProcessor``:
   Pillow resize of the uint8 pixels (``resample`` from the config, bicubic
   for CLIP) so that the shortest side becomes ``size`` and the other
   ``int(size * long / short)``; centre crop with ``top = (h - crop) // 2``,
   ``left = (w - crop) // 2`` (zero padding if the image is smaller); float64
   ``x * rescale_factor`` cast to float32; ``(x - mean) / std`` in float32.
2. Captions are tokenized, padded with the pad id to the longest caption of
   the batch (no truncation), then ``input_ids`` and ``attention_mask`` are
   cut to the first ``max_position_embeddings`` (77) columns.
3. Image and text embeddings (pooled output -> projection) are each divided
   by their L2 norm; per-pair score = ``100 * sum(img * txt)`` (float32, not
   clamped). The score of a set is ``max(mean, 0)``; the metric form
   (:meth:`CLIPScore.update` / :meth:`CLIPScore.compute`) accumulates a float32
   sum and returns ``max(sum / n, 0)``. The clamp applies to the average.

Image inputs: uint8 RGB in **CHW** layout (the torchmetrics layout: numpy
arrays or torch tensors, ``[3, H, W]`` each or a ``[N, 3, H, W]`` batch) or PIL
images (any mode, converted to RGB). Channels-last arrays ``[H, W, 3]`` are
accepted only with ``layout="HWC"``; without it an array whose first axis is
not 3 is rejected, so a layout is never guessed. Float images are rejected.

The network is transformers' ``CLIPModel`` run with PyTorch (imported lazily);
its weights are read from ``model.safetensors`` with strict name/shape checks.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from math import ceil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .._files import read_json_object

__all__ = ["CLIPScore", "CLIPImagePreprocessor"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MAX_SIDE = 16384


def _hw_from_size(value: Any, what: str) -> tuple[int, int] | int:
    """Parses an image-processor size entry: int (shortest edge) or dict."""
    if isinstance(value, bool):
        raise ValueError(f"invalid {what}: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"unsupported {what} in preprocessor config: {value!r}")


@dataclass(frozen=True)
class CLIPImagePreprocessor:
    """``CLIPImageProcessor`` settings and its exact numpy/Pillow pipeline.

    Attributes:
        size: Shortest-edge target (int) or exact ``(height, width)``.
        crop_size: Centre-crop ``(height, width)``.
        resample: Pillow resampling filter code (3 = bicubic).
        rescale_factor: Multiplier applied in float64 before the float32 cast.
        mean: Per-channel mean (RGB).
        std: Per-channel standard deviation (RGB).
        do_resize: Resize step switch.
        do_center_crop: Crop step switch.
        do_rescale: Rescale step switch.
        do_normalize: Normalisation step switch.
    """

    size: int | tuple[int, int] = 224
    crop_size: tuple[int, int] = (224, 224)
    resample: int = 3
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "CLIPImagePreprocessor":
        """Reads a ``preprocessor_config.json`` written by transformers.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Invalid JSON or unsupported settings.
        """
        p = Path(path)
        cfg = read_json_object(p, "image preprocessor config")[1]
        size = _hw_from_size(cfg.get("size", {"shortest_edge": 224}), "size")
        crop = _hw_from_size(cfg.get("crop_size", 224), "crop_size")
        crop_hw = (crop, crop) if isinstance(crop, int) else crop
        mean = tuple(float(v) for v in cfg.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in cfg.get("image_std", OPENAI_CLIP_STD))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"{p}: image_mean/image_std must have 3 entries (std > 0)")
        out = cls(size=size, crop_size=crop_hw, resample=int(cfg.get("resample", 3)),
                  rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
                  mean=mean, std=std,  # type: ignore[arg-type]
                  do_resize=bool(cfg.get("do_resize", True)),
                  do_center_crop=bool(cfg.get("do_center_crop", True)),
                  do_rescale=bool(cfg.get("do_rescale", True)),
                  do_normalize=bool(cfg.get("do_normalize", True)))
        sizes = [out.size] if isinstance(out.size, int) else list(out.size)
        if min(sizes + list(out.crop_size)) < 1 or max(sizes + list(out.crop_size)) > _MAX_SIDE:
            raise ValueError(f"{p}: unsupported size/crop_size")
        return out

    def resize_output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` after the resize step for an input of that size."""
        if not self.do_resize:
            return height, width
        if not isinstance(self.size, int):
            return self.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, image_hwc: np.ndarray) -> np.ndarray:
        """Preprocesses one image.

        Args:
            image_hwc: uint8 ``[H, W, 3]`` RGB.

        Returns:
            float32 ``[3, crop_h, crop_w]`` pixel values.
        """
        from PIL import Image

        img = image_hwc
        if self.do_resize:
            h, w = self.resize_output_size(img.shape[0], img.shape[1])
            pil = Image.fromarray(np.ascontiguousarray(img), mode=None)
            img = np.asarray(pil.resize((w, h), resample=Image.Resampling(self.resample),
                                        reducing_gap=None))
        if self.do_center_crop:
            img = self._center_crop(img)
        if self.do_rescale:
            x = (img.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = img.astype(np.float32)
        if self.do_normalize:
            x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _center_crop(self, img: np.ndarray) -> np.ndarray:
        oh, ow = img.shape[:2]
        ch, cw = self.crop_size
        top, left = (oh - ch) // 2, (ow - cw) // 2
        if top >= 0 and left >= 0 and top + ch <= oh and left + cw <= ow:
            return img[top:top + ch, left:left + cw]
        # Smaller than the crop: centre the image on a zero canvas first.
        nh, nw = max(ch, oh), max(cw, ow)
        canvas = np.zeros((nh, nw) + img.shape[2:], dtype=img.dtype)
        tp, lp = ceil((nh - oh) / 2), ceil((nw - ow) / 2)
        canvas[tp:tp + oh, lp:lp + ow] = img
        top, left = top + tp, left + lp
        return canvas[max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _one_image_hwc(img: Any, index: int, layout: str) -> np.ndarray:
    """Validates one image (PIL, or uint8 array/tensor in ``layout``) -> uint8 HWC."""
    from PIL import Image

    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if _is_torch_tensor(img):
        img = img.detach().cpu().numpy()
    if not isinstance(img, np.ndarray):
        raise TypeError(f"image {index}: expected a uint8 array/tensor or a PIL image, "
                        f"got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"image {index}: expected dtype uint8 (0..255 RGB), got {img.dtype}")
    if img.ndim != 3:
        raise ValueError(f"image {index}: expected a 3-D {layout} image, got shape {img.shape}")
    if layout == "CHW":
        if img.shape[0] != 3:
            hint = (" (it looks channels-last: pass layout='HWC')" if img.shape[2] == 3 else "")
            raise ValueError(f"image {index}: expected 3 channels first [3, H, W], got shape "
                             f"{img.shape}{hint}")
        img = img.transpose(1, 2, 0)
    elif img.shape[2] != 3:
        raise ValueError(f"image {index}: expected 3 channels last [H, W, 3], got shape {img.shape}")
    if min(img.shape[:2]) < 1 or max(img.shape[:2]) > _MAX_SIDE:
        raise ValueError(f"image {index}: unsupported size {img.shape[0]}x{img.shape[1]}")
    return img


def _image_list(images: Any, layout: str) -> list[np.ndarray]:
    """Normalises the accepted image inputs to a list of uint8 HWC arrays."""
    if layout not in ("CHW", "HWC"):
        raise ValueError(f"layout must be 'CHW' or 'HWC', got {layout!r}")
    from PIL import Image

    if isinstance(images, Image.Image):
        return [_one_image_hwc(images, 0, layout)]
    if _is_torch_tensor(images) or isinstance(images, np.ndarray):
        arr = images.detach().cpu().numpy() if _is_torch_tensor(images) else images
        if arr.ndim == 3:  # a single image, as torchmetrics accepts
            return [_one_image_hwc(arr, 0, layout)]
        if arr.ndim != 4:
            raise ValueError(f"images must be one 3-D image or a 4-D batch, got shape {arr.shape}")
        return [_one_image_hwc(arr[i], i, layout) for i in range(arr.shape[0])]
    if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
        raise TypeError(f"images must be an image, a batch or a sequence of images, "
                        f"got {type(images).__name__}")
    return [_one_image_hwc(img, i, layout) for i, img in enumerate(images)]


def _caption_list(captions: Any) -> list[str]:
    if isinstance(captions, str):
        return [captions]
    if not isinstance(captions, (list, tuple)):
        raise TypeError(f"captions must be a string or a list of strings, got {type(captions).__name__}")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"caption {i} is a {type(c).__name__}, not a string")
    return list(captions)


class _TransformersTokenizer:
    """Caption tokenizer backed by transformers' ``CLIPTokenizer``."""

    def __init__(self, directory: Path) -> None:
        from transformers import CLIPTokenizer

        has_fast = (directory / "tokenizer.json").is_file()
        missing = [n for n in ("vocab.json", "merges.txt") if not (directory / n).is_file()]
        if missing and not has_fast:
            raise FileNotFoundError(f"{directory}: tokenizer file {missing[0]} not found "
                                    "(a CLIP tokenizer needs vocab.json + merges.txt or tokenizer.json)")
        try:
            self._tok = CLIPTokenizer.from_pretrained(str(directory))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{directory}: cannot load the CLIP tokenizer: {exc}") from exc
        if self._tok.pad_token_id is None:
            raise ValueError(f"{directory}: the tokenizer has no pad token")

    def __call__(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self._tok(captions, padding=True, truncation=False)
        return (np.asarray(enc["input_ids"], dtype=np.int64),
                np.asarray(enc["attention_mask"], dtype=np.int64))


class _SnapfusionTokenizer:
    """Caption tokenizer backed by ``snapfusion.tokenizer.CLIPTokenizer`` (same ids)."""

    def __init__(self, directory: Path) -> None:
        from snapfusion.tokenizer import CLIPTokenizer

        self._tok = CLIPTokenizer.from_pretrained(directory)

    def __call__(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [self._tok.encode(c) for c in captions]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self._tok.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask


class _quiet_transformers:
    """Context manager lowering transformers' log level (length warnings, load notes)."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("transformers")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        self._logger.setLevel(self._level)


class CLIPScore:
    """CLIP score of image/caption pairs, as torchmetrics computes it.

    Build with :meth:`from_pretrained` on a Hugging Face CLIP checkpoint
    directory. :meth:`pair_scores` gives the per-pair ``100 * cos`` values,
    :meth:`score` the functional ``clip_score``, and :meth:`update` /
    :meth:`compute` / :meth:`reset` the accumulating ``CLIPScore`` metric.

    Args:
        model: A transformers ``CLIPModel`` (eval mode).
        tokenizer: Callable ``list[str] -> (input_ids int64 [N, L], attention_mask int64 [N, L])``
            padding to the longest caption without truncation.
        image_preprocessor: The image pipeline.
    """

    def __init__(self, model: Any, tokenizer: Any, image_preprocessor: CLIPImagePreprocessor) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_preprocessor = image_preprocessor
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.reset()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str],
                        tokenizer: str = "transformers") -> "CLIPScore":
        """Loads a CLIP checkpoint directory.

        The directory holds ``config.json``, ``model.safetensors`` (or a
        sharded ``model.safetensors.index.json``), ``preprocessor_config.json``
        and the tokenizer files (``vocab.json`` + ``merges.txt`` or
        ``tokenizer.json``).

        Args:
            directory: The checkpoint directory.
            tokenizer: ``"transformers"`` (transformers' ``CLIPTokenizer``, as
                torchmetrics) or ``"snapfusion"`` (:mod:`snapfusion.tokenizer`,
                same token ids, needs ``vocab.json`` + ``merges.txt``).

        Raises:
            FileNotFoundError: A required file is missing (named).
            ValueError: Invalid config, or weights with missing, unexpected or
                mis-shaped tensors (named).
        """
        import torch
        from transformers import CLIPConfig, CLIPModel

        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"CLIP checkpoint directory not found: {d}")
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d}: config.json not found")
        image_pre = CLIPImagePreprocessor.from_json(d / "preprocessor_config.json")
        if tokenizer == "transformers":
            tok: Any = _TransformersTokenizer(d)
        elif tokenizer == "snapfusion":
            missing = [n for n in ("vocab.json", "merges.txt") if not (d / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{d}: tokenizer file {missing[0]} not found")
            tok = _SnapfusionTokenizer(d)
        else:
            raise ValueError(f"tokenizer must be 'transformers' or 'snapfusion', got {tokenizer!r}")
        with _quiet_transformers():
            try:
                config = CLIPConfig.from_pretrained(str(d))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{d}: invalid CLIP config: {exc}") from exc
            model = CLIPModel(config)
        tensors = _read_clip_weights(d)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        from snapfusion.eval._weights import check_tensor_names_and_shapes

        tensors = {k: v for k, v in tensors.items() if not k.endswith(".position_ids")}
        check_tensor_names_and_shapes(tensors, expected, str(d))
        state = {k: torch.from_numpy(np.array(v)).to(torch.float32) for k, v in tensors.items()}
        model.load_state_dict(state, strict=True)
        model.to(torch.float32).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(model, tok, image_pre)

    # ------------------------------------------------------------- preprocessing
    def preprocess_images(self, images: Any, layout: str = "CHW") -> np.ndarray:
        """Pixel values as ``CLIPImageProcessor`` makes them.

        Args:
            images: See the module docstring (CHW uint8 arrays/tensors, PIL
                images, or HWC arrays with ``layout="HWC"``).
            layout: ``"CHW"`` (default, torchmetrics) or ``"HWC"``.

        Returns:
            float32 ``[N, 3, crop_h, crop_w]``.
        """
        imgs = _image_list(images, layout)
        if not imgs:
            raise ValueError("no images given")
        return np.stack([self.image_preprocessor(im) for im in imgs])

    def tokenize(self, captions: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask as the model receives them.

        Padded with the pad id to the longest caption, then cut to the first
        ``max_position_embeddings`` columns (a long caption loses its
        end-of-text token, as in torchmetrics).

        Returns:
            ``(input_ids, attention_mask)``, both int64 ``[N, L]`` with ``L <= 77``.
        """
        caps = _caption_list(captions)
        if not caps:
            raise ValueError("no captions given")
        with _quiet_transformers():
            ids, mask = self.tokenizer(caps)
        return ids[:, :self.max_length], mask[:, :self.max_length]

    # ----------------------------------------------------------------- features
    def image_features_from_pixels(self, pixel_values: np.ndarray,
                                   return_pooled: bool = False) -> Any:
        """Projected image embeddings (not normalised) of preprocessed pixels.

        Args:
            pixel_values: float32 ``[N, 3, H, W]``.
            return_pooled: Also return the vision pooled output.

        Returns:
            float32 ``[N, projection_dim]`` (and float32 ``[N, hidden]`` pooled).
        """
        import torch

        with torch.inference_mode():
            pv = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32))
            pooled = self.model.vision_model(pixel_values=pv).pooler_output
            emb = self.model.visual_projection(pooled)
        return (emb.numpy(), pooled.numpy()) if return_pooled else emb.numpy()

    def text_features_from_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                                  return_pooled: bool = False) -> Any:
        """Projected text embeddings (not normalised) of token ids.

        Args:
            input_ids: int64 ``[N, L]``.
            attention_mask: int64 ``[N, L]``.
            return_pooled: Also return the text pooled output.

        Returns:
            float32 ``[N, projection_dim]`` (and float32 ``[N, hidden]`` pooled).
        """
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
            am = torch.from_numpy(np.asarray(attention_mask, dtype=np.int64))
            pooled = self.model.text_model(input_ids=ids, attention_mask=am).pooler_output
            emb = self.model.text_projection(pooled)
        return (emb.numpy(), pooled.numpy()) if return_pooled else emb.numpy()

    # ------------------------------------------------------------------- scores
    def pair_scores(self, images: Any, captions: str | Sequence[str], layout: str = "CHW",
                    batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        """Per-pair CLIP scores ``100 * cos(image_i, caption_i)``, not clamped.

        Args:
            images: N images (see the module docstring), or one 3-D image.
            captions: N captions (or one string with one image).
            layout: ``"CHW"`` (default) or ``"HWC"`` for channels-last arrays.
            batch_size: Pairs per forward pass.
            progress: Progress bar switch; ``None`` shows one for more than
                one batch.

        Returns:
            float32 ``[N]``.

        Raises:
            TypeError: Unsupported image or caption types.
            ValueError: Wrong dtype/shape/channel count, or different numbers
                of images and captions.
        """
        import torch
        from tqdm.auto import tqdm

        imgs = _image_list(images, layout)
        caps = _caption_list(captions)
        if len(imgs) != len(caps):
            raise ValueError(f"expected as many captions as images, got {len(caps)} captions "
                             f"and {len(imgs)} images")
        if not imgs:
            raise ValueError("no image/caption pairs given")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        out = np.empty(len(imgs), dtype=np.float32)
        starts = range(0, len(imgs), batch_size)
        show = len(starts) > 1 if progress is None else bool(progress)
        for s in tqdm(starts, desc="CLIP score", unit="batch", disable=not show):
            pv = np.stack([self.image_preprocessor(im) for im in imgs[s:s + batch_size]])
            ids, mask = self.tokenize(caps[s:s + batch_size])
            img = torch.from_numpy(self.image_features_from_pixels(pv))
            txt = torch.from_numpy(self.text_features_from_tokens(ids, mask))
            img = img / img.norm(p=2, dim=-1, keepdim=True)
            txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
            out[s:s + batch_size] = (100 * (img * txt).sum(dim=-1)).numpy()
        return out

    def score(self, images: Any, captions: str | Sequence[str], layout: str = "CHW",
              batch_size: int = 64) -> float:
        """The functional CLIP score ``max(mean(pair_scores), 0)`` (float32 mean).

        Args:
            images: See :meth:`pair_scores`.
            captions: See :meth:`pair_scores`.
            layout: ``"CHW"`` or ``"HWC"``.
            batch_size: Pairs per forward pass.

        Returns:
            The score (0 when the average cosine is negative).
        """
        import torch

        s = torch.from_numpy(self.pair_scores(images, captions, layout, batch_size)).mean(0)
        return float(torch.clamp(s, min=0.0))

    # ------------------------------------------------------------ metric state
    def reset(self) -> None:
        """Clears the accumulated metric state."""
        self._sum = np.float32(0.0)
        self._count = 0

    def update(self, images: Any, captions: str | Sequence[str], layout: str = "CHW",
               batch_size: int = 64) -> None:
        """Adds the pairs' scores to the float32 running sum (torchmetrics ``update``)."""
        import torch

        scores = torch.from_numpy(self.pair_scores(images, captions, layout, batch_size))
        self._sum = np.float32((torch.tensor(self._sum) + scores.sum(0)).item())
        self._count += int(scores.shape[0])

    def compute(self) -> float:
        """``max(sum / n, 0)`` over all updates (torchmetrics ``compute``).

        Raises:
            ValueError: No pairs were added since the last reset.
        """
        import torch

        if self._count == 0:
            raise ValueError("compute() called before any update()")
        v = torch.tensor(self._sum) / torch.tensor(self._count)
        return float(torch.clamp(v, min=0.0))

    @property
    def accumulated_sum(self) -> float:
        """The float32 sum of all per-pair scores added by :meth:`update`."""
        return float(self._sum)


def _read_clip_weights(d: Path) -> dict[str, np.ndarray]:
    """Reads ``model.safetensors`` or the shards named by its index file."""
    from snapfusion.eval._weights import read_safetensors

    single = d / "model.safetensors"
    index = d / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index}: invalid shard index: {exc}") from exc
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise ValueError(f"{index}: invalid shard name {shard!r}")
            tensors.update(read_safetensors(d / shard))
        return tensors
    raise FileNotFoundError(f"{d}: model.safetensors not found (only safetensors weights are read)")
