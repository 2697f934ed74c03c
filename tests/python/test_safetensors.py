"""Tests of snapfusion._engine.SafeTensors, the strict zero-copy safetensors reader.

Reference files are written by the ``safetensors`` package (numpy and torch front ends); the
hostile files are built byte by byte here.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import random
import struct
import sys
import tracemalloc
from typing import Any

import numpy as np
import pytest

from snapfusion._engine import SafeTensors

st_numpy = pytest.importorskip("safetensors.numpy")

LINUX = sys.platform.startswith("linux")


# ---- helpers ---------------------------------------------------------------------------------


def build(header: dict[str, Any] | str | bytes, data: bytes = b"", *,
          length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, header, data section.

    Args:
        header: the header as a dict (dumped to JSON), JSON text, or raw bytes.
        data: the data section.
        length: header length written in the prefix (default: the real length).

    Returns:
        The file's bytes.
    """
    if isinstance(header, dict):
        raw = json.dumps(header).encode()
    elif isinstance(header, str):
        raw = header.encode("utf-8")
    else:
        raw = header
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data


def entry(dtype: str = "F32", shape: list[Any] | None = None,
          offsets: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One tensor entry of a header (defaults: F32 (2,) at [0, 8])."""
    e: dict[str, Any] = {"dtype": dtype, "shape": [2] if shape is None else shape,
                         "data_offsets": [0, 8] if offsets is None else offsets}
    e.update(extra)
    return e


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def count_maps(path: str | None = None) -> int:
    """Number of memory mappings of this process (of `path` only if given)."""
    with open("/proc/self/maps") as f:
        lines = f.readlines()
    if path is None:
        return len(lines)
    return sum(1 for line in lines if line.rstrip().endswith(path))


@pytest.fixture()
def np_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """A file written by safetensors.numpy with every supported numpy dtype."""
    rng = np.random.default_rng(0)
    f16 = rng.standard_normal((7, 3)).astype(np.float16)
    f16.flat[:6] = [np.inf, -np.inf, np.nan, 6.0e-8, -0.0, 65504.0]
    tensors = {
        "unet.conv_in.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "unet.conv_in.bias": np.array([np.nan, np.inf, -1e-45, 3.4e38], dtype=np.float32),
        "half": f16,
        "int8": np.arange(-128, 128, dtype=np.int8).reshape(16, 16),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty_f32": np.zeros((0, 5), dtype=np.float32),
        "empty_i8": np.zeros((3, 0), dtype=np.int8),
        "one": np.array([7], dtype=np.int8),
        "\u00e9t\u00e9": np.ones((2,), dtype=np.float16),
        "Z_upper": np.ones((1, 1, 1, 1, 1, 1, 1, 2), dtype=np.float32),
    }
    path = tmp_path / "np.safetensors"
    st_numpy.save_file(tensors, str(path), metadata={"format": "np", "note": "caf\u00e9 \u4e2d"})
    return path, tensors


# ---- reading files written by the safetensors package -----------------------------------------


def test_numpy_roundtrip(np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, tensors = np_file
    with SafeTensors(path) as st:
        assert len(st) == len(tensors)
        assert st.keys() == sorted(tensors)
        assert list(st) == sorted(tensors)
        assert st.metadata == {"format": "np", "note": "caf\u00e9 \u4e2d"}
        for name, ref in tensors.items():
            assert name in st
            got = st[name]
            assert got.dtype == ref.dtype and got.shape == ref.shape, name
            np.testing.assert_array_equal(got, ref)
            # bit-exact, NaNs and signed zeros included
            assert got.tobytes() == ref.tobytes(), name
            want_name = {np.float32: "F32", np.float16: "F16", np.int8: "I8"}[ref.dtype.type]
            assert st.info(name) == (want_name, ref.shape)
            f32 = st.get(name, dtype="float32")
            assert f32.dtype == np.float32 and f32.shape == ref.shape
            np.testing.assert_array_equal(f32, ref.astype(np.float32))
        assert st["scalar"].ndim == 0 and float(st["scalar"]) == 3.5
        assert st["empty_f32"].size == 0


def test_torch_bf16_and_others(tmp_path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    bf = torch.randn(5, 7, generator=g).to(torch.bfloat16)
    bf.view(-1)[:5] = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-40, -0.0])
    tensors = {
        "bf16": bf,
        "bf16_scalar": torch.tensor(-2.5, dtype=torch.bfloat16),
        "bf16_empty": torch.zeros(0, 3, dtype=torch.bfloat16),
        "f16": torch.randn(3, 4, generator=g).half(),
        "f32": torch.randn(2, 2, 2, generator=g),
        "i8": torch.randint(-128, 127, (9,), generator=g, dtype=torch.int8),
    }
    path = tmp_path / "torch.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"format": "pt"})
    with SafeTensors(str(path)) as st:
        assert st.metadata == {"format": "pt"}
        for name, ref in tensors.items():
            got = st[name]
            assert got.shape == tuple(ref.shape)
            if ref.dtype == torch.bfloat16:
                # numpy has no bfloat16: BF16 comes back as an exact float32 copy
                assert got.dtype == np.float32
                want = ref.float().numpy()
                assert got.tobytes() == want.tobytes(), name
                assert st.info(name) == ("BF16", tuple(ref.shape))
                assert not got.flags.writeable
            else:
                np.testing.assert_array_equal(got, ref.numpy())
                assert got.dtype == ref.numpy().dtype
            np.testing.assert_array_equal(st.get(name, np.float32), ref.float().numpy())


def test_pathlike_str_bytes(np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, tensors = np_file
    for p in (path, str(path), os.fsencode(path)):
        st = SafeTensors(p)
        assert len(st) == len(tensors)
        assert repr(st).startswith("<SafeTensors ") and "tensors)>" in repr(st)
        st.close()
    st = SafeTensors(path=path)
    st.close()
    with pytest.raises(TypeError):
        SafeTensors(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="null"):
        SafeTensors(str(path) + "\0x")


# ---- zero-copy views, alignment, conversion ---------------------------------------------------


def test_views_are_zero_copy_and_read_only(
        np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, tensors = np_file
    st = SafeTensors(path)
    a = st["unet.conv_in.weight"]
    b = st["unet.conv_in.weight"]
    assert np.shares_memory(a, b)  # both views of the same mapping
    assert not a.flags.owndata and not a.flags.writeable and a.flags.c_contiguous
    assert type(a.base).__name__ == "_SafeTensorsStorage"
    with pytest.raises(ValueError):
        a[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        a.flags.writeable = True  # the mapping is read-only
    h = st["half"]
    i8 = st["int8"]
    st.close()
    # views handed out before close() stay valid
    np.testing.assert_array_equal(a, tensors["unet.conv_in.weight"])
    del st
    gc.collect()
    np.testing.assert_array_equal(h, tensors["half"])
    np.testing.assert_array_equal(i8, tensors["int8"])


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_mapping_released_with_last_view(
        np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, _ = np_file
    real = os.path.realpath(path)
    st = SafeTensors(path)
    view = st["int8"]
    copy = st.get("int8", "float32")
    assert count_maps(real) >= 1
    st.close()
    assert count_maps(real) >= 1  # the view keeps the mapping alive
    del view
    gc.collect()
    assert count_maps(real) == 0  # converted copies do not reference the mapping
    assert copy.shape == (16, 16)
    st = SafeTensors(path)
    del st  # no close(): dropping the object unmaps too
    gc.collect()
    assert count_maps(real) == 0


def test_misaligned_data_is_copied(tmp_path: pathlib.Path) -> None:
    # data section starts at a multiple of 8 (the file is mapped page-aligned); the F32 and F16
    # tensors start at odd offsets inside it
    f32 = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    f16 = np.array([0.5, -1.0], dtype=np.float16)
    bf16 = np.array([0x3F80, 0xC120], dtype=np.uint16).tobytes()  # 1.0, -10.0
    data = b"\x07" + f32.tobytes() + f16.tobytes() + bf16
    header = {"i8": entry("I8", [1], [0, 1]), "f32": entry("F32", [3], [1, 13]),
              "f16": entry("F16", [2], [13, 17]), "bf16": entry("BF16", [2], [17, 21])}
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(build(raw, data))
    with SafeTensors(path) as st:
        a = st["f32"]
        assert a.flags.owndata and a.flags.aligned and not a.flags.writeable
        np.testing.assert_array_equal(a, f32)
        h = st["f16"]
        assert h.flags.owndata
        np.testing.assert_array_equal(h, f16)
        np.testing.assert_array_equal(st["bf16"], [1.0, -10.0])
        assert st["i8"].tolist() == [7] and not st["i8"].flags.owndata


def test_get_dtype_argument(np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, tensors = np_file
    with SafeTensors(path) as st:
        for dt in (None, "float32", np.float32, np.dtype("float32")):
            got = st.get("int8", dtype=dt)
            want = tensors["int8"] if dt is None else tensors["int8"].astype(np.float32)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        assert np.shares_memory(st.get("unet.conv_in.bias", "float32"), st["unet.conv_in.bias"])
        with pytest.raises(ValueError, match="dtype must be None or float32"):
            st.get("half", dtype="float16")
        with pytest.raises(TypeError):
            st.get("half", dtype="no-such-dtype")
        with pytest.raises(KeyError):
            st.get("missing", "float32")


def test_mapping_protocol(np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, tensors = np_file
    with SafeTensors(path) as st:
        # code point order: upper case < lower case < non-ASCII
        assert st.keys() == sorted(tensors)
        assert st.keys()[0] == "Z_upper" and st.keys()[-1] == "\u00e9t\u00e9"
        with pytest.raises(KeyError, match="nope"):
            st["nope"]
        with pytest.raises(KeyError):
            st["int8\0"]
        with pytest.raises(KeyError):
            st["\ud800"]
        with pytest.raises(KeyError):
            st.info("nope")
        with pytest.raises(TypeError, match="tensor names are str"):
            st[0]
        with pytest.raises(TypeError):
            st.info(b"int8")
        assert 0 not in st and b"int8" not in st and "int8\0" not in st and "\ud800" not in st
        assert "__metadata__" not in st
        assert st.info("Z_upper") == ("F32", (1, 1, 1, 1, 1, 1, 1, 2))
        assert st.metadata is not st.metadata  # a new dict each time
        assert not st.closed


def test_close_and_context_manager(np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, _ = np_file
    with SafeTensors(path) as st:
        assert len(st) > 0
    assert st.closed and "closed" in repr(st)
    accesses = [lambda: st["int8"], lambda: st.get("int8"), lambda: st.keys(),
                lambda: len(st), lambda: "int8" in st, lambda: st.info("int8"),
                lambda: st.metadata, lambda: list(st), lambda: st.__enter__()]
    for access in accesses:
        with pytest.raises(ValueError, match="closed"):
            access()
    st.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        st.keys()


def test_from_bytes_buffers(np_file: tuple[pathlib.Path, dict[str, np.ndarray]]) -> None:
    path, tensors = np_file
    raw = path.read_bytes()
    for buf in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, dtype=np.uint8)):
        with SafeTensors.from_bytes(buf) as st:
            assert st.keys() == sorted(tensors)
            for name, ref in tensors.items():
                assert st[name].tobytes() == ref.tobytes()
            assert st.metadata["format"] == "np"
            assert "<memory>" in repr(st)
    # the buffer is held (a bytearray cannot be resized) until the last view is gone
    ba = bytearray(raw)
    base_refs = sys.getrefcount(ba)
    st = SafeTensors.from_bytes(ba)
    view = st["half"] if st["half"].base is not None else st["int8"]
    assert sys.getrefcount(ba) > base_refs
    with pytest.raises(BufferError):
        ba.extend(b"x")
    st.close()
    with pytest.raises(BufferError):
        ba.extend(b"x")
    del view
    gc.collect()
    assert sys.getrefcount(ba) == base_refs
    ba.extend(b"x")  # released
    with pytest.raises(ValueError, match="C-contiguous"):
        SafeTensors.from_bytes(memoryview(raw)[::2])
    with pytest.raises(TypeError):
        SafeTensors.from_bytes("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size is 0"):
        SafeTensors.from_bytes(b"")


def test_os_errors(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors: cannot open"):
        SafeTensors(missing)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        SafeTensors(tmp_path)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors: file is empty"):
        SafeTensors(empty)


# ---- hostile files -----------------------------------------------------------------------------

GOOD_HEADER = {"w": entry("F32", [2, 3], [0, 24]), "b": entry("F16", [3], [24, 30])}
GOOD = build(GOOD_HEADER, bytes(range(30)))


def _dup_names() -> bytes:
    return build('{"w": %s, "w": %s}' % (json.dumps(entry()), json.dumps(entry())), bytes(8))


HOSTILE: list[tuple[str, bytes, str]] = [
    ("empty file", b"", r"file is empty|size is 0"),
    ("7-byte file", b"\x10\0\0\0\0\0\0", r"too short \(7 bytes\)"),
    ("truncated data", GOOD[:-4], r"tensor 'b'.*reach past the end of the data section"),
    ("header length past the file", build(GOOD_HEADER, bytes(30), length=10_000),
     r"header length 10000 exceeds the file size"),
    ("header length 2^63", build(b"{}", length=2**63),
     r"header length 9223372036854775808 exceeds the file size"),
    ("header length 2^64-1", build(b"{}", length=2**64 - 1), r"exceeds the file size"),
    ("header length zero", build(b"{}", length=0), r"header is empty"),
    ("bad JSON", build('{"w": {"dtype": "F32",'), r"not valid: JSON error at byte \d+"),
    ("JSON with trailing garbage", build('{} {}'), r"JSON error at byte 3: unexpected '\{'"),
    ("JSON NaN", build('{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}'),
     r"expected a value, found 'N'"),
    ("header not an object", build("[1, 2]"), r"header must be a JSON object, found an array"),
    ("header a string", build('"hello"'), r"found a string"),
    ("offsets out of range", build({"w": entry("F32", [2], [0, 1000])}, bytes(8)),
     r"tensor 'w': data_offsets \[0, 1000\] reach past the end"),
    ("overlapping offsets", build({"a": entry("F32", [4], [0, 16]),
                                   "b": entry("F32", [4], [8, 24])}, bytes(24)),
     r"tensors 'a' .* and 'b' .* overlap"),
    ("identical ranges", build({"a": entry(), "b": entry()}, bytes(8)), r"overlap"),
    ("begin > end", build({"w": entry("F32", [0], [8, 0])}, bytes(8)), r"has begin > end"),
    ("wrong byte length", build({"w": entry("F32", [2, 3], [0, 20])}, bytes(24)),
     r"needs 24 bytes but data_offsets \[0, 20\] span 20"),
    ("dtype F64", build({"w": entry("F64", [1], [0, 8])}, bytes(8)),
     r"tensor 'w' has dtype F64; supported: F32, F16, BF16, I8"),
    ("dtype I64", build({"w": entry("I64", [1], [0, 8])}, bytes(8)), r"has dtype I64; supported"),
    ("dtype U8", build({"w": entry("U8", [8], [0, 8])}, bytes(8)), r"has dtype U8; supported"),
    ("dtype BOOL", build({"w": entry("BOOL", [8], [0, 8])}, bytes(8)),
     r"has dtype BOOL; supported"),
    ("dtype F8_E4M3", build({"w": entry("F8_E4M3", [8], [0, 8])}, bytes(8)),
     r"has dtype F8_E4M3; supported"),
    ("dtype XYZ", build({"w": entry("XYZ")}, bytes(8)), r"unknown dtype 'XYZ'; supported"),
    ("dtype not a string", build({"w": entry(4)}, bytes(8)), r"dtype must be a string"),
    ("negative dim", build({"w": entry("F32", [-2, 3])}, bytes(8)), r"shape\[0\] is -2"),
    ("non-integer dim", build({"w": entry("F32", [2.0])}, bytes(8)),
     r"shape\[0\] must be a non-negative integer, found a non-integer"),
    ("string dim", build({"w": entry("F32", [1, "2"])}, bytes(8)),
     r"shape\[1\] must be a non-negative integer, found string"),
    ("shape not a list", build({"w": entry("F32", {"a": 1})}, bytes(8)),
     r"shape must be an array"),
    ("element count overflows", build({"w": entry("I8", [2**32, 2**32, 4])}, bytes(8)),
     r"shape \[4294967296, 4294967296, 4\] is too large"),
    ("byte size overflows", build({"w": entry("F32", [2**62])}, bytes(8)), r"is too large"),
    ("dim beyond int64", build({"w": entry("F32", [2**64])}, bytes(8)),
     r"shape\[0\] must be a non-negative integer"),
    ("too many dims", build({"w": entry("F32", [1] * 9)}, bytes(8)),
     r"tensor 'w' has 9 dimensions; at most 8"),
    ("duplicate names", _dup_names(), r"duplicate key 'w'"),
    ("non-UTF-8 name", build(b'{"w\xff": ' + json.dumps(entry()).encode() + b"}", bytes(8)),
     r"invalid UTF-8 sequence in a string \(byte 0xFF\)"),
    ("lone surrogate name", build('{"w\\udc00": %s}' % json.dumps(entry()), bytes(8)),
     r"unpaired low surrogate"),
    ("empty name", build({"": entry()}, bytes(8)), r"a tensor has an empty name"),
    ("metadata non-string value", build({"__metadata__": {"a": 1}}),
     r"__metadata__ value of 'a' must be a string, found number"),
    ("metadata nested object", build({"__metadata__": {"a": {"b": "c"}}}), r"found object"),
    ("metadata not an object", build({"__metadata__": ["a"]}),
     r"__metadata__ must be an object of string -> string, found array"),
    ("extra field", build({"w": entry(extra=1)}, bytes(8)), r"unknown field 'extra'"),
    ("missing field", build({"w": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8)),
     r"tensor 'w' has no 'shape' field"),
    ("data_offsets of length 1", build({"w": entry(offsets=[0])}, bytes(8)),
     r"data_offsets must be \[begin, end\], found an array of 1 values"),
    ("data_offsets of length 3", build({"w": entry(offsets=[0, 8, 16])}, bytes(8)),
     r"found an array of 3 values"),
    ("data_offsets beyond int64", build({"w": entry(offsets=[0, 2**64])}, bytes(8)),
     r"data_offsets\[1\] must be a non-negative integer"),
    ("negative offset", build({"w": entry(offsets=[-8, 0])}, bytes(8)),
     r"data_offsets\[0\] must be a non-negative integer"),
    ("tensor not an object", build({"w": [1, 2]}), r"tensor 'w' must be a JSON object"),
    ("deep nesting", build('{"w": ' + "[" * 100 + "]" * 100 + "}"),
     r"nesting deeper than 64 levels"),
]


@pytest.mark.parametrize("name,data,pattern", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files(tmp_path: pathlib.Path, name: str, data: bytes, pattern: str) -> None:
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=pattern) as err:
        SafeTensors(path)
    assert "hostile.safetensors" in str(err.value)
    with pytest.raises(ValueError, match=pattern) as err:
        SafeTensors.from_bytes(data)
    if data:
        assert str(err.value).startswith("<memory>: ")


def test_hostile_corpus_size() -> None:
    assert len(HOSTILE) >= 20
    # every hostile case differs from a good file only in what it names: the good one opens
    with SafeTensors.from_bytes(GOOD) as st:
        assert st.keys() == ["b", "w"]
        np.testing.assert_array_equal(st["w"].view(np.uint8).ravel(), np.arange(24))


def test_random_mutations() -> None:
    """Seeded byte mutations of a valid file: each either opens (and every tensor reads) or
    raises a ValueError with a message; nothing crashes."""
    header = {"__metadata__": {"format": "pt"},
              "a": entry("F32", [2, 3], [0, 24]), "b": entry("F16", [3], [24, 30]),
              "c": entry("BF16", [2], [30, 34]), "d": entry("I8", [5], [34, 39]),
              "e": entry("F32", [], [39, 43]), "f": entry("F16", [0, 7], [43, 43])}
    seed = build(header, bytes(range(43)))
    hlen = len(seed) - 43 - 8
    rng = random.Random(20240611)
    alphabet = b'{}[]":,-.e0123456789 FIB8\\u\xff\x00'
    iterations, opened, rejected = 20_000, 0, 0
    for _ in range(iterations):
        m = bytearray(seed)
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            pos = 8 + rng.randrange(hlen) if r > 0.05 else rng.randrange(8)
            if pos >= len(m):
                break
            if r < 0.2:
                m[pos] = rng.choice(alphabet)
            elif r < 0.45:
                # a digit of the header changed: mostly still JSON, exercises the range checks
                digits = [i for i in range(8, 8 + hlen) if i < len(m) and 48 <= m[i] <= 57]
                if digits:
                    m[rng.choice(digits)] = rng.choice(b"0123456789")
            elif r < 0.7:
                m[pos] ^= 1 << rng.randrange(8)
            elif r < 0.85:
                del m[pos]
            elif r < 0.95:
                m.insert(pos, rng.choice(alphabet))
            else:
                del m[pos:]
        try:
            st = SafeTensors.from_bytes(bytes(m))
        except ValueError as e:
            assert str(e), "empty error message"
            rejected += 1
            continue
        opened += 1
        for k in st.keys():
            arr = st[k]
            dtype, shape = st.info(k)
            assert arr.shape == shape and dtype in ("F32", "F16", "BF16", "I8")
            assert st.get(k, "float32").shape == shape
        st.close()
    assert opened > 0 and rejected > 0
    assert opened + rejected == iterations


# ---- references and memory ------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="reads /proc/self")
def test_no_leaks(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "leak.safetensors"
    arrays = {"f32": rng.standard_normal((32, 32)).astype(np.float32),
              "f16": rng.standard_normal(1024).astype(np.float16),
              "i8": np.arange(4096, dtype=np.uint8).astype(np.int8)}
    st_numpy.save_file(arrays, str(path), metadata={"k": "v" * 100})
    raw = path.read_bytes()
    raw_refs = sys.getrefcount(raw)
    bad_path = tmp_path / "truncated.safetensors"
    bad_path.write_bytes(raw[:-1])  # fails after mapping: exercises the unmap-on-error path

    def loop(n: int) -> None:
        for _ in range(n):
            st = SafeTensors(path)
            a = st["f32"]
            b = st.get("f16", "float32")  # 4 KiB copy
            c = st["i8"]
            st.info("f16")
            st.keys()
            _ = st.metadata
            _ = "x" in st
            st.close()
            del a, b, c
            with SafeTensors.from_bytes(raw) as sb:
                sb["f16"]
                sb.get("i8", dtype="float32")  # 16 KiB copy
            try:
                sb["f32"]
            except ValueError:
                pass
            try:
                SafeTensors.from_bytes(raw[:-1])
            except ValueError:
                pass
            try:
                SafeTensors(bad_path)
            except ValueError:
                pass
            try:
                SafeTensors(tmp_path / "missing")
            except OSError:
                pass

    loop(500)  # warm-up
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    maps = count_maps()
    rss = rss_bytes()
    loop(10_000)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert count_maps() <= maps + 2
    grown = rss_bytes() - rss
    # a leaked array, mapping or header per iteration would cost at least 40 MB here
    assert grown < 8 << 20, f"RSS grew by {grown} bytes over 10,000 iterations"
    assert sys.getrefcount(raw) == raw_refs

    # Python-level allocations (numpy arrays and their data are traced too)
    tracemalloc.start()
    loop(200)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    loop(2000)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert after - before < 64 << 10, f"traced memory grew by {after - before} bytes"
