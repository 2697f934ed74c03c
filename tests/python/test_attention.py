"""Tests of the engine's multi-head scaled-dot-product attention against PyTorch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from snapfusion import _engine as engine

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request: pytest.FixtureRequest):
    """Run a test at 1 and 2 engine threads, restoring the thread count afterwards."""
    before = engine.get_num_threads()
    engine.set_num_threads(request.param)
    yield request.param
    engine.set_num_threads(before)


@pytest.fixture(params=["native", "avx2", "generic"])
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the machine's best path, on AVX2 + FMA and on the portable C path.

    SNAPFUSION_ATTENTION_ISA caps the path the engine takes (a machine without AVX2 falls
    back to portable C).
    """
    if request.param == "native":
        monkeypatch.delenv("SNAPFUSION_ATTENTION_ISA", raising=False)
    else:
        monkeypatch.setenv("SNAPFUSION_ATTENTION_ISA", request.param)
    return request.param


def torch_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int,
                    causal: bool = False, scale: float | None = None) -> np.ndarray:
    """PyTorch SDPA on (B, L, H*D) float32 arrays, returned as (B, Lq, H*D) float32."""
    b, lq, width = q.shape
    d = width // heads

    def split(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return t.view(b, x.shape[1], heads, d).transpose(1, 2)

    with torch.no_grad():
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=causal,
                                           scale=scale)
    return o.transpose(1, 2).reshape(b, lq, width).numpy()


def random_qkv(rng: np.random.Generator, b: int, lq: int, lkv: int, width: int,
               amp: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = (amp * rng.standard_normal((b, lq, width))).astype(np.float32)
    k = (amp * rng.standard_normal((b, lkv, width))).astype(np.float32)
    v = rng.standard_normal((b, lkv, width)).astype(np.float32)
    return q, k, v


def assert_close(out: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    err = float(np.max(np.abs(out - ref)))
    assert err <= rel * float(np.max(np.abs(ref))), err


SHAPES = [
    # batch, heads, q_len, kv_len, head_dim
    (1, 1, 1, 1, 8),
    (3, 2, 7, 33, 37),
    (3, 8, 77, 77, 40),
    (2, 8, 130, 77, 40),
    (1, 3, 33, 130, 64),
    (2, 2, 300, 260, 80),
    (1, 2, 64, 64, 160),
    (3, 5, 45, 9, 12),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_torch(shape: tuple[int, int, int, int, int], threads: int, isa: str) -> None:
    b, h, lq, lkv, d = shape
    rng = np.random.default_rng(lq * 1000 + lkv + d)
    q, k, v = random_qkv(rng, b, lq, lkv, h * d)
    assert_close(engine.attention(q, k, v, h), torch_attention(q, k, v, h))


@pytest.mark.parametrize("length", [1, 7, 33, 77, 257])
def test_causal_matches_torch(length: int, threads: int, isa: str) -> None:
    rng = np.random.default_rng(length)
    q, k, v = random_qkv(rng, 3, length, length, 4 * 24)
    out = engine.attention(q, k, v, 4, causal=True)
    assert_close(out, torch_attention(q, k, v, 4, causal=True))
    # The first query sees only the first key.
    np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-6, atol=1e-6)


def test_scale_and_large_scores(threads: int) -> None:
    rng = np.random.default_rng(5)
    q, k, v = random_qkv(rng, 2, 50, 400, 2 * 40, amp=4.0)
    assert_close(engine.attention(q, k, v, 2, scale=0.3),
                 torch_attention(q, k, v, 2, scale=0.3))
    assert_close(engine.attention(q, k, v, 2), torch_attention(q, k, v, 2))


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_thread_count_gives_identical_bits(bf16: bool) -> None:
    rng = np.random.default_rng(6)
    q, k, v = random_qkv(rng, 2, 600, 300, 3 * 40)
    before = engine.get_num_threads()
    try:
        engine.set_num_threads(1)
        one = engine.attention(q, k, v, 3, bf16=bf16)
        engine.set_num_threads(2)
        two = engine.attention(q, k, v, 3, bf16=bf16)
    finally:
        engine.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_non_contiguous_and_integer_inputs() -> None:
    rng = np.random.default_rng(7)
    qkv = rng.standard_normal((2, 40, 3 * 64)).astype(np.float32)
    q, k, v = qkv[..., :64], qkv[..., 64:128], qkv[..., 128:]
    assert_close(engine.attention(q, k, v, 4), torch_attention(q, k, v, 4))
    qi = rng.integers(-3, 4, size=(1, 5, 16))
    out = engine.attention(qi, qi.astype(np.float64), qi.astype(np.int16), 2)
    assert out.dtype == np.float32
    qf = qi.astype(np.float32)
    assert_close(out, torch_attention(qf, qf, qf, 2))


def test_nan_propagates_per_row() -> None:
    rng = np.random.default_rng(8)
    q, k, v = random_qkv(rng, 1, 20, 30, 2 * 16)
    q[0, 4, 3] = np.nan  # head 0 of query 4
    out = engine.attention(q, k, v, 2)
    assert np.isnan(out[0, 4, :16]).all()
    assert np.isfinite(out[0, 4, 16:]).all()
    assert np.isfinite(np.delete(out[0], 4, axis=0)).all()
    k[0, 11, 20] = np.nan  # head 1 of key 11: every query of head 1
    out = engine.attention(q, k, v, 2)
    assert np.isnan(out[0, :, 16:]).all()


def test_runs_in_parallel_python_threads() -> None:
    rng = np.random.default_rng(9)
    q, k, v = random_qkv(rng, 2, 200, 200, 2 * 40)
    expected = engine.attention(q, k, v, 2)
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(engine.attention(q, k, v, 2))

    workers = [threading.Thread(target=work) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(results) == 4
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_mac_counter_counts_attention() -> None:
    rng = np.random.default_rng(11)
    q, k, v = random_qkv(rng, 2, 7, 50, 3 * 16)
    engine.reset_mac_counter()
    engine.attention(q, k, v, 3)
    assert engine.mac_counter() == 2 * 2 * 3 * 7 * 50 * 16
    q, k, v = random_qkv(rng, 1, 9, 9, 2 * 8)
    engine.reset_mac_counter()
    engine.attention(q, k, v, 2, causal=True)
    assert engine.mac_counter() == 2 * 1 * 2 * (9 * 10 // 2) * 8


def test_workspace_size_is_bounded() -> None:
    before = engine.get_num_threads()
    try:
        engine.set_num_threads(2)
        small = engine.attention_workspace_size(2, 8, 4096, 4096, 40)
        assert small == engine.attention_workspace_size(2, 8, 16384, 16384, 40)
        assert small == engine.attention_workspace_size(2, 8, 4096, 10**6, 40)
        # Far below one (q_len x kv_len) float32 score matrix of a single head.
        assert 0 < small < 4 * 4096 * 4096 // 16
        big = engine.attention_workspace_size(2, 8, 4096, 4096, 160)
        assert small < big < 16 << 20
        engine.set_num_threads(1)
        assert engine.attention_workspace_size(2, 8, 4096, 4096, 40) < small
    finally:
        engine.set_num_threads(before)
    with pytest.raises(ValueError, match="head_dim"):
        engine.attention_workspace_size(1, 1, 4, 4, 0)
    with pytest.raises(ValueError):
        engine.attention_workspace_size(1, -1, 4, 4, 8)
    with pytest.raises(TypeError):
        engine.attention_workspace_size(1, 1, 4.0, 4, 8)


def test_bad_inputs() -> None:
    rng = np.random.default_rng(10)
    q, k, v = random_qkv(rng, 2, 5, 6, 16)
    with pytest.raises(ValueError, match=r"\(2, 5, 16\)"):
        engine.attention(q, k[:1], v[:1], 2)  # batch
    with pytest.raises(ValueError, match=r"\(2, 6, 8\)"):
        engine.attention(q, k[..., :8], v[..., :8], 2)  # width
    with pytest.raises(ValueError, match="same length"):
        engine.attention(q, k, v[:, :5], 2)
    with pytest.raises(ValueError, match="causal"):
        engine.attention(q, k, v, 2, causal=True)
    with pytest.raises(ValueError, match="divisible"):
        engine.attention(q, k, v, 3)
    for heads in (0, -2):
        with pytest.raises(ValueError, match="heads"):
            engine.attention(q, k, v, heads)
    for heads in (2.0, True, "2", None):
        with pytest.raises(TypeError):
            engine.attention(q, k, v, heads)
    with pytest.raises(ValueError):
        engine.attention(q[0], k[0], v[0], 2)  # 2-D
    with pytest.raises(ValueError):
        engine.attention(q[:, :0], k, v, 2)  # empty
    with pytest.raises(TypeError):
        engine.attention(q.astype(bool), k, v, 2)
    with pytest.raises(TypeError):
        engine.attention(q, k.astype(np.complex64), v, 2)
    with pytest.raises(TypeError):
        engine.attention("q", k, v, 2)
    for scale in (0.0, float("nan"), float("inf"), 1e300):
        with pytest.raises(ValueError, match="scale"):
            engine.attention(q, k, v, 2, scale=scale)
    with pytest.raises(TypeError):
        engine.attention(q, k, v, 2, scale="0.1")


@pytest.mark.parametrize("shape", [(2, 8, 300, 300, 40), (2, 8, 130, 77, 40), (1, 4, 70, 90, 80),
                                   (1, 2, 33, 40, 160), (2, 3, 5, 1, 7)],
                         ids=lambda s: "x".join(map(str, s)))
def test_bf16_products_match_torch(shape: tuple[int, int, int, int, int], threads: int) -> None:
    """bf16=True (the int8 models' attention: AMX tiles where the CPU has them, float32 paths
    elsewhere) keeps 8 significant bits in scores and probabilities: within 1e-2 of max|ref|
    (measured 2e-3 - 6e-3 on these shapes)."""
    b, h, lq, lkv, d = shape
    rng = np.random.default_rng(lq + lkv + d)
    q, k, v = random_qkv(rng, b, lq, lkv, h * d)
    ref = torch_attention(q, k, v, h)
    assert_close(engine.attention(q, k, v, h, bf16=True), ref, rel=1e-2)
    # scores too large for the norm bound: the exact row maximum is used
    q8, k8 = 8 * q, 8 * k
    ref8 = torch_attention(q8, k8, v, h)
    assert_close(engine.attention(q8, k8, v, h, bf16=True), ref8, rel=0.2)


def test_bf16_causal_and_nan() -> None:
    rng = np.random.default_rng(16)
    q, k, v = random_qkv(rng, 2, 200, 150, 2 * 40)
    # causal attention ignores bf16 (float32 path, exact)
    qc = q[:, :150]
    np.testing.assert_array_equal(engine.attention(qc, k, v, 2, causal=True, bf16=True),
                                  engine.attention(qc, k, v, 2, causal=True))
    q[0, 4, 3] = np.nan
    out = engine.attention(q, k, v, 2, bf16=True)
    assert np.isnan(out[0, 4, :40]).all() and np.isfinite(out[0, 4, 40:]).all()
    assert np.isfinite(np.delete(out[0], 4, axis=0)).all() and np.isfinite(out[1]).all()
