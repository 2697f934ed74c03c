"""Fréchet Inception Distance exactly as pytorch-fid (v0.3.0) computes it.

* :class:`FIDInception`: the FID Inception-v3 network (TensorFlow FID graph,
  official weights ``pt_inception-2015-12-05``) and pytorch-fid's input
  pipeline: uint8 RGB ``x / 255`` (float32, CHW), bilinear resize to 299x299
  (``align_corners=False``, no antialiasing, applied to every image, also
  299x299 ones), ``2 x - 1``; features are the spatial mean of the chosen
  block's output (``dims`` 64, 192, 768 or 2048), returned in float64.
* :func:`fid`: features of two image sets -> statistics -> Fréchet distance
  (:mod:`snapfusion.eval.metrics`).
* :func:`convert_fid_weights`: official ``.pth`` -> safetensors.

torch is imported only when a network is built or weights are converted.

Note: the package attribute ``snapfusion.eval.fid`` is the :func:`fid`
function; import the classes with ``from snapfusion.eval import FIDInception``
or ``from snapfusion.eval.fid import FIDInception``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from snapfusion.eval._weights import check_tensor_names_and_shapes, read_safetensors
from snapfusion.eval.metrics import activation_statistics, frechet_distance

__all__ = ["FIDInception", "fid", "convert_fid_weights", "FID_DIMS", "FID_INPUT_SIZE"]

#: Feature sizes pytorch-fid offers, mapped to the Inception block they come from.
FID_DIMS: dict[int, int] = {64: 0, 192: 1, 768: 2, 2048: 3}
#: Spatial size every image is resized to.
FID_INPUT_SIZE = 299
# Largest side accepted for an input image (guards against absurd allocations).
_MAX_SIDE = 16384

ImageLike = Any  # uint8 HWC numpy array, PIL image or image file path


def _check_hwc_uint8(img: np.ndarray, index: int) -> np.ndarray:
    if img.dtype != np.uint8:
        raise ValueError(f"image {index}: expected dtype uint8 (0..255 RGB), got {img.dtype}")
    if img.ndim != 3:
        raise ValueError(f"image {index}: expected a [H, W, 3] array, got shape {img.shape}")
    if img.shape[2] != 3:
        raise ValueError(f"image {index}: expected 3 RGB channels last ([H, W, 3]), got shape {img.shape}")
    h, w = img.shape[:2]
    if h < 1 or w < 1 or h > _MAX_SIDE or w > _MAX_SIDE:
        raise ValueError(f"image {index}: unsupported size {h}x{w}")
    return img


def _open_image_file(path: str | os.PathLike[str], index: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {index}: file not found: {p}")
    try:
        return Image.open(p)
    except UnidentifiedImageError as exc:
        raise ValueError(f"image {index}: not a readable image file: {p}") from exc


def _image_hw(img: ImageLike, index: int) -> tuple[int, int]:
    """Validates one image cheaply (no pixel decoding) and returns its (height, width)."""
    from PIL import Image

    if isinstance(img, (str, os.PathLike)):
        with _open_image_file(img, index) as im:
            w, h = im.size
    elif isinstance(img, Image.Image):
        w, h = img.size
    elif hasattr(img, "detach") and hasattr(img, "cpu"):
        raise TypeError(f"image {index}: torch tensors are not accepted; pass uint8 HWC numpy "
                        "arrays (as PIL gives them), PIL images or image file paths")
    elif isinstance(img, np.ndarray):
        return _check_hwc_uint8(img, index).shape[:2]
    else:
        raise TypeError(f"image {index}: expected a numpy array, PIL image or file path, "
                        f"got {type(img).__name__}")
    if h < 1 or w < 1 or h > _MAX_SIDE or w > _MAX_SIDE:
        raise ValueError(f"image {index}: unsupported size {h}x{w}")
    return h, w


def _image_to_hwc_uint8(img: ImageLike, index: int) -> np.ndarray:
    """Pixels of one validated image as uint8 ``[H, W, 3]`` (PIL: ``.convert('RGB')``)."""
    if isinstance(img, np.ndarray):
        return img
    if isinstance(img, (str, os.PathLike)):
        # pytorch-fid reads files with ``Image.open(path).convert('RGB')``.
        with _open_image_file(img, index) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _as_image_list(images: Any) -> list[ImageLike]:
    """Accepts a uint8 ``[N, H, W, 3]`` array or a sequence of images/paths."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"an image batch array must be [N, H, W, 3], got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"expected dtype uint8 images, got {images.dtype}")
        return [images[i] for i in range(images.shape[0])]
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Iterable):
        raise TypeError(f"images must be a sequence of images or a [N, H, W, 3] array, "
                        f"got {type(images).__name__}")
    return list(images)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    from snapfusion.eval._inception_net import expected_tensor_shapes

    return expected_tensor_shapes()


class FIDInception:
    """pytorch-fid's FID Inception-v3 feature extractor.

    Build it with :meth:`from_pretrained` (safetensors weights with the
    official tensor names) and call :meth:`features`.

    Args:
        weights: Mapping official tensor name -> float array (470 tensors,
            no ``fc.*``, no ``num_batches_tracked``).
        source: Where the weights came from (used in error messages).

    Raises:
        ValueError: Missing, unexpected, mis-shaped or non-float tensors.
    """

    def __init__(self, weights: Mapping[str, Any], source: str = "weights") -> None:
        import torch

        from snapfusion.eval._inception_net import FIDInceptionNet

        check_tensor_names_and_shapes(weights, _expected_shapes(), source)
        state: dict[str, Any] = {}
        for name, value in weights.items():
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
            t = t.to(torch.float32)
            if not torch.isfinite(t).all():
                raise ValueError(f"{source}: tensor {name!r} contains NaN or infinite values")
            state[name] = t
        self._net = FIDInceptionNet()
        missing, unexpected = self._net.load_state_dict(state, strict=False)
        # Only the BatchNorm step counters are absent from the weights file.
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise RuntimeError(f"network/weights mismatch: missing {missing}, unexpected {unexpected}")
        self._net.eval()
        for p in self._net.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "FIDInception":
        """Loads the network from a ``.safetensors`` or ``.safetensors.gz`` file.

        Args:
            path: Weights file with the official FID tensor names
                (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch_pool.bn.running_mean``...).

        Returns:
            The ready-to-use feature extractor (eval mode, float32, CPU).

        Raises:
            FileNotFoundError: No such file.
            ValueError: Invalid file, or a missing/unexpected/mis-shaped tensor
                (the message names it).
        """
        return cls(read_safetensors(path), source=str(path))

    def features(self, images: Any, dims: int = 2048, batch_size: int = 50,
                 progress: bool | None = None) -> np.ndarray:
        """FID features of a set of images.

        Images of the same size are run together in batches of up to
        ``batch_size``; each image is preprocessed exactly as pytorch-fid does.

        Args:
            images: Sequence of uint8 RGB ``[H, W, 3]`` numpy arrays, PIL
                images (any mode; converted to RGB) or image file paths (read
                as ``Image.open(path).convert('RGB')``), any sizes; or a uint8
                ``[N, H, W, 3]`` array.
            dims: Feature size: 64, 192, 768 or 2048 (the FID features).
            batch_size: Images per forward pass.
            progress: Show a progress bar; ``None`` shows one when there are
                more than ``batch_size`` images.

        Returns:
            float64 ``[N, dims]`` features, rows in input order.

        Raises:
            TypeError: Images that are neither arrays, PIL images nor paths.
            ValueError: Wrong dtype, dimensions or channel count, an
                unreadable image file, or an unsupported ``dims`` / ``batch_size``.
            FileNotFoundError: A path that does not exist.
        """
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        if dims not in FID_DIMS:
            raise ValueError(f"dims must be one of {sorted(FID_DIMS)}, got {dims!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        block = FID_DIMS[dims]
        imgs = _as_image_list(images)
        out = np.empty((len(imgs), dims), dtype=np.float64)
        if not imgs:
            return out

        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(imgs):
            groups.setdefault(_image_hw(img, i), []).append(i)
        batches = [idx[s:s + batch_size] for idx in groups.values()
                   for s in range(0, len(idx), batch_size)]
        show = len(imgs) > batch_size if progress is None else bool(progress)
        with torch.inference_mode(), tqdm(total=len(imgs), desc="FID features", unit="img",
                                          disable=not show) as bar:
            for idx in batches:
                # Pixels are decoded batch by batch: large sets never sit in memory twice.
                x = torch.from_numpy(np.stack([_image_to_hwc_uint8(imgs[i], i) for i in idx]))
                x = x.permute(0, 3, 1, 2).to(torch.float32).div(255)
                x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear",
                                  align_corners=False)
                x = 2 * x - 1
                y = self._net(x, last_block=block)
                if y.shape[2] != 1 or y.shape[3] != 1:
                    y = F.adaptive_avg_pool2d(y, (1, 1))
                out[idx] = y.reshape(len(idx), dims).double().numpy()
                bar.update(len(idx))
        return out

    def statistics(self, images: Any, dims: int = 2048, batch_size: int = 50,
                   progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean float64 ``[dims]`` and covariance float64 ``[dims, dims]`` of the features."""
        return activation_statistics(self.features(images, dims, batch_size, progress))


def fid(images_a: Any, images_b: Any, model: FIDInception | str | os.PathLike[str],
        dims: int = 2048, batch_size: int = 50, progress: bool | None = None) -> float:
    """Fréchet Inception Distance between two image sets (pytorch-fid semantics).

    Args:
        images_a: First set (see :meth:`FIDInception.features`), at least 2 images.
        images_b: Second set, at least 2 images.
        model: A :class:`FIDInception` or the path of its weights file.
        dims: Feature size (2048 for the standard FID).
        batch_size: Images per forward pass.
        progress: Progress bar switch (``None``: automatic).

    Returns:
        The distance (float).
    """
    if not isinstance(model, FIDInception):
        if isinstance(model, (str, os.PathLike)):
            model = FIDInception.from_pretrained(model)
        else:
            raise TypeError(f"model must be a FIDInception or a weights path, got {type(model).__name__}")
    fa = model.features(images_a, dims, batch_size, progress)
    fb = model.features(images_b, dims, batch_size, progress)
    mu1, s1 = activation_statistics(fa)
    mu2, s2 = activation_statistics(fb)
    return frechet_distance(mu1, s1, mu2, s2)


def convert_fid_weights(pth_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                        compresslevel: int = 6) -> Path:
    """Converts the official pytorch-fid ``.pth`` weights into safetensors.

    The ``.pth`` (``pt_inception-2015-12-05-6726825d.pth``: a plain state
    dict of tensors) is read with ``torch.load(weights_only=True)``, so no
    arbitrary pickled objects are ever constructed. ``fc.*`` (the classifier)
    and BatchNorm ``num_batches_tracked`` counters are dropped; every other
    tensor must match the FID network exactly. The output is float32
    safetensors, gzip-compressed when ``out_path`` ends in ``.gz``.

    Args:
        pth_path: The ``.pth`` file.
        out_path: Output ``.safetensors`` (or ``.safetensors.gz``) path.
        compresslevel: gzip level (1-9) for a ``.gz`` output.

    Returns:
        ``out_path`` as a Path.

    Raises:
        FileNotFoundError: No input file.
        ValueError: Not a loadable weights-only state dict of tensors, or
            missing/unexpected/mis-shaped tensors.
    """
    import pickle

    import torch
    from safetensors.torch import save_file

    if compresslevel not in range(1, 10):
        raise ValueError(f"compresslevel must be 1..9, got {compresslevel!r}")
    src = Path(pth_path)
    if not src.is_file():
        raise FileNotFoundError(f"weights file not found: {src}")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"{src}: not a weights-only PyTorch state dict: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise ValueError(f"{src}: expected a state dict (mapping name -> tensor), got {type(obj).__name__}")
    state: dict[str, Any] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise ValueError(f"{src}: non-string key {name!r}")
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{src}: entry {name!r} is a {type(value).__name__}, not a tensor")
        state[name] = value
    check_tensor_names_and_shapes(state, _expected_shapes(), str(src))
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in sorted(state.items())}
    dst = Path(out_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.name.endswith(".gz"):
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            raw = Path(tmp) / "weights.safetensors"
            save_file(tensors, str(raw), metadata={"format": "pt"})
            with open(raw, "rb") as fin, gzip.open(dst, "wb", compresslevel=compresslevel) as fout:
                shutil.copyfileobj(fin, fout, 1 << 24)
    else:
        save_file(tensors, str(dst), metadata={"format": "pt"})
    return dst
