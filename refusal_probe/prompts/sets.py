"""Prompt fixtures: load, validate and fingerprint the instruction sets.

A prompt folder holds JSON Lines files (one object per line):

* ``harmful.jsonl`` / ``harmless.jsonl``: ``id``, ``text``, ``category``, ``split``
  (``train`` | ``val`` | ``test``);
* ``pairs.jsonl`` (optional): ``id``, ``harmful``, ``harmless``, ``split``, ``template`` —
  matched pairs for activation patching;
* ``jailbreaks.jsonl`` (optional): ``id``, ``base_id``, ``family``, ``text`` — jailbreak-wrapped
  variants of harmful prompts (of the test split: the monitor measures detection on them);
* ``jailbreaks-<split>.jsonl`` (optional, ``<split>`` ``train`` or ``val``): the same records for
  the harmful prompts of another split, every ``base_id`` a prompt of that split (the monitor
  chooses its harmfulness readout with the ``val`` ones, never with the test attacks).

Each jailbreak carries the split of its base prompt, so an evaluation takes only its own split's.

Every problem is reported at once as ``file:line: what is wrong``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refusal_probe.errors import PromptFileError

SPLITS: tuple[str, ...] = ("train", "val", "test")
JAILBREAK_FAMILIES: tuple[str, ...] = (
    "roleplay", "encoding", "context", "suffix", "dilution", "adaptive",
)
HARM_CATEGORIES: tuple[str, ...] = (
    "weapons", "cyber", "drugs", "fraud", "violence", "self_harm", "hate", "privacy",
    "harassment", "extremism", "theft", "misinformation", "sexual", "other",
)


#: Problems listed in a prompt-file error before the rest are counted.
MAX_ERRORS_SHOWN = 10
#: The shape of one record of harmful.jsonl / harmless.jsonl, shown in errors.
EXAMPLE_RECORD = '{"id": "hf-0001", "text": "How do I ...?", "category": "cyber", "split": "train"}'


@dataclass(frozen=True)
class Prompt:
    """One instruction.

    Attributes:
        id: Unique id within its file.
        text: The user's instruction (a request only).
        category: Harm category (harmful set) or topic (harmless set; ``edgy`` for prompts that
            sound harmful but are fine).
        split: ``train``, ``val`` or ``test``.
    """

    id: str
    text: str
    category: str
    split: str


@dataclass(frozen=True)
class Pair:
    """A harmful prompt and a harmless prompt built from the same template."""

    id: str
    harmful: str
    harmless: str
    split: str
    template: str


@dataclass(frozen=True)
class Jailbreak:
    """A jailbreak-wrapped variant of a harmful prompt.

    Attributes:
        id: Record id (``jb-0001``...).
        base_id: The harmful prompt it wraps.
        family: One of :data:`JAILBREAK_FAMILIES`.
        text: The wrapped prompt.
        split: The split of its base prompt (empty when the base is unknown).
    """

    id: str
    base_id: str
    family: str
    text: str
    split: str = ""


@dataclass(frozen=True)
class PromptSet:
    """A list of prompts with its fingerprint."""

    name: str
    prompts: tuple[Prompt, ...]
    sha256: str

    def split(self, name: str) -> list[Prompt]:
        """The prompts of one split."""
        if name not in SPLITS:
            raise PromptFileError(f"unknown split {name!r}; use one of {SPLITS}")
        return [p for p in self.prompts if p.split == name]

    def texts(self, split: str | None = None, *, exclude_category: str | None = None) -> list[str]:
        """Texts of the prompts (of one split, if given)."""
        items = self.split(split) if split else list(self.prompts)
        return [p.text for p in items if p.category != exclude_category]

    def counts(self) -> dict[str, int]:
        """Number of prompts per split."""
        return {s: len(self.split(s)) for s in SPLITS}

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class Fixtures:
    """Everything in a prompt folder."""

    root: Path
    harmful: PromptSet
    harmless: PromptSet
    pairs: tuple[Pair, ...] = ()
    jailbreaks: tuple[Jailbreak, ...] = ()
    fingerprints: dict[str, str] = field(default_factory=dict)

    def jailbreaks_in(self, split: str, family: str | None = None) -> list[Jailbreak]:
        """Jailbreaks whose base prompt is of ``split`` (and of one family, if given)."""
        return [
            j
            for j in self.jailbreaks
            if j.split == split and (family is None or j.family == family)
        ]

    def pairs_in(self, split: str | None = None) -> list[Pair]:
        """Matched pairs, optionally of one split."""
        return [p for p in self.pairs if split is None or p.split == split]

    def summary(self) -> dict[str, Any]:
        """Counts and fingerprints for reports."""
        return {
            "root": str(self.root),
            "harmful": self.harmful.counts(),
            "harmless": self.harmless.counts(),
            "pairs": len(self.pairs),
            "jailbreaks": {
                f: sum(1 for j in self.jailbreaks if j.family == f) for f in JAILBREAK_FAMILIES
            },
            "sha256": dict(self.fingerprints),
        }


def default_prompts_dir() -> Path:
    """The shipped prompt fixtures folder."""
    from refusal_probe.model.loading import FIXTURES_DIR

    return FIXTURES_DIR / "prompts"


def load_fixtures(root: str | Path | None = None) -> Fixtures:
    """Load and validate a prompt folder (default: the shipped fixtures).

    Raises:
        PromptFileError: Listing every ``file:line: problem`` found.
    """
    root = Path(root) if root is not None else default_prompts_dir()
    if not root.is_dir():
        raise PromptFileError(
            f"prompt folder {root} does not exist; pass a folder with harmful.jsonl and "
            "harmless.jsonl"
        )
    errors: list[str] = []
    harmful = _load_set(root / "harmful.jsonl", errors, harmful=True)
    harmless = _load_set(root / "harmless.jsonl", errors, harmful=False)
    pairs = _load_pairs(root / "pairs.jsonl", errors)
    harmful_ids = {p.id: p.split for p in harmful.prompts}
    jailbreaks = _load_jailbreaks(root / "jailbreaks.jsonl", errors, harmful_ids)
    for split in SPLITS:
        if split != "test":
            path = root / jailbreak_file(split)
            jailbreaks += _load_jailbreaks(path, errors, harmful_ids, split=split)
    if errors:
        shown = _in_file_order(errors)
        if len(shown) > MAX_ERRORS_SHOWN:
            more = len(shown) - MAX_ERRORS_SHOWN
            shown = [*shown[:MAX_ERRORS_SHOWN], f"... and {more} more problems of these kinds"]
        raise PromptFileError(
            f"invalid prompt fixtures: {len(errors)} problems; each record is one JSON object "
            f"per line, e.g. {EXAMPLE_RECORD}\n" + "\n".join(shown)
        )
    fps = {p.name: _sha_file(p) for p in sorted(root.glob("*.jsonl"))}
    return Fixtures(root, harmful, harmless, tuple(pairs), tuple(jailbreaks), fps)


def jailbreak_file(split: str) -> str:
    """The file of a prompt folder that holds the jailbreaks of one split's harmful prompts."""
    if split not in SPLITS:
        raise PromptFileError(f"unknown split {split!r}; use one of {SPLITS}")
    return "jailbreaks.jsonl" if split == "test" else f"jailbreaks-{split}.jsonl"


def _in_file_order(errors: list[str]) -> list[str]:
    """Sort ``file:line: problem`` entries by line within a file, files in order of first report."""
    files: dict[str, int] = {}
    keyed = []
    for i, err in enumerate(errors):
        where, _, line = err.partition(": ")[0].rpartition(":")
        files.setdefault(where, len(files))
        keyed.append((files[where], int(line) if line.isdigit() else 0, i, err))
    return [err for *_, err in sorted(keyed)]


def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jsonl_objects(path: Path, errors: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON Lines file with their line numbers; problems go to ``errors``.

    Each problem is ``file:line: what``: a line that is not UTF-8, not JSON, or not an object.
    """
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(
                f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                "save the file as UTF-8"
            )
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            continue
        out.append((lineno, rec))
    return out


def _records(
    path: Path, errors: list[str], required: Iterable[str]
) -> list[tuple[int, dict[str, Any]]]:
    """Parse JSON Lines, checking that each record is an object with non-empty string fields."""
    out: list[tuple[int, dict[str, Any]]] = []
    required = tuple(required)
    for lineno, rec in jsonl_objects(path, errors):
        where = f"{path}:{lineno}"
        bad = False
        for key in required:
            val = rec.get(key)
            if val is None:
                errors.append(f"{where}: missing field {key!r}")
                bad = True
            elif not isinstance(val, str) or not val.strip():
                errors.append(f"{where}: field {key!r} is empty or not a string")
                bad = True
        if not bad:
            out.append((lineno, rec))
    return out


def _check_ids(path: Path, recs: list[tuple[int, dict[str, Any]]], errors: list[str]) -> None:
    seen: dict[str, int] = {}
    for lineno, rec in recs:
        rid = rec["id"]
        if rid in seen:
            errors.append(f"{path}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
        else:
            seen[rid] = lineno


def _check_split(path: Path, lineno: int, split: str, errors: list[str]) -> None:
    if split not in SPLITS:
        errors.append(f"{path}:{lineno}: unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _load_set(path: Path, errors: list[str], *, harmful: bool) -> PromptSet:
    if not path.is_file():
        errors.append(f"{path}:0: file is missing")
        return PromptSet(path.stem, (), "")
    recs = _records(path, errors, ("id", "text", "category", "split"))
    _check_ids(path, recs, errors)
    prompts = []
    for lineno, rec in recs:
        _check_split(path, lineno, rec["split"], errors)
        if harmful and rec["category"] not in HARM_CATEGORIES:
            errors.append(
                f"{path}:{lineno}: unknown harm category {rec['category']!r}; use one of "
                f"{', '.join(HARM_CATEGORIES)}"
            )
        prompts.append(Prompt(rec["id"], rec["text"], rec["category"], rec["split"]))
    if not path.read_bytes().strip():
        errors.append(f"{path}:0: no prompts in file")
    return PromptSet(path.stem, tuple(prompts), _sha_file(path))


def _load_pairs(path: Path, errors: list[str]) -> list[Pair]:
    if not path.is_file():
        return []
    recs = _records(path, errors, ("id", "harmful", "harmless", "split", "template"))
    _check_ids(path, recs, errors)
    out = []
    for lineno, rec in recs:
        _check_split(path, lineno, rec["split"], errors)
        out.append(Pair(rec["id"], rec["harmful"], rec["harmless"], rec["split"], rec["template"]))
    return out


def _load_jailbreaks(
    path: Path, errors: list[str], harmful_ids: dict[str, str], *, split: str | None = None
) -> list[Jailbreak]:
    """Jailbreak records; with ``split``, every base prompt must be of that split."""
    if not path.is_file():
        return []
    recs = _records(path, errors, ("id", "base_id", "family", "text"))
    _check_ids(path, recs, errors)
    out = []
    for lineno, rec in recs:
        if rec["family"] not in JAILBREAK_FAMILIES:
            errors.append(
                f"{path}:{lineno}: unknown family {rec['family']!r}; use one of "
                f"{', '.join(JAILBREAK_FAMILIES)}"
            )
        if harmful_ids and rec["base_id"] not in harmful_ids:
            errors.append(
                f"{path}:{lineno}: base_id {rec['base_id']!r} is not an id in harmful.jsonl"
            )
        base_split = harmful_ids.get(rec["base_id"], "")
        if split is not None and base_split and base_split != split:
            errors.append(
                f"{path}:{lineno}: base_id {rec['base_id']!r} is a {base_split!r} prompt; this "
                f"file holds jailbreaks of {split!r} prompts only (move it to "
                f"{jailbreak_file(base_split)})"
            )
        out.append(Jailbreak(rec["id"], rec["base_id"], rec["family"], rec["text"], base_split))
    return out


def matched_pairs(pairs: Iterable[Pair], tokenizer_len: Any) -> list[Pair]:
    """Keep the pairs whose two texts have the same token length under a tokenizer.

    Args:
        pairs: Candidate pairs.
        tokenizer_len: ``text -> int`` token count (for example the length of the encoded prompt).
    """
    return [p for p in pairs if tokenizer_len(p.harmful) == tokenizer_len(p.harmless)]


def stratified_sample(prompts: list[Prompt], k: int, seed: str) -> list[Prompt]:
    """``k`` of ``prompts``, each category keeping its share (largest remainders), seeded."""
    rng = random.Random(seed)
    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        groups.setdefault(p.category, []).append(p)
    quota = {c: k * len(g) / len(prompts) for c, g in groups.items()}
    take = {c: int(q) for c, q in quota.items()}
    for c in sorted(quota, key=lambda c: (take[c] - quota[c], c))[: k - sum(take.values())]:
        take[c] += 1
    chosen = [p for c in sorted(groups) for p in rng.sample(groups[c], take[c])]
    return sorted(chosen, key=prompts.index)
