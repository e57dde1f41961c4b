"""Files written whole or not at all (:mod:`refusal_probe.atomic`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from refusal_probe.atomic import write_text_atomic


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "records.jsonl"
    target.write_text("old\n", encoding="utf-8")
    assert write_text_atomic(target, "new\r\nline\n") == target
    assert target.read_bytes() == b"new\r\nline\n"  # newlines as given
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "records.jsonl"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "half\ud800")  # a lone surrogate cannot be UTF-8
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]
