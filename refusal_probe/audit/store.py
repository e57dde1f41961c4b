"""What an audit run keeps on disk: its shared results, and the selected direction.

:class:`ResultStore` holds each shared result as checksummed JSON under the cache folder, so a
second run reads it instead of recomputing it (:meth:`ResultStore.cached`); the direction artifact
(:func:`save_direction`, :func:`load_direction`) is what a later run's ``--baseline`` reads back.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self, TypeVar

from safetensors import safe_open
from torch import Tensor

from refusal_probe.activations.cache import CacheCorruptionWarning, key_digest, save_atomic
from refusal_probe.direction.estimators import Direction
from refusal_probe.errors import ReportError


class Storable(Protocol):
    """A result the store can keep: plain data out, and back."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        ...  # pragma: no cover

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`."""
        ...  # pragma: no cover


R = TypeVar("R", bound=Storable)


class ResultStore:
    """JSON results under ``root/audit-results/<digest>.json``, written atomically, checksummed."""

    def __init__(self, root: Path) -> None:
        """Create a store under ``root`` (made on first write)."""
        self.dir = Path(root) / "audit-results"

    def cached(self, key: dict[str, Any], compute: Callable[[], R], result_type: type[R]) -> R:
        """The result stored for ``key`` (rebuilt by ``result_type.from_dict``), or ``compute()``.

        A computed result is stored with its ``to_dict()``.
        """
        hit = self.get(key)
        if hit is not None:
            return result_type.from_dict(hit)
        value = compute()
        self.put(key, value.to_dict())
        return value

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored data for ``key``, or ``None`` (a damaged entry is deleted and missed)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            body = json.dumps(entry["result"], sort_keys=True)
            if entry["sha256"] != hashlib.sha256(body.encode()).hexdigest():
                raise ValueError("checksum mismatch")
            return dict(entry["result"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            msg = f"audit result cache entry {path} is damaged ({exc}); recomputing it"
            warnings.warn(msg, CacheCorruptionWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: dict[str, Any], result: dict[str, Any]) -> None:
        """Store ``result`` (JSON data) for ``key``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        body = json.dumps(result, sort_keys=True)
        entry = {"key": key, "sha256": hashlib.sha256(body.encode()).hexdigest(), "result": result}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entry, fh)
        os.replace(tmp, self._path(key))

    def drop(self, key: dict[str, Any]) -> None:
        """Forget the result stored for ``key`` (say, when a file it describes is gone)."""
        self._path(key).unlink(missing_ok=True)

    def _path(self, key: dict[str, Any]) -> Path:
        return self.dir / f"{key_digest(key)}.json"


# ---------------------------------------------------------------------------------------------
# the direction artifact (read back by a later run's --baseline)


class DirectionArtifact(NamedTuple):
    """A selected direction as written to disk.

    Attributes:
        direction: The selected direction.
        per_layer: Every layer's candidate at the direction's position, ``[layer, d]``.
        layers: The layer of each row of ``per_layer``.
    """

    direction: Direction
    per_layer: Tensor
    layers: tuple[int, ...]


def save_direction(
    path: Path, direction: Direction, per_layer: Tensor, layers: tuple[int, ...]
) -> None:
    """Write a direction and the candidates of every layer at its position, atomically.

    The file's metadata records the SHA-256 of the vector (:attr:`Direction.sha256`, as an
    audit.json records it) and of all its tensors, which :func:`load_direction` verifies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {k: getattr(direction, k) for k in direction.__dataclass_fields__ if k != "vector"}
    tensors = {
        "vector": direction.vector.double().contiguous(),
        "per_layer": per_layer.double().contiguous(),
    }
    meta = {
        "direction": json.dumps(fields),
        "layers": json.dumps(list(layers)),
        "format": "refusal-probe/direction/1",
        "vector_sha256": _sha256(tensors["vector"]),
        "tensors_sha256": tensors_sha256(tensors),
    }
    save_atomic(tensors, path, meta)


def load_direction(path: Path, vector_sha256: str | None = None) -> DirectionArtifact:
    """Read what :func:`save_direction` wrote, verifying its checksums.

    Args:
        path: The direction file.
        vector_sha256: The vector's SHA-256 as recorded elsewhere (an audit.json), if known;
            the vector must match it as well as the file's own record.

    Raises:
        ReportError: The file is missing, not a direction file, or damaged (a checksum, its own
            or ``vector_sha256``, does not match).
    """
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {"vector": fh.get_tensor("vector"), "per_layer": fh.get_tensor("per_layer")}
        fields = json.loads(meta["direction"])
        layers = tuple(json.loads(meta["layers"]))
        recorded = {f"its own {k}": meta[k] for k in ("vector_sha256", "tensors_sha256")}
    except (OSError, KeyError, ValueError, Exception) as exc:  # safetensors raises its own types
        raise ReportError(
            f"{path} is not a readable refusal-probe direction file ({exc}); re-run the audit "
            "that wrote it"
        ) from None
    vector_actual = _sha256(tensors["vector"])
    actual = {
        "its own vector_sha256": vector_actual,
        "its own tensors_sha256": tensors_sha256(tensors),
    }
    if vector_sha256 is not None:
        recorded["the vector_sha256 its audit.json records"] = vector_sha256
        actual["the vector_sha256 its audit.json records"] = vector_actual
    bad = [name for name in recorded if recorded[name] != actual[name]]
    if bad:
        raise ReportError(
            f"{path} is damaged: its tensors do not match {' or '.join(bad)}; re-run the audit "
            "that wrote it"
        )
    vector, per_layer = tensors["vector"], tensors["per_layer"]
    return DirectionArtifact(Direction(vector=vector, **fields), per_layer, layers)


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over named tensors: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _sha256(t: Tensor) -> str:
    """SHA-256 of a tensor's bytes (for a float64 vector, :attr:`Direction.sha256`)."""
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def verified_direction(path: Path, vector_sha256: str | None = None) -> DirectionArtifact | None:
    """A run's own cached direction artifact if it verifies, else ``None`` (to be recomputed).

    A missing file is simply ``None``; one that fails verification (see :func:`load_direction`)
    is deleted and reported as a :class:`~refusal_probe.activations.cache.CacheCorruptionWarning`
    (pytest's warnings summary shows it): it is never served.
    """
    if not path.is_file():
        return None
    try:
        return load_direction(path, vector_sha256)
    except ReportError as exc:
        damage = str(exc).partition("; re-run")[0]
        warnings.warn(f"{damage}; recomputing it", CacheCorruptionWarning, stacklevel=2)
        path.unlink(missing_ok=True)
        return None
