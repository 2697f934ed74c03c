"""Schedulers: the C engine against diffusers' reference outputs (v0.25.1, the golden files) and
against the diffusers installed in the test environment, plus configuration and misuse errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapfusion import _engine
from snapfusion import schedulers as S

STEPS = [1, 2, 4, 8, 25, 50]
VARIANTS = [
    f"{stem}__{pred}"
    for stem in ("pndm", "ddim", "euler", "euler_karras", "euler_ancestral", "dpmpp_2m",
                 "dpmpp_2m_karras", "lms", "lcm")
    for pred in ("eps", "v")
]
SD15 = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "steps_offset": 1, "set_alpha_to_one": False,
    "clip_sample": False, "skip_prk_steps": True, "trained_betas": None,
    "prediction_type": "epsilon",
}
# Trajectory tolerance, relative to max |x| of the reference at that step. The engine reproduces
# diffusers' float32 arithmetic (teacher-forced steps are mostly bit-exact); what remains is the
# FAKE model's cos (numpy here, torch in the reference) and LMS's numerically integrated
# coefficients.
TRAJ_TOL = 5e-6
STEP_TOL = 3e-7

# diffusers (not the engine) warns about numpy 2 and deprecated options
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore::FutureWarning:diffusers"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:diffusers.*"),
]


def fake_model(x: np.ndarray, t: Any) -> np.ndarray:
    """The reference's FAKE model: 0.3 x + 0.1 cos(float32(t) / 100), all float32."""
    t32 = np.float32(t)
    return (np.float32(0.3) * x + np.float32(0.1) * np.cos(t32 / np.float32(100))).astype(
        np.float32)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def sched_dir(golden_dir: Path) -> Path:
    path = golden_dir / "schedulers"
    if not (path / "index.json").is_file():
        pytest.skip(f"no scheduler reference data in {path}")
    return path


@pytest.fixture(scope="module")
def index(sched_dir: Path) -> dict[str, Any]:
    return json.loads((sched_dir / "index.json").read_text())["variants"]


# ---- against the golden reference (diffusers 0.25.1) ------------------------------------------


def test_golden_training_schedule(sched_dir: Path, index: dict[str, Any]) -> None:
    common = np.load(sched_dir / "common.npz")
    for variant in ("pndm__eps", "euler__v", "dpmpp_2m__eps", "lcm__eps"):
        sch = S.scheduler_from_config(index[variant]["config"])
        # torch.linspace / cumprod of the reference reproduced bit for bit
        np.testing.assert_array_equal(sch.betas, common["betas"])
        np.testing.assert_array_equal(sch.alphas_cumprod, common["alphas_cumprod"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_trajectories(variant: str, sched_dir: Path, index: dict[str, Any]) -> None:
    info = index[variant]
    data = np.load(sched_dir / f"{variant}.npz")
    sch = S.scheduler_from_config(info["config"])
    assert type(sch).__name__ == info["class"]
    worst = 0.0
    for n in STEPS:
        sch.set_timesteps(n)
        ts = sch.timesteps
        want_ts = data[f"n{n}__timesteps"]
        assert ts.dtype == want_ts.dtype, (n, ts.dtype)
        np.testing.assert_array_equal(ts, want_ts, err_msg=f"{variant} n={n}")
        assert len(ts) == info["steps"][str(n)]["num_timesteps"]
        assert np.float32(sch.init_noise_sigma) == data[f"n{n}__init_noise_sigma"]
        if f"n{n}__sigmas" in data.files:
            np.testing.assert_array_equal(sch.sigmas, data[f"n{n}__sigmas"])
        xs = data[f"n{n}__x"]
        noise = data[f"n{n}__noise"] if f"n{n}__noise" in data.files else None
        detail = f"n{n}__x_in" in data.files
        x = data["x_T"] * np.float32(sch.init_noise_sigma)
        assert rel_err(x, xs[0]) == 0.0
        draws = 0
        for i, t in enumerate(ts):
            x_in = sch.scale_model_input(x, t)
            mo = fake_model(x_in, t)
            if detail:
                assert rel_err(x_in, data[f"n{n}__x_in"][i]) < TRAJ_TOL
                assert rel_err(mo, data[f"n{n}__model_output"][i]) < TRAJ_TOL
            kwargs = {}
            if sch.needs_noise:
                kwargs["noise"] = noise[draws]
                draws += 1
            out = sch.step(mo, t, x, **kwargs)
            x = out.prev_sample
            assert x.dtype == np.float32 and x.shape == (1, 4, 8, 8)
            err = rel_err(x, xs[i + 1])
            worst = max(worst, err)
            assert err < TRAJ_TOL, f"{variant} n={n} step {i}: {err:.3g}"
            if detail and f"n{n}__denoised" in data.files:
                assert rel_err(out.denoised, data[f"n{n}__denoised"][i]) < TRAJ_TOL
        if noise is not None:
            assert draws == len(noise)
    print(f"{variant}: max trajectory error {worst:.3g} (relative to max |x|)")


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_single_steps(variant: str, sched_dir: Path, index: dict[str, Any]) -> None:
    """Each step from the reference's own sample and model output lands on the reference's next
    sample (to an ulp or so: the arithmetic is diffusers' own float32 sequence)."""
    data = np.load(sched_dir / f"{variant}.npz")
    sch = S.scheduler_from_config(index[variant]["config"])
    for n in (1, 2, 4, 8):
        sch.set_timesteps(n)
        xs, mos = data[f"n{n}__x"], data[f"n{n}__model_output"]
        noise = data[f"n{n}__noise"] if f"n{n}__noise" in data.files else None
        draws = 0
        for i, t in enumerate(sch.timesteps):
            np.testing.assert_allclose(sch.scale_model_input(xs[i], t), data[f"n{n}__x_in"][i],
                                       rtol=0, atol=STEP_TOL * np.abs(xs[i]).max())
            kwargs = {}
            if sch.needs_noise:
                kwargs["noise"] = noise[draws]
                draws += 1
            out = sch.step(mos[i], t, xs[i], **kwargs).prev_sample
            assert rel_err(out, xs[i + 1]) < STEP_TOL, (n, i)


# ---- against the installed diffusers --------------------------------------------------------


@pytest.fixture(scope="module")
def ref() -> Any:
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    return diffusers


CLASSES = ["PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
           "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "LCMScheduler",
           "LMSDiscreteScheduler"]
KARRAS_FLOAT_T = {"EulerDiscreteScheduler", "LMSDiscreteScheduler"}


def _cases() -> list[tuple[str, dict[str, Any], int]]:
    cases = []
    for cls in CLASSES:
        for spacing in ("leading", "trailing", "linspace"):
            for pred in ("epsilon", "v_prediction"):
                for n in (3, 7, 13):
                    cases.append((cls, {"timestep_spacing": spacing, "prediction_type": pred}, n))
        cases.append((cls, {"beta_schedule": "squaredcos_cap_v2"}, 7))
        cases.append((cls, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 13))
    for cls in ("DDIMScheduler", "LCMScheduler", "PNDMScheduler"):
        for extra in ({"clip_sample": True}, {"set_alpha_to_one": True},
                      {"clip_sample": True, "set_alpha_to_one": True,
                       "prediction_type": "v_prediction", "timestep_spacing": "trailing"}):
            cases.append((cls, extra, 7))
    for cls in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "LMSDiscreteScheduler"):
        for pred in ("epsilon", "v_prediction"):
            for n in (3, 13, 25):
                cases.append((cls, {"use_karras_sigmas": True, "prediction_type": pred}, n))
    for extra in ({"final_sigmas_type": "zero"},
                  {"final_sigmas_type": "zero", "use_karras_sigmas": True},
                  {"solver_order": 3}, {"solver_order": 1}, {"solver_type": "heun"},
                  {"algorithm_type": "dpmsolver"},
                  {"algorithm_type": "dpmsolver", "solver_type": "heun", "solver_order": 3},
                  {"algorithm_type": "sde-dpmsolver++", "final_sigmas_type": "zero"},
                  {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                   "final_sigmas_type": "zero"},
                  {"euler_at_final": True}, {"lower_order_final": False},
                  {"lambda_min_clipped": -5.1}, {"prediction_type": "sample"}):
        for n in (3, 20):
            cases.append(("DPMSolverMultistepScheduler", extra, n))
    cases += [
        ("PNDMScheduler", {"skip_prk_steps": False}, 7),
        ("PNDMScheduler", {"skip_prk_steps": False, "prediction_type": "v_prediction",
                           "timestep_spacing": "linspace"}, 13),
        ("DDIMScheduler", {"prediction_type": "sample", "clip_sample": True}, 7),
        ("EulerDiscreteScheduler", {"prediction_type": "sample"}, 7),
        ("LMSDiscreteScheduler", {"prediction_type": "sample"}, 7),
        ("LCMScheduler", {"prediction_type": "sample", "original_inference_steps": 20}, 7),
        ("LCMScheduler", {"timestep_scaling": 2.5}, 13),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.1,
                                    "sigma_max": 10.0}, 7),
        ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}, 7),
    ]
    for cls in ("DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                "LCMScheduler", "DPMSolverMultistepScheduler"):
        cases.append((cls, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                            "prediction_type": "v_prediction"}, 7))
    return cases


def _case_id(case: tuple[str, dict[str, Any], int]) -> str:
    cls, extra, n = case
    return f"{cls}-{'-'.join(f'{k}={v}' for k, v in extra.items()) or 'default'}-n{n}"


def _run_pair(diffusers: Any, cls: str, extra: dict[str, Any], n: int,
              begin: int | None = None) -> tuple[Any, Any, list[float]]:
    """Run diffusers and ours through the FAKE-model protocol from the same x_T, the stochastic
    ones with the same torch draws; return both schedulers and the per-step errors."""
    import torch

    cfg = {**SD15, **extra}
    if cls == "DPMSolverMultistepScheduler":
        # our default (None) is diffusers 0.25's last sigma; compare the explicit modes
        cfg.setdefault("final_sigmas_type", "sigma_min")
    ours = getattr(S, cls).from_config(cfg)
    theirs = getattr(diffusers, cls).from_config(cfg)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    x_t = np.random.default_rng(n).standard_normal((2, 4, 8, 8)).astype(np.float32)
    ts_ref = theirs.timesteps
    start = 0
    if begin is not None:
        ours.set_begin_index(begin)
        theirs.set_begin_index(begin)
        start = begin
    xr = torch.from_numpy(x_t) * theirs.init_noise_sigma
    xo = x_t * np.float32(ours.init_noise_sigma)
    gen_r, gen_o = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    errs = []
    for i in range(start, len(ts_ref)):
        t_r, t_o = ts_ref[i], ours.timesteps[i]
        mo_r = 0.3 * theirs.scale_model_input(xr, t_r) + 0.1 * torch.cos(
            t_r.to(torch.float32) / 100)
        kw = {"generator": gen_r} if "generator" in theirs.step.__code__.co_varnames else {}
        xr = theirs.step(mo_r, t_r, xr, **kw).prev_sample
        xo = ours.step(fake_model(ours.scale_model_input(xo, t_o), t_o), t_o, xo,
                       generator=gen_o).prev_sample
        errs.append(rel_err(xo, xr.numpy()))
    return ours, theirs, errs


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
def test_against_diffusers(ref: Any, case: tuple[str, dict[str, Any], int]) -> None:
    cls, extra, n = case
    ours, theirs, errs = _run_pair(ref, cls, extra, n)
    ts_ref = theirs.timesteps.numpy()
    ts = ours.timesteps
    assert ts.dtype == ts_ref.dtype
    if extra.get("use_karras_sigmas") and cls in KARRAS_FLOAT_T:
        # diffusers computes the fractional Karras timesteps in float32 under numpy 1.x (the
        # reference, which the engine follows) and in float64 under numpy 2: an ulp or two apart
        np.testing.assert_allclose(ts, ts_ref, rtol=0, atol=2e-4)
    else:
        np.testing.assert_array_equal(ts, ts_ref)
    assert math.isclose(ours.init_noise_sigma, float(theirs.init_noise_sigma), rel_tol=1e-6)
    if ours.sigmas is not None:
        np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    assert max(errs) < 1e-5, [f"{e:.3g}" for e in errs]


def test_training_schedule_matches_diffusers(ref: Any) -> None:
    # betas differ from today's torch by an ulp or two (squared): the engine reproduces torch
    # 1.13's vectorized linspace, the one of the reference
    for sched in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        cfg = {**SD15, "beta_schedule": sched}
        ours = S.DDIMScheduler.from_config(cfg)
        theirs = ref.DDIMScheduler.from_config(cfg)
        np.testing.assert_allclose(ours.betas, theirs.betas.numpy(), rtol=5e-7, atol=0)
        np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(),
                                   rtol=1e-6, atol=0)
    trained = np.linspace(1e-4, 2e-2, 1000).tolist()
    ours = S.EulerDiscreteScheduler(trained_betas=trained)
    theirs = ref.EulerDiscreteScheduler(trained_betas=trained)
    np.testing.assert_array_equal(ours.alphas_cumprod, theirs.alphas_cumprod.numpy())


@pytest.mark.parametrize("cls", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                                 "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
                                 "LCMScheduler"])
def test_begin_index_matches_diffusers(ref: Any, cls: str) -> None:
    """img2img enters the schedule part-way with set_begin_index."""
    _, _, errs = _run_pair(ref, cls, {}, 10 if cls != "LCMScheduler" else 8, begin=4)
    assert max(errs) < 1e-5


def test_pndm_partial_schedule_matches_diffusers(ref: Any) -> None:
    """PNDM in img2img steps a tail of its timesteps; its history restarts at the first one."""
    import torch

    ours = S.PNDMScheduler.from_config(SD15)
    theirs = ref.PNDMScheduler.from_config(SD15)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    xr = torch.from_numpy(x.copy())
    for t in ours.timesteps[3:]:
        tt = torch.tensor(t)
        xr = theirs.step(0.3 * xr + 0.1 * torch.cos(tt.float() / 100), tt, xr).prev_sample
        x = ours.step(fake_model(x, t), t, x).prev_sample
        assert rel_err(x, xr.numpy()) < 1e-5


def test_add_noise_matches_diffusers(ref: Any) -> None:
    import torch

    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    eps = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    for cls in CLASSES:
        ours, theirs = getattr(S, cls).from_config(SD15), getattr(ref, cls).from_config(SD15)
        ours.set_timesteps(10)
        theirs.set_timesteps(10)
        t = theirs.timesteps[[0, 4, 9]]
        got = ours.add_noise(x0, eps, t.numpy())
        want = theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), t).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
        # one timestep for the whole batch
        one = ours.add_noise(x0, eps, t[1].item())
        np.testing.assert_allclose(one[2], ours.add_noise(x0[2:], eps[2:], t[1:2].numpy())[0])


def test_generators(ref: Any) -> None:
    import torch

    x = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)

    def trajectory(generator_factory: Any, cls: str = "EulerAncestralDiscreteScheduler") -> Any:
        sch = getattr(S, cls).from_config(SD15)
        sch.set_timesteps(4)
        gen = generator_factory()
        y = x * np.float32(sch.init_noise_sigma)
        for t in sch.timesteps:
            y = sch.step(fake_model(sch.scale_model_input(y, t), t), t, y, generator=gen)
            y = y.prev_sample
        return y

    a = trajectory(lambda: np.random.default_rng(7))
    np.testing.assert_array_equal(a, trajectory(lambda: np.random.default_rng(7)))
    assert not np.array_equal(a, trajectory(lambda: np.random.default_rng(8)))
    np.testing.assert_array_equal(trajectory(lambda: 11), trajectory(lambda: 11))
    # a list of torch generators draws per batch item, as diffusers' randn_tensor
    gens = lambda: [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]  # noqa
    ours = trajectory(gens, "LCMScheduler")
    theirs = ref.LCMScheduler.from_config(SD15)
    theirs.set_timesteps(4)
    g = gens()
    y = torch.from_numpy(x.copy())
    for t in theirs.timesteps:
        y = theirs.step(0.3 * y + 0.1 * torch.cos(t.float() / 100), t, y, generator=g).prev_sample
    assert rel_err(ours, y.numpy()) < 1e-5
    with pytest.raises(TypeError, match="generator"):
        trajectory(lambda: "seed")
    with pytest.raises(ValueError, match="generators for a batch"):
        trajectory(lambda: [torch.Generator()])


# ---- configuration sources and attributes ---------------------------------------------------


def test_config_sources(tmp_path: Path, golden_dir: Path) -> None:
    cfg = {"_class_name": "DPMSolverMultistepScheduler", **SD15, "lambda_min_clipped": -math.inf,
           "use_karras_sigmas": True, "unknown_key": [1, 2]}
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(cfg))  # writes the bare token -Infinity, as diffusers does
    assert "-Infinity" in path.read_text()
    for src in (cfg, path, str(path), tmp_path):
        sch = S.scheduler_from_config(src)
        assert isinstance(sch, S.DPMSolverMultistepScheduler)
        assert sch.config["use_karras_sigmas"] is True
        assert sch.config.lambda_min_clipped == -math.inf
        assert "unknown_key" not in sch.config
    # the class of from_config wins over _class_name; name= overrides it
    assert isinstance(S.DDIMScheduler.from_config(path), S.DDIMScheduler)
    assert isinstance(S.scheduler_from_config(cfg, name="LCMScheduler"), S.LCMScheduler)
    sch = S.EulerDiscreteScheduler.from_config(cfg, prediction_type="v_prediction")
    assert sch.config.prediction_type == "v_prediction"
    # a pipeline folder (scheduler/scheduler_config.json)
    pipe = golden_dir / "sd_tiny"
    if (pipe / "scheduler" / "scheduler_config.json").is_file():
        sch = S.scheduler_from_config(pipe)
        assert type(sch).__name__ == json.loads(
            (pipe / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        sch2 = type(sch).from_pretrained(pipe, subfolder="scheduler")
        assert sch2.config == sch.config


def test_attributes() -> None:
    sch = S.PNDMScheduler.from_config(SD15)
    assert sch.order == 1 and len(sch) == 1000 and sch.num_train_timesteps == 1000
    assert sch.timesteps is None and sch.num_inference_steps is None and sch.step_index is None
    assert sch.config["skip_prk_steps"] is True and sch.config["_class_name"] == "PNDMScheduler"
    with pytest.raises(TypeError, match="read-only"):
        sch.config["steps_offset"] = 0
    with pytest.raises(AttributeError):
        sch.config.no_such_key
    assert S.PNDMScheduler.from_config(sch.config).config == sch.config
    # defaults of diffusers' constructors
    assert S.DDIMScheduler().config.clip_sample is True
    assert S.EulerDiscreteScheduler().config.timestep_spacing == "linspace"
    assert S.LCMScheduler().config.beta_schedule == "scaled_linear"
    sch.set_timesteps(4)
    assert sch.num_inference_steps == 4 and sch.timesteps.tolist() == [751, 501, 501, 251, 1]
    assert sch.init_noise_sigma == 1.0 and isinstance(sch.init_noise_sigma, float)
    eul = S.EulerDiscreteScheduler.from_config(SD15)
    assert math.isclose(eul.init_noise_sigma, 14.614645, rel_tol=1e-6)  # before set_timesteps
    eul.set_timesteps(3)
    assert eul.timesteps.dtype == np.float32 and eul.sigmas.dtype == np.float32
    x = np.ones((1, 4, 2, 2), np.float32)
    y = eul.scale_model_input(x, eul.timesteps[0])
    assert eul.step_index == 0
    np.testing.assert_allclose(y, x / np.sqrt(eul.sigmas[0] ** 2 + 1), rtol=1e-6)
    assert S.supported_schedulers() == tuple(sorted(CLASSES))
    out = S.DDIMScheduler.from_config(SD15)
    out.set_timesteps(2)
    res = out.step(x, out.timesteps[0], x, return_dict=False)
    assert isinstance(res, tuple) and len(res) == 2  # prev_sample, pred_original_sample


def test_nan_propagates() -> None:
    for cls in CLASSES:
        sch = getattr(S, cls).from_config(SD15)
        sch.set_timesteps(3)
        x = np.zeros((1, 4, 2, 2), np.float32)
        mo = np.full_like(x, 0.5)
        mo[0, 1, 0, 0] = np.nan
        out = sch.step(mo, sch.timesteps[0], x, noise=np.zeros_like(x)).prev_sample
        assert np.isnan(out[0, 1, 0, 0]) and np.isfinite(out[0, 0]).all()


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kwargs, words", [
    ("DDIMScheduler", {"timestep_spacing": "uniform"}, "timestep_spacing"),
    ("EulerDiscreteScheduler", {"prediction_type": "flow_prediction"}, "prediction_type"),
    ("PNDMScheduler", {"beta_schedule": "sigmoid"}, "beta_schedule"),
    ("PNDMScheduler", {"num_train_timesteps": "1000"}, "num_train_timesteps"),
    ("PNDMScheduler", {"num_train_timesteps": 0}, "num_train_timesteps"),
    ("PNDMScheduler", {"prediction_type": "sample"}, "sample"),
    ("DDIMScheduler", {"beta_start": -1.0}, "beta_start"),
    ("DDIMScheduler", {"beta_end": math.nan}, "beta_end"),
    ("DDIMScheduler", {"thresholding": True}, "thresholding"),
    ("DDIMScheduler", {"clip_sample": "yes"}, "clip_sample"),
    ("DDIMScheduler", {"steps_offset": 5000}, "steps_offset"),
    ("DDIMScheduler", {"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}, "interpolation_type"),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous"}, "timestep_type"),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}, "use_exponential_sigmas"),
    ("EulerAncestralDiscreteScheduler", {"prediction_type": "sample"}, "sample"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),
    ("DPMSolverMultistepScheduler", {"solver_order": 5}, "solver_order"),
    ("DPMSolverMultistepScheduler", {"variance_type": "learned_range"}, "variance_type"),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "one"}, "final_sigmas_type"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "zero"},
     "final_sigmas_type"),
    ("LCMScheduler", {"original_inference_steps": 2000}, "original_inference_steps"),
])
def test_bad_configs(cls: str, kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        getattr(S, cls).from_config({**SD15, **kwargs})


def test_bad_config_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not supported.*HeunDiscreteScheduler|Heun"):
        S.scheduler_from_config({"_class_name": "HeunDiscreteScheduler"})
    with pytest.raises(ValueError, match="_class_name"):
        S.scheduler_from_config({"beta_start": 0.001})
    with pytest.raises(OSError):
        S.scheduler_from_config(tmp_path / "missing.json")
    with pytest.raises(OSError, match="scheduler_config.json"):
        S.scheduler_from_config(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"_class_name\": ")
    with pytest.raises(ValueError, match="JSON"):
        S.scheduler_from_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="object"):
        S.scheduler_from_config(bad)
    with pytest.raises(TypeError):
        S.scheduler_from_config(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON"):
        S.DDIMScheduler(beta_start=object())
    # the engine type directly
    with pytest.raises(ValueError, match="JSON error"):
        _engine.Scheduler("{")
    with pytest.raises(ValueError, match="_class_name"):
        _engine.Scheduler("{}")
    with pytest.raises(ValueError, match="lambda_min_clipped"):
        _engine.Scheduler('{"_class_name": "DPMSolverMultistepScheduler", '
                          '"lambda_min_clipped": NaN}')
    with pytest.raises(TypeError):
        _engine.Scheduler(5)  # type: ignore[arg-type]


def test_misuse() -> None:
    x = np.zeros((1, 4, 4, 4), np.float32)
    sch = S.EulerAncestralDiscreteScheduler.from_config(SD15)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sch.step(x, 999.0, x, noise=x)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sch.scale_model_input(x, 999.0)
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="num_inference_steps"):
            sch.set_timesteps(bad)
    for bad in (2.5, True, "4"):
        with pytest.raises(TypeError):
            sch.set_timesteps(bad)  # type: ignore[arg-type]
    sch.set_timesteps(2)
    with pytest.raises(ValueError, match="not one of"):
        sch.step(x, 123.25, x, noise=x)
    t0, t1 = sch.timesteps
    with pytest.raises(ValueError, match="shape"):
        sch.step(x[:, :3], t0, x, noise=x)
    with pytest.raises(ValueError, match="shape"):
        sch.step(x, t0, x, noise=x[0])
    with pytest.raises(TypeError):
        sch.step(x.astype(bool), t0, x, noise=x)
    with pytest.raises(TypeError):
        sch.step(x.astype(np.complex64), t0, x, noise=x)
    with pytest.raises(TypeError):
        sch.step(x, "t", x, noise=x)
    with pytest.raises(ValueError, match="single value"):
        sch.step(x, np.array([t0, t1]), x, noise=x)
    sch.step(x, t0, x, noise=x)
    with pytest.raises(ValueError, match="values"):  # the sample size changed mid-trajectory
        sch.step(x[:, :2], t1, x[:, :2], noise=x[:, :2])
    sch.step(x, t1, x, noise=x)
    with pytest.raises(RuntimeError, match="stepped"):
        sch.step(x, t1, x, noise=x)
    # LCM's step uses the timestep: a wrong one is refused
    lcm = S.LCMScheduler.from_config(SD15)
    lcm.set_timesteps(4)
    lcm.step(x, lcm.timesteps[0], x, noise=x)
    with pytest.raises(ValueError, match="expected"):
        lcm.step(x, lcm.timesteps[3], x, noise=x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        lcm.set_timesteps(60)
    ddim = S.DDIMScheduler.from_config(SD15)
    ddim.set_timesteps(4)
    with pytest.raises(ValueError, match="eta"):
        ddim.step(x, 751, x, eta=0.5)
    # DDIM steps from any timestep of its schedule, as diffusers
    a = ddim.step(x + 1, 501, x).prev_sample
    ddim2 = S.DDIMScheduler.from_config(SD15)
    ddim2.set_timesteps(4)
    ddim2.step(x, 751, x)
    np.testing.assert_array_equal(a, ddim2.step(x + 1, 501, x).prev_sample)
    with pytest.raises(ValueError, match="not an integer"):
        S.PNDMScheduler.from_config(SD15).add_noise(x, x, 1000)
    with pytest.raises(ValueError, match="not one of"):
        sch.add_noise(x, x, 5.0)
    with pytest.raises(ValueError, match="one per batch"):
        ddim.add_noise(x, x, [1, 2])
    with pytest.raises(ValueError, match="shape"):
        ddim.add_noise(x, x[0], 1)
