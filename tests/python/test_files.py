"""The shared readers of model-folder text and JSON files: every failure names the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapfusion._files import read_json, read_json_object, read_text_file


def test_reads_text_and_json(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text('{"x": [1, 2], "é": "ü"}', encoding="utf-8")
    assert read_text_file(f) == '{"x": [1, 2], "é": "ü"}'
    text, value = read_json_object(f)
    assert value == {"x": [1, 2], "é": "ü"} and text.startswith("{")
    assert read_json(tmp_path / "a.json")[1]["x"] == [1, 2]


@pytest.mark.parametrize("content, exc, match", [
    (b"{not json", ValueError, "malformed JSON"),
    (b"\xff\xfe{}", ValueError, "not valid UTF-8"),
    (b"[1, 2]", ValueError, "expected a JSON object, got list"),
    (b"", ValueError, "malformed JSON"),
])
def test_bad_files_name_the_file(tmp_path: Path, content: bytes, exc: type, match: str) -> None:
    f = tmp_path / "bad.json"
    f.write_bytes(content)
    with pytest.raises(exc, match=match) as info:
        read_json_object(f)
    assert str(f) in str(info.value)


def test_missing_oversized_and_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_json_object(tmp_path / "none.json", "config file")
    with pytest.raises(OSError, match="not a regular file"):
        read_text_file(tmp_path)
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 100 + "0]")
    with pytest.raises(ValueError, match="too large"):
        read_json(big, max_bytes=64)


def test_duplicate_key_hook(tmp_path: Path) -> None:
    f = tmp_path / "dup.json"
    f.write_text('{"a": 1, "a": 2}')

    def reject(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"{f}: duplicate key")
        return dict(pairs)

    assert read_json(f)[1] == {"a": 2}
    with pytest.raises(ValueError, match="duplicate key"):
        read_json(f, object_pairs_hook=reject)
