"""Shared fixtures for the engine tests: tiny random-init models, built once per session.

Every model is saved as a real Hugging Face folder and loaded through ``load_model``, the entry
point users use. Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from refusal_probe import LoadedModel, LoadOptions, load_model
from refusal_probe.testing import make_tiny_model


def pytest_configure(config: pytest.Config) -> None:
    """Run torch single-threaded unless the user chose (``OMP_NUM_THREADS``).

    The tests use tiny models, where a second thread buys nothing; on a busy 2-core machine a
    second OpenMP thread waiting for a core made the engine tests 64 s instead of 9 s.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def _key(family: str, kwargs: dict[str, Any]) -> str:
    parts = [family] + [f"{k}={v}" for k, v in sorted(kwargs.items())]
    return "-".join(parts).replace("/", "_").replace(" ", "")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_dir(family, **make_tiny_model_kwargs)``: the folder of a tiny model, built once."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def build(family: str = "llama", **kwargs: Any) -> Path:
        key = _key(family, kwargs)
        if key not in built:
            built[key] = make_tiny_model(root / f"m{len(built)}", family, **kwargs)
        return built[key]

    return build


@pytest.fixture(scope="session")
def tiny_model(
    tiny_dir: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., LoadedModel]:
    """``tiny_model(family, **make_tiny_model_kwargs)``: a tiny model loaded through ``load_model``.

    Loaded once per session and shared: tests must not modify it.
    """
    loaded: dict[str, LoadedModel] = {}
    convert = tmp_path_factory.mktemp("convert-cache")

    def load(family: str = "llama", **kwargs: Any) -> LoadedModel:
        key = _key(family, kwargs)
        if key not in loaded:
            loaded[key] = load_model(
                str(tiny_dir(family, **kwargs)), LoadOptions(cache_dir=str(convert))
            )
        return loaded[key]

    return load
