"""Tests of snapfusion.distributed on a local Dask cluster (2 worker processes, 1 thread each).

The reference for every image is a direct single-process pipeline call with the same prompt,
seed and engine thread count (1). The cluster's scheduler allows no task failure
(``allowed-failures: 0``), so a worker killed with a shard in flight turns that shard into
a ``KilledWorker`` error that generate_many itself must resubmit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from snapfusion import cli  # noqa: E402
from snapfusion import distributed as sfd  # noqa: E402

PROMPTS = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "cross")]
PROMPTS.append("a grey triangle on a white background")
SEEDS = [1000 + 7 * i for i in range(len(PROMPTS))]
KW = {"num_inference_steps": 3, "guidance_scale": 3.0, "height": 32, "width": 32}


@pytest.fixture(scope="module")
def model(golden_dir: Path) -> Path:
    return golden_dir / "sd_tiny"


@pytest.fixture(scope="module")
def reference(model: Path) -> list[np.ndarray]:
    from snapfusion.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model, threads=1)
    pipe.set_progress_bar_config(disable=True)
    return [np.asarray(pipe(p, seed=s, **KW).images[0]) for p, s in zip(PROMPTS, SEEDS)]


@pytest.fixture(scope="module")
def client():
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None,
                                           silence_logs=logging.CRITICAL)
        c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _collect(stream, on_first=None) -> dict[int, list[np.ndarray]]:
    got: dict[int, list[np.ndarray]] = {}
    for k, (index, image) in enumerate(stream):
        got.setdefault(index, []).append(np.asarray(image))
        if k == 0 and on_first is not None:
            on_first()
    return got


def _assert_exactly_once_and_equal(got: dict[int, list[np.ndarray]], reference) -> None:
    assert sorted(got) == list(range(len(reference)))
    for i, images in got.items():
        assert len(images) == 1, f"index {i} arrived {len(images)} times"
        assert np.array_equal(images[0], reference[i]), f"index {i} differs"


def _busy_worker(client) -> str:
    """A worker with at least one task in flight."""
    for _ in range(200):
        busy = [w for w, keys in client.processing().items() if keys]
        if busy:
            return busy[0]
        import time

        time.sleep(0.01)
    raise AssertionError("no worker has a task in flight")


# --------------------------------------------------------------------- equality
def test_single_process_stream_matches_pipeline(model, reference):
    stream = sfd.generate_many(PROMPTS[:3], model, None, SEEDS[:3], threads=1, **KW)
    _assert_exactly_once_and_equal(_collect(stream), reference[:3])
    assert stream.total == stream.completed == 3


def test_cluster_images_equal_single_process_bit_for_bit(client, model, reference):
    client.wait_for_workers(2)
    stream = sfd.generate_many(PROMPTS, model, client, SEEDS, threads=1, shard_size=2,
                               return_timings=True, **KW)
    got: dict[int, list[np.ndarray]] = {}
    for index, image, timings in stream:
        got.setdefault(index, []).append(np.asarray(image))
        assert len(timings["unet"]) >= KW["num_inference_steps"]
    _assert_exactly_once_and_equal(got, reference)
    assert stream.resubmitted == 0
    # each worker loaded the model once, however many shards it ran
    loads = client.run(sfd.pipeline_loads)
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1


def test_numpy_output_equals_single_process(client, model, reference):
    got = dict(sfd.generate_many(PROMPTS[:4], model, client, SEEDS[:4], threads=1,
                                 output_type="np", **KW))
    for i in range(4):
        assert got[i].dtype == np.float32 and got[i].shape == (32, 32, 3)
        assert np.array_equal((got[i] * 255).round().astype(np.uint8), reference[i])


# --------------------------------------------------------------------- lost workers
def test_killed_worker_mid_run_loses_and_duplicates_nothing(client, model, reference):
    client.wait_for_workers(2)
    stream = sfd.generate_many(PROMPTS, model, client, SEEDS, threads=1, shard_size=1, **KW)
    killed = []

    def kill_one() -> None:
        addr = _busy_worker(client)
        pid = client.run(os.getpid, workers=[addr])[addr]
        os.kill(pid, signal.SIGKILL)
        killed.append(addr)

    got = _collect(stream, kill_one)
    assert killed
    _assert_exactly_once_and_equal(got, reference)
    assert stream.resubmitted >= 1  # the killed worker's shards were submitted again


def test_restarted_worker_mid_run(client, model, reference):
    client.wait_for_workers(2)
    stream = sfd.generate_many(PROMPTS, model, client, SEEDS, threads=1, shard_size=1, **KW)

    def restart_one() -> None:
        addr = _busy_worker(client)
        assert client.restart_workers([addr]) == {addr: "OK"}

    _assert_exactly_once_and_equal(_collect(stream, restart_one), reference)


def test_gives_up_after_max_attempts(client, model):
    client.wait_for_workers(2)
    stream = sfd.generate_many(PROMPTS, model, client, SEEDS, threads=1, shard_size=1,
                               max_attempts=1, **KW)

    def kill_one() -> None:
        addr = _busy_worker(client)
        os.kill(client.run(os.getpid, workers=[addr])[addr], signal.SIGKILL)

    with pytest.raises(RuntimeError, match="lost with its worker"):
        _collect(stream, kill_one)


# --------------------------------------------------------------------- errors
def test_task_errors_propagate_without_resubmission(client, model):
    client.wait_for_workers(2)
    stream = sfd.generate_many(PROMPTS[:2], model, client, threads=1, shard_size=1,
                               num_inference_steps=2, height=33, width=32)
    with pytest.raises(ValueError, match="height must be a multiple"):
        list(stream)
    assert stream.resubmitted == 0


def test_bad_arguments(model, tmp_path):
    with pytest.raises(TypeError, match="non-empty list"):
        sfd.generate_many([], model)
    with pytest.raises(TypeError, match="non-empty list"):
        sfd.generate_many("a prompt", model)
    with pytest.raises(TypeError, match="prompt 1"):
        sfd.generate_many(["a", None], model)
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        sfd.generate_many(["a", "b", "c"], model, seeds=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        sfd.generate_many(["a"], model, seeds=[-1])
    with pytest.raises(TypeError, match="sets seed"):
        sfd.generate_many(["a"], model, seed=3)
    with pytest.raises(OSError, match="no such model"):
        sfd.generate_many(["a"], tmp_path / "missing")
    with pytest.raises(ValueError, match="threads must be positive"):
        sfd.generate_many(["a"], model, threads=0)
    with pytest.raises(TypeError, match="client"):
        sfd.generate_many(["a"], model, client=42)
    with pytest.raises(ValueError, match="output_type"):
        sfd.generate_many(["a"], model, output_type="jpeg")
    spec = sfd.ModelSpec.create(model)
    with pytest.raises(ValueError, match="duplicate job key"):
        sfd.stream_jobs([(spec, sfd.Job(0, "a", 0)), (spec, sfd.Job(0, "b", 1))])


def test_swap_decoder_checks_compatibility(model, tmp_path):
    pipe = sfd.load_pipeline(sfd.ModelSpec.create(model, decoder=model))
    assert pipe.vae.config == json.loads((model / "vae" / "config.json").read_text())
    with pytest.raises(OSError, match="vae"):
        sfd.swap_decoder(pipe, tmp_path)
    bad = tmp_path / "vae"
    bad.mkdir()
    cfg = json.loads((model / "vae" / "config.json").read_text())
    cfg["latent_channels"] = 8
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "diffusion_pytorch_model.safetensors").symlink_to(
        model / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError):
        sfd.swap_decoder(pipe, bad)


# --------------------------------------------------------------------- snapfusion eval --dask
def test_eval_on_dask_equals_single_process(client, model, golden_eval_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:3]))

    def args(out: Path, *extra: str) -> list[str]:
        return ["eval", "--student", str(model), "--teacher", str(model), "--prompts",
                str(prompts), "--steps-student", "2", "--steps-teacher", "3", "--guidance",
                "2,5", "--size", "32x32", "--seeds", "40",
                "--fid-weights", str(golden_eval_dir / "fid_inception" / "model.safetensors.gz"),
                "--fid-dims", "64", "--clip-model", str(golden_eval_dir / "clip_tiny"),
                "-o", str(out), "--threads", "1", "-q", *extra]

    client.wait_for_workers(2)
    assert cli.main(args(tmp_path / "local")) == 0
    assert cli.main(args(tmp_path / "dask", "--dask", client.scheduler.address,
                         "--shard-size", "2")) == 0
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    remote = json.loads((tmp_path / "dask" / "report.json").read_text())
    assert remote["settings"]["dask"] == client.scheduler.address
    files = sorted(p.relative_to(tmp_path / "local")
                   for p in (tmp_path / "local" / "images").rglob("*.png"))
    assert len(files) == 12
    from PIL import Image

    for rel in files:
        a = np.asarray(Image.open(tmp_path / "local" / rel))
        b = np.asarray(Image.open(tmp_path / "dask" / rel))
        assert np.array_equal(a, b), rel
    for name in ("student", "teacher"):
        for a, b in zip(local["results"][name], remote["results"][name]):
            assert a["fid"] == b["fid"] and a["clip_pair_mean"] == b["clip_pair_mean"]
