"""A model's key and identity without loading it: remembered from the last load of the same files.

Every cached result is keyed by the model's :class:`~refusal_probe.model.identity.ModelKey`
(weights hash, architecture, chat template as rendered, placement, dtype). Taking it means
loading the model, which on a warm audit (every result cached) is most of the run: imports of
the model code, the bridge, the weights. :func:`remember` writes the key and identity of a
loaded model beside the cache; :func:`recall` reads them back for the same spec when nothing it
was read from has changed, so a run whose results are all cached never loads the model.

A memo is found by a hash of: the spec and the load options that change the key, the size and
modification time of every file the model is read from (the folder's files, the GGUF file, an
adapter's folder and its base), the package's version, :data:`MEMO_VERSION`, and today's date
(UTC): a chat template may render the date, and the key holds the rendered probe, so a memo is
good for the day it was written. Hub models (and anything else not on the local disk) are never
remembered. A memo that cannot be read is a miss: the model is loaded as before.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from refusal_probe.atomic import write_text_atomic
from refusal_probe.errors import RefusalProbeError
from refusal_probe.model.identity import ModelIdentity, ModelKey
from refusal_probe.model.sources import (
    ORGANISM_ALIASES,
    PACKAGED_MODELS,
    SMOL_ALIASES,
    packaged_model_path,
)
from refusal_probe.resources import FIXTURES_DIR

#: Bumped whenever what a key or an identity holds, or how it is computed, changes.
MEMO_VERSION = "1"
#: The cache folder's subfolder of memos.
MEMO_DIR = "model-keys"


def recall(spec: str, options: Any, cache_root: Path) -> tuple[ModelKey, ModelIdentity] | None:
    """The key and identity remembered for ``spec`` loaded with ``options``, or ``None``."""
    path = _memo_path(spec, options, cache_root)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return _build(ModelKey, data["key"]), _build(ModelIdentity, data["identity"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(
    spec: str, options: Any, cache_root: Path, key: ModelKey, identity: ModelIdentity
) -> Path | None:
    """Write ``key`` and ``identity`` for the next :func:`recall` (``None``: not rememberable)."""
    path = _memo_path(spec, options, cache_root)
    if path is None:
        return None
    blob = {"spec": spec, "key": key.to_dict(), "identity": identity.to_dict()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(blob, indent=1) + "\n")
    except OSError:  # a read-only cache only costs the next run a load
        return None
    return path


def _build(cls: Any, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    if set(data) != names:
        raise KeyError(f"memo fields {sorted(data)} are not {cls.__name__}'s")
    return cls(**data)


def _memo_path(spec: str, options: Any, cache_root: Path) -> Path | None:
    files = _source_files(spec)
    if not files:
        return None
    from refusal_probe import __version__

    stamp = [[str(f), *_stat(f)] for f in files]
    what = {
        "spec": spec,
        "device": str(options.device),
        "dtype": options.dtype,
        "device_map": options.device_map,
        "allow_pickle": options.allow_pickle,
        "trust_remote_code": options.trust_remote_code,
        "files": stamp,
        "package": __version__,
        "memo": MEMO_VERSION,
        "day": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return cache_root / MEMO_DIR / f"{digest[:32]}.json"


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _source_files(spec: str) -> list[Path]:
    """Every file ``spec`` is read from, when they are all on the local disk; else none."""
    try:
        if spec in SMOL_ALIASES:
            return [*_folder(FIXTURES_DIR / "models" / spec), packaged_model_path("smollm2")]
        if spec in ORGANISM_ALIASES:
            return _folder(FIXTURES_DIR / "models" / spec)
        if spec in PACKAGED_MODELS:
            return [packaged_model_path(spec)]
        path = Path(spec).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            return [path.resolve()]
        if path.is_dir():
            return _folder(path.resolve())
    except (OSError, RefusalProbeError):  # a spec that does not resolve: the loader explains
        return []
    return []


def _folder(folder: Path) -> list[Path]:
    if not (folder.is_dir() and os.access(folder, os.R_OK)):
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
