"""The C text-to-image pipeline (sf_pipeline_*, exposed as snapfusion._engine.CPipeline) and the
sf-txt2img tool: parity with snapfusion.Pipeline, with diffusers' recorded runs, progress and
cancellation, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from snapfusion import CLIPTokenizer, Pipeline, _engine

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a photo of an astronaut riding a horse on the moon"
H, W = 32, 48


@pytest.fixture(scope="module")
def sd_tiny(golden_dir: Path) -> Path:
    return golden_dir / "sd_tiny"


@pytest.fixture(scope="module")
def ids(sd_tiny: Path) -> tuple[np.ndarray, np.ndarray]:
    tok = CLIPTokenizer.from_pretrained(sd_tiny / "tokenizer")
    return tok([PROMPT]), tok([""])


@pytest.fixture(scope="module")
def cpipe(sd_tiny: Path) -> _engine.CPipeline:
    return _engine.CPipeline(str(sd_tiny))


def _latents(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4, H // 2, W // 2),
                                                       dtype=np.float32)


# ---------------------------------------------------------------- parity with snapfusion.Pipeline

@pytest.mark.parametrize("guidance", [7.5, 1.0])
@pytest.mark.parametrize("scheduler", [None, "DDIMScheduler", "EulerDiscreteScheduler"])
def test_parity_with_python_pipeline(sd_tiny: Path, ids: tuple[np.ndarray, np.ndarray],
                                     scheduler: str | None, guidance: float) -> None:
    pipe = Pipeline.from_pretrained(sd_tiny, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    c = _engine.CPipeline(str(sd_tiny), scheduler=scheduler)
    assert c.info["scheduler"] == type(pipe.scheduler).__name__
    lat = _latents(3)
    ref = pipe(PROMPT, num_inference_steps=4, guidance_scale=guidance, latents=lat,
               output_type="np", height=H, width=W).images
    got = c.generate(ids[0], ids[1], steps=4, guidance=guidance, latents=lat, height=H, width=W)
    assert got.dtype == np.float32 and got.shape == ref.shape == (1, H, W, 3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_parity_int8(sd_tiny: Path, ids: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """An int8 (W8A8, dynamic activations) conversion loads and runs like in Python."""
    from snapfusion.convert.quantize import convert

    dst = convert(sd_tiny, tmp_path / "int8", weights="int8", calibrate=False, progress=False)
    assert json.loads((Path(dst) / "unet" / "config.json").read_text())["quantization"][
        "int8_layers"] > 0
    pipe = Pipeline.from_pretrained(dst)
    pipe.set_progress_bar_config(disable=True)
    lat = _latents(4)
    ref = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, latents=lat, output_type="np",
               height=H, width=W).images
    got = _engine.CPipeline(str(dst)).generate(ids[0], ids[1], steps=3, guidance=7.5,
                                               latents=lat, height=H, width=W)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_against_diffusers_runs(golden_dir: Path) -> None:
    """Every recorded diffusers run (negative prompts, clip_skip, DPM-Solver) from its ids."""
    index = json.loads((golden_dir / "pipeline" / "index.json").read_text())
    cp = _engine.CPipeline(str(golden_dir / index["pipeline_dir"]))
    for run, meta in index["runs"].items():
        ref = np.load(golden_dir / "pipeline" / f"{run}.npz")
        # the configuration diffusers ran with (not the folder's: e.g. linspace for Euler)
        config = dict(meta["scheduler_config"], _class_name=meta["scheduler_class"])
        cp.set_scheduler_config(json.dumps(config))
        assert cp.info["scheduler"] == meta["scheduler_class"]
        clip_skip = meta["clip_skip"]
        img = cp.generate(
            np.array([meta["prompt_ids"]]), np.array([meta["negative_prompt_ids"]]),
            steps=int(meta["num_inference_steps"]), guidance=float(meta["guidance_scale"]),
            latents=ref["latents_init"], height=int(index["height"]), width=int(index["width"]),
            clip_skip=0 if clip_skip in (None, "None") else int(clip_skip))
        assert cp.timings["steps"] == len(ref["timesteps"]), run
        np.testing.assert_allclose(img, ref["image"], rtol=0, atol=1e-3, err_msg=run)


# ---------------------------------------------------------------- seeds, progress, cancellation

def test_seed_noise_is_randn(cpipe: _engine.CPipeline, ids: tuple[np.ndarray, np.ndarray]) -> None:
    a = cpipe.generate(ids[0], ids[1], steps=2, seed=11, height=H, width=W)
    b = cpipe.generate(ids[0], ids[1], steps=2, seed=11, height=H, width=W)
    assert np.array_equal(a, b)
    lat = _engine.randn(11, 0, 4 * (H // 2) * (W // 2)).reshape(1, 4, H // 2, W // 2)
    c = cpipe.generate(ids[0], ids[1], steps=2, latents=lat, height=H, width=W)
    assert np.array_equal(a, c)
    d = cpipe.generate(ids[0], ids[1], steps=2, seed=12, height=H, width=W)
    assert not np.array_equal(a, d)
    assert np.all((a >= 0) & (a <= 1))
    # the default size: the UNet's sample_size 32 x the VAE factor 2
    e = cpipe.generate(ids[0], ids[1], steps=1, seed=1)
    assert e.shape == (1, 64, 64, 3) and cpipe.timings["steps"] == 1
    r = _engine.randn(5, 0, 100001)
    assert abs(float(r.mean())) < 0.02 and abs(float(r.std()) - 1) < 0.02


def test_recommended_settings(sd_tiny: Path, tmp_path: Path,
                              ids: tuple[np.ndarray, np.ndarray]) -> None:
    """snapfusion_model.json's steps and guidance are the defaults of generate."""
    model = tmp_path / "model"
    model.mkdir()
    for part in ("text_encoder", "unet", "vae", "scheduler"):
        (model / part).symlink_to(sd_tiny / part)
    (model / "snapfusion_model.json").write_text(
        json.dumps({"num_inference_steps": 2, "guidance_scale": 3.0}))
    cp = _engine.CPipeline(str(model), scheduler="DDIMScheduler")
    assert cp.info["recommended_steps"] == 2 and cp.info["recommended_guidance"] == 3.0
    lat = _latents(6)
    a = cp.generate(ids[0], ids[1], latents=lat, height=H, width=W)
    assert cp.timings["steps"] == 2
    b = cp.generate(ids[0], ids[1], steps=2, guidance=3.0, latents=lat, height=H, width=W)
    assert np.array_equal(a, b)
    (model / "snapfusion_model.json").write_text('{"guidance_scale": "high"}')
    with pytest.raises(ValueError, match="snapfusion_model.json"):
        _engine.CPipeline(str(model))


def test_batch(cpipe: _engine.CPipeline, ids: tuple[np.ndarray, np.ndarray]) -> None:
    lat = _latents(8, batch=2)
    cond = np.concatenate([ids[0], ids[1]])  # the second "prompt" is ""
    unc = np.concatenate([ids[1], ids[1]])
    both = cpipe.generate(cond, unc, steps=2, latents=lat, height=H, width=W)
    assert both.shape == (2, H, W, 3)
    for k in range(2):
        one = cpipe.generate(cond[k], unc[k], steps=2, latents=lat[k:k + 1], height=H, width=W)
        np.testing.assert_allclose(both[k], one[0], rtol=0, atol=1e-4)


def test_progress_and_cancel(cpipe: _engine.CPipeline, sd_tiny: Path,
                             ids: tuple[np.ndarray, np.ndarray]) -> None:
    calls: list[tuple[int, int, float]] = []
    cpipe.generate(ids[0], ids[1], steps=4, height=H, width=W,
                   progress=lambda s, n, t: calls.append((s, n, t)))
    pipe = Pipeline.from_pretrained(sd_tiny)
    pipe.scheduler.set_timesteps(4)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    assert calls == [(i + 1, len(ts), t) for i, t in enumerate(ts)]
    t = cpipe.timings
    assert t["steps"] == len(ts) and len(t["unet"]) == len(ts)
    assert t["unet_total"] == pytest.approx(sum(t["unet"]))
    assert t["text_encoder"] > 0 and t["decoder"] > 0 and t["total"] >= t["unet_total"]

    # a true return value stops after that step
    seen: list[int] = []

    def stop_at_2(step: int, total: int, timestep: float) -> bool:
        seen.append(step)
        return step == 2

    with pytest.raises(_engine.EngineError, match="cancelled"):
        cpipe.generate(ids[0], ids[1], steps=4, height=H, width=W, progress=stop_at_2)
    assert seen == [1, 2] and cpipe.timings["steps"] == 2

    # an exception propagates (and stops the loop at once)
    seen.clear()

    def boom(step: int, total: int, timestep: float) -> None:
        seen.append(step)
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        cpipe.generate(ids[0], ids[1], steps=4, height=H, width=W, progress=boom)
    assert seen == [1]
    # and the pipeline still works
    cpipe.generate(ids[0], ids[1], steps=1, height=H, width=W)


def test_errors(cpipe: _engine.CPipeline, sd_tiny: Path, tmp_path: Path,
                ids: tuple[np.ndarray, np.ndarray]) -> None:
    c, u = ids
    with pytest.raises(OSError, match="no such model folder"):
        _engine.CPipeline(str(tmp_path / "missing"))
    (tmp_path / "m").mkdir()
    with pytest.raises(OSError, match="text_encoder"):
        _engine.CPipeline(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="NoSuch"):
        _engine.CPipeline(str(sd_tiny), scheduler="NoSuchScheduler")
    with pytest.raises(ValueError, match="height"):
        cpipe.generate(c, u, steps=2, height=33, width=W)
    with pytest.raises(ValueError, match="num_inference_steps"):
        cpipe.generate(c, u, steps=0, height=H, width=W)
    with pytest.raises(ValueError, match="uncond_len"):
        cpipe.generate(c, u[:, :76], steps=2, height=H, width=W)
    with pytest.raises(ValueError, match="uncond_ids is NULL"):
        cpipe.generate(c, None, steps=2, guidance=7.5, height=H, width=W)
    bad = c.copy()
    bad[0, 3] = 1000
    with pytest.raises(ValueError, match="vocabulary"):
        cpipe.generate(bad, u, steps=2, height=H, width=W)
    with pytest.raises(ValueError, match="latents"):
        cpipe.generate(c, u, steps=2, height=H, width=W, latents=np.zeros((1, 4, 8, 8)))
    with pytest.raises(TypeError, match="progress"):
        cpipe.generate(c, u, steps=2, height=H, width=W, progress=3)
    with pytest.raises(ValueError, match="seed"):
        cpipe.generate(c, u, steps=2, height=H, width=W, seed=-1)
    with pytest.raises(ValueError, match="guidance_scale"):
        cpipe.generate(c, u, steps=2, height=H, width=W, guidance=float("nan"))
    # without guidance the unconditional ids are not needed
    img = cpipe.generate(c, steps=1, guidance=1.0, height=H, width=W)
    assert img.shape == (1, H, W, 3)


def test_no_reference_leaks(cpipe: _engine.CPipeline, ids: tuple[np.ndarray, np.ndarray]) -> None:
    c, u = ids
    lat = _latents(2)

    def cb(step: int, total: int, timestep: float) -> bool:
        return step == 1

    def raising(step: int, total: int, timestep: float) -> None:
        raise ValueError("x")

    before = [sys.getrefcount(o) for o in (c, u, lat, cb, raising)]
    for _ in range(5):
        cpipe.generate(c, u, steps=1, latents=lat, height=H, width=W, progress=lambda *a: None)
        with pytest.raises(_engine.EngineError):
            cpipe.generate(c, u, steps=2, latents=lat, height=H, width=W, progress=cb)
        with pytest.raises(ValueError):
            cpipe.generate(c, u, steps=2, latents=lat, height=H, width=W, progress=raising)
        with pytest.raises(ValueError):
            cpipe.generate(c, u, steps=0, latents=lat, height=H, width=W, progress=cb)
    assert [sys.getrefcount(o) for o in (c, u, lat, cb, raising)] == before


# ---------------------------------------------------------------- the sf-txt2img tool

def _read_ppm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    parts = data.split(maxsplit=4)
    assert parts[0] == b"P6" and parts[3] == b"255"
    w, h = int(parts[1]), int(parts[2])
    pixels = parts[4]
    assert len(pixels) == w * h * 3
    return np.frombuffer(pixels, dtype=np.uint8).reshape(h, w, 3)


@pytest.fixture(scope="module")
def txt2img() -> Path:
    if shutil.which("cc") is None or shutil.which("make") is None:
        pytest.skip("no C compiler or make to build sf-txt2img")
    res = subprocess.run(["make", "-s", "sf-txt2img"], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return REPO / "build-c" / "sf-txt2img"


def test_txt2img_tool(txt2img: Path, sd_tiny: Path, tmp_path: Path,
                      ids: tuple[np.ndarray, np.ndarray]) -> None:
    c, u = (",".join(map(str, a[0].tolist())) for a in ids)
    threads = str(_engine.get_num_threads())
    cp = _engine.CPipeline(str(sd_tiny), scheduler="DDIMScheduler")
    # given latents
    lat = _latents(21)
    lat.tofile(tmp_path / "lat.f32")
    out = tmp_path / "a.ppm"
    res = subprocess.run([str(txt2img), str(sd_tiny), "--ids", c, "--uncond-ids", u,
                          "--steps", "3", "--guidance", "5", "--size", f"{W}x{H}",
                          "--scheduler", "DDIMScheduler", "--latents", str(tmp_path / "lat.f32"),
                          "--threads", threads, "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "unet" in res.stderr and "decoder" in res.stderr and "3/3" in res.stderr
    ref = cp.generate(ids[0], ids[1], steps=3, guidance=5.0, latents=lat, height=H, width=W)
    assert np.array_equal(_read_ppm(out), (ref[0] * 255).round().astype(np.uint8))
    # seed, the token list as tolist() prints it, no guidance
    res = subprocess.run([str(txt2img), str(sd_tiny), "--ids", str(ids[0].tolist()), "--steps",
                          "2", "--guidance", "1", "--seed", "77", "--size", f"{W}x{H}",
                          "--threads", threads, "--quiet", "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    cp.set_scheduler(None)
    ref = cp.generate(ids[0], steps=2, guidance=1.0, seed=77, height=H, width=W)
    assert np.array_equal(_read_ppm(out), (ref[0] * 255).round().astype(np.uint8))


@pytest.mark.parametrize("args,code,msg", [
    (["--ids", "1,2"], 2, "-o"),
    (["--ids", "1,x", "-o", "o.ppm"], 2, "bad token id"),
    (["--ids", "1,2", "-o", "o.ppm"], 2, "--uncond-ids"),
    (["--ids", "1,2", "--guidance", "1", "--size", "33x32", "-o", "o.ppm"], 2, "width"),
    (["--ids", "1,2000", "--guidance", "1", "-o", "o.ppm"], 2, "vocabulary"),
    (["--ids", "1,2", "--guidance", "1", "--size", "big", "-o", "o.ppm"], 2, "--size"),
    (["--ids", "1,2", "--guidance", "1", "--latents", "nope.f32", "-o", "o.ppm"], 1, "nope"),
    (["--ids", "1", "--bogus", "-o", "o.ppm"], 2, "unknown option"),
])
def test_txt2img_errors(txt2img: Path, sd_tiny: Path, tmp_path: Path, args: list[str], code: int,
                        msg: str) -> None:
    res = subprocess.run([str(txt2img), str(sd_tiny), *args], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == code, res.stderr
    assert msg in res.stderr
    assert not (tmp_path / "o.ppm").exists()
