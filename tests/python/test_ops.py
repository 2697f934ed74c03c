"""Tests of the engine's own kernels (norms, activations, softmax, elementwise, embeddings).

Each op is compared with PyTorch (CPU) or diffusers on random inputs of odd shapes, with the
engine's pool at 1 and 2 threads. Tolerance: max abs error <= 1e-4 * max |reference|.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from snapfusion import _engine  # noqa: E402

REL = 1e-4
torch.set_num_threads(1)


@pytest.fixture(params=[1, 2])
def threads(request: pytest.FixtureRequest):
    """Runs a test with the engine's pool at 1 and 2 threads, restoring the count after."""
    before = _engine.get_num_threads()
    _engine.set_num_threads(request.param)
    yield request.param
    _engine.set_num_threads(before)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_close(out: np.ndarray, ref: np.ndarray | torch.Tensor, rel: float = REL) -> None:
    """Same shape, float32, and max |out - ref| <= rel * max |ref|."""
    if isinstance(ref, torch.Tensor):
        ref = ref.detach().numpy()
    assert out.dtype == np.float32
    assert out.shape == ref.shape, (out.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
    assert err <= rel * scale, f"max abs err {err:.3g} > {rel:g} * {scale:.3g}"


def nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# group norm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,groups",
    [((3, 5, 7, 24), 6), ((1, 9, 4, 40), 8), ((2, 3, 3, 17), 1), ((1, 32, 24, 96), 32),
     ((2, 1, 1, 12), 12)],
)
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_nhwc(threads: int, shape: tuple[int, ...], groups: int, silu: bool) -> None:
    r = rng(1)
    x = (r.standard_normal(shape) * 3 + 1).astype(np.float32)
    c = shape[-1]
    gamma = r.standard_normal(c).astype(np.float32)
    beta = r.standard_normal(c).astype(np.float32)
    ref = F.group_norm(nhwc_to_nchw(x), groups, torch.from_numpy(gamma), torch.from_numpy(beta),
                       1e-5)
    if silu:
        ref = F.silu(ref)
    ref = ref.permute(0, 2, 3, 1)
    assert_close(_engine.group_norm(x, groups, gamma, beta, eps=1e-5, silu=silu), ref)


def test_group_norm_blc_and_defaults(threads: int) -> None:
    r = rng(2)
    x = r.standard_normal((3, 77, 20)).astype(np.float32)
    ref = F.group_norm(torch.from_numpy(x).permute(0, 2, 1), 4, eps=1e-6).permute(0, 2, 1)
    assert_close(_engine.group_norm(x, 4, eps=1e-6), ref)
    # gamma only, beta only
    g = r.standard_normal(20).astype(np.float32)
    ref = F.group_norm(torch.from_numpy(x).permute(0, 2, 1), 5, torch.from_numpy(g))
    assert_close(_engine.group_norm(x, 5, gamma=g), ref.permute(0, 2, 1))
    ref = F.group_norm(torch.from_numpy(x).permute(0, 2, 1), 5, None, torch.from_numpy(g))
    assert_close(_engine.group_norm(x, 5, beta=g), ref.permute(0, 2, 1))


def test_group_norm_large_mean() -> None:
    r = rng(3)
    x = (1e4 + r.standard_normal((2, 16, 16, 32))).astype(np.float32)
    x64 = x.astype(np.float64).reshape(2, -1, 8, 4)  # groups of 4 channels
    mean = x64.mean(axis=(1, 3), keepdims=True)
    var = x64.var(axis=(1, 3), keepdims=True)
    ref = ((x64 - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    assert_close(_engine.group_norm(x, 8), ref, rel=1e-5)


def test_group_norm_thread_count_invariant() -> None:
    x = rng(4).standard_normal((2, 40, 30, 64)).astype(np.float32)
    before = _engine.get_num_threads()
    try:
        _engine.set_num_threads(1)
        a = _engine.group_norm(x, 32, silu=True)
        _engine.set_num_threads(2)
        b = _engine.group_norm(x, 32, silu=True)
    finally:
        _engine.set_num_threads(before)
    np.testing.assert_array_equal(a, b)


def test_group_norm_nan_stays_in_its_group() -> None:
    x = rng(5).standard_normal((2, 4, 4, 8)).astype(np.float32)
    x[0, 1, 2, 5] = np.nan  # batch 0, group 2 (channels 4-5)
    y = _engine.group_norm(x, 4, silu=True)
    assert np.isnan(y[0, :, :, 4:6]).all()
    assert not np.isnan(y[0, :, :, :4]).any() and not np.isnan(y[0, :, :, 6:]).any()
    assert not np.isnan(y[1]).any()


def test_group_norm_bad_arguments() -> None:
    x = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match="groups"):
        _engine.group_norm(x, 3)
    with pytest.raises(ValueError, match="groups"):
        _engine.group_norm(x, 0)
    with pytest.raises(ValueError, match="groups"):
        _engine.group_norm(x, -2)
    with pytest.raises(ValueError, match="eps"):
        _engine.group_norm(x, 2, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        _engine.group_norm(x, 2, eps=-1e-5)
    with pytest.raises(ValueError, match="eps"):
        _engine.group_norm(x, 2, eps=float("nan"))
    with pytest.raises(ValueError, match=r"gamma.*\(7,\).*\(8,\)"):
        _engine.group_norm(x, 2, gamma=np.ones(7))
    with pytest.raises(ValueError, match="beta"):
        _engine.group_norm(x, 2, beta=np.ones((8, 1)))
    with pytest.raises(ValueError, match=r"\(4, 8\)"):
        _engine.group_norm(np.zeros((4, 8)), 2)
    with pytest.raises(ValueError, match="empty"):
        _engine.group_norm(np.zeros((1, 0, 4, 8)), 2)
    with pytest.raises(TypeError):
        _engine.group_norm(x, 2.0)
    with pytest.raises(TypeError):
        _engine.group_norm(x, "2")
    with pytest.raises(TypeError):
        _engine.group_norm(x.astype(np.complex64), 2)
    with pytest.raises(TypeError):
        _engine.group_norm(np.array([["a"]], dtype=object), 1)
    with pytest.raises(TypeError):
        _engine.group_norm(x, 2, eps="small")


def test_group_norm_accepts_other_dtypes_and_layouts() -> None:
    r = rng(6)
    x64 = r.standard_normal((2, 6, 5, 12))
    ref = _engine.group_norm(x64.astype(np.float32), 3)
    assert_close(_engine.group_norm(x64, 3), ref, rel=1e-6)
    # non-contiguous (a transposed view) is copied
    xt = np.ascontiguousarray(x64.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not xt.flags.c_contiguous
    assert_close(_engine.group_norm(xt, 3), ref, rel=1e-6)
    xi = (x64 * 10).astype(np.int32)
    ref_i = _engine.group_norm(xi.astype(np.float32), 3)
    np.testing.assert_array_equal(_engine.group_norm(xi, 3), ref_i)


# ---------------------------------------------------------------------------------------------
# layer norm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 77, 33), (3, 2, 4, 20), (4, 1030, 64)])
def test_layer_norm(threads: int, shape: tuple[int, ...]) -> None:
    r = rng(7)
    x = (r.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    d = shape[-1]
    g = r.standard_normal(d).astype(np.float32)
    b = r.standard_normal(d).astype(np.float32)
    ref = F.layer_norm(torch.from_numpy(x), (d,), torch.from_numpy(g), torch.from_numpy(b), 1e-5)
    assert_close(_engine.layer_norm(x, g, b), ref)
    ref = F.layer_norm(torch.from_numpy(x), (d,), eps=1e-6)
    assert_close(_engine.layer_norm(x, eps=1e-6), ref)


def test_layer_norm_large_mean_and_nan() -> None:
    x = (3e4 + rng(8).standard_normal((5, 50))).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    assert_close(_engine.layer_norm(x), ref, rel=1e-5)
    x[2, 7] = np.nan
    y = _engine.layer_norm(x)
    assert np.isnan(y[2]).all() and not np.isnan(np.delete(y, 2, axis=0)).any()


def test_layer_norm_bad_arguments() -> None:
    x = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"gamma.*\(9,\)"):
        _engine.layer_norm(x, np.ones(9))
    with pytest.raises(ValueError, match="eps"):
        _engine.layer_norm(x, eps=0)
    with pytest.raises(ValueError, match="scalar"):
        _engine.layer_norm(np.float32(3.0))
    with pytest.raises(ValueError, match="empty"):
        _engine.layer_norm(np.zeros((3, 0)))
    with pytest.raises(TypeError):
        _engine.layer_norm(x.astype(bool))


# ---------------------------------------------------------------------------------------------
# activations, GEGLU, softmax
# ---------------------------------------------------------------------------------------------

ACTIVATIONS = {
    "silu": (lambda x: _engine.silu(x), F.silu),
    "gelu": (lambda x: _engine.gelu(x), F.gelu),
    "gelu_tanh": (lambda x: _engine.gelu(x, approximate="tanh"),
                  lambda t: F.gelu(t, approximate="tanh")),
    "quick_gelu": (lambda x: _engine.quick_gelu(x), lambda t: t * torch.sigmoid(1.702 * t)),
    "sigmoid": (lambda x: _engine.sigmoid(x), torch.sigmoid),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(1,), (17,), (3, 5, 7), (2, 33, 41, 5), (300007,)])
def test_activations(threads: int, name: str, shape: tuple[int, ...]) -> None:
    ours, theirs = ACTIVATIONS[name]
    x = (rng(9).standard_normal(shape) * 4).astype(np.float32)
    assert_close(ours(x), theirs(torch.from_numpy(x)))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activations_special_values(name: str) -> None:
    ours, theirs = ACTIVATIONS[name]
    x = np.array([np.nan, 0.0, -0.0, 30.0, -30.0, 88.0, -88.0, 1e-30], np.float32)
    y = ours(x)
    assert np.isnan(y[0])
    assert_close(y[1:], theirs(torch.from_numpy(x[1:])), rel=1e-6)
    # a scalar (0-d) works and keeps its shape
    y0 = ours(np.float32(0.5))
    assert y0.shape == () and abs(float(y0) - float(theirs(torch.tensor(0.5)))) < 1e-6


def test_activation_bad_arguments() -> None:
    with pytest.raises(ValueError, match="approximate"):
        _engine.gelu(np.ones(3), approximate="erf")
    with pytest.raises(TypeError):
        _engine.gelu(np.ones(3), approximate=1)
    with pytest.raises(TypeError):
        _engine.silu(np.ones(3, dtype=np.complex128))
    with pytest.raises(TypeError):
        _engine.sigmoid(None)
    with pytest.raises(ValueError, match="empty"):
        _engine.silu(np.zeros((2, 0)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(2,), (3, 10), (2, 77, 74), (1, 256, 640)])
def test_geglu(threads: int, approximate: str, shape: tuple[int, ...]) -> None:
    x = (rng(10).standard_normal(shape) * 2).astype(np.float32)
    t = torch.from_numpy(x)
    hidden, gate = t.chunk(2, dim=-1)
    ref = hidden * F.gelu(gate, approximate=approximate)
    assert_close(_engine.geglu(x, approximate=approximate), ref)


def test_geglu_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"even.*\(2, 5\)"):
        _engine.geglu(np.ones((2, 5)))
    with pytest.raises(ValueError, match="approximate"):
        _engine.geglu(np.ones((2, 4)), approximate="fast")
    with pytest.raises(ValueError, match="scalar"):
        _engine.geglu(np.float32(1))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 77), (2, 5, 16), (8, 4096), (2, 3, 1000)])
def test_softmax(threads: int, shape: tuple[int, ...]) -> None:
    x = (rng(11).standard_normal(shape) * 8 + 3).astype(np.float32)
    assert_close(_engine.softmax(x), torch.softmax(torch.from_numpy(x), dim=-1))


def test_softmax_masks_and_nan() -> None:
    x = rng(12).standard_normal((4, 19)).astype(np.float32)
    x[0, 3] = -np.inf
    x[1, 5] = np.nan
    x[2, :] = -np.inf
    y = _engine.softmax(x)
    ref = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
    assert y[0, 3] == 0.0
    assert np.isnan(y[1]).all() and np.isnan(ref[1]).all()
    assert np.isnan(y[2]).all() and np.isnan(ref[2]).all()
    assert_close(y[[0, 3]], ref[[0, 3]])


# ---------------------------------------------------------------------------------------------
# upsampling, elementwise, concat
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 3), (2, 16, 9, 40), (1, 32, 32, 64)])
def test_upsample_nearest2x(threads: int, shape: tuple[int, ...]) -> None:
    x = rng(13).standard_normal(shape).astype(np.float32)
    ref = F.interpolate(nhwc_to_nchw(x), scale_factor=2.0, mode="nearest").permute(0, 2, 3, 1)
    np.testing.assert_array_equal(_engine.upsample_nearest2x(x), ref.numpy())


def test_upsample_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        _engine.upsample_nearest2x(np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="empty"):
        _engine.upsample_nearest2x(np.ones((1, 0, 4, 3)))


@pytest.mark.parametrize("shape", [(1,), (3, 5, 7), (2, 64, 33, 20)])
def test_add_axpby(threads: int, shape: tuple[int, ...]) -> None:
    r = rng(14)
    a = r.standard_normal(shape).astype(np.float32)
    b = r.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_engine.add(a, b), a + b)
    ref = 0.5 * torch.from_numpy(a) - 1.25 * torch.from_numpy(b)
    assert_close(_engine.axpby(0.5, a, -1.25, b), ref, rel=1e-6)
    assert_close(_engine.axpby(alpha=2, a=a, beta=0, b=b), 2 * a, rel=1e-7)


def test_elementwise_bad_arguments() -> None:
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        _engine.add(a, np.ones((3, 2)))
    with pytest.raises(ValueError, match="same shape"):
        _engine.axpby(1.0, a, 1.0, np.ones(6))
    with pytest.raises(TypeError):
        _engine.axpby("1", a, 1.0, a)
    with pytest.raises(TypeError):
        _engine.add(a, a.astype(bool))


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 35, 7), (2, 5, 3, 11), (2, 64, 64, 32)])
def test_add_rows(threads: int, shape: tuple[int, ...]) -> None:
    r = rng(15)
    x = r.standard_normal(shape).astype(np.float32)
    v = r.standard_normal((shape[0], shape[-1])).astype(np.float32)
    vb = v.reshape((shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],))
    np.testing.assert_array_equal(_engine.add_rows(x, v), x + vb)


def test_add_rows_bad_arguments() -> None:
    x = np.ones((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"v must be \(B, C\) = \(2, 3\).*\(2, 4\)"):
        _engine.add_rows(x, np.ones((2, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        _engine.add_rows(x, np.ones(3))
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        _engine.add_rows(np.ones((5, 3)), np.ones((5, 3)))


@pytest.mark.parametrize("sa,sb", [((3, 1), (3, 2)), ((2, 5, 7, 3), (2, 5, 7, 13)),
                                   ((1, 32, 32, 320), (1, 32, 32, 640)), ((4,), (9,))])
def test_concat_channels(threads: int, sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    r = rng(16)
    a = r.standard_normal(sa).astype(np.float32)
    b = r.standard_normal(sb).astype(np.float32)
    np.testing.assert_array_equal(_engine.concat_channels(a, b), np.concatenate([a, b], -1))


def test_concat_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 4, 4\)"):
        _engine.concat_channels(np.ones((2, 3, 4)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="last dimension"):
        _engine.concat_channels(np.ones((2, 3)), np.ones((2, 3, 1)))


# ---------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ids_shape", [(), (1,), (7,), (2, 77)])
def test_embedding(ids_shape: tuple[int, ...]) -> None:
    r = rng(17)
    table = r.standard_normal((49, 13)).astype(np.float32)
    ids = r.integers(0, 49, size=ids_shape)
    ref = F.embedding(torch.as_tensor(ids), torch.from_numpy(table)).numpy()
    out = _engine.embedding(table, ids)
    assert out.shape == tuple(ids_shape) + (13,)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(_engine.embedding(table, ids.astype(np.int32)), ref)
    np.testing.assert_array_equal(_engine.embedding(table, ids.astype(np.uint16)), ref)


def test_embedding_bad_ids() -> None:
    table = np.ones((10, 4), np.float32)
    with pytest.raises(ValueError, match=r"id 10 at position 2"):
        _engine.embedding(table, np.array([0, 9, 10, 1]))
    with pytest.raises(ValueError, match=r"id -1 at position 0"):
        _engine.embedding(table, np.array([-1, 3]))
    with pytest.raises(ValueError, match=r"id 12 at position 3"):  # flat position
        _engine.embedding(table, np.array([[0, 1], [2, 12]]))
    with pytest.raises(TypeError):
        _engine.embedding(table, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="dimensions"):
        _engine.embedding(np.ones(10), np.array([1]))
    with pytest.raises(ValueError, match="empty"):
        _engine.embedding(table, np.zeros(0, np.int64))


@pytest.mark.parametrize(
    "dim,flip,shift,scale,max_period",
    [(320, True, 0.0, 1.0, 10000), (320, False, 1.0, 1.0, 10000), (33, False, 1.0, 2.0, 100),
     (1, True, 1.0, 1.0, 10000), (7, True, 0.5, 1.0, 10000), (256, True, 1.0, 3.0, 10000)],
)
def test_timestep_embedding(dim: int, flip: bool, shift: float, scale: float,
                            max_period: int) -> None:
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0.0, 1.0, 37.5, 500.0, 999.0], np.float32)
    ref = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip,
                                 downscale_freq_shift=shift, scale=scale, max_period=max_period)
    out = _engine.timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift,
                                     scale=scale, max_period=max_period)
    assert_close(out, ref)
    if dim % 2:
        assert (out[:, -1] == 0).all()
    # a scalar timestep gives one row
    one = _engine.timestep_embedding(999, dim, flip, shift, scale, max_period)
    assert one.shape == (1, dim)
    np.testing.assert_array_equal(one[0], out[-1])


def test_timestep_embedding_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dim"):
        _engine.timestep_embedding(np.ones(3), 0)
    with pytest.raises(ValueError, match="dim"):
        _engine.timestep_embedding(np.ones(3), -4)
    with pytest.raises(ValueError, match="downscale_freq_shift"):
        _engine.timestep_embedding(np.ones(3), 2, downscale_freq_shift=1.0)
    with pytest.raises(ValueError, match="max_period"):
        _engine.timestep_embedding(np.ones(3), 8, max_period=0)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        _engine.timestep_embedding(np.ones((2, 3)), 8)
    with pytest.raises(TypeError):
        _engine.timestep_embedding(np.ones(3), 8.0)
    y = _engine.timestep_embedding(np.array([np.nan, 1.0]), 8)
    assert np.isnan(y[0]).all() and not np.isnan(y[1]).any()


def test_docstrings_name_shapes() -> None:
    for name in ("group_norm", "layer_norm", "geglu", "softmax", "upsample_nearest2x",
                 "add_rows", "concat_channels", "embedding", "timestep_embedding"):
        doc = getattr(_engine, name).__doc__
        assert doc and name in doc and "(" in doc
