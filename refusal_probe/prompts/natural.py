"""The natural-language default prompt set: its split assignment and its validator.

``fixtures/prompts/natural/`` holds requests written by hand by this project (not by the
organism's grammar, not copied from any data set): ``harmful.jsonl`` (ids ``nh-0001``...) and
``harmless.jsonl`` (ids ``nb-0001``...), each record ``id``, ``text``, ``category``, ``split``
-- the schema of :mod:`refusal_probe.prompts.sets` -- plus ``edgy_type`` on the harmless
prompts of category ``edgy`` (requests that borrow the vocabulary of harm but are fine).

:func:`validate_natural_set` checks the counts, the uniqueness of ids and texts (near
duplicates included), the length spread, the variety of openings, the splits, the encoding, that
no surface cue (length, a final "?", the first word) tells the two sides apart, and screens every
record for operational content: the harmful records are *requests only* and must never carry
instructions, code, links or quantities. :func:`assign_splits` is the seeded, stratified split
the shipped files were written with (seed :data:`NATURAL_SEED`)::

    python -m refusal_probe.prompts.natural fixtures/prompts/natural   # problems; exit 1 if any
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from refusal_probe.prompts.sets import HARM_CATEGORIES, SPLITS, jsonl_objects

NATURAL_SEED = 16
"""Seed of the shipped split assignment (``assign_splits(records, NATURAL_SEED)``)."""

SPLIT_SHARES: dict[str, float] = {"train": 0.50, "val": 0.15, "test": 0.35}
SPLIT_TOLERANCE = 0.05
"""How far a side's share of a split may be from :data:`SPLIT_SHARES`."""

HARMFUL_CATEGORIES: tuple[str, ...] = HARM_CATEGORIES
"""Harm categories of the natural set: the loader's fixed list (``sets.HARM_CATEGORIES``)."""

HARMLESS_CATEGORIES: tuple[str, ...] = (
    "cooking", "tech", "health", "finance", "travel", "arts", "science", "history",
    "education", "home", "pets", "fitness", "work", "language", "edgy",
)
EDGY_TYPES: tuple[str, ...] = (
    "homonym", "figurative", "safe_target", "safe_context", "definition", "history",
    "fiction", "public_figure_privacy", "real_group_nonsense",
)

MIN_HARMFUL = 600
MIN_HARMLESS = 600
MIN_EDGY = 200
MIN_HARM_CATEGORIES = 12
MIN_PER_HARM_CATEGORY = 30
MIN_TEST_PER_SIDE = 200
MIN_WORDS, MAX_WORDS = 5, 150
LENGTH_BANDS: tuple[tuple[int, int], ...] = ((5, 12), (13, 39), (40, 150))
MIN_BAND_SHARE = 0.08
"""Each side has at least this share of its prompts in every band of :data:`LENGTH_BANDS`."""
MAX_OPENING_SHARE = 0.08
"""No three-word opening starts more than this share of a side (a template would)."""
MAX_MEDIAN_GAP = 3
"""The sides' median word counts differ by at most this many words (length is no label)."""
MAX_QUESTION_GAP = 0.25
"""The sides' shares of prompts ending in "?" differ by at most this much (nor is form)."""
MAX_FIRST_WORD_TVD = 0.5
"""Total variation distance between the sides' first-word distributions, at most."""
NEAR_DUPLICATE_JACCARD = 0.85
"""Two texts of one side whose word sets overlap this much (Jaccard) are near duplicates."""

_ID_PATTERN = {"harmful": re.compile(r"^nh-\d{4}$"), "harmless": re.compile(r"^nb-\d{4}$")}

# Operational content: what a request never needs. Every pattern is applied to both sides, the
# quantity pattern to the harmful side only (a cooking question may ask about grams of flour).
_OPERATIONAL: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a numbered step list", re.compile(r"(^|\n)\s*(step\s*)?\d+\s*[.):]\s+\S", re.I)),
    ("an inline numbered list", re.compile(r"\b1[.)]\s+\S.*\b2[.)]\s+\S", re.S)),
    ("a code block", re.compile(r"```|~~~|(^|\n)(    |\t)\S")),
    ("code", re.compile(
        r"(\bimport\s+\w+|\bdef\s+\w+\s*\(|#include\s*<|\bsudo\s|\brm\s+-rf|<script|"
        r"\bSELECT\s.+\bFROM\b|;\s*$|\{\s*\}|=>|\$\(|\beval\()", re.M)),
    ("a URL", re.compile(r"(https?://|\bwww\.|\b[\w-]+\.(com|org|net|onion|io|ru)\b)", re.I)),
    ("an e-mail address", re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")),
    ("a phone number", re.compile(r"\+?\d[\d ()-]{7,}\d")),
)
_QUANTITY = re.compile(
    r"\b\d+(\.\d+)?\s*(mg|g|kg|ml|l|µg|mcg|oz|lbs?|%|°[CF])(?!\w)|"  # case matters: not "5G"
    r"(?i:\b\d+(\.\d+)?\s*(mol|mmol|grams?|kilos?|kilograms?|milligrams?|litres?|liters?|"
    r"millilit(re|er)s?|ounces?|pounds?|percent|degrees)\b)|"
    r"(?i:\b(grams|milligrams|millilitres|milliliters|ounces|litres|liters) of\b)"
)


def word_count(text: str) -> int:
    """Whitespace-separated words of a text."""
    return len(text.split())


def normalize(text: str) -> str:
    """Lowercase, letters and digits only, single spaces: equal for texts that differ in form."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower().replace("_", " ")).split())


def near_duplicates(
    texts: list[str], threshold: float = NEAR_DUPLICATE_JACCARD, min_words: int = 6
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, jaccard)``, ``i < j``, of different texts with overlapping word sets.

    A pair is reported when its word sets overlap at least ``threshold`` (Jaccard), among texts
    of at least ``min_words`` distinct words.

    Exact and fast (prefix filtering): with the words of each set ordered rarest first, two sets
    that overlap that much share a word among their first ``n - ceil(threshold * n) + 1``.
    """
    sets = [frozenset(t.split()) for t in texts]
    freq = Counter(w for s in sets for w in s)
    index: dict[str, list[int]] = {}
    out = []
    for j, words in enumerate(sets):
        if len(words) < min_words:
            continue
        ordered = sorted(words, key=lambda w: (freq[w], w))
        prefix = ordered[: len(words) - math.ceil(threshold * len(words) - 1e-9) + 1]
        candidates = sorted({i for w in prefix for i in index.get(w, ())})
        for i in candidates:
            other = sets[i]
            jaccard = len(words & other) / len(words | other)
            if jaccard >= threshold and texts[i] != texts[j]:
                out.append((i, j, jaccard))
        for w in prefix:
            index.setdefault(w, []).append(j)
    return out


def operational_problems(text: str, *, harmful: bool) -> list[str]:
    """What in ``text`` looks like operational content rather than a request (empty if none)."""
    found = [name for name, pattern in _OPERATIONAL if pattern.search(text)]
    if harmful and _QUANTITY.search(text):
        found.append("a quantity with a unit")
    return found


def assign_splits(records: Iterable[Mapping[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Seeded, stratified train/val/test assignment.

    Records are grouped by ``category`` (and ``edgy_type`` where present), each group is
    ordered by id and shuffled with a generator seeded by ``seed`` and the group's name, and
    split 50/15/35 % (train and val rounded down, the rest test), so every split holds every
    group of at least 7 records and a rerun gives the same splits. The input is not changed;
    the records come back in the order given, each with its ``split``.
    """
    recs = [dict(r) for r in records]
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(recs):
        key = f"{rec['category']}/{rec.get('edgy_type', '')}"
        groups.setdefault(key, []).append(i)
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda i: str(recs[i]["id"]))
        random.Random(f"{seed}:{key}").shuffle(members)
        n = len(members)
        n_train = int(n * SPLIT_SHARES["train"])
        n_val = int(n * SPLIT_SHARES["val"])
        for rank, i in enumerate(members):
            recs[i]["split"] = (
                "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            )
    return recs


def read_jsonl(path: Path, problems: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """Records of a JSON Lines file, with their line numbers; problems appended as found."""
    if not path.is_file():
        problems.append(f"{path}: file is missing")
        return []
    return jsonl_objects(path, problems)


def _check_records(
    path: Path, side: str, recs: list[tuple[int, dict[str, Any]]], problems: list[str]
) -> list[dict[str, Any]]:
    """Field-level checks; returns the records whose fields are well formed."""
    harmful = side == "harmful"
    categories = HARMFUL_CATEGORIES if harmful else HARMLESS_CATEGORIES
    good = []
    for lineno, rec in recs:
        where = f"{path}:{lineno}"
        bad = False
        for key in ("id", "text", "category", "split"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                problems.append(f"{where}: field {key!r} is missing, empty or not a string")
                bad = True
        if bad:
            continue
        if not _ID_PATTERN[side].match(rec["id"]):
            problems.append(f"{where}: id {rec['id']!r} is not of the form "
                            f"{'nh' if harmful else 'nb'}-0001")
        if rec["category"] not in categories:
            problems.append(f"{where}: unknown category {rec['category']!r}; use one of "
                            f"{', '.join(categories)}")
        if rec["split"] not in SPLITS:
            problems.append(f"{where}: unknown split {rec['split']!r}")
        edgy = rec.get("edgy_type")
        if rec["category"] == "edgy" and not harmful:
            if edgy not in EDGY_TYPES:
                problems.append(f"{where}: edgy prompt needs an edgy_type, one of "
                                f"{', '.join(EDGY_TYPES)} (got {edgy!r})")
        elif edgy is not None:
            problems.append(f"{where}: edgy_type on a prompt that is not in category 'edgy'")
        text = rec["text"]
        n = word_count(text)
        if not MIN_WORDS <= n <= MAX_WORDS:
            problems.append(f"{where}: {n} words; the range is {MIN_WORDS}-{MAX_WORDS}")
        for what in operational_problems(text, harmful=harmful):
            problems.append(f"{where}: text contains {what}; a prompt is a request only")
        good.append({**rec, "_where": where})
    return good


def _check_side(side: str, recs: list[dict[str, Any]], problems: list[str]) -> None:
    """Counts, uniqueness, length spread, openings and splits of one side."""
    harmful = side == "harmful"
    label = f"{side}.jsonl"
    need = MIN_HARMFUL if harmful else MIN_HARMLESS
    if len(recs) < need:
        problems.append(f"{label}: {len(recs)} prompts; at least {need} are needed")
    cats = Counter(r["category"] for r in recs)
    if harmful:
        if len(cats) < MIN_HARM_CATEGORIES:
            problems.append(f"{label}: {len(cats)} categories; at least {MIN_HARM_CATEGORIES}")
        for cat, n in sorted(cats.items()):
            if n < MIN_PER_HARM_CATEGORY:
                problems.append(f"{label}: category {cat!r} has {n} prompts; at least "
                                f"{MIN_PER_HARM_CATEGORY}")
    elif cats["edgy"] < MIN_EDGY:
        problems.append(f"{label}: {cats['edgy']} edgy prompts; at least {MIN_EDGY}")

    seen_ids: dict[str, str] = {}
    seen_texts: dict[str, str] = {}
    for r in recs:
        if r["id"] in seen_ids:
            problems.append(f"{r['_where']}: duplicate id {r['id']!r} (first at "
                            f"{seen_ids[r['id']]})")
        else:
            seen_ids[r["id"]] = r["_where"]
        key = normalize(r["text"])
        if key in seen_texts:
            problems.append(f"{r['_where']}: duplicate text (after normalizing; first at "
                            f"{seen_texts[key]})")
        else:
            seen_texts[key] = r["_where"]
    for a, b, jaccard in near_duplicates([normalize(r["text"]) for r in recs]):
        problems.append(f"{recs[b]['_where']}: near duplicate of {recs[a]['_where']} (word "
                        f"overlap {jaccard:.2f})")

    if recs:
        lengths = [word_count(r["text"]) for r in recs]
        for lo, hi in LENGTH_BANDS:
            share = sum(lo <= n <= hi for n in lengths) / len(lengths)
            if share < MIN_BAND_SHARE:
                problems.append(f"{label}: {share:.0%} of prompts have {lo}-{hi} words; at "
                                f"least {MIN_BAND_SHARE:.0%} (the lengths must spread)")
        openings = Counter(" ".join(normalize(r["text"]).split()[:3]) for r in recs)
        for opening, n in openings.most_common():
            if n / len(recs) <= MAX_OPENING_SHARE or len(recs) < 50:
                break
            problems.append(f"{label}: {n} prompts open with {opening!r}; at most "
                            f"{MAX_OPENING_SHARE:.0%} may share an opening")

        splits = Counter(r["split"] for r in recs)
        for split, share in SPLIT_SHARES.items():
            got = splits[split] / len(recs)
            if abs(got - share) > SPLIT_TOLERANCE:
                problems.append(f"{label}: split {split!r} holds {got:.0%}; expected "
                                f"{share:.0%} +- {SPLIT_TOLERANCE:.0%}")
        if splits["test"] < MIN_TEST_PER_SIDE:
            problems.append(f"{label}: {splits['test']} test prompts; at least "
                            f"{MIN_TEST_PER_SIDE}")
        for cat, n in sorted(cats.items()):
            missing = [s for s in SPLITS if not any(
                r["split"] == s and r["category"] == cat for r in recs)]
            if missing and n >= 7:
                problems.append(f"{label}: category {cat!r} has no prompt in split(s) "
                                f"{', '.join(missing)}")


def _check_balance(
    harmful: list[dict[str, Any]], harmless: list[dict[str, Any]], problems: list[str]
) -> None:
    """Surface cues that tell the sides apart without reading them: length, "?", first word."""
    medians = [statistics.median(word_count(r["text"]) for r in recs)
               for recs in (harmful, harmless)]
    if abs(medians[0] - medians[1]) > MAX_MEDIAN_GAP:
        problems.append(f"median length {medians[0]:g} words (harmful) vs {medians[1]:g} "
                        f"(harmless); at most {MAX_MEDIAN_GAP} apart, or length alone tells "
                        "the sides apart")
    questions = [sum(r["text"].rstrip().endswith("?") for r in recs) / len(recs)
                 for recs in (harmful, harmless)]
    if abs(questions[0] - questions[1]) > MAX_QUESTION_GAP:
        problems.append(f"{questions[0]:.0%} of harmful and {questions[1]:.0%} of harmless "
                        f"prompts end with '?'; at most {MAX_QUESTION_GAP:.0%} apart")
    firsts = [Counter((normalize(r["text"]).split() or [""])[0] for r in recs)
              for recs in (harmful, harmless)]
    tvd = 0.5 * sum(abs(firsts[0][w] / len(harmful) - firsts[1][w] / len(harmless))
                    for w in set(firsts[0]) | set(firsts[1]))
    if tvd > MAX_FIRST_WORD_TVD:
        top = [w for w, _ in (firsts[0] - firsts[1]).most_common(3)]
        problems.append(f"the sides' first words differ too much (total variation {tvd:.2f}, "
                        f"at most {MAX_FIRST_WORD_TVD}); most over-used on the harmful side: "
                        f"{', '.join(top)}")


def validate_natural_set(folder: str | Path) -> list[str]:
    """Every problem of a natural prompt folder (``harmful.jsonl``, ``harmless.jsonl``).

    Returns:
        One line per problem, ``file:line: what`` where a line is known; empty when the set is
        fine.
    """
    folder = Path(folder)
    problems: list[str] = []
    if not folder.is_dir():
        return [f"{folder}: not a folder"]
    sides: dict[str, list[dict[str, Any]]] = {}
    for side in ("harmful", "harmless"):
        path = folder / f"{side}.jsonl"
        sides[side] = _check_records(path, side, read_jsonl(path, problems), problems)
        _check_side(side, sides[side], problems)
    if all(sides.values()):
        _check_balance(sides["harmful"], sides["harmless"], problems)
    return problems


def summary(folder: str | Path) -> dict[str, Any]:
    """Counts per side, category, edgy type and split, and word-length statistics."""
    out: dict[str, Any] = {}
    for side in ("harmful", "harmless"):
        recs = [r for _, r in read_jsonl(Path(folder) / f"{side}.jsonl", [])]
        lengths = sorted(word_count(r["text"]) for r in recs)
        out[side] = {
            "prompts": len(recs),
            "categories": dict(sorted(Counter(r["category"] for r in recs).items())),
            "edgy_types": dict(sorted(Counter(
                r["edgy_type"] for r in recs if "edgy_type" in r).items())),
            "splits": {s: sum(r["split"] == s for r in recs) for s in SPLITS},
            "words": {
                "min": lengths[0], "median": statistics.median(lengths),
                "mean": round(statistics.fmean(lengths), 1), "max": lengths[-1],
                **{f"{lo}-{hi}": sum(lo <= n <= hi for n in lengths)
                   for lo, hi in LENGTH_BANDS},
            } if lengths else {},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m refusal_probe.prompts.natural FOLDER [--summary]``: print problems."""
    args = list(sys.argv[1:] if argv is None else argv)
    show = "--summary" in args
    args = [a for a in args if a != "--summary"]
    folder = Path(args[0]) if args else Path("fixtures/prompts/natural")
    problems = validate_natural_set(folder)
    for line in problems:
        print(line)
    if show:
        print(json.dumps(summary(folder), indent=2))
    if problems:
        print(f"{len(problems)} problem(s) in {folder}", file=sys.stderr)
        return 1
    print(f"{folder}: natural prompt set is valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
