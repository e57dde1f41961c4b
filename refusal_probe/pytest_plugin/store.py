"""What an audit run keeps on disk: its shared results, and the selected direction.

:class:`ResultStore` holds each shared result as checksummed JSON under the cache folder, so a
second run reads it instead of recomputing it; the direction artifact (:func:`save_direction`,
:func:`load_direction`) is what a later run's ``--baseline`` reads back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from refusal_probe.activations.cache import key_digest
from refusal_probe.errors import ReportError

log = logging.getLogger(__name__)


class ResultStore:
    """JSON results under ``root/audit-results/<digest>.json``, written atomically, checksummed."""

    def __init__(self, root: Path) -> None:
        """Create a store under ``root`` (made on first write)."""
        self.dir = Path(root) / "audit-results"

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result for ``key``, or ``None`` (a damaged entry is deleted and missed)."""
        path = self.dir / f"{key_digest(key)}.json"
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            body = json.dumps(entry["result"], sort_keys=True)
            if entry["sha256"] != hashlib.sha256(body.encode()).hexdigest():
                raise ValueError("checksum mismatch")
            return entry["result"]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("audit result cache entry %s is damaged (%s); recomputing", path, exc)
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
        os.replace(tmp, self.dir / f"{key_digest(key)}.json")


# ---------------------------------------------------------------------------------------------
# the direction artifact (read back by a later run's --baseline)


def save_direction(
    path: Path, direction: Any, per_layer: torch.Tensor, layers: tuple[int, ...]
) -> None:
    """Write a direction and the candidates of every layer at its position, atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {k: getattr(direction, k) for k in direction.__dataclass_fields__ if k != "vector"}
    meta = {
        "direction": json.dumps(fields),
        "layers": json.dumps(list(layers)),
        "format": "refusal-probe/direction/1",
    }
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {
                "vector": direction.vector.double().contiguous(),
                "per_layer": per_layer.double().contiguous(),
            },
            tmp,
            metadata=meta,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_direction(path: Path) -> tuple[Any, torch.Tensor, tuple[int, ...]]:
    """Read what :func:`save_direction` wrote.

    Raises:
        ReportError: The file is missing or not a direction file.
    """
    from safetensors import safe_open

    from refusal_probe.direction.estimators import Direction

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            vector, per_layer = fh.get_tensor("vector"), fh.get_tensor("per_layer")
        fields = json.loads(meta["direction"])
        layers = tuple(json.loads(meta["layers"]))
    except (OSError, KeyError, ValueError, Exception) as exc:  # safetensors raises its own types
        raise ReportError(
            f"{path} is not a readable refusal-probe direction file ({exc}); re-run the audit "
            "that wrote it"
        ) from None
    return Direction(vector=vector, **fields), per_layer, layers
