"""The engine's models against the reference outputs of diffusers/transformers (golden files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from snapfusion import _engine
from snapfusion.components import AutoencoderKL, TextEncoder, UNet


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-12))


# ---------------------------------------------------------------- text encoder

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name,folder", [("text_encoder_tiny", "sd_tiny/text_encoder"),
                                         ("text_encoder_ctx", "text_encoder_ctx")])
def test_text_encoder_golden(golden_dir: Path, name: str, folder: str, threads: int) -> None:
    _engine.set_num_threads(threads)
    ref = np.load(golden_dir / f"{name}.npz")
    enc = TextEncoder.from_pretrained(golden_dir / folder)
    hidden, pooled = enc(ref["input_ids"], return_pooled=True)
    assert rel_err(hidden, ref["last_hidden_state"]) < 1e-4
    assert rel_err(pooled, ref["pooler_output"]) < 1e-4
    skip1 = enc(ref["input_ids"], clip_skip=1)
    assert rel_err(skip1, ref["clip_skip_1"]) < 1e-4


def test_text_encoder_bad_input(golden_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(golden_dir / "sd_tiny/text_encoder")
    with pytest.raises(ValueError, match="out of range|vocab|id"):
        enc(np.array([[5, 1000]]))
    with pytest.raises(ValueError, match="id"):
        enc(np.array([[5, -1]]))
    with pytest.raises(ValueError, match="tokens"):
        enc(np.zeros((1, 78), dtype=np.int64))
    with pytest.raises(TypeError):
        enc(np.zeros((1, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="clip_skip"):
        enc(np.zeros((1, 7), dtype=np.int64), clip_skip=99)


# ---------------------------------------------------------------- UNet

UNETS = [("unet_tiny", "sd_tiny/unet"), ("unet_sd15_small", "unet_sd15_small"),
         ("unet_sd2_small", "unet_sd2_small"), ("unet_bksdm_small", "unet_bksdm_small")]


@pytest.mark.parametrize("name,folder", UNETS)
def test_unet_golden(golden_dir: Path, name: str, folder: str) -> None:
    _engine.set_num_threads(2)
    ref = np.load(golden_dir / f"{name}.npz")
    unet = UNet.from_pretrained(golden_dir / folder)
    cases = sorted({k.split("__")[0] for k in ref.files})
    for case in cases:
        out, hooks = unet(ref[f"{case}__sample"], ref[f"{case}__timestep"],
                          ref[f"{case}__encoder_hidden_states"], return_hooks=True)
        for key in ref.files:
            if key.startswith(f"{case}__hook_") and key[len(case) + 7:] in hooks:
                stage = key[len(case) + 7:]
                assert rel_err(hooks[stage].reshape(ref[key].shape), ref[key]) < 1e-4, (case, stage)
        assert rel_err(out, ref[f"{case}__out"]) < 1e-4, case


def test_unet_bad_input(golden_dir: Path) -> None:
    unet = UNet.from_pretrained(golden_dir / "sd_tiny/unet")
    x = np.zeros((1, 4, 8, 8), np.float32)
    ctx = np.zeros((1, 77, 32), np.float32)
    with pytest.raises(ValueError, match="sample"):
        unet(np.zeros((1, 3, 8, 8), np.float32), 1, ctx)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        unet(x, 1, np.zeros((1, 77, 31), np.float32))
    with pytest.raises(ValueError, match="timestep"):
        unet(x, np.zeros(3), ctx)
    out = unet(np.full_like(x, np.nan), 1, ctx)  # NaN propagates, never crashes
    assert np.isnan(out).all()


# ---------------------------------------------------------------- VAE

@pytest.mark.parametrize("name,folder", [("vae_tiny", "sd_tiny/vae"),
                                         ("vae_sd_small", "vae_sd_small")])
def test_vae_golden(golden_dir: Path, name: str, folder: str) -> None:
    _engine.set_num_threads(2)
    ref = np.load(golden_dir / f"{name}.npz")
    vae = AutoencoderKL.from_pretrained(golden_dir / folder)
    img, hooks = vae.decode(ref["decode__z"], return_hooks=True)
    assert rel_err(hooks["dec_conv_in"], ref["decode__hook_dec_conv_in"]) < 1e-4
    assert rel_err(hooks["dec_mid_block"], ref["decode__hook_dec_mid_block"]) < 1e-4
    assert rel_err(img, ref["decode__sample"]) < 1e-4
    dist, hooks = vae.encode(ref["encode__x"], return_hooks=True)
    assert rel_err(hooks["enc_out"], ref["encode__hook_enc_out"]) < 1e-4
    assert rel_err(dist.mean, ref["encode__mean"]) < 1e-4
    assert rel_err(dist.std, ref["encode__std"]) < 1e-4
    assert rel_err(dist.logvar, ref["encode__logvar"]) < 1e-4
    if "encode_odd__x" in ref.files:
        dist = vae.encode(ref["encode_odd__x"])
        assert rel_err(dist.mean, ref["encode_odd__mean"]) < 1e-4
        assert rel_err(dist.std, ref["encode_odd__std"]) < 1e-4


# ---------------------------------------------------------------- hostile model folders

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_hostile_unet_folders(golden_dir: Path, tmp_path: Path) -> None:
    src = golden_dir / "sd_tiny/unet"
    # missing weights
    d = _copy(src, tmp_path / "a")
    (d / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(OSError, match="no weights"):
        UNet(d)
    # pickle only: refused with a hint
    (d / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(OSError, match="pickle"):
        UNet(d)
    # missing config
    d = _copy(src, tmp_path / "b")
    (d / "config.json").unlink()
    with pytest.raises(OSError, match="config.json"):
        UNet(d)
    # config disagreeing with the weights: wider channels -> shape error naming the tensor
    d = _copy(src, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["block_out_channels"] = [64, 64]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="conv_in.weight.*shape"):
        UNet(d)
    # unknown block type
    cfg = json.loads((src / "config.json").read_text())
    cfg["down_block_types"] = ["CrossAttnDownBlock2D", "SimpleDownBlock2D"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="down_block_types.*SimpleDownBlock2D"):
        UNet(d)
    # a non-numeric value
    cfg = json.loads((src / "config.json").read_text())
    cfg["norm_num_groups"] = "thirty-two"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNet(d)
    # no mid block in the config, but mid-block weights in the file: reported as unused
    cfg = json.loads((src / "config.json").read_text())
    cfg["mid_block_type"] = None
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not used"):
        UNet(d)
    # broken JSON
    (d / "config.json").write_text("{\"block_out_channels\": [32, 64,]}")
    with pytest.raises(ValueError, match="config.json"):
        UNet(d)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def test_release_memory(golden_dir: Path) -> None:
    from snapfusion.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(golden_dir / "sd_tiny", threads=1)
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 3, "guidance_scale": 5.0, "seed": 3, "height": 64, "width": 64,
          "output_type": "np"}
    ref = pipe("a cat", **kw).images
    x = np.random.default_rng(0).standard_normal((2, 4, 96, 96)).astype(np.float32)
    ctx = pipe.text_encoder(pipe.tokenizer(["a", "b"]))
    y = pipe.unet(x, 10, ctx)
    arena = pipe.unet._engine.arena_bytes
    assert arena > 0
    rss = _rss_kb()
    pipe.unet.release_memory()
    if rss > 0 and arena > 32 << 20:  # big enough to see in the resident set
        assert _rss_kb() < rss - (arena >> 10) // 2
    # the next call allocates again and computes the same
    np.testing.assert_array_equal(pipe.unet(x, 10, ctx), y)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.release_memory()
        m.release_memory()
    pipe.enable_low_memory()
    assert pipe.low_memory
    np.testing.assert_array_equal(pipe("a cat", **kw).images, ref)
    pipe.enable_low_memory(False)
    np.testing.assert_array_equal(pipe("a cat", **kw).images, ref)
    # one model in memory at a time: unloaded now and after each stage, loaded when used
    pipe.enable_low_memory(unload_models=True)
    assert not any(m.loaded for m in (pipe.text_encoder, pipe.unet, pipe.vae))
    np.testing.assert_array_equal(pipe("a cat", **kw).images, ref)
    assert not any(m.loaded for m in (pipe.text_encoder, pipe.unet, pipe.vae))
    pipe.unet(x, 10, ctx)
    assert pipe.unet.loaded
    pipe.enable_low_memory(False)
    np.testing.assert_array_equal(pipe("a cat", **kw).images, ref)
    assert pipe.unet.loaded and pipe.vae.loaded
    lazy = Pipeline.from_pretrained(golden_dir / "sd_tiny", threads=1, low_memory=True)
    lazy.set_progress_bar_config(disable=True)
    assert lazy.unload_models and not lazy.unet.loaded
    np.testing.assert_array_equal(lazy("a cat", **kw).images, ref)


def test_unloaded_model_whose_file_went_away(golden_dir: Path, tmp_path: Path) -> None:
    """An unloaded component reads its file again when next used: a file gone or damaged in
    between is a clear error, and the component works again once the file is back."""
    import shutil

    from snapfusion.components import UNet

    folder = tmp_path / "unet"
    shutil.copytree(golden_dir / "unet_sd15_small", folder)
    d = np.load(golden_dir / "unet_sd15_small.npz")
    x, t, ctx = d["main__sample"], d["main__timestep"], d["main__encoder_hidden_states"]
    unet = UNet(folder)
    ref = unet(x, t, ctx)
    unet.unload()
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.rename(tmp_path / "away.safetensors")
    with pytest.raises(OSError):
        unet(x, t, ctx)
    assert not unet.loaded
    (tmp_path / "away.safetensors").write_bytes(b"garbage")
    shutil.copy(tmp_path / "away.safetensors", weights)
    with pytest.raises(ValueError):
        unet(x, t, ctx)
    shutil.copy(golden_dir / "unet_sd15_small" / "diffusion_pytorch_model.safetensors", weights)
    np.testing.assert_array_equal(unet(x, t, ctx), ref)
    assert unet.loaded
