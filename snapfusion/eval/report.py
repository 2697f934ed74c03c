"""Student-versus-teacher evaluation run: images, FID, CLIP score, latency, report and plots.

:func:`run_evaluation` (and the ``snapfusion eval`` command) generates one image per prompt
with both models, at every guidance scale, with the same prompts and seeds; then scores
each set (model x guidance scale):

* **FID** (:class:`snapfusion.eval.FIDInception`, pytorch-fid semantics) against the
  reference images when a folder is given, otherwise against the *teacher's images at the
  first guidance scale* (so the teacher's first point is 0 by construction and the other
  points measure the distance to what the teacher makes by default);
* **CLIP score** (:class:`snapfusion.eval.CLIPScore`, torchmetrics semantics) of each image
  with its prompt;
* optionally the exact **attribute accuracy** of the synthetic world
  (:func:`snapfusion.data.accuracy`) when every prompt is a world caption;
* the **latency** of each stage from the pipeline's timings (text encoder, UNet per step,
  scheduler, VAE decoder; medians over the images), as SnapFusion's Table 1.

Output folder::

    REPORT_DIR/
      report.json                      # everything below, machine-readable
      images/<model>/g<scale>/00000.png  # generated images (settings + timings in a PNG text chunk)
      plots/fid_vs_clip.png            # FID against CLIP score across guidance scales (Fig. 4)
      plots/latency.png                # stacked per-stage latency of both models
      cache/                           # FID features and CLIP scores of finished sets

Resuming: a PNG whose embedded settings match the job (prompt, seed, steps, guidance,
size, model fingerprint) is reused with the timings recorded when it was made; images are
written to a temporary name and renamed, so an interrupted write never counts. Features and
scores of unchanged sets are read back from ``cache/``.

Stage swap (``swap_decoder``): ``"teacher"`` makes the student decode with the teacher's
VAE decoder, ``"student"`` the teacher with the student's, so that a difference can be put
down to the UNet (or the decoder) alone, as the paper does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import statistics
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EvalSettings",
    "run_evaluation",
    "load_prompts",
    "parse_guidance",
    "parse_seeds",
    "list_reference_images",
    "load_images",
    "check_images",
    "latency_breakdown",
    "plot_fid_clip",
    "plot_latency",
    "REPORT_FORMAT",
]

#: ``format`` field of report.json.
REPORT_FORMAT = "snapfusion-eval/1"
#: Names of the two models in the report and the image folders.
MODELS = ("student", "teacher")
#: PNG text key holding a generated image's settings and timings.
PNG_KEY = "snapfusion-eval"
#: Image file suffixes read from a reference folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Pillow modes accepted as 8-bit images (converted to RGB as pytorch-fid does).
EIGHT_BIT_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1")
#: Largest number of images per set.
MAX_IMAGES = 1_000_000


# ------------------------------------------------------------------------- inputs
def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Read prompts: a ``.json`` list of strings, or a text file with one prompt per line.

    In text files blank lines and lines starting with ``#`` are skipped and surrounding
    whitespace is removed.

    Raises:
        OSError: unreadable file. ValueError: no prompts, or invalid JSON / entries.
    """
    p = Path(path)
    if not p.is_file():
        raise OSError(f"{p}: prompt file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not a UTF-8 text file ({exc})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: invalid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise ValueError(f"{p}: expected a JSON list of strings")
        prompts = [s.strip() for s in data]
    else:
        prompts = [ln.strip() for ln in text.splitlines()]
        prompts = [s for s in prompts if s and not s.startswith("#")]
    if not prompts:
        raise ValueError(f"{p}: the prompt file is empty")
    if any(not s for s in prompts):
        raise ValueError(f"{p}: empty prompt at index {prompts.index('')}")
    return prompts


def parse_guidance(text: str | Sequence[float]) -> list[float]:
    """Guidance scales from ``"1.5,3,4.5"`` or a sequence (finite, > 0, no repeats)."""
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"guidance scales must look like 1.5,3,7.5, got {text!r}") from None
    else:
        values = [float(v) for v in text]
    if not values:
        raise ValueError("no guidance scale given")
    for v in values:
        if not math.isfinite(v) or v <= 0 or v > 100:
            raise ValueError(f"guidance scale must be in (0, 100], got {v}")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated guidance scale in {values}")
    return values


def parse_seeds(text: str | int | Sequence[int] | None, n: int) -> list[int]:
    """Seeds for ``n`` images.

    Args:
        text: ``None`` (0, 1, ...), an int or ``"7"`` (7, 8, ...), ``"0,4,9"`` (exactly n
            values) or ``"100-199"`` (an inclusive range of exactly n values); or a sequence.
        n: number of images.

    Raises:
        ValueError: malformed text, negative seeds, or not ``n`` of them.
    """
    if text is None:
        return list(range(n))
    if isinstance(text, bool):
        raise TypeError("seeds must be an int, a string or a sequence of ints")
    if isinstance(text, (int, np.integer)):
        values = [int(text) + i for i in range(n)]
    elif isinstance(text, str):
        t = text.strip()
        try:
            if "," in t:
                values = [int(v) for v in t.split(",") if v.strip()]
            elif re.fullmatch(r"\d+\s*-\s*\d+", t):
                a, b = t.split("-", 1)
                values = list(range(int(a), int(b) + 1))
            else:
                values = [int(t) + i for i in range(n)]
        except ValueError:
            raise ValueError(f"seeds must look like 0, 0,1,2 or 0-99, got {text!r}") from None
    else:
        values = [int(v) for v in text]
    if any(v < 0 or v >= 2**63 for v in values):
        raise ValueError("seeds must be in [0, 2**63)")
    if len(values) != n:
        raise ValueError(f"{len(values)} seeds for {n} images")
    return values


def list_reference_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files of a reference folder (sorted), checked to be readable 8-bit images.

    Only headers are read. Raises OSError (no folder), ValueError (fewer than 2 images, an
    unreadable file, or a 16-bit / float image, which FID does not define).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(folder)
    if not root.is_dir():
        raise OSError(f"{root}: reference image folder not found")
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"{root}: FID needs at least 2 reference images, found {len(files)}")
    for f in files:
        try:
            with Image.open(f) as im:
                mode = im.mode
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{f}: not a readable image ({exc})") from None
        if mode not in EIGHT_BIT_MODES:
            raise ValueError(f"{f}: image mode {mode} is not 8 bits per channel; "
                             "FID and CLIP score take 8-bit RGB images")
    return files


def load_images(paths: Iterable[str | os.PathLike[str]]) -> list[np.ndarray]:
    """Read image files as uint8 ``(H, W, 3)`` RGB arrays (``Image.convert('RGB')``)."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            if im.mode not in EIGHT_BIT_MODES:
                raise ValueError(f"{p}: image mode {im.mode} is not 8 bits per channel")
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return out


def check_images(images: Any, what: str = "images") -> list[np.ndarray]:
    """Validate a set of images for scoring: uint8 ``(H, W, 3)`` arrays or PIL images.

    Returns:
        The images as a list of uint8 ``(H, W, 3)`` arrays.

    Raises:
        TypeError: not arrays / PIL images, or a non-uint8 dtype (float images in [0, 1]
            must be converted with ``(x * 255).round().astype(np.uint8)`` first).
        ValueError: wrong shapes or an empty set.
    """
    from PIL import Image

    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"{what}: expected a (N, H, W, 3) array, got shape {images.shape}")
        images = list(images)
    if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
        raise TypeError(f"{what}: expected a sequence of images, got {type(images).__name__}")
    out = []
    for i, im in enumerate(images):
        if isinstance(im, Image.Image):
            im = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if not isinstance(im, np.ndarray):
            raise TypeError(f"{what}[{i}]: expected a numpy array or PIL image, got "
                            f"{type(im).__name__}")
        if im.dtype != np.uint8:
            raise TypeError(f"{what}[{i}]: expected dtype uint8 (0..255), got {im.dtype}")
        if im.ndim != 3 or im.shape[2] != 3 or min(im.shape[:2]) < 1:
            raise ValueError(f"{what}[{i}]: expected shape (H, W, 3), got {im.shape}")
        out.append(im)
    if not out:
        raise ValueError(f"{what}: no images")
    return out


# ------------------------------------------------------------------------- settings
@dataclass
class EvalSettings:
    """Settings of an evaluation run (see the module docstring).

    Attributes:
        teacher: teacher model path.
        prompts: the prompts (or a prompt file path).
        fid_weights: FID Inception weights (``.safetensors`` / ``.safetensors.gz``).
        clip_model: CLIP checkpoint folder.
        output: report folder (created; reused to resume).
        student: student model path (``None``: the embedded default model).
        reference_images: folder of reference images for FID (``None``: the teacher's
            images at the first guidance scale).
        n: images per set (default: one per prompt; more than the prompts cycles them,
            image ``i`` using prompt ``i % len(prompts)`` with its own seed).
        steps_student / steps_teacher: denoising steps.
        guidance: guidance scales (the first one is the FID reference for the teacher).
        seeds: see :func:`parse_seeds`.
        size: ``(width, height)`` or ``None`` for each model's default.
        negative_prompt: negative prompt for every image.
        swap_decoder: ``None``, ``"teacher"`` or ``"student"`` (whose VAE decoder both use).
        threads: engine threads (per Dask worker with ``dask``).
        dask: a ``distributed.Client`` or scheduler address; ``None`` generates here.
        accuracy: attribute accuracy: ``"auto"`` (when every prompt is a world caption),
            ``True`` or ``False``.
        fid_dims: FID feature size (2048 for the standard FID).
        progress: tqdm progress bars.
        shard_size: prompts per Dask task.
    """

    teacher: Any
    prompts: Any
    fid_weights: Any
    clip_model: Any
    output: Any
    student: Any = None
    reference_images: Any = None
    n: int | None = None
    steps_student: int = 8
    steps_teacher: int = 50
    guidance: Any = (1.5, 3.0, 4.5, 6.0, 7.5)
    seeds: Any = None
    size: tuple[int, int] | None = None
    negative_prompt: str | None = None
    swap_decoder: str | None = None
    threads: int | None = None
    dask: Any = None
    accuracy: Any = "auto"
    fid_dims: int = 2048
    progress: bool = True
    shard_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _positive_int(v: Any, name: str, lo: int = 1, hi: int = 10_000) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
    return int(v)


def _model_fingerprint(path: str) -> str:
    """Cheap identity of a model on disk: names, sizes and modification times of its files."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root) if f != root else f.name}:{st.st_size}:"
                 f"{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _file_id(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------- images on disk
def _guidance_dir(g: float) -> str:
    return f"g{g:g}"


def _read_params(path: Path) -> dict[str, Any] | None:
    """The settings of a complete generated PNG, or None (missing, truncated, foreign)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decodes every byte: a truncated file raises here
            raw = im.text.get(PNG_KEY) if hasattr(im, "text") else None
    except (OSError, SyntaxError, ValueError):
        return None
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _write_png(path: Path, image: Any, params: dict[str, Any]) -> None:
    """Write a PNG atomically: to a temporary name in the same folder, then rename."""
    from PIL import Image, PngImagePlugin

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, json.dumps(params))
    info.add_text("software", "snapfusion")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _clean_temporaries(folder: Path) -> None:
    for p in folder.glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


# ------------------------------------------------------------------------- latency
def latency_breakdown(timings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median per-stage latency of images from the pipeline's ``timings`` dicts.

    Args:
        timings: one :attr:`PipelineOutput.timings` dict per image.

    Returns:
        ``{"tokenize_ms", "text_encoder_ms", "unet_step_ms" (median over all steps),
        "unet_steps", "unet_ms" (median of the per-image sums), "scheduler_ms",
        "decoder_ms", "other_ms", "total_ms", "images"}``; empty input gives ``{"images": 0}``.
    """
    rows = [t for t in timings if t]
    if not rows:
        return {"images": 0}

    def med(values: Iterable[float]) -> float:
        return float(statistics.median(list(values))) * 1e3

    steps = [float(s) for t in rows for s in t.get("unet", [])]
    out = {
        "tokenize_ms": med(t.get("tokenize", 0.0) for t in rows),
        "text_encoder_ms": med(t.get("text_encoder", 0.0) for t in rows),
        "unet_step_ms": med(steps) if steps else 0.0,
        "unet_steps": int(statistics.median(len(t.get("unet", [])) for t in rows)),
        "unet_ms": med(sum(t.get("unet", [])) for t in rows),
        "scheduler_ms": med(t.get("scheduler", 0.0) for t in rows),
        "decoder_ms": med(t.get("decoder", 0.0) for t in rows),
        "total_ms": med(t.get("total", 0.0) for t in rows),
        "images": len(rows),
    }
    parts = ("tokenize_ms", "text_encoder_ms", "unet_ms", "scheduler_ms", "decoder_ms")
    out["other_ms"] = max(0.0, out["total_ms"] - sum(out[k] for k in parts))
    return out


# ------------------------------------------------------------------------- plots
def plot_fid_clip(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """FID (y) against CLIP score (x) across guidance scales, one line per model (Fig. 4).

    The x axis is the mean pair score (``clip_pair_mean``), which equals the CLIP score
    whenever that is positive (always with real CLIP models) and stays informative for
    tiny test models whose mean is negative (where the clamped score is 0).

    Args:
        report: a report as :func:`run_evaluation` returns it.
        path: PNG to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = {"student": "o", "teacher": "s"}
    for name in MODELS:
        rows = report["results"].get(name, [])
        if not rows:
            continue
        steps = report["models"][name]["steps"]
        xs = [r["clip_pair_mean"] for r in rows]
        ys = [r["fid"] for r in rows]
        ax.plot(xs, ys, marker=markers[name], label=f"{name} ({steps} steps)")
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(f"{r['guidance']:g}", (x, y), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ref = report["reference"]
    ref_text = ("reference images" if ref["kind"] == "images"
                else f"teacher @ guidance {ref['guidance']:g}")
    ax.set_xlabel("CLIP score (mean 100 cos)")
    ax.set_ylabel(f"FID (vs {ref_text})")
    ax.set_title("FID vs CLIP score across guidance scales", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


#: Stages of the latency plot: (report key, label).
LATENCY_STAGES = (("tokenize_ms", "tokenizer"), ("text_encoder_ms", "text encoder"),
                  ("unet_ms", "UNet (all steps)"), ("scheduler_ms", "scheduler"),
                  ("decoder_ms", "VAE decoder"), ("other_ms", "other"))


def plot_latency(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Stacked bar of the median latency per stage of each model.

    Args:
        report: a report as :func:`run_evaluation` returns it.
        path: PNG to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = [m for m in MODELS if report["latency"].get(m, {}).get("images")]
    bottoms = [0.0] * len(names)
    for key, label in LATENCY_STAGES:
        vals = [report["latency"][m][key] for m in names]
        ax.bar(names, vals, bottom=bottoms, label=label)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    for i, m in enumerate(names):
        lat = report["latency"][m]
        ax.text(i, bottoms[i], f"{lat['total_ms']:.0f} ms\n{lat['unet_steps']} x "
                f"{lat['unet_step_ms']:.1f} ms", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("median latency per image (ms)")
    ax.set_title("Latency per stage", fontsize=10)
    ax.set_ylim(0, max(bottoms + [1e-3]) * 1.25)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


# ------------------------------------------------------------------------- metric cache
class _Cache:
    """Arrays computed from image sets, reused when the inputs are unchanged."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, name: str, digest: str) -> np.ndarray | None:
        p = self.folder / f"{name}.npz"
        try:
            with np.load(p, allow_pickle=False) as z:
                if str(z["digest"]) == digest:
                    return np.array(z["value"])
        except (OSError, KeyError, ValueError):
            pass
        return None

    def put(self, name: str, digest: str, value: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp.npz"
        np.savez(tmp, digest=np.array(digest), value=value)
        os.replace(tmp, self.folder / f"{name}.npz")


def _digest(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------- the run
def _validate(s: EvalSettings) -> dict[str, Any]:
    """Checks every setting that can be checked before loading anything."""
    from snapfusion.distributed import ModelSpec
    from snapfusion.eval.fid import FID_DIMS

    prompts = load_prompts(s.prompts) if isinstance(s.prompts, (str, os.PathLike)) \
        else s.prompts
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a list of str or a prompt file path")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty")
    n = len(prompts) if s.n is None else _positive_int(s.n, "n", 1, MAX_IMAGES)
    if n < 2:
        raise ValueError("FID needs at least 2 images per set: use n >= 2")
    steps_s = _positive_int(s.steps_student, "steps_student")
    steps_t = _positive_int(s.steps_teacher, "steps_teacher")
    guidance = parse_guidance(s.guidance)
    seeds = parse_seeds(s.seeds, n)
    if s.size is not None:
        if not (isinstance(s.size, (tuple, list)) and len(s.size) == 2):
            raise TypeError("size must be (width, height)")
        size: tuple[int, int] | None = (_positive_int(s.size[0], "width", 8, 8192),
                                        _positive_int(s.size[1], "height", 8, 8192))
    else:
        size = None
    if s.swap_decoder not in (None, "teacher", "student"):
        raise ValueError(f"swap_decoder must be None, 'teacher' or 'student', got "
                         f"{s.swap_decoder!r}")
    if s.fid_dims not in FID_DIMS:
        raise ValueError(f"fid_dims must be one of {sorted(FID_DIMS)}, got {s.fid_dims!r}")
    if s.accuracy not in ("auto", True, False):
        raise ValueError(f"accuracy must be 'auto', True or False, got {s.accuracy!r}")
    if s.teacher is None:
        raise ValueError("a teacher model path is required")
    student_path = s.student
    if student_path is None:
        from snapfusion._files import default_model_path

        student_path = default_model_path()
    student = ModelSpec.create(student_path, threads=s.threads)
    teacher = ModelSpec.create(s.teacher, threads=s.threads)
    if s.swap_decoder == "teacher":
        student = ModelSpec.create(student, decoder=teacher.path)
    elif s.swap_decoder == "student":
        teacher = ModelSpec.create(teacher, decoder=student.path)
    for what, p in (("fid_weights", s.fid_weights), ("clip_model", s.clip_model)):
        if p is None or not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{what} must be a path")
    if s.output is None or not isinstance(s.output, (str, os.PathLike)):
        raise TypeError("output must be a folder path")
    ref_files = (list_reference_images(s.reference_images)
                 if s.reference_images is not None else None)
    return {"prompts": [prompts[i % len(prompts)] for i in range(n)], "n": n,
            "steps": {"student": steps_s, "teacher": steps_t}, "guidance": guidance,
            "seeds": seeds, "size": size, "specs": {"student": student, "teacher": teacher},
            "reference_files": ref_files}


def _accuracy_wanted(setting: Any, prompts: Sequence[str]) -> bool:
    if setting is False:
        return False
    from snapfusion.data import parse_caption

    bad = None
    for p in prompts:
        try:
            parse_caption(p)
        except (ValueError, TypeError):
            bad = p
            break
    if bad is None:
        return True
    if setting is True:
        raise ValueError(f"attribute accuracy needs world captions; cannot parse {bad!r}")
    return False


def _world_metrics(sets: dict[Any, list[np.ndarray]], prompts: Sequence[str],
                   reference: list[np.ndarray] | None) -> dict[Any, dict[str, float]] | None:
    """World CLIP score and world-FID (``snapfusion.train.evaluate.world_metrics``), or None
    without torch, the shipped world CLIP, or images all of its size."""
    try:
        from snapfusion.train.evaluate import world_metrics
    except ImportError:
        return None
    try:
        return world_metrics({k: np.stack(v) for k, v in sets.items()}, prompts,
                             np.stack(reference) if reference is not None else None)
    except ValueError:  # a set (or the reference) mixes image sizes
        return None


def run_evaluation(settings: EvalSettings) -> dict[str, Any]:
    """Run (or resume) a student-versus-teacher evaluation and write its report.

    Args:
        settings: see :class:`EvalSettings`.

    Returns:
        The report (also written to ``output/report.json``): ``format``, ``settings``,
        ``models`` (path, steps, decoder, fingerprint), ``reference``, ``results``
        (per model, one row per guidance scale: ``guidance``, ``fid``,
        ``fid_reference_set`` (the row's images are the FID reference: 0 by definition),
        ``clip_score`` (torchmetrics: ``max(mean, 0)``), ``clip_pair_mean`` (unclamped mean
        of the pair scores), ``clip_score_std``, ``accuracy``, ``latency``, ``images``,
        ``generated``, ``reused``), ``latency`` (per model, :func:`latency_breakdown` over
        all its images), ``generation`` (generated, reused, resubmitted shards), ``plots``,
        ``timing`` (seconds per phase) and ``machine``.

    Raises:
        TypeError / ValueError: bad settings, prompts, images or weights (the message says
            which). OSError: missing files or folders. RuntimeError: a Dask shard kept
            failing.
    """
    t_start = time.perf_counter()
    v = _validate(settings)

    import torch

    from snapfusion.distributed import Job, stream_jobs
    from snapfusion.eval import CLIPScore, FIDInception
    from snapfusion.eval.metrics import activation_statistics, frechet_distance
    n, prompts, seeds, guidance = v["n"], v["prompts"], v["seeds"], v["guidance"]
    specs = v["specs"]
    want_accuracy = _accuracy_wanted(settings.accuracy, prompts)

    # Metric networks first: a bad weights file or a missing tokenizer fails before any work.
    t0 = time.perf_counter()
    fid_model = FIDInception.from_pretrained(settings.fid_weights)
    clip = CLIPScore.from_pretrained(settings.clip_model)
    t_load_metrics = time.perf_counter() - t0
    fid_id = _file_id(Path(settings.fid_weights))
    clip_id = _file_id(Path(settings.clip_model))

    out = Path(settings.output)
    out.mkdir(parents=True, exist_ok=True)
    fingerprints = {m: _model_fingerprint(specs[m].path) for m in MODELS}
    dec_fps = {m: (_model_fingerprint(specs[m].decoder) if specs[m].decoder else None)
               for m in MODELS}
    width, height = v["size"] if v["size"] else (None, None)

    # ---------------------------------------------------------------- generation
    expected: dict[tuple[str, int, int], dict[str, Any]] = {}
    timings: dict[tuple[str, int, int], dict[str, Any]] = {}
    items = []
    reused = {(m, gi): 0 for m in MODELS for gi in range(len(guidance))}
    for m in MODELS:
        for gi, g in enumerate(guidance):
            folder = out / "images" / m / _guidance_dir(g)
            folder.mkdir(parents=True, exist_ok=True)
            _clean_temporaries(folder)
            for i in range(n):
                params = {"prompt": prompts[i], "negative_prompt": settings.negative_prompt,
                          "seed": seeds[i], "steps": v["steps"][m], "guidance": g,
                          "height": height, "width": width, "model": specs[m].path,
                          "model_fingerprint": fingerprints[m], "decoder": specs[m].decoder,
                          "decoder_fingerprint": dec_fps[m]}
                key = (m, gi, i)
                expected[key] = params
                old = _read_params(folder / f"{i:05d}.png")
                if old is not None and {k: old.get(k) for k in params} == params:
                    timings[key] = old.get("timings") or {}
                    reused[(m, gi)] += 1
                    continue
                kw: dict[str, Any] = {"num_inference_steps": v["steps"][m],
                                      "guidance_scale": g, "height": height, "width": width}
                if settings.negative_prompt is not None:
                    kw["negative_prompt"] = settings.negative_prompt
                items.append((specs[m], Job(key, prompts[i], seeds[i],
                                            tuple(sorted(kw.items())))))
    t0 = time.perf_counter()
    generated = {k: 0 for k in reused}
    if items:
        stream = stream_jobs(items, settings.dask, shard_size=settings.shard_size,
                             output_type="pil", return_timings=True,
                             progress="generating" if settings.progress else False)
        with stream:
            for key, image, tim in stream:
                m, gi, i = key
                params = dict(expected[key])
                params["timings"] = tim
                _write_png(out / "images" / m / _guidance_dir(guidance[gi]) / f"{i:05d}.png",
                           image, params)
                timings[key] = tim
                generated[(m, gi)] += 1
        resubmitted = stream.resubmitted
    else:
        resubmitted = 0
    t_generate = time.perf_counter() - t0

    # ---------------------------------------------------------------- metrics
    cache = _Cache(out / "cache")
    t_fid = t_clip = t_acc = 0.0

    def set_digest(files: Sequence[Path], extra: Sequence[str]) -> str:
        return _digest([hashlib.sha256(f.read_bytes()).hexdigest() for f in files] +
                       list(extra))

    def fid_features(name: str, files: Sequence[Path],
                     images: list[np.ndarray]) -> tuple[np.ndarray, str]:
        nonlocal t_fid
        d = set_digest(files, [fid_id, str(settings.fid_dims)])
        feats = cache.get(f"fid-{name}", d)
        if feats is None:
            t = time.perf_counter()
            feats = fid_model.features(images, dims=settings.fid_dims,
                                       progress=settings.progress and len(images) > 50)
            t_fid += time.perf_counter() - t
            cache.put(f"fid-{name}", d, feats)
        return feats, d

    if v["reference_files"] is not None:
        ref_files = v["reference_files"]
        ref_feats, ref_digest = fid_features("reference", ref_files, load_images(ref_files))
        reference = {"kind": "images", "path": str(Path(settings.reference_images).absolute()),
                     "n": len(ref_files)}
    else:
        ref_feats, ref_digest = None, ""
        reference = {"kind": "teacher", "guidance": guidance[0], "n": n}

    sets = [(m, gi) for m in ("teacher", "student") for gi in range(len(guidance))]
    results: dict[str, list[dict[str, Any]]] = {m: [None] * len(guidance) for m in MODELS}
    set_feats: dict[tuple[str, int], tuple[np.ndarray, str]] = {}
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sets), desc="scoring sets", unit="set")
    try:
        set_data = {}
        for m, gi in sets:
            folder = out / "images" / m / _guidance_dir(guidance[gi])
            files = [folder / f"{i:05d}.png" for i in range(n)]
            images = load_images(files)
            set_data[(m, gi)] = (folder, files, images)
            set_feats[(m, gi)] = fid_features(f"{m}-{_guidance_dir(guidance[gi])}", files,
                                              images)
        if ref_feats is None:
            ref_feats, ref_digest = set_feats[("teacher", 0)]
        mu_r, sig_r = activation_statistics(ref_feats)
        for m, gi in sets:
            folder, files, images = set_data[(m, gi)]
            feats, feat_digest = set_feats[(m, gi)]
            if feat_digest == ref_digest:  # the reference set itself
                fid_value = 0.0
            else:
                name = f"fidvalue-{m}-{_guidance_dir(guidance[gi])}"
                d = _digest([feat_digest, ref_digest])
                cached = cache.get(name, d)
                if cached is None:
                    t = time.perf_counter()
                    mu, sig = activation_statistics(feats)
                    cached = np.array(frechet_distance(mu, sig, mu_r, sig_r))
                    t_fid += time.perf_counter() - t
                    cache.put(name, d, cached)
                fid_value = float(cached)
            d = set_digest(files, [clip_id] + prompts)
            name = f"clip-{m}-{_guidance_dir(guidance[gi])}"
            scores = cache.get(name, d)
            if scores is None:
                t = time.perf_counter()
                scores = clip.pair_scores(images, prompts, layout="HWC", progress=False)
                t_clip += time.perf_counter() - t
                cache.put(name, d, scores)
            clip_value = float(torch.clamp(torch.from_numpy(scores).mean(0), min=0.0))
            acc = None
            if want_accuracy:
                from snapfusion.data import accuracy

                t = time.perf_counter()
                acc = accuracy(images, prompts)
                t_acc += time.perf_counter() - t
            keys = [(m, gi, i) for i in range(n)]
            results[m][gi] = {
                "guidance": guidance[gi],
                "fid": fid_value,
                "fid_reference_set": feat_digest == ref_digest,
                "clip_score": clip_value,
                "clip_pair_mean": float(np.mean(scores.astype(np.float64))),
                "clip_score_std": float(np.std(scores.astype(np.float64))),
                "accuracy": acc,
                "latency": latency_breakdown([timings.get(k, {}) for k in keys]),
                "images": str(folder.relative_to(out)),
                "generated": generated[(m, gi)],
                "reused": reused[(m, gi)],
            }
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    if want_accuracy:  # world captions: also the world's own metrics, where the package ships its CLIP
        world = _world_metrics({k: d[2] for k, d in set_data.items()}, prompts,
                               load_images(v["reference_files"]) if v["reference_files"] is not None else None)
        for (m, gi), w in (world or {}).items():
            results[m][gi].update(w)

    latency = {m: latency_breakdown([timings.get((m, gi, i), {})
                                     for gi in range(len(guidance)) for i in range(n)])
               for m in MODELS}
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": {
            "n": n, "guidance": guidance, "seeds": seeds if n <= 64 else
            {"first": seeds[0], "last": seeds[-1], "count": n},
            "size": list(v["size"]) if v["size"] else None,
            "negative_prompt": settings.negative_prompt, "swap_decoder": settings.swap_decoder,
            "threads": settings.threads, "dask": _dask_name(settings.dask),
            "fid_dims": settings.fid_dims, "fid_weights": str(settings.fid_weights),
            "clip_model": str(settings.clip_model),
            "prompts_sha256": _digest(prompts),
            "accuracy": want_accuracy,
        },
        "models": {m: {"path": specs[m].path, "steps": v["steps"][m], "decoder": specs[m].decoder,
                       "fingerprint": fingerprints[m]} for m in MODELS},
        "reference": reference,
        "results": results,
        "latency": latency,
        "generation": {"generated": sum(generated.values()), "reused": sum(reused.values()),
                       "resubmitted_shards": resubmitted},
        "timing": {"load_metrics_s": t_load_metrics, "generate_s": t_generate,
                   "fid_s": t_fid, "clip_s": t_clip, "accuracy_s": t_acc},
        "machine": {"cpu": _cpu_name(), "logical_cpus": os.cpu_count(),
                    "python": platform.python_version()},
        **({"extra": settings.extra} if settings.extra else {}),
    }
    (out / "prompts.json").write_text(json.dumps(prompts, indent=0) + "\n")
    plots = {"fid_vs_clip": plot_fid_clip(report, out / "plots" / "fid_vs_clip.png"),
             "latency": plot_latency(report, out / "plots" / "latency.png")}
    report["plots"] = {k: str(p.relative_to(out)) for k, p in plots.items()}
    report["timing"]["wall_s"] = time.perf_counter() - t_start
    tmp = out / f".report.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "report.json")
    return report


def _dask_name(d: Any) -> str | None:
    if d is None:
        return None
    if isinstance(d, str):
        return d
    try:
        return str(d.scheduler.address)
    except AttributeError:
        return type(d).__name__


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

