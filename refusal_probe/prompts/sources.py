"""Read the records of a prompt source: a file, a folder, or a data set.

A source is a path (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``, a folder of such
files, a ``datasets.save_to_disk`` folder) or ``hf:<name>[:<config>][@<split>]`` (a data set
loaded with ``datasets.load_dataset``; ``<name>`` may also be a local folder). Each yields one or
more :class:`Table` values: the records with their places (``file:line``) and a fingerprint.

A file or data-set split named for a side (``harmful``, ``harmless``, ``benign``, ``safe``,
``unsafe``) or a split (``train``, ``val``, ``validation``, ``dev``, ``test``) says so for its
records; in a folder holding side-named files, only those are read (a folder in the shipped
schema also holds ``pairs.jsonl`` and jailbreaks, which are not prompts to split).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from refusal_probe.prompts.formats import PromptSetError

SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
SIDE_NAMES: dict[str, str] = {
    "harmful": "harmful", "unsafe": "harmful",
    "harmless": "harmless", "benign": "harmless", "safe": "harmless",
}
SPLIT_NAMES: dict[str, str] = {
    "train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test",
}
HUB_TIMEOUT_S = 3.0
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class Table:
    """The records of one file or one data-set split.

    Attributes:
        name: The file path or data-set name (with ``[split]``), for messages and the record.
        rows: ``(where, record)`` pairs; ``where`` is ``file:line`` or ``name: row i``.
        sha256: Fingerprint of the bytes read (of the canonical JSON rows for a data set).
        side: The side its name gives (``harmful.jsonl``, ``@benign``), else None.
        split: The split its name gives (``test.csv``, ``DatasetDict["validation"]``), else None.
    """

    name: str
    rows: tuple[tuple[str, Mapping[str, Any]], ...]
    sha256: str
    side: str | None = None
    split: str | None = None

    def columns(self) -> set[str]:
        """Every key seen in the records."""
        return {k for _, rec in self.rows for k in rec}


def read_source(source: str | Path) -> list[Table]:
    """The tables of a path or ``hf:`` name.

    Raises:
        PromptSetError: The source does not exist, is not UTF-8 (``file:line``), is not valid
            JSON, or (for ``hf:``) the hub cannot be reached.
    """
    text = str(source)
    if text.startswith("hf:"):
        return _read_hf(text)
    path = Path(source)
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        return [_read_file(path)]
    raise PromptSetError(
        f"{path}: no such file or folder; pass a .jsonl, .json, .csv or .parquet file, a folder, "
        "or hf:<name> for a Hugging Face data set"
    )


def _hint(stem: str, names: Mapping[str, str]) -> str | None:
    """The side or split a name gives: ``test``, ``test-00000-of-00001``, ``harmful_behaviors``."""
    low = stem.lower()
    if low in names:
        return names[low]
    head = low.replace("_", "-").split("-", 1)[0]
    return names.get(head)


def _read_file(path: Path, *, name: str | None = None) -> Table:
    suffix = path.suffix.lower()
    side, split = _hint(path.stem, SIDE_NAMES), _hint(path.stem, SPLIT_NAMES)
    if suffix == ".parquet":
        rows, sha = _parquet_rows(path)
        return Table(str(path), rows, sha, side, split)
    if suffix not in SUFFIXES:
        raise PromptSetError(
            f"{path}: unknown file type {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)}"
        )
    data = path.read_bytes()
    text = _decode(data, path)
    sha = hashlib.sha256(data).hexdigest()
    if suffix in (".csv", ".tsv"):
        rows = _csv_rows(text, path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".json":
        rows = _json_rows(text, path)
    else:
        rows = _jsonl_rows(text, path)
    return Table(str(path), rows, sha, side, split)


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PromptSetError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); "
            f"re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}"
        ) from None


def _jsonl_rows(text: str, path: Path) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptSetError(
                f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from None
        rows.append((f"{path}:{lineno}", _as_record(rec, f"{path}:{lineno}")))
    return tuple(rows)


def _json_rows(text: str, path: Path) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line, named .json
            return _jsonl_rows(text, path)
        raise PromptSetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        keys = ", ".join(repr(k) for k in data) if isinstance(data, dict) else type(data).__name__
        raise PromptSetError(
            f"{path}: expected a list of records or {{\"data\": [...]}}, found {keys}"
        )
    return tuple(
        (f"{path}: record {i}", _as_record(rec, f"{path}: record {i}"))
        for i, rec in enumerate(data, start=1)
    )


def _csv_rows(text: str, path: Path, delimiter: str) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    start = (reader.line_num or 0) + 2  # the header is line 1
    try:
        for rec in reader:
            rows.append((f"{path}:{start}", {k: v for k, v in rec.items() if k is not None}))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise PromptSetError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return tuple(rows)


def _as_record(rec: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(rec, dict):
        raise PromptSetError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    return rec


def _parquet_rows(path: Path) -> tuple[tuple[tuple[str, Mapping[str, Any]], ...], str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise PromptSetError(
            f"{path}: reading Parquet needs pyarrow; pip install pyarrow"
        ) from None
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise PromptSetError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return tuple((f"{path}: row {i}", r) for i, r in enumerate(records, start=1)), sha


def _read_folder(path: Path) -> list[Table]:
    if any((path / m).is_file() for m in _DISK_MARKERS):
        return _dataset_tables(_load_from_disk(path), str(path), None)
    # The folder's own files only: a subfolder is another set (the shipped prompts/ holds natural/).
    files = sorted(
        p for p in path.glob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    )
    sided = [p for p in files if _hint(p.stem, SIDE_NAMES) is not None]
    files = sided or files
    if not files:
        raise PromptSetError(
            f"{path}: the folder holds no {', '.join(SUFFIXES)} files and is not a "
            "datasets.save_to_disk folder"
        )
    return [_read_file(p) for p in files]


def _load_from_disk(path: Path) -> Any:
    datasets = _datasets(str(path))
    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad folder
        raise PromptSetError(
            f"{path}: not a readable datasets.save_to_disk folder ({_first_line(exc)})"
        ) from None


def _datasets(where: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise PromptSetError(
            f"{where}: reading Hugging Face data sets needs the datasets library; "
            "pip install datasets"
        ) from None
    return datasets


def parse_hf(spec: str) -> tuple[str, str | None, str | None]:
    """``hf:<name>[:<config>][@<split>]`` as ``(name, config, split)``."""
    body = spec[3:] if spec.startswith("hf:") else spec
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise PromptSetError(f"{spec}: no data set name; write hf:<name>[:<config>][@<split>]")
    return name, config or None, split or None


def _read_hf(spec: str) -> list[Table]:
    name, config, split = parse_hf(spec)
    local = Path(name)
    if local.is_dir() and any((local / m).is_file() for m in _DISK_MARKERS):
        return _dataset_tables(_pick(_load_from_disk(local), split, spec), spec, split)
    if local.exists() and config is None and split is None:
        return read_source(local)
    if not local.exists() and not _offline() and not hub_reachable():
        raise PromptSetError(_offline_message(spec, name, offline=False))
    datasets = _datasets(spec)
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth and config errors all end here
        if _offline():
            raise PromptSetError(_offline_message(spec, name, offline=True)) from None
        raise PromptSetError(f"{spec}: datasets could not load it ({_first_line(exc)})") from None
    return _dataset_tables(data, spec, split)


def _offline_message(spec: str, name: str, offline: bool) -> str:
    why = (
        f"HF_HUB_OFFLINE is set and {name!r} is not in the local datasets cache"
        if offline
        else "the Hugging Face hub cannot be reached from here (set HF_HUB_OFFLINE=1 to use a "
        "cached copy)"
    )
    return (
        f"{spec}: {why}; on a machine with network run datasets.load_dataset({name!r})"
        ".save_to_disk(DIR) and pass DIR, or pass a local .jsonl/.json/.csv/.parquet file"
    )


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (DNS included)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the wait: name resolution ignores the socket timeout.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _pick(data: Any, split: str | None, spec: str) -> Any:
    if split is None or not hasattr(data, "keys"):
        return data
    if split not in data:
        raise PromptSetError(
            f"{spec}: no split {split!r}; the data set has {', '.join(map(repr, data.keys()))}"
        )
    return data[split]


def _dataset_tables(data: Any, name: str, split: str | None) -> list[Table]:
    """Tables of a ``Dataset`` (one) or a ``DatasetDict`` (one per split, named hints)."""
    if hasattr(data, "keys"):
        keys = list(data.keys())
        named = all(_hint(k, SIDE_NAMES) or _hint(k, SPLIT_NAMES) for k in keys)
        if len(keys) > 1 and not named:
            raise PromptSetError(
                f"{name}: the data set has splits {', '.join(map(repr, keys))}; choose one with "
                f"hf:<name>@<split>"
            )
        return [_dataset_table(data[k], f"{name}[{k}]", k) for k in keys]
    return [_dataset_table(data, name, split)]


def _dataset_table(ds: Any, name: str, key: str | None) -> Table:
    records = ds.to_list()
    canon = json.dumps(records, sort_keys=True, default=str, ensure_ascii=False)
    rows = tuple((f"{name}: row {i}", r) for i, r in enumerate(records, start=1))
    side = _hint(key, SIDE_NAMES) if key else None
    split = _hint(key, SPLIT_NAMES) if key else None
    return Table(name, rows, hashlib.sha256(canon.encode()).hexdigest(), side, split)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
