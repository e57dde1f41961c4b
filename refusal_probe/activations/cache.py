"""A content-addressed disk cache for tensors and for the typed results made of them.

Entries are safetensors files named by the SHA-256 of their key. A write goes to a temporary file
that is renamed into place, so a reader never sees half a file; each entry carries a checksum of
its bytes, and an entry that fails to open or to verify is reported, deleted and recomputed —
never silently used.

Two layers share the files: :meth:`TensorCache.get`/:meth:`~TensorCache.put` store a dict of
tensors; :meth:`TensorCache.cached` stores a frozen dataclass — its tensor fields as tensors,
its other fields (counts, texts) as JSON in the file's metadata, under the same checksum — and
gives the dataclass back. Every key holds :data:`ENGINE_VERSION`, so entries written by another
version of the engine are simply never found again; nothing reads an old layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from refusal_probe.model.identity import ModelKey

log = logging.getLogger(__name__)

#: A frozen dataclass whose fields are tensors or JSON data (str, int, float, bool, tuples).
Value = TypeVar("Value")

#: Bump when a change to the engine changes what a cached entry would contain or how it is laid
#: out; entries written under another version are never looked up again.
ENGINE_VERSION = "3"


class CacheCorruptionWarning(UserWarning):
    """A cache entry was unreadable or failed its checksum and will be recomputed."""


def cache_key(model: ModelKey, kind: str, **parts: Any) -> dict[str, Any]:
    """The key of a cached result of ``kind`` on a model: its :class:`ModelKey` and ``parts``.

    Every cache layer (activations, measurements, an audit's results) builds its keys here or
    from ``model.to_dict()``, so what a result depends on about the model is said once.

    Args:
        model: The model's key (``LoadedModel.key``, taken now).
        kind: What the result is (``"activations"``, ``"selection"``...).
        **parts: What else it depends on, as JSON-able data.
    """
    return {"kind": kind, "model": model.to_dict(), **parts}


def key_digest(key: dict[str, Any]) -> str:
    """Stable SHA-256 of a JSON-able key (sorted keys, the engine version included)."""
    payload = json.dumps({"engine": ENGINE_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor], data: str = "") -> str:
    h = hashlib.sha256(data.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file whole or not at all: a temporary file beside it, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class TensorCache:
    """Tensors on disk under ``root/<namespace>/<digest>.safetensors``."""

    def __init__(self, root: str | os.PathLike[str], namespace: str = "activations") -> None:
        """Create a cache rooted at ``root`` (created on first write)."""
        self.dir = Path(root) / namespace

    def path(self, digest: str) -> Path:
        """The file an entry lives in."""
        return self.dir / f"{digest}.safetensors"

    def get(self, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """Return the tensors stored under ``key``, or ``None`` on a miss or a corrupted entry."""
        hit = self._read(key)
        return None if hit is None else hit[0]

    def put(
        self, key: dict[str, Any], tensors: dict[str, torch.Tensor], data: str = ""
    ) -> Path:
        """Write an entry atomically (temporary file, then rename).

        ``data`` is text stored beside the tensors (in the file's metadata) under the same checksum.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "checksum": _checksum(tensors, data),
            "data": data,
            "key": json.dumps(key, sort_keys=True, default=str),
        }
        path = self.path(key_digest(key))
        save_atomic(tensors, path, meta)
        return path

    def load(self, key: dict[str, Any], kind: type[Value]) -> Value | None:
        """The ``kind`` dataclass stored under ``key``, or ``None`` on a miss or damage."""
        hit = self._read(key)
        if hit is None:
            return None
        tensors, data = hit
        try:
            values = {k: _as_tuples(v) for k, v in json.loads(data or "{}").items()}
            return kind(**tensors, **values)
        except (TypeError, ValueError) as exc:  # fields that do not fit the type
            self._discard(self.path(key_digest(key)), f"not a {kind.__name__} ({exc})")
            return None

    def save(self, key: dict[str, Any], value: Any) -> Path:
        """Store a dataclass: tensor fields as tensors, the others as JSON beside them."""
        if not is_dataclass(value) or isinstance(value, type):
            raise TypeError(f"TensorCache.save stores dataclass instances, not {type(value)!r}")
        tensors, data = {}, {}
        for f in fields(value):
            v = getattr(value, f.name)
            if isinstance(v, torch.Tensor):
                tensors[f.name] = v
            else:
                data[f.name] = v
        return self.put(key, tensors, json.dumps(data, sort_keys=True))

    def cached(
        self, key: dict[str, Any], compute: Callable[[], Value], kind: type[Value]
    ) -> tuple[Value, bool]:
        """``compute()``, or the ``kind`` value stored under ``key``; and whether it was stored."""
        if (hit := self.load(key, kind)) is not None:
            return hit, True
        value = compute()
        self.save(key, value)
        return value, False

    def _read(self, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str] | None:
        path = self.path(key_digest(key))
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        except Exception as exc:  # safetensors raises several types for a damaged file
            self._discard(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        data = meta.get("data", "")
        if meta.get("checksum") != _checksum(tensors, data):
            self._discard(path, "checksum mismatch")
            return None
        return tensors, data

    def _discard(self, path: Path, why: str) -> None:
        warnings.warn(
            f"activation cache entry {path} is {why}; deleting it and recomputing",
            CacheCorruptionWarning,
            stacklevel=4,
        )
        try:
            path.unlink()
        except OSError:
            log.warning("could not delete corrupted cache entry %s", path)


def cached(
    cache: TensorCache | None,
    key: dict[str, Any],
    compute: Callable[[], Value],
    kind: type[Value],
) -> tuple[Value, bool]:
    """:meth:`TensorCache.cached`, or just ``compute()`` without a cache."""
    if cache is None:
        return compute(), False
    return cache.cached(key, compute, kind)


def _as_tuples(value: Any) -> Any:
    """JSON lists back as tuples (the fields of frozen values are tuples)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
