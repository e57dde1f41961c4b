"""A model's key remembered from its last load: recalled for the same files today, else missed."""

from __future__ import annotations

import os
from pathlib import Path

from refusal_probe import LoadOptions, load_model
from refusal_probe.model import memo


def test_a_loaded_models_key_is_recalled_until_its_files_change(tiny_dir, tmp_path: Path) -> None:
    folder = tiny_dir("llama")
    options = LoadOptions(cache_dir=str(tmp_path / "convert"))
    model = load_model(str(folder), options)
    assert memo.recall(str(folder), options, tmp_path) is None  # nothing remembered yet
    assert memo.remember(str(folder), options, tmp_path, model.key, model.identity) is not None
    assert memo.recall(str(folder), options, tmp_path) == (model.key, model.identity)
    # Another dtype is another key; a touched weight file is another model.
    other = LoadOptions(cache_dir=options.cache_dir, dtype="bfloat16")
    assert memo.recall(str(folder), other, tmp_path) is None
    weights = next(folder.glob("*.safetensors"))
    st = weights.stat()
    try:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert memo.recall(str(folder), options, tmp_path) is None
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_damaged_memo_or_a_hub_id_is_a_miss(tiny_dir, tmp_path: Path) -> None:
    folder = tiny_dir("llama")
    options = LoadOptions(cache_dir=str(tmp_path / "convert"))
    model = load_model(str(folder), options)
    path = memo.remember(str(folder), options, tmp_path, model.key, model.identity)
    assert path is not None
    path.write_text("{not json")
    assert memo.recall(str(folder), options, tmp_path) is None
    assert memo.remember("org/name", options, tmp_path, model.key, model.identity) is None
    assert memo.recall("org/name", options, tmp_path) is None
