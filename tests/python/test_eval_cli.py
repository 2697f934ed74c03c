"""Tests of ``snapfusion eval`` (snapfusion.eval.report): end to end, resuming, stage swap,
reference images and bad input.

The student and the teacher are both the tiny reference pipeline (golden ``sd_tiny``) at
different step counts; CLIP is the golden ``clip_tiny``; the FID network has random weights
built and saved here (same architecture as the real one). Every metric in the report is
checked against an independent computation on the written PNGs with the metric classes,
and every image against a direct pipeline call with the same prompt and seed.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snapfusion import cli
from snapfusion.eval import report as rep

PROMPTS = ["a red circle above a blue square", "a small green triangle",
           "a yellow cross on a black background", "two orange disks"]
GUIDANCE = [1.5, 4.0]
STEPS = {"student": 2, "teacher": 4}
SIZE = 32
FID_DIMS = 64


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """FID Inception weights with random values (conv N(0, 2/fan_in), BN near identity)."""
    import torch
    from safetensors.torch import save_file

    from snapfusion.eval._inception_net import FIDInceptionNet

    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FIDInceptionNet().state_dict().items()
                  if not k.endswith("num_batches_tracked")}
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("conv.weight"):
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif name.endswith("bn.weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bn.bias") or name.endswith("running_mean"):
            t = 0.05 * torch.randn(shape, generator=g)
        elif name.endswith("running_var"):
            t = torch.ones(shape)
        else:
            raise AssertionError(f"unexpected tensor {name}")
        tensors[name] = t.contiguous()
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def paths(golden_dir: Path, golden_eval_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("eval")
    prompts = root / "prompts.txt"
    prompts.write_text("# evaluation prompts\n" + "\n".join(PROMPTS) + "\n\n")
    return {"sd_tiny": golden_dir / "sd_tiny", "clip": golden_eval_dir / "clip_tiny",
            "fid": write_random_inception(root / "fid_random.safetensors"),
            "prompts": prompts, "root": root}


def eval_args(paths: dict, out: Path, *extra: str, student: Path | None = None) -> list[str]:
    return ["eval", "--student", str(student or paths["sd_tiny"]),
            "--teacher", str(paths["sd_tiny"]), "--prompts", str(paths["prompts"]),
            "--steps-student", str(STEPS["student"]), "--steps-teacher", str(STEPS["teacher"]),
            "--guidance", ",".join(f"{g:g}" for g in GUIDANCE), "--size", f"{SIZE}x{SIZE}",
            "--fid-weights", str(paths["fid"]), "--fid-dims", str(FID_DIMS),
            "--clip-model", str(paths["clip"]), "-o", str(out), "--threads", "1", "-q", *extra]


def run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def set_images(out: Path, model: str, g: float, n: int) -> list[np.ndarray]:
    return [png_array(out / "images" / model / f"g{g:g}" / f"{i:05d}.png") for i in range(n)]


@pytest.fixture(scope="module")
def tiny_pipe(paths: dict):
    from snapfusion.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(paths["sd_tiny"], threads=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def first_run(paths: dict, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "report"
    code = cli.main(eval_args(paths, out))
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


# ------------------------------------------------------------------------ end to end
def test_report_layout_and_images_match_direct_pipeline_calls(first_run, tiny_pipe):
    out, report = first_run
    assert report["format"] == rep.REPORT_FORMAT
    assert report["reference"] == {"kind": "teacher", "guidance": 1.5, "n": len(PROMPTS)}
    assert report["settings"]["seeds"] == list(range(len(PROMPTS)))
    assert report["generation"]["generated"] == 2 * len(GUIDANCE) * len(PROMPTS)
    assert json.loads((out / "prompts.json").read_text()) == PROMPTS
    for model in ("student", "teacher"):
        assert [r["guidance"] for r in report["results"][model]] == GUIDANCE
        assert report["models"][model]["steps"] == STEPS[model]
        for g in GUIDANCE:
            for i, (prompt, img) in enumerate(zip(PROMPTS, set_images(out, model, g,
                                                                     len(PROMPTS)))):
                direct = tiny_pipe(prompt, seed=i, num_inference_steps=STEPS[model],
                                   guidance_scale=g, height=SIZE, width=SIZE).images[0]
                assert img.shape == (SIZE, SIZE, 3)
                assert np.array_equal(img, np.asarray(direct)), (model, g, i)
    # the two step counts make different images
    assert not np.array_equal(set_images(out, "student", 4.0, 1)[0],
                              set_images(out, "teacher", 4.0, 1)[0])


def test_fid_and_clip_match_independent_computation(first_run, paths):
    from snapfusion.eval import CLIPScore, FIDInception, fid

    out, report = first_run
    model = FIDInception.from_pretrained(paths["fid"])
    clip = CLIPScore.from_pretrained(paths["clip"])
    reference = set_images(out, "teacher", GUIDANCE[0], len(PROMPTS))
    for name in ("student", "teacher"):
        for row in report["results"][name]:
            images = set_images(out, name, row["guidance"], len(PROMPTS))
            if name == "teacher" and row["guidance"] == GUIDANCE[0]:
                assert row["fid_reference_set"] and row["fid"] == 0.0
            else:
                expected = fid(images, reference, model=model, dims=FID_DIMS)
                assert not row["fid_reference_set"]
                assert row["fid"] > 0
                assert row["fid"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
            scores = clip.pair_scores(images, PROMPTS, layout="HWC")
            assert row["clip_pair_mean"] == pytest.approx(float(np.mean(scores)), abs=1e-4)
            assert row["clip_score"] == pytest.approx(
                clip.score(images, PROMPTS, layout="HWC"), abs=1e-4)
            assert row["accuracy"] is None  # these prompts are not all world captions


def test_latency_breakdown_follows_the_pipeline_timings(first_run, tiny_pipe):
    out, report = first_run
    for name in ("student", "teacher"):
        calls = len(tiny_pipe("x", seed=0, num_inference_steps=STEPS[name], guidance_scale=2.0,
                              height=SIZE, width=SIZE).timings["unet"])
        lat = report["latency"][name]
        assert lat["images"] == len(GUIDANCE) * len(PROMPTS)
        assert lat["unet_steps"] == calls
        for key in ("text_encoder_ms", "unet_step_ms", "unet_ms", "decoder_ms", "total_ms"):
            assert lat[key] > 0, key
        # the timings stored in each PNG are what the report aggregates
        per_image = [json.loads(Image.open(out / "images" / name / f"g{g:g}" /
                                           f"{i:05d}.png").text[rep.PNG_KEY])["timings"]
                     for g in GUIDANCE for i in range(len(PROMPTS))]
        assert lat == rep.latency_breakdown(per_image)
        for t in per_image:
            assert len(t["unet"]) == calls
            assert t["total"] >= sum(t["unet"]) + t["decoder"] + t["text_encoder"]
    # (no comparison of the two models' times: a test must not depend on the machine's load)
    assert report["latency"]["teacher"]["unet_steps"] > report["latency"]["student"]["unet_steps"]


def test_plots_are_png_images(first_run):
    out, report = first_run
    assert set(report["plots"]) == {"fid_vs_clip", "latency"}
    for rel in report["plots"].values():
        with Image.open(out / rel) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_cli_prints_summary(paths, tmp_path, capsys, first_run):
    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    code, stdout, _ = run_cli(capsys, eval_args(paths, out))
    assert code == 0
    assert "FID against teacher images at guidance 1.5" in stdout
    assert "0 images generated, 16 reused" in stdout
    assert "student:" in stdout and "UNet" in stdout


# ------------------------------------------------------------------------ resuming
def test_resume_skips_complete_images_and_redoes_broken_ones(paths, first_run, tmp_path):
    out = tmp_path / "resume"
    shutil.copytree(first_run[0], out)
    folder = out / "images" / "student" / "g4"
    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    pixels = {p.name: png_array(p) for p in folder.glob("*.png")}
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}

    assert cli.main(eval_args(paths, out)) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["generation"] == {"generated": 0, "reused": 16, "resubmitted_shards": 0}
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    for name in ("student", "teacher"):
        for a, b in zip(again["results"][name], first_run[1]["results"][name]):
            assert a["fid"] == b["fid"] and a["clip_pair_mean"] == b["clip_pair_mean"]
            assert a["latency"] == b["latency"]

    # a half-written image (truncated), a missing one and a stray temporary file
    data = before["00001.png"]
    (folder / "00001.png").write_bytes(data[: len(data) // 2])
    (folder / "00002.png").unlink()
    (folder / ".00003.png.999.deadbeef.tmp").write_bytes(b"partial")
    assert cli.main(eval_args(paths, out)) == 0
    third = json.loads((out / "report.json").read_text())
    assert third["generation"]["generated"] == 2 and third["generation"]["reused"] == 14
    row = third["results"]["student"][1]
    assert (row["generated"], row["reused"]) == (2, 2)
    assert not list(folder.glob(".*.tmp"))
    # regenerated deterministically (pixels equal; the PNG text holds the new timings)
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(pixels)
    for p in folder.glob("*.png"):
        assert np.array_equal(png_array(p), pixels[p.name])

    # changed settings make the affected images stale: only the student is redone
    args = eval_args(paths, out)
    args[args.index("--steps-student") + 1] = "3"
    assert cli.main(args) == 0
    fourth = json.loads((out / "report.json").read_text())
    assert fourth["generation"]["generated"] == 8 and fourth["generation"]["reused"] == 8
    assert [r["generated"] for r in fourth["results"]["student"]] == [4, 4]


def test_png_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "00000.png"

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half")  # a partial file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        rep._write_png(target, np.zeros((8, 8, 3), np.uint8), {"seed": 0})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ stage swap, reference
@pytest.fixture(scope="module")
def student_other_decoder(paths: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sd_tiny with a different VAE decoder (conv_out scaled), same UNet and text encoder."""
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("student") / "model"
    shutil.copytree(paths["sd_tiny"], root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    wfile = root / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(wfile))
    tensors["decoder.conv_out.weight"] = tensors["decoder.conv_out.weight"] * np.float32(0.5)
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + np.float32(0.3)
    save_file(tensors, str(wfile))
    return root


def test_swap_decoder_reference_images_and_world_accuracy(paths, student_other_decoder,
                                                          tiny_pipe, tmp_path, capsys):
    from snapfusion.data import accuracy, draw_scenes, eval_prompts
    from snapfusion.pipeline import Pipeline

    prompts, _ = eval_prompts(3, seed=5)
    pfile = tmp_path / "world.json"
    pfile.write_text(json.dumps(prompts))
    _, ref_scenes = eval_prompts(5, seed=9)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for i, im in enumerate(draw_scenes(ref_scenes, size=64)):
        Image.fromarray(im).save(ref_dir / f"r{i}.png")
    out = tmp_path / "swap"
    args = eval_args(paths, out, "--swap-decoder", "teacher", "--reference-images",
                     str(ref_dir), "--guidance", "3", student=student_other_decoder)
    args[args.index("--prompts") + 1] = str(pfile)
    code, stdout, _ = run_cli(capsys, args)
    assert code == 0
    assert "FID against 5 reference images" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["kind"] == "images" and report["reference"]["n"] == 5
    assert report["models"]["student"]["decoder"] == str(paths["sd_tiny"].absolute())
    assert report["models"]["teacher"]["decoder"] is None
    assert report["settings"]["accuracy"] is True

    student = set_images(out, "student", 3.0, 3)
    for i, (p, img) in enumerate(zip(prompts, student)):
        # student UNet + teacher decoder == sd_tiny (identical UNet) at the student's steps
        direct = tiny_pipe(p, seed=i, num_inference_steps=STEPS["student"], guidance_scale=3.0,
                           height=SIZE, width=SIZE).images[0]
        assert np.array_equal(img, np.asarray(direct))
    own = Pipeline.from_pretrained(student_other_decoder, threads=1)
    own.set_progress_bar_config(disable=True)
    own_img = own(prompts[0], seed=0, num_inference_steps=STEPS["student"], guidance_scale=3.0,
                  height=SIZE, width=SIZE).images[0]
    assert not np.array_equal(np.asarray(own_img), student[0])  # the swap changed something

    for name in ("student", "teacher"):
        row = report["results"][name][0]
        assert row["fid"] > 0 and not row["fid_reference_set"]
        expected = accuracy(np.stack(set_images(out, name, 3.0, 3)), prompts)
        assert row["accuracy"].keys() == expected.keys()
        for k, v in expected.items():
            assert (math.isnan(v) and math.isnan(row["accuracy"][k])) or row["accuracy"][k] == v


# ------------------------------------------------------------------------ bad input
def _no_images(out: Path) -> bool:
    return not out.exists() or not list(out.rglob("*.png"))


def test_empty_prompt_file(paths, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n   \n")
    args = eval_args(paths, tmp_path / "o")
    args[args.index("--prompts") + 1] = str(empty)
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "prompt file is empty" in err
    assert _no_images(tmp_path / "o")


def test_missing_clip_tokenizer(paths, tmp_path, capsys):
    broken = tmp_path / "clip"
    shutil.copytree(paths["clip"], broken)
    (broken / "vocab.json").unlink()
    (broken / "merges.txt").unlink()
    args = eval_args(paths, tmp_path / "o")
    args[args.index("--clip-model") + 1] = str(broken)
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "tokenizer" in err and "vocab.json" in err
    assert _no_images(tmp_path / "o")


def test_fid_weights_with_wrong_tensors(paths, tmp_path, capsys):
    from safetensors.numpy import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32),
               "fc.weight": np.zeros((3, 3), np.float32)}, str(bad))
    args = eval_args(paths, tmp_path / "o")
    args[args.index("--fid-weights") + 1] = str(bad)
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "missing tensor" in err and str(bad) in err
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    args[args.index("--fid-weights") + 1] = str(garbage)
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "safetensors" in err
    assert _no_images(tmp_path / "o")


def test_reference_images_with_wrong_dtype(paths, tmp_path, capsys):
    ref = tmp_path / "ref"
    ref.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ref / "a.png")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(ref / "b.png")  # 16-bit grey
    args = eval_args(paths, tmp_path / "o", "--reference-images", str(ref))
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "b.png" in err and "8 bits" in err
    (ref / "b.png").unlink()
    code, _, err = run_cli(capsys, args)
    assert code == 1 and "at least 2 reference images" in err
    assert _no_images(tmp_path / "o")


@pytest.mark.parametrize("change, message", [
    (("--teacher", "/nonexistent/model"), "no such model"),
    (("--n", "1"), "at least 2 images"),
    (("--seeds", "1,2"), "2 seeds for 4 images"),
    (("--seeds", "x"), "seeds must look like"),
])
def test_bad_arguments_exit_1(paths, tmp_path, capsys, change, message):
    args = eval_args(paths, tmp_path / "o")
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    code, _, err = run_cli(capsys, args)
    assert code == 1 and message in err and err.startswith("snapfusion eval: error:")
    assert _no_images(tmp_path / "o")


def test_bad_guidance_is_a_usage_error(paths, tmp_path, capsys):
    args = eval_args(paths, tmp_path / "o")
    args[args.index("--guidance") + 1] = "1.5,nan"
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    assert "guidance scale" in capsys.readouterr().err


# ------------------------------------------------------------------------ API
def test_api_rejects_bad_inputs(paths, tmp_path):
    base = dict(teacher=paths["sd_tiny"], student=paths["sd_tiny"], fid_weights=paths["fid"],
                clip_model=paths["clip"], output=tmp_path / "o", n=2)
    with pytest.raises(ValueError, match="no prompts"):
        rep.run_evaluation(rep.EvalSettings(prompts=[], **base))
    with pytest.raises(TypeError, match="prompt 1"):
        rep.run_evaluation(rep.EvalSettings(prompts=["a", 3], **base))
    with pytest.raises(ValueError, match="swap_decoder"):
        rep.run_evaluation(rep.EvalSettings(prompts=["a", "b"], swap_decoder="vae", **base))
    with pytest.raises(ValueError, match="fid_dims"):
        rep.run_evaluation(rep.EvalSettings(prompts=["a", "b"], fid_dims=100, **base))
    with pytest.raises(TypeError, match="uint8"):
        rep.check_images(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rep.check_images([np.zeros((8, 8), np.uint8)])
    with pytest.raises(TypeError, match="numpy array or PIL"):
        rep.check_images(["a.png"])
    assert len(rep.check_images([Image.new("L", (4, 4)), np.zeros((4, 4, 3), np.uint8)])) == 2
    bad_json = tmp_path / "p.json"
    bad_json.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list of strings"):
        rep.load_prompts(bad_json)
    with pytest.raises(OSError):
        rep.load_prompts(tmp_path / "missing.txt")


def test_parse_helpers():
    assert rep.parse_seeds(None, 3) == [0, 1, 2]
    assert rep.parse_seeds("7", 3) == [7, 8, 9]
    assert rep.parse_seeds(5, 2) == [5, 6]
    assert rep.parse_seeds("4,0,9", 3) == [4, 0, 9]
    assert rep.parse_seeds("10-12", 3) == [10, 11, 12]
    with pytest.raises(ValueError, match="3 seeds for 2"):
        rep.parse_seeds("10-12", 2)
    with pytest.raises(ValueError):
        rep.parse_seeds("-3", 1)
    assert rep.parse_guidance("1.5, 3,7.5") == [1.5, 3.0, 7.5]
    for bad in ("", "0", "1,1", "inf", "a"):
        with pytest.raises(ValueError):
            rep.parse_guidance(bad)


def test_latency_breakdown_medians():
    rows = [{"tokenize": 0.001, "text_encoder": 0.010, "unet": [0.1, 0.2], "scheduler": 0.002,
             "decoder": 0.05, "total": 1.0},
            {"tokenize": 0.003, "text_encoder": 0.030, "unet": [0.3, 0.4], "scheduler": 0.004,
             "decoder": 0.07, "total": 1.2},
            {"tokenize": 0.002, "text_encoder": 0.020, "unet": [0.5, 0.6], "scheduler": 0.003,
             "decoder": 0.06, "total": 1.1}]
    lat = rep.latency_breakdown(rows)
    assert lat["images"] == 3 and lat["unet_steps"] == 2
    assert lat["text_encoder_ms"] == pytest.approx(20.0)
    assert lat["unet_step_ms"] == pytest.approx(350.0)  # median of the six steps
    assert lat["unet_ms"] == pytest.approx(700.0)  # median of 0.3, 0.7, 1.1
    assert lat["decoder_ms"] == pytest.approx(60.0)
    assert lat["total_ms"] == pytest.approx(1100.0)
    assert lat["other_ms"] == pytest.approx(1100.0 - 2 - 20 - 700 - 3 - 60)
    assert rep.latency_breakdown([]) == {"images": 0}
