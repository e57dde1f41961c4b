"""Writing a shipped organism as a plain Hugging Face folder, for other tools.

Organisms only: the folder is the checkpoint as the audit loads it (a realistic organism's
adapter merged into its base). Models with a direction ablated or orthogonalized away are never
written out by this project.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from refusal_probe.errors import ModelLoadError
from refusal_probe.model.loading import default_cache_dir
from refusal_probe.model.organisms import merged_organism
from refusal_probe.model.sources import GRAMMAR_ALIASES, ORGANISM_ALIASES, SMOL_ALIASES, resolve

#: What an exported folder holds (whatever of it the checkpoint has).
FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "recipe.json",
)


def export(
    alias: str, folder: Path, *, force: bool = False, cache_root: Path | None = None
) -> Path:
    """Copy the organism ``alias`` into ``folder`` as a Hugging Face model folder.

    Raises:
        ModelLoadError: ``alias`` is not an organism, or ``folder`` holds files and not ``force``.
    """
    if alias not in ORGANISM_ALIASES:
        raise ModelLoadError(
            f"{alias!r} is not a shipped organism; export writes organisms only "
            f"({', '.join(ORGANISM_ALIASES)})"
        )
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not force:
        raise ModelLoadError(f"{folder} is not empty; choose a new folder or pass --force")
    if alias in SMOL_ALIASES:
        source, _ = merged_organism(alias, cache_root or default_cache_dir())
    else:
        assert alias in GRAMMAR_ALIASES
        _, source, _ = resolve(alias)
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, folder / name)
    return folder
