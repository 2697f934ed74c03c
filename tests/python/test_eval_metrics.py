"""Tests of snapfusion.eval: Fréchet distance, FID Inception features, CLIP score.

References: /work/shared/golden-eval (pytorch-fid v0.3.0, torchmetrics v1.5.2,
transformers' CLIP, scipy 1.10 outputs), an independent eigenvalue-based
Fréchet distance, and torchmetrics itself when it is installed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from snapfusion.eval import (
    CLIPScore,
    FIDInception,
    activation_statistics,
    convert_fid_weights,
    fid,
    frechet_distance,
    frechet_distance_from_features,
)
from snapfusion.eval import metrics as metrics_mod

REPO = Path(__file__).resolve().parents[2]
FRECHET_CASES = ["gauss", "singular", "identical", "zero_var"]


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / np.max(np.abs(ref)))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def frechet_golden(golden_eval_dir: Path):
    return np.load(golden_eval_dir / "fid_frechet.npz")


@pytest.fixture(scope="session")
def fid_golden(golden_eval_dir: Path):
    return np.load(golden_eval_dir / "fid_inception.npz")


@pytest.fixture(scope="session")
def fid_weights_gz(golden_eval_dir: Path) -> Path:
    return golden_eval_dir / "fid_inception" / "model.safetensors.gz"


@pytest.fixture(scope="session")
def fid_weights_plain(fid_weights_gz: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fid") / "model.safetensors"
    with gzip.open(fid_weights_gz, "rb") as fin, open(out, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 24)
    return out


@pytest.fixture(scope="session")
def fid_model(fid_weights_gz: Path) -> FIDInception:
    pytest.importorskip("torch")
    return FIDInception.from_pretrained(fid_weights_gz)  # the .gz is read directly


@pytest.fixture(scope="session")
def fid_images(fid_golden) -> list[np.ndarray]:
    return [fid_golden[f"image_{i}"] for i in range(5)]


@pytest.fixture(scope="session")
def clip_dir(golden_eval_dir: Path) -> Path:
    return golden_eval_dir / "clip_tiny"


@pytest.fixture(scope="session")
def clip_golden(golden_eval_dir: Path):
    data = np.load(golden_eval_dir / "clip.npz")
    cases = json.loads((golden_eval_dir / "cases.json").read_text())["clip"]
    return data, cases


@pytest.fixture(scope="session")
def clip_model(clip_dir: Path) -> CLIPScore:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return CLIPScore.from_pretrained(clip_dir)


@pytest.fixture(scope="session")
def clip_inputs(clip_golden):
    data, cases = clip_golden
    return [data[f"image_{i}"] for i in range(6)], list(cases["prompts"])


# ------------------------------------------------------------------ Fréchet distance
def _eigen_frechet(mu1, s1, mu2, s2) -> float:
    """Independent float64 Fréchet distance via symmetric eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr = np.sum(np.sqrt(np.clip(ev, 0, None)))
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr)


@pytest.mark.parametrize("case", FRECHET_CASES)
def test_statistics_match_pytorch_fid(frechet_golden, case):
    for side in ("1", "2"):
        mu, sigma = activation_statistics(frechet_golden[f"{case}__x{side}"])
        assert mu.dtype == np.float64 and sigma.dtype == np.float64
        assert _rel(mu, frechet_golden[f"{case}__mu{side}"]) <= 1e-12
        assert _rel(sigma, frechet_golden[f"{case}__sigma{side}"]) <= 1e-12


@pytest.mark.parametrize("case,rel,abs_", [("gauss", 1e-8, 0), ("singular", 1e-6, 0),
                                           ("identical", 0, 1e-6), ("zero_var", 1e-8, 0)])
def test_frechet_distance_matches_pytorch_fid(frechet_golden, case, rel, abs_):
    g = frechet_golden
    ref = float(g[f"{case}__distance"])
    d = frechet_distance(g[f"{case}__mu1"], g[f"{case}__sigma1"], g[f"{case}__mu2"], g[f"{case}__sigma2"])
    assert isinstance(d, float)
    assert abs(d - ref) <= rel * abs(ref) + abs_
    d2 = frechet_distance_from_features(g[f"{case}__x1"], g[f"{case}__x2"])
    assert abs(d2 - ref) <= rel * abs(ref) + abs_


@pytest.mark.parametrize("kind", ["well_conditioned", "singular", "identical"])
def test_frechet_distance_vs_eigen_computation(kind):
    rng = np.random.default_rng({"well_conditioned": 1, "singular": 2, "identical": 3}[kind])
    dim = 32
    if kind == "singular":  # fewer samples than dimensions
        x1 = rng.normal(size=(20, dim))
        x2 = rng.normal(size=(25, dim)) @ rng.normal(size=(dim, dim)) * 0.3 + 0.5
    else:
        a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
        x1 = rng.normal(size=(400, dim)) @ a + 1.0
        x2 = x1.copy() if kind == "identical" else rng.normal(size=(300, dim)) * 1.3 - 0.2
    mu1, s1 = activation_statistics(x1)
    mu2, s2 = activation_statistics(x2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _eigen_frechet(mu1, s1, mu2, s2)
    if kind == "identical":
        assert abs(ours) <= 1e-6 and abs(ref) <= 1e-6
    else:
        assert ref > 1.0
        assert abs(ours - ref) <= (1e-9 if kind == "well_conditioned" else 1e-6) * ref


def test_frechet_distance_vs_torchmetrics_fid_formula():
    fid_mod = pytest.importorskip("torchmetrics.image.fid")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x1 = rng.normal(size=(200, 16))
    x2 = rng.normal(size=(150, 16)) * 0.7 + 0.3
    mu1, s1 = activation_statistics(x1)
    mu2, s2 = activation_statistics(x2)
    ref = float(fid_mod._compute_fid(torch.from_numpy(mu1), torch.from_numpy(s1),
                                     torch.from_numpy(mu2), torch.from_numpy(s2)))
    assert abs(frechet_distance(mu1, s1, mu2, s2) - ref) <= 1e-9 * ref


def test_frechet_eps_retry_only_on_non_finite(monkeypatch):
    rng = np.random.default_rng(7)
    mu1, s1 = activation_statistics(rng.normal(size=(50, 6)))
    mu2, s2 = activation_statistics(rng.normal(size=(40, 6)) + 1)
    calls = []
    real = metrics_mod._sqrtm

    def fake(a):
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real(a)

    monkeypatch.setattr(metrics_mod, "_sqrtm", fake)
    with pytest.warns(RuntimeWarning, match="singular"):
        d = frechet_distance(mu1, s1, mu2, s2, eps=1e-3)
    off = np.eye(6) * 1e-3
    assert np.allclose(calls[1], (s1 + off) @ (s2 + off), rtol=0, atol=1e-15)
    tr = np.trace(real((s1 + off) @ (s2 + off)).real)
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert d == pytest.approx(expected, rel=1e-12)
    # Without non-finite values the square root is computed once, no offset.
    calls.clear()
    monkeypatch.setattr(metrics_mod, "_sqrtm", lambda a: (calls.append(a), real(a))[1])
    frechet_distance(mu1, s1, mu2, s2)
    assert len(calls) == 1


def test_frechet_rejects_large_imaginary_component(monkeypatch):
    monkeypatch.setattr(metrics_mod, "_sqrtm", lambda a: np.eye(a.shape[0]) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3))


def test_frechet_and_statistics_bad_input():
    eye = np.eye(4)
    z = np.zeros(4)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([0, np.nan, 0, 0]), eye, z, eye)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(z, np.where(eye > 0, np.inf, 0.0), z, eye)
    with pytest.raises(ValueError, match="lengths"):
        frechet_distance(z, eye, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(z, np.eye(3), z, eye)
    with pytest.raises(ValueError):
        frechet_distance(z, eye, z, np.zeros((4, 4, 1)))
    with pytest.raises(TypeError):
        frechet_distance("abc", eye, z, eye)
    with pytest.raises(ValueError, match="at least 2"):
        activation_statistics(np.ones((1, 5)))
    with pytest.raises(ValueError, match="2-D"):
        activation_statistics(np.ones((3, 5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        activation_statistics(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(TypeError):
        activation_statistics([["a", "b"], ["c", "d"]])
    # 1-D statistics are promoted like pytorch-fid's atleast_1d/atleast_2d.
    assert frechet_distance(0.0, 1.0, 3.0, 4.0) == pytest.approx(9 + 1 + 4 - 2 * 2)


# ------------------------------------------------------------------ FID Inception
@pytest.mark.parametrize("dims", [64, 192, 768, 2048])
def test_fid_inception_features_match_pytorch_fid(fid_model, fid_golden, fid_images, dims):
    feats = fid_model.features(fid_images, dims=dims, progress=False)
    assert feats.shape == (5, dims) and feats.dtype == np.float64
    assert _rel(feats, fid_golden[f"acts_{dims}"]) <= 1e-4


def test_fid_inception_input_forms_and_batching(fid_model, fid_images):
    from PIL import Image

    pair = np.stack(fid_images[:2])  # two 64x64 images, one [N, H, W, 3] array
    ref = fid_model.features(fid_images[:2], dims=192, batch_size=1, progress=False)
    batched = fid_model.features(pair, dims=192, batch_size=2, progress=False)
    as_pil = fid_model.features([Image.fromarray(im) for im in fid_images[:2]], dims=192, progress=False)
    assert _rel(batched, ref) <= 1e-5
    np.testing.assert_array_equal(as_pil, batched)
    # Mixed sizes keep the input order.
    mixed = fid_model.features([fid_images[2], fid_images[0]], dims=64, progress=False)
    single = fid_model.features([fid_images[0]], dims=64, progress=False)
    assert _rel(mixed[1:], single) <= 1e-5
    # A grayscale PIL image is converted to RGB like pytorch-fid's .convert('RGB').
    gray = np.asarray(Image.fromarray(fid_images[0]).convert("L"))
    f_gray = fid_model.features([Image.fromarray(gray)], dims=64, progress=False)
    f_rgb = fid_model.features([np.repeat(gray[:, :, None], 3, axis=2)], dims=64, progress=False)
    np.testing.assert_array_equal(f_gray, f_rgb)
    assert fid_model.features([], dims=64).shape == (0, 64)


def test_fid_inception_reads_image_files(tmp_path, fid_model, fid_images):
    from PIL import Image

    paths = []
    for i in (2, 0):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(fid_images[i]).save(paths[-1])
    rgba = tmp_path / "rgba.png"
    Image.fromarray(fid_images[1]).convert("RGBA").save(rgba)
    got = fid_model.features(paths + [str(rgba)], dims=64, progress=False)
    ref = fid_model.features([fid_images[2], fid_images[0], fid_images[1]], dims=64, progress=False)
    np.testing.assert_array_equal(got, ref)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        fid_model.features([not_image])


def test_fid_end_to_end_against_reference_features(fid_model, fid_golden, fid_images):
    ref = frechet_distance(*activation_statistics(fid_golden["acts_64"][:3]),
                           *activation_statistics(fid_golden["acts_64"][2:]))
    d = fid(fid_images[:3], fid_images[2:], model=fid_model, dims=64, progress=False)
    assert ref > 0
    assert abs(d - ref) <= 1e-4 * ref
    assert abs(fid(fid_images[:3], fid_images[:3], model=fid_model, dims=64)) <= 1e-6


def test_fid_inception_bad_images(fid_model, fid_images):
    img = fid_images[0]
    with pytest.raises(ValueError, match="uint8"):
        fid_model.features([img.astype(np.float32) / 255])
    with pytest.raises(ValueError, match="channels"):
        fid_model.features([np.zeros((32, 32, 4), np.uint8)])
    with pytest.raises(ValueError, match="channels"):
        fid_model.features([np.ascontiguousarray(img.transpose(2, 0, 1))])  # CHW
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        fid_model.features([img[:, :, 0]])
    with pytest.raises(ValueError):
        fid_model.features(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        fid_model.features(np.zeros((2, 8, 8, 3), np.int64))
    with pytest.raises(ValueError, match="size"):
        fid_model.features([np.zeros((0, 8, 3), np.uint8)])
    with pytest.raises(FileNotFoundError):
        fid_model.features(["/nonexistent/image.png"])
    with pytest.raises(TypeError):
        fid_model.features([b"bytes"])
    with pytest.raises(TypeError):
        fid_model.features(42)
    with pytest.raises(ValueError, match="dims"):
        fid_model.features([img], dims=100)
    with pytest.raises(ValueError, match="batch_size"):
        fid_model.features([img], batch_size=0)
    with pytest.raises(TypeError):
        fid([img, img], [img, img], model=123)


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.array(v, order="C") for k, v in tensors.items()}, str(path))


def test_fid_weights_validation(tmp_path, fid_weights_plain):
    from safetensors.numpy import load_file

    full = load_file(str(fid_weights_plain))
    assert len(full) == 470
    # Constructor-level checks on the full set (no file needed).
    missing = dict(full)
    del missing["Mixed_6c.branch7x7_2.conv.weight"]
    with pytest.raises(ValueError, match="missing tensor 'Mixed_6c.branch7x7_2.conv.weight'"):
        FIDInception(missing)
    extra = dict(full, **{"fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="unexpected tensor 'fc.weight'"):
        FIDInception(extra)
    wrong = dict(full)
    wrong["Mixed_5b.branch_pool.conv.weight"] = np.zeros((33, 192, 1, 1), np.float32)
    with pytest.raises(ValueError, match="'Mixed_5b.branch_pool.conv.weight' has shape"):
        FIDInception(wrong)
    nan = dict(full)
    nan["Conv2d_1a_3x3.bn.running_var"] = np.full(32, np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        FIDInception(nan)
    # File-level checks.
    small = tmp_path / "small.safetensors"
    _save_safetensors({"Conv2d_1a_3x3.conv.weight": full["Conv2d_1a_3x3.conv.weight"]}, small)
    with pytest.raises(ValueError, match="missing tensor"):
        FIDInception.from_pretrained(small)
    ints = tmp_path / "ints.safetensors"
    _save_safetensors({k: (v.astype(np.int32) if k == "Conv2d_1a_3x3.bn.bias" else v)
                       for k, v in full.items()}, ints)
    with pytest.raises(ValueError, match="non-float"):
        FIDInception.from_pretrained(ints)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="invalid safetensors"):
        FIDInception.from_pretrained(garbage)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(small.read_bytes()[:-10])
    with pytest.raises(ValueError):
        FIDInception.from_pretrained(truncated)
    bad_gz = tmp_path / "bad.safetensors.gz"
    bad_gz.write_bytes(gzip.compress(small.read_bytes())[:-20])
    with pytest.raises(ValueError):
        FIDInception.from_pretrained(bad_gz)
    with pytest.raises(FileNotFoundError):
        FIDInception.from_pretrained(tmp_path / "absent.safetensors")


def test_convert_fid_weights(tmp_path, fid_weights_plain, fid_model, fid_images):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    ref = load_file(str(fid_weights_plain))
    state = {k: torch.from_numpy(v) for k, v in ref.items()}
    for k in list(ref):  # as in the official file: BatchNorm counters and the classifier
        if k.endswith("bn.running_var"):
            state[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    pth = tmp_path / "pt_inception.pth"
    torch.save(state, pth)
    out = convert_fid_weights(pth, tmp_path / "converted.safetensors")
    conv = load_file(str(out))
    assert sorted(conv) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(conv[k], ref[k])
    model = FIDInception.from_pretrained(out)
    np.testing.assert_array_equal(model.features(fid_images[:1], dims=64),
                                  fid_model.features(fid_images[:1], dims=64))
    out_gz = convert_fid_weights(pth, tmp_path / "converted.safetensors.gz", compresslevel=1)
    with gzip.open(out_gz, "rb") as fh:
        assert fh.read() == out.read_bytes()


def test_convert_fid_weights_rejects_bad_files(tmp_path):
    torch = pytest.importorskip("torch")
    small = tmp_path / "small.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3), "fc.weight": torch.zeros(2, 2)}, small)
    with pytest.raises(ValueError, match="missing tensor"):
        convert_fid_weights(small, tmp_path / "o.safetensors")
    wrong = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5)}, wrong)
    with pytest.raises(ValueError):
        convert_fid_weights(wrong, tmp_path / "o.safetensors")
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], not_dict)
    with pytest.raises(ValueError, match="state dict"):
        convert_fid_weights(not_dict, tmp_path / "o.safetensors")
    non_tensor = tmp_path / "nontensor.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": 3}, non_tensor)
    with pytest.raises(ValueError, match="not a tensor"):
        convert_fid_weights(non_tensor, tmp_path / "o.safetensors")
    # A pickle that would run code when fully unpickled must be refused unexecuted.
    marker = tmp_path / "executed.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"w": _Payload(str(marker))}, evil)
    with pytest.raises(ValueError, match="weights-only"):
        convert_fid_weights(evil, tmp_path / "o.safetensors")
    assert not marker.exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError):
        convert_fid_weights(junk, tmp_path / "o.safetensors")
    with pytest.raises(FileNotFoundError):
        convert_fid_weights(tmp_path / "absent.pth", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


class _Payload:
    """Pickles as a call to ``open(path, 'w')`` (creates a file if ever executed)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_import_does_not_load_torch():
    code = "import sys, snapfusion.eval; assert 'torch' not in sys.modules, 'torch imported'"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------ CLIP score
def test_clip_preprocessing_matches_clip_image_processor(clip_model, clip_golden, clip_inputs):
    data, _ = clip_golden
    images, _ = clip_inputs
    pv = clip_model.preprocess_images(images)
    assert pv.dtype == np.float32 and pv.shape == (6, 3, 48, 48)
    assert np.max(np.abs(pv - data["pixel_values"])) <= 1e-6
    resized = [clip_model.image_preprocessor.resize_output_size(*im.shape[1:]) for im in images]
    np.testing.assert_array_equal(np.array(resized), data["resized_hw"])


def test_clip_tokenization_matches_processor(clip_model, clip_golden, clip_inputs):
    data, cases = clip_golden
    _, captions = clip_inputs
    ids, mask = clip_model.tokenize(captions)
    assert ids.dtype == np.int64 and ids.shape == (6, 77)
    np.testing.assert_array_equal(ids, data["input_ids"])
    np.testing.assert_array_equal(mask, data["attention_mask"])
    # Untruncated lengths: the long caption lost its end-of-text token.
    assert mask.sum(1).tolist() == [min(n, 77) for n in cases["untruncated_lengths"]]


def test_clip_snapfusion_tokenizer_backend(clip_dir, clip_golden, clip_inputs):
    pytest.importorskip("snapfusion.tokenizer")
    data, _ = clip_golden
    images, captions = clip_inputs
    model = CLIPScore.from_pretrained(clip_dir, tokenizer="snapfusion")
    ids, mask = model.tokenize(captions)
    np.testing.assert_array_equal(ids, data["input_ids"])
    np.testing.assert_array_equal(mask, data["attention_mask"])
    assert np.max(np.abs(model.pair_scores(images, captions) - data["per_sample_score"])) <= 1e-3
    with pytest.raises(ValueError, match="tokenizer must be"):
        CLIPScore.from_pretrained(clip_dir, tokenizer="sentencepiece")


def test_clip_embeddings_match_reference(clip_model, clip_golden):
    data, _ = clip_golden
    img, vpool = clip_model.image_features_from_pixels(data["pixel_values"], return_pooled=True)
    txt, tpool = clip_model.text_features_from_tokens(data["input_ids"], data["attention_mask"],
                                                      return_pooled=True)
    assert _rel(vpool, data["vision_pooler_output"]) <= 1e-4
    assert _rel(tpool, data["text_pooler_output"]) <= 1e-4
    assert _rel(img, data["image_embeds_unnorm"]) <= 1e-4
    assert _rel(txt, data["text_embeds_unnorm"]) <= 1e-4
    img_n = img / np.linalg.norm(img, axis=-1, keepdims=True)
    txt_n = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    assert np.max(np.abs(img_n - data["image_embeds"])) <= 1e-4
    assert np.max(np.abs(txt_n - data["text_embeds"])) <= 1e-4


def test_clip_scores_match_torchmetrics_reference(clip_model, clip_golden, clip_inputs):
    data, cases = clip_golden
    images, captions = clip_inputs
    scores = clip_model.pair_scores(images, captions)
    assert scores.dtype == np.float32 and scores.shape == (6,)
    assert np.max(np.abs(scores - data["per_sample_score"])) <= 1e-3
    assert clip_model.score(images, captions) == pytest.approx(float(data["clip_score_functional"]), abs=1e-3)
    assert clip_model.score(images, captions) == 0.0  # clamped: the mean is negative
    pos = cases["subset_positive"]
    neg = cases["subset_negative"]
    s_pos = clip_model.score([images[i] for i in pos], [captions[i] for i in pos])
    assert s_pos > 0
    assert s_pos == pytest.approx(float(data["clip_score_subset_positive"]), abs=1e-3)
    assert clip_model.score([images[i] for i in neg], [captions[i] for i in neg]) == 0.0
    assert float(data["clip_score_subset_negative"]) == 0.0
    k = cases["single_0_index"]
    single = clip_model.score(images[k], captions[k])  # one 3-D image and one string
    assert single == pytest.approx(float(data["clip_score_single_0"]), abs=1e-3)
    # Metric form: accumulate a float32 sum, clamp the average.
    clip_model.reset()
    clip_model.update(images[:3], captions[:3])
    clip_model.update(images[3:], captions[3:])
    assert clip_model.accumulated_sum == pytest.approx(float(data["clip_score_metric_sum"]), abs=1e-3)
    assert clip_model.compute() == pytest.approx(float(data["clip_score_metric"]), abs=1e-3)
    clip_model.reset()
    clip_model.update(images[pos[0]], captions[pos[0]])
    clip_model.update([images[i] for i in pos[1:]], [captions[i] for i in pos[1:]])
    assert clip_model.compute() == pytest.approx(float(data["clip_score_metric_subset_positive"]), abs=1e-3)
    clip_model.reset()
    with pytest.raises(ValueError, match="update"):
        clip_model.compute()


def test_clip_batching_does_not_change_scores(clip_model, clip_inputs):
    images, captions = clip_inputs
    full = clip_model.pair_scores(images, captions, batch_size=64)
    small = clip_model.pair_scores(images, captions, batch_size=2)
    assert np.max(np.abs(full - small)) <= 1e-4


def test_clip_input_forms(clip_model, clip_inputs):
    torch = pytest.importorskip("torch")
    from PIL import Image

    images, captions = clip_inputs
    ref = clip_model.pair_scores(images[1:3], captions[1:3])
    hwc = [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in images[1:3]]
    np.testing.assert_array_equal(clip_model.pair_scores(hwc, captions[1:3], layout="HWC"), ref)
    pil = [Image.fromarray(h) for h in hwc]
    np.testing.assert_array_equal(clip_model.pair_scores(pil, captions[1:3]), ref)
    np.testing.assert_array_equal(
        clip_model.pair_scores([torch.from_numpy(im) for im in images[1:3]], tuple(captions[1:3])), ref)
    batch = np.stack([images[0], images[0]])
    np.testing.assert_array_equal(clip_model.pair_scores(torch.from_numpy(batch), ["a", "b"]),
                                  clip_model.pair_scores([images[0], images[0]], ["a", "b"]))
    gray = np.asarray(Image.fromarray(hwc[0]).convert("L"))
    np.testing.assert_array_equal(
        clip_model.pair_scores([Image.fromarray(gray)], ["x"]),
        clip_model.pair_scores([np.repeat(gray[None], 3, axis=0)], ["x"]))


def test_clip_bad_input(clip_model, clip_inputs):
    images, captions = clip_inputs
    img = images[1]
    with pytest.raises(ValueError, match="uint8"):
        clip_model.pair_scores([img.astype(np.float32) / 255], ["a"])
    with pytest.raises(ValueError, match="3 channels"):
        clip_model.pair_scores([np.zeros((4, 20, 20), np.uint8)], ["a"])
    with pytest.raises(ValueError, match="layout='HWC'"):
        clip_model.pair_scores([np.ascontiguousarray(img.transpose(1, 2, 0))], ["a"])
    with pytest.raises(ValueError, match="3 channels last"):
        clip_model.pair_scores([img], ["a"], layout="HWC")
    with pytest.raises(ValueError, match="layout"):
        clip_model.pair_scores([img], ["a"], layout="NCHW")
    with pytest.raises(ValueError, match="3-D"):
        clip_model.pair_scores([img[0]], ["a"])
    with pytest.raises(ValueError, match="as many captions"):
        clip_model.pair_scores([img, img], ["a"])
    with pytest.raises(ValueError):
        clip_model.pair_scores([], [])
    with pytest.raises(TypeError):
        clip_model.pair_scores([img], [3])
    with pytest.raises(TypeError):
        clip_model.pair_scores([img], None)
    with pytest.raises(TypeError):
        clip_model.pair_scores(["path.png"], ["a"])
    with pytest.raises(ValueError, match="batch_size"):
        clip_model.pair_scores([img], ["a"], batch_size=0)


def _copy_clip_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_clip_checkpoint_errors(tmp_path, clip_dir):
    from safetensors.numpy import load_file

    no_vocab = _copy_clip_dir(clip_dir, tmp_path / "no_vocab")
    (no_vocab / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPScore.from_pretrained(no_vocab)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPScore.from_pretrained(no_vocab, tokenizer="snapfusion")
    no_pre = _copy_clip_dir(clip_dir, tmp_path / "no_pre")
    (no_pre / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        CLIPScore.from_pretrained(no_pre)
    no_weights = _copy_clip_dir(clip_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        CLIPScore.from_pretrained(no_weights)
    tensors = load_file(str(clip_dir / "model.safetensors"))
    missing = _copy_clip_dir(clip_dir, tmp_path / "missing")
    _save_safetensors({k: v for k, v in tensors.items() if k != "text_projection.weight"},
                      missing / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensor 'text_projection.weight'"):
        CLIPScore.from_pretrained(missing)
    wrong = _copy_clip_dir(clip_dir, tmp_path / "wrong")
    _save_safetensors(dict(tensors, **{"visual_projection.weight": np.zeros((24, 31), np.float32)}),
                      wrong / "model.safetensors")
    with pytest.raises(ValueError, match="'visual_projection.weight' has shape"):
        CLIPScore.from_pretrained(wrong)
    bad_cfg = _copy_clip_dir(clip_dir, tmp_path / "bad_cfg")
    (bad_cfg / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        CLIPScore.from_pretrained(bad_cfg)
    with pytest.raises(FileNotFoundError):
        CLIPScore.from_pretrained(tmp_path / "absent")


# --------------------------------------------------------- comparison with torchmetrics
class _FeatureAdapter:
    """Exposes ``get_*_features`` returning tensors (the API torchmetrics calls)."""

    def __init__(self, model) -> None:
        self.m = model
        self.config = model.config

    def to(self, device):
        return self

    def get_image_features(self, pixel_values):
        return self.m.visual_projection(self.m.vision_model(pixel_values=pixel_values).pooler_output)

    def get_text_features(self, input_ids, attention_mask=None):
        return self.m.text_projection(
            self.m.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)


@pytest.mark.parametrize("eos_token_id", [None, 2, 999])
def test_clip_matches_installed_torchmetrics(clip_model, clip_dir, eos_token_id):
    """Our pipeline vs torchmetrics + transformers' CLIPProcessor on odd sizes and long captions.

    ``eos_token_id`` selects the text pooling of the same network: the
    checkpoint's own setting (None), the legacy ``argmax(input_ids)`` (2), or
    the first end-of-text token (999).
    """
    torch = pytest.importorskip("torch")
    tm_fn = pytest.importorskip("torchmetrics.functional.multimodal.clip_score")
    tm_mm = pytest.importorskip("torchmetrics.multimodal")
    from transformers import CLIPProcessor

    processor = CLIPProcessor.from_pretrained(str(clip_dir))
    rng = np.random.default_rng(11)
    sizes = [(1, 200), (300, 301), (49, 48), (48, 47), (17, 90)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    captions = ["x " * 100, "hello world", "", "ünïcödé café, naïve — “quotes”", "a " * 40 + "b"]
    text_model = clip_model.model.text_model
    saved = text_model.eos_token_id
    try:
        if eos_token_id is not None:
            text_model.eos_token_id = eos_token_id
        adapter = _FeatureAdapter(clip_model.model)
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            ref, n = tm_fn._clip_score_update(images, captions, adapter, processor)
            ref_fn = float(tm_fn.clip_score(images, captions, lambda: (adapter, processor)))
            metric = tm_mm.CLIPScore(model_name_or_path=lambda: (adapter, processor))
            metric.update(images[:2], captions[:2])
            metric.update(images[2:], captions[2:])
            ref_metric = float(metric.compute())
        ours = clip_model.pair_scores(images, captions)
        assert n == 5
        assert np.max(np.abs(ours - ref.numpy())) <= 1e-4
        assert clip_model.score(images, captions) == pytest.approx(ref_fn, abs=1e-4)
        clip_model.reset()
        clip_model.update(images[:2], captions[:2])
        clip_model.update(images[2:], captions[2:])
        assert clip_model.compute() == pytest.approx(ref_metric, abs=1e-4)
        if eos_token_id == 2:  # captions are told apart: some pairs score above 0
            assert ref_fn > 0
    finally:
        text_model.eos_token_id = saved
        clip_model.reset()
