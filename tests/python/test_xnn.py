"""Tests of the engine's convolution and fully connected layers against PyTorch.

Both back ends are covered: the default one (the engine's own GEMM on CPUs with AVX-512F,
XNNPACK elsewhere) and XNNPACK forced with SNAPFUSION_GEMM=xnnpack.  Tolerance: max abs error
<= 1e-4 * max |reference|.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from snapfusion import _engine  # noqa: E402

REL = 1e-4
torch.set_num_threads(1)


@pytest.fixture(params=["auto", "xnnpack"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Selects the back end for the layers created in a test (read at creation)."""
    if request.param == "xnnpack":
        monkeypatch.setenv("SNAPFUSION_GEMM", "xnnpack")
    else:
        monkeypatch.delenv("SNAPFUSION_GEMM", raising=False)
    return request.param


@pytest.fixture(params=[1, 2])
def threads(request: pytest.FixtureRequest):
    """Runs a test with the engine's pool at 1 and 2 threads, restoring the count after."""
    before = _engine.get_num_threads()
    _engine.set_num_threads(request.param)
    yield request.param
    _engine.set_num_threads(before)


def torch_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride, padding,
               groups: int) -> np.ndarray:
    """PyTorch reference on NHWC input: (B, H, W, C) -> (B, OH, OW, O)."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    if isinstance(padding, tuple) and len(padding) == 4:
        top, left, bottom, right = padding
        xt = F.pad(xt, (left, right, top, bottom))
        padding = 0
    bt = None if b is None else torch.from_numpy(b)
    y = F.conv2d(xt, torch.from_numpy(w), bt, stride=stride, padding=padding, groups=groups)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def assert_close(y: np.ndarray, ref: np.ndarray) -> None:
    assert y.shape == ref.shape
    assert y.dtype == np.float32
    err = float(np.max(np.abs(y.astype(np.float64) - ref)))
    assert err <= REL * float(np.max(np.abs(ref))), err


CONV_CASES = [
    # (batch, h, w, in, out, k, stride, padding, groups, bias)
    (3, 7, 9, 3, 5, 3, 1, 1, 1, True),
    (1, 9, 8, 5, 13, 3, 2, (0, 0, 1, 1), 1, True),  # VAE encoder downsample
    (2, 6, 11, 13, 40, 1, 1, 0, 1, False),
    (1, 10, 7, 13, 37, 3, 2, (1, 2, 0, 1), 1, True),
    (3, 12, 10, 70, 45, 3, 1, (1, 1), 1, True),     # reduction over two blocks
    (1, 8, 6, 64, 384, 3, 1, 1, 1, True),           # several XNNPACK slices
    (1, 9, 9, 33, 50, 1, (2, 1), 0, 1, True),
    (3, 5, 7, 5, 5, 3, 1, 1, 5, True),              # depthwise
    (2, 8, 6, 8, 12, 3, (2, 1), (1, 0), 2, False),  # grouped
    (1, 16, 16, 32, 64, 3, 1, 1, 1, True),
    (3, 9, 8, 16, 40, 3, 2, (0, 0, 1, 1), 1, True),  # downsample, 32+ outputs
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv2d_matches_torch(case, backend: str, threads: int) -> None:
    batch, h, w, cin, cout, k, stride, padding, groups, has_bias = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.standard_normal((batch, h, w, cin), dtype=np.float32)
    wt = rng.standard_normal((cout, cin // groups, k, k), dtype=np.float32)
    b = rng.standard_normal(cout, dtype=np.float32) if has_bias else None
    ref = torch_conv(x, wt, b, stride, padding, groups)
    conv = _engine.Conv2d(wt, b, stride=stride, padding=padding, groups=groups)
    assert_close(conv(x), ref)
    assert_close(conv(x), ref)  # the same object again
    assert_close(_engine.conv2d(x, wt, b, stride=stride, padding=padding, groups=groups), ref)
    if batch > 1:  # another shape on the same object
        assert_close(conv(x[1:2]), ref[1:2])


# Dense 3x3 stride-1 layers: Winograd F(2x2, 3x3) on the own GEMM (SNAPFUSION_WINOGRAD unset:
# where the size heuristic picks it; "force": always; "0": the direct convolution).
WINOGRAD_CASES = [
    # (batch, h, w, in, out, padding (top, left, bottom, right), bias)
    (3, 7, 9, 33, 40, (1, 1, 1, 1), True),    # odd sizes: partial tiles at both edges
    (1, 1, 1, 35, 32, (1, 1, 1, 1), True),    # 1x1 image
    (2, 2, 3, 20, 48, (1, 1, 1, 1), False),   # 2x3 image, 20 input channels
    (1, 5, 4, 17, 33, (0, 0, 0, 0), True),    # no padding
    (2, 9, 6, 40, 36, (0, 2, 1, 0), True),    # asymmetric padding
    (1, 8, 7, 48, 64, (2, 1, 0, 2), False),   # padding 2
    (2, 17, 15, 64, 96, (1, 1, 1, 1), True),
    (1, 13, 11, 600, 45, (1, 1, 1, 1), True),  # reduction over two GEMM blocks
    (1, 40, 40, 40, 72, (1, 1, 1, 1), True),  # several chunks of tiles at 2 threads
]


@pytest.fixture(params=["0", "auto", "force"])
def winograd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sets SNAPFUSION_WINOGRAD for the layers created in a test (read at creation)."""
    if request.param == "auto":
        monkeypatch.delenv("SNAPFUSION_WINOGRAD", raising=False)
    else:
        monkeypatch.setenv("SNAPFUSION_WINOGRAD", request.param)
    return request.param


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[str(i) for i in range(len(WINOGRAD_CASES))])
def test_conv2d_winograd_matches_torch(case, winograd: str, threads: int) -> None:
    batch, h, w, cin, cout, padding, has_bias = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.standard_normal((batch, h, w, cin), dtype=np.float32)
    wt = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32)
    b = rng.standard_normal(cout, dtype=np.float32) if has_bias else None
    ref = torch_conv(x, wt, b, 1, padding, 1)
    conv = _engine.Conv2d(wt, b, padding=padding)
    y = conv(x)
    assert_close(y, ref)
    assert np.array_equal(conv(x), y)  # deterministic
    if batch > 1:  # one image alone gives the same bits as in the batch
        assert np.array_equal(conv(x[1:2]), y[1:2])


def test_conv2d_winograd_nan_and_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    wt = rng.standard_normal((40, 24, 3, 3), dtype=np.float32)
    x = rng.standard_normal((2, 9, 10, 24), dtype=np.float32)
    # NaN at a corner, an edge and inside, in both images
    x[0, 0, 0, 3] = x[0, 4, 9, 0] = x[1, 5, 4, 23] = x[1, 8, 9, 7] = np.nan
    ref = torch_conv(x, wt, None, 1, 1, 1)
    ys = {}
    for mode in ["0", "force"]:
        monkeypatch.setenv("SNAPFUSION_WINOGRAD", mode)
        ys[mode] = y = _engine.Conv2d(wt, padding=1)(x)
        assert np.array_equal(np.isnan(y), np.isnan(ref))
        ok = ~np.isnan(ref)
        assert np.max(np.abs(y[ok] - ref[ok])) <= REL * np.max(np.abs(ref[ok]))
    if _engine.cpu_features()["avx512f"]:  # the own GEMM: Winograd rounds differently
        assert not np.array_equal(ys["0"], ys["force"], equal_nan=True)


def test_layers_count_multiply_accumulates() -> None:
    conv = _engine.Conv2d(np.ones((40, 6, 3, 3), np.float32), stride=2, padding=1, groups=2)
    lin = _engine.Linear(np.ones((33, 24), np.float32))
    _engine.reset_mac_counter()
    conv(np.ones((3, 9, 8, 12), np.float32))  # output (3, 5, 4, 40)
    assert _engine.mac_counter() == 3 * 5 * 4 * 40 * 6 * 9
    lin(np.ones((2, 5, 24), np.float32))
    assert _engine.mac_counter() == 3 * 5 * 4 * 40 * 6 * 9 + 10 * 24 * 33


def test_conv2d_attributes_and_padding_forms() -> None:
    rng = np.random.default_rng(1)
    wt = rng.standard_normal((6, 4, 3, 2), dtype=np.float32)
    x = rng.standard_normal((1, 7, 6, 4), dtype=np.float32)
    conv = _engine.Conv2d(wt, stride=(2, 1), padding=(1, 0, 2, 1))
    assert conv.in_channels == 4 and conv.out_channels == 6
    assert conv.kernel_size == (3, 2)
    assert conv.stride == (2, 1)
    assert conv.padding == (1, 0, 2, 1)
    assert conv.groups == 1
    assert "Conv2d(in_channels=4" in repr(conv)
    assert_close(conv(x), torch_conv(x, wt, None, (2, 1), (1, 0, 2, 1), 1))
    assert _engine.Conv2d(wt, padding=2).padding == (2, 2, 2, 2)
    assert _engine.Conv2d(wt, padding=(1, 3)).padding == (1, 3, 1, 3)
    assert _engine.Conv2d(wt, padding=[1, 3]).padding == (1, 3, 1, 3)
    assert _engine.Conv2d(wt, stride=np.int64(2)).stride == (2, 2)
    for pad in [0, 1, (2, 1), (0, 1, 0, 1), (2, 0, 1, 3)]:
        assert_close(_engine.conv2d(x, wt, padding=pad), torch_conv(x, wt, None, 1, pad, 1))


def test_conv2d_input_conversions() -> None:
    rng = np.random.default_rng(2)
    wt = rng.standard_normal((8, 3, 3, 3), dtype=np.float32)
    x = rng.standard_normal((2, 6, 5, 3))
    ref = torch_conv(x.astype(np.float32), wt, None, 1, 1, 1)
    conv = _engine.Conv2d(wt.astype(np.float64), padding=1)
    assert_close(conv(x), ref)  # float64 input is cast
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert not xt.flags.c_contiguous
    assert_close(conv(xt), ref)  # non-contiguous input is copied
    xi = np.arange(2 * 6 * 5 * 3, dtype=np.int32).reshape(2, 6, 5, 3) % 7
    assert_close(conv(xi), torch_conv(xi.astype(np.float32), wt, None, 1, 1, 1))


def test_conv2d_nan_propagates(backend: str) -> None:
    rng = np.random.default_rng(3)
    wt = rng.standard_normal((32, 16, 3, 3), dtype=np.float32)
    x = rng.standard_normal((1, 8, 8, 16), dtype=np.float32)
    x[0, 0, 0, 3] = np.nan
    y = _engine.Conv2d(wt, padding=1)(x)
    ref = torch_conv(x, wt, None, 1, 1, 1)
    assert np.array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y).sum() == 4 * 32
    ok = ~np.isnan(ref)
    assert np.max(np.abs(y[ok] - ref[ok])) <= REL * np.max(np.abs(ref[ok]))


def test_conv2d_bad_inputs() -> None:
    wt = np.ones((4, 3, 3, 3), np.float32)
    conv = _engine.Conv2d(wt)
    with pytest.raises(ValueError, match=r"\(1, 5, 5, 2\).*3"):
        conv(np.ones((1, 5, 5, 2), np.float32))  # wrong channel count
    with pytest.raises(ValueError, match="dimensions"):
        conv(np.ones((5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="kernel 3x3 larger"):
        conv(np.ones((1, 2, 5, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        conv(np.ones((0, 5, 5, 3), np.float32))
    with pytest.raises(TypeError):
        conv(np.ones((1, 5, 5, 3), np.complex64))
    with pytest.raises(TypeError):
        conv("not an array")
    with pytest.raises(TypeError):
        _engine.Conv2d("weights")
    with pytest.raises(ValueError, match="dimensions"):
        _engine.Conv2d(np.ones((4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"bias has shape \(3,\)"):
        _engine.Conv2d(wt, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="stride"):
        _engine.Conv2d(wt, stride=0)
    with pytest.raises(ValueError, match="stride"):
        _engine.Conv2d(wt, stride=(1, 2, 3))
    with pytest.raises(TypeError, match="stride"):
        _engine.Conv2d(wt, stride=1.5)
    with pytest.raises(ValueError, match="padding"):
        _engine.Conv2d(wt, padding=-1)
    with pytest.raises(ValueError, match="padding"):
        _engine.Conv2d(wt, padding=(1, 1, 1))
    with pytest.raises(ValueError, match="padding"):
        _engine.Conv2d(wt, padding=10**12)
    with pytest.raises(TypeError, match="padding"):
        _engine.Conv2d(wt, padding="same")
    with pytest.raises(ValueError, match="groups"):
        _engine.Conv2d(wt, groups=3)  # 4 outputs not a multiple of 3
    with pytest.raises(ValueError, match="groups"):
        _engine.Conv2d(wt, groups=0)
    with pytest.raises(ValueError, match="groups"):
        _engine.Conv2d(np.ones((3, 3, 1, 1), np.float32), groups=2)  # 3 outputs
    with pytest.raises(TypeError, match="weight"):
        _engine.Conv2d(np.ones((4, 3, 3, 3), np.complex64))


LINEAR_CASES = [
    # (leading shape, in, out, bias)
    ((1,), 3, 5, True),
    ((5,), 13, 13, False),
    ((3, 77), 40, 64, True),
    ((2, 3, 7), 70, 37, True),
    ((2,), 640, 1280, True),
    ((130,), 16, 16, False),
    ((), 24, 33, True),
]


@pytest.mark.parametrize("case", LINEAR_CASES, ids=[str(i) for i in range(len(LINEAR_CASES))])
def test_linear_matches_torch(case, backend: str, threads: int) -> None:
    lead, fin, fout, has_bias = case
    rng = np.random.default_rng(len(lead) * 1000 + fin)
    x = rng.standard_normal((*lead, fin), dtype=np.float32)
    wt = rng.standard_normal((fout, fin), dtype=np.float32)
    b = rng.standard_normal(fout, dtype=np.float32) if has_bias else None
    ref = F.linear(torch.from_numpy(x), torch.from_numpy(wt),
                   None if b is None else torch.from_numpy(b)).numpy()
    lin = _engine.Linear(wt, b)
    assert lin.in_features == fin and lin.out_features == fout
    assert_close(lin(x), ref)
    assert_close(lin(x), ref)
    assert_close(_engine.linear(x, wt, b), ref)


def test_linear_bad_inputs() -> None:
    lin = _engine.Linear(np.ones((4, 3), np.float32))
    assert repr(lin) == "Linear(in_features=3, out_features=4)"
    with pytest.raises(ValueError, match=r"\(2, 5\).*3"):
        lin(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError):
        lin(np.float32(1.0))
    with pytest.raises(TypeError):
        lin(np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="dimensions"):
        _engine.Linear(np.ones((4, 3, 1), np.float32))
    with pytest.raises(ValueError, match="bias"):
        _engine.Linear(np.ones((4, 3), np.float32), np.ones(3, np.float32))
    with pytest.raises(TypeError):
        _engine.Linear(None)
    with pytest.raises(TypeError):
        _engine.linear(np.ones((2, 3)), np.ones((4, 3)), bias="b")


def test_concurrent_use_of_one_layer_raises() -> None:
    """A layer running in one thread refuses a second caller instead of racing."""
    rng = np.random.default_rng(4)
    wt = rng.standard_normal((256, 256, 3, 3), dtype=np.float32)
    conv = _engine.Conv2d(wt, padding=1)
    big = rng.standard_normal((1, 48, 48, 256), dtype=np.float32)
    small = big[:, :4, :4]
    started = threading.Event()
    done = threading.Event()
    results: list[np.ndarray] = []

    def worker() -> None:
        try:
            started.set()
            while len(results) < 3:
                try:
                    results.append(conv(big))
                except RuntimeError:  # the main thread's call was running
                    pass
        finally:
            done.set()

    th = threading.Thread(target=worker)
    th.start()
    started.wait()
    refused = 0
    while not done.is_set():
        try:
            conv(small)
        except RuntimeError as exc:
            assert "already running" in str(exc)
            refused += 1
        time.sleep(0.001)
    th.join()
    assert refused > 0
    assert len(results) == 3
    assert np.array_equal(results[0], results[2])
    # distinct layers run in parallel threads without restriction
    wl = rng.standard_normal((64, 96), dtype=np.float32)
    xl = rng.standard_normal((300, 96), dtype=np.float32)
    layers = [_engine.Linear(wl) for _ in range(4)]
    out: list[np.ndarray | None] = [None] * 4

    def run_layer(i: int) -> None:
        for _ in range(20):
            out[i] = layers[i](xl)

    pool = [threading.Thread(target=run_layer, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for y in out:
        assert y is not None and np.array_equal(y, out[0])


def test_layers_do_not_leak_references() -> None:
    import sys

    wt = np.ones((4, 3, 3, 3), np.float32)
    x = np.ones((1, 5, 5, 3), np.float32)
    before_w, before_x = sys.getrefcount(wt), sys.getrefcount(x)
    for _ in range(20):
        conv = _engine.Conv2d(wt, padding=1)
        conv(x)
        _engine.conv2d(x, wt)
        del conv
        with pytest.raises(ValueError):
            _engine.conv2d(x[..., :2], wt)
    assert sys.getrefcount(wt) == before_w
    assert sys.getrefcount(x) == before_x
