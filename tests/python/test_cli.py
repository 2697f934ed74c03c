"""The command line: generate, info, selfcheck, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snapfusion import Pipeline
from snapfusion.cli import main


def test_generate_writes_png_with_parameters(golden_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "cat.png"
    rc = main(["generate", "a photo of a cat", "--model", str(golden_dir / "sd_tiny"),
               "-o", str(out), "--steps", "3", "--guidance", "5", "--seed", "7",
               "--size", "48x32", "--threads", "1", "--scheduler", "DDIMScheduler"])
    assert rc == 0
    img = Image.open(out)
    assert img.size == (48, 32)
    params = json.loads(img.text["parameters"])
    assert params["prompt"] == "a photo of a cat" and params["steps"] == 3
    assert params["seed"] == 7 and params["scheduler"] == "DDIMScheduler"
    # the same call through the API gives the same pixels
    pipe = Pipeline.from_pretrained(golden_dir / "sd_tiny", scheduler="DDIMScheduler")
    ref = pipe("a photo of a cat", num_inference_steps=3, guidance_scale=5, seed=7, height=32,
               width=48).images[0]
    np.testing.assert_array_equal(np.asarray(img.convert("RGB")), np.asarray(ref))


def test_info_counts_parameters_and_macs(golden_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["info", str(golden_dir / "sd_tiny"), "--size", "48x32"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "unet" in text and "M parameters" in text
    gmac = float(text.split("GMAC")[0].split(":")[-1])
    # conv_in alone: 16*24 pixels * 4 * 32 * 9 MACs; the whole UNet is far more
    assert gmac * 1e9 > 16 * 24 * 4 * 32 * 9


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "x", "--model", str(tmp_path / "missing")]) == 1
    assert "no such model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "x", "--size", "big"])
    with pytest.raises(SystemExit):
        main(["generate", "x", "--steps", "0"])
    with pytest.raises(SystemExit):
        main(["generate", "x", "--upscale", "0"])


def test_selfcheck_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "snapfusion", "selfcheck", "--threads", "1",
                           "--repeat", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "self-check passed" in proc.stdout
    assert "ResNet block" in proc.stdout and "attention block" in proc.stdout


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_recommended_settings_and_upscale(golden_dir: Path, tmp_path: Path) -> None:
    model = _copy_model(golden_dir / "sd_tiny", tmp_path / "m")
    (model / "snapfusion_model.json").write_text(json.dumps({"num_inference_steps": 3, "guidance_scale": 2.0}))
    pipe = Pipeline.from_pretrained(model, scheduler="DDIMScheduler")
    assert pipe.recommended == {"num_inference_steps": 3, "guidance_scale": 2.0}
    pipe.set_progress_bar_config(disable=True)
    # None takes the recommendation: the same pixels as asking for it explicitly
    a = pipe("a cat", seed=1, height=32, width=32, output_type="np")
    b = pipe("a cat", num_inference_steps=3, guidance_scale=2.0, seed=1, height=32, width=32, output_type="np")
    assert len(a.timings["unet"]) == 3
    np.testing.assert_array_equal(a.images, b.images)
    out = tmp_path / "cat.png"
    assert main(["generate", "a cat", "--model", str(model), "-o", str(out), "--size", "32x32",
                 "--threads", "1", "--scheduler", "DDIMScheduler", "--seed", "1", "--upscale", "3"]) == 0
    img = Image.open(out)
    params = json.loads(img.text["parameters"])
    assert img.size == (96, 96) and params["steps"] == 3 and params["guidance_scale"] == 2.0
    assert params["upscale"] == 3
    small = (b.images[0] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(img.convert("RGB"))[::3, ::3], small)
    # without a recommendation: diffusers' defaults
    plain = Pipeline.from_pretrained(golden_dir / "sd_tiny")
    assert plain.recommended == {}


@pytest.mark.parametrize("content", ["{", "[1]", '{"num_inference_steps": 0}', '{"num_inference_steps": 2.5}',
                                     '{"guidance_scale": "high"}', '{"guidance_scale": NaN}'])
def test_bad_recommended_settings(golden_dir: Path, tmp_path: Path, content: str) -> None:
    model = _copy_model(golden_dir / "sd_tiny", tmp_path / "m")
    (model / "snapfusion_model.json").write_text(content)
    with pytest.raises(ValueError, match="snapfusion_model.json"):
        Pipeline.from_pretrained(model)
