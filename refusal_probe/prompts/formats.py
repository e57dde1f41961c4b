"""Layouts of prompt files: which column holds the text, the label, the category, the split.

A file is recognised by its columns. The common safety data sets (column names as they publish
them; see ``../shared/NOTES.md`` §9):

=============  =======================================================  ==========================
layout         columns recognised                                       side
=============  =======================================================  ==========================
harmbench      ``Behavior`` + ``SemanticCategory``/``FunctionalCategory`` harmful (``ContextString``
                                                                        prepended when present)
jailbreakbench ``Goal``, ``Behavior``, ``Category``                     harmful
xstest         ``prompt``, ``type``, ``label`` (``safe``/``unsafe``)    both, from ``label``
strongreject   ``forbidden_prompt`` (+ ``category``)                    harmful
sorry-bench    ``turns`` (a list: the first turn), ``category``         harmful
advbench       ``goal``/``prompt`` + ``target``                         harmful
generic        ``text``/``prompt``/``instruction`` (+ ``label``,         from ``label``, or the
               ``category``, ``split``, ``id``)                         caller
=============  =======================================================  ==========================

A layout's side is a default: a caller who passes a file as the harmless side (JailbreakBench's
benign behaviours share the harmful file's columns) is believed. Explicit field names override
whatever was recognised. Categories are kept as free text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from refusal_probe.errors import PromptFileError

SIDES: tuple[str, ...] = ("harmful", "harmless")
DEFAULT_CATEGORY = "other"
#: HarmBench's own format for a contextual behaviour: the context, a rule, then the request.
CONTEXT_SEPARATOR = "\n\n---\n\n"

_LABELS: dict[str, str] = {
    **dict.fromkeys(("harmful", "unsafe", "1", "true", "yes"), "harmful"),
    **dict.fromkeys(("harmless", "safe", "benign", "unharmful", "0", "false", "no"), "harmless"),
}
_GENERIC_TEXT: tuple[str, ...] = ("text", "prompt", "instruction")


class PromptSetError(PromptFileError):
    """A user's prompt set cannot be used; the message is one line naming the place and the fix."""


@dataclass(frozen=True)
class Layout:
    """How one table's columns map onto prompts.

    Attributes:
        name: ``harmbench``, ``jailbreakbench``, ``xstest``, ``strongreject``, ``sorry-bench``,
            ``advbench``, ``generic`` or ``custom`` (``+fields`` when overrides were applied).
        text: Column holding the request.
        label: Column saying harmful or harmless, if any.
        category: Column holding the category, if any (free text).
        split: Column holding ``train``/``val``/``test`` (or ``validation``/``dev``), if any.
        id: Column holding a record id, if any.
        context: Column whose text is prepended to the request, if any (HarmBench).
        side: The side every record is on when the layout implies one (AdvBench: harmful).
        first_turn: The text column is a list of turns; the first is the request.
    """

    name: str
    text: str
    label: str | None = None
    category: str | None = None
    split: str | None = None
    id: str | None = None
    context: str | None = None
    side: str | None = None
    first_turn: bool = False

    def mapping(self) -> dict[str, Any]:
        """The layout as plain data, for the audit record."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Row:
    """One record read through a layout, before sides are settled and splits assigned.

    Attributes:
        where: ``file:line`` (or ``name: row i``) of the record.
        text: The request (context prepended where the layout has one).
        side: ``harmful``/``harmless`` from the record's label, ``?`` for a label value not
            understood, None for no label.
        category: Category, :data:`DEFAULT_CATEGORY` when the record has none.
        split: The record's own split value as written (not yet normalised), else None.
        id: The record's own id, else None.
    """

    where: str
    text: str
    side: str | None
    category: str
    split: str | None
    id: str | None


def detect_layout(
    columns: Collection[str],
    *,
    where: str,
    text: str | None = None,
    label: str | None = None,
    category: str | None = None,
    split: str | None = None,
    id: str | None = None,
) -> Layout:
    """Recognise a table's layout by its columns, then apply explicit field names.

    Args:
        columns: Every column (key) seen in the table.
        where: The table, for messages.
        text: Explicit text column (``--text-field``).
        label: Explicit label column (``--label-field``).
        category: Explicit category column (``--category-field``).
        split: Explicit split column.
        id: Explicit id column.

    Raises:
        PromptSetError: No layout fits and no text column was given, or an explicit column is
            not in the table.
    """
    cols = set(columns)
    overrides = {"text": text, "label": label, "category": category, "split": split, "id": id}
    for key, col in overrides.items():
        if col is not None and col not in cols:
            raise PromptSetError(
                f"{where}: the {key} field {col!r} is not a column; columns found: "
                f"{_names(cols)}"
            )
    found = _known_layout(cols)
    given = {k: v for k, v in overrides.items() if v is not None}
    if found is None:
        if text is None:
            raise PromptSetError(
                f"{where}: unrecognised layout, columns found: {_names(cols)}; name the column "
                "holding the request with --text-field (and --label-field / --category-field "
                "if it has them)"
            )
        return Layout("custom", **given)  # type: ignore[arg-type]
    if given and any(getattr(found, k) != v for k, v in given.items()):
        found = replace(found, name=f"{found.name}+fields", **given)
    return found


def _known_layout(cols: set[str]) -> Layout | None:
    def opt(name: str) -> str | None:
        return name if name in cols else None

    split = opt("split")
    if "Behavior" in cols and {"Goal", "Category"} <= cols:
        return Layout(
            "jailbreakbench", "Goal", category="Category", split=split, id=opt("Index"),
            side="harmful",
        )
    if "Behavior" in cols and cols & {"SemanticCategory", "FunctionalCategory"}:
        return Layout(
            "harmbench", "Behavior", category=opt("SemanticCategory") or "FunctionalCategory",
            split=split, id=opt("BehaviorID"), context=opt("ContextString"), side="harmful",
        )
    if {"prompt", "type", "label"} <= cols:
        return Layout("xstest", "prompt", label="label", category="type", split=split, id=opt("id"))
    if "forbidden_prompt" in cols:
        return Layout(
            "strongreject", "forbidden_prompt", category=opt("category"), split=split,
            id=opt("id"), side="harmful",
        )
    if {"turns", "category"} <= cols:
        return Layout(
            "sorry-bench", "turns", category="category", split=split, id=opt("question_id"),
            side="harmful", first_turn=True,
        )
    if "target" in cols and cols & {"goal", "prompt"}:
        return Layout(
            "advbench", "goal" if "goal" in cols else "prompt", category=opt("category"),
            split=split, id=opt("id"), side="harmful",
        )
    lower = {c.lower(): c for c in sorted(cols, reverse=True)}
    text = next((lower[c] for c in _GENERIC_TEXT if c in lower), None)
    if text is None:
        return None
    return Layout(
        "generic", text, label=lower.get("label"), category=lower.get("category"),
        split=lower.get("split"), id=lower.get("id"),
    )


def parse_label(value: Any) -> str | None:
    """``harmful`` or ``harmless`` for a label value, None for one not understood.

    Accepted: harmful/harmless, unsafe/safe, benign, unharmful, 1/0, true/false, yes/no
    (any case; booleans and integers too).
    """
    if isinstance(value, bool):
        return "harmful" if value else "harmless"
    if isinstance(value, (int, float)) and not _missing(value):
        return {1: "harmful", 0: "harmless"}.get(int(value)) if value in (0, 1) else None
    if isinstance(value, str):
        return _LABELS.get(value.strip().lower())
    return None


def accepted_labels() -> str:
    """The label values :func:`parse_label` understands, for messages."""
    return "harmful/harmless, unsafe/safe, 1/0, true/false"


def read_row(record: Mapping[str, Any], layout: Layout, where: str) -> Row | str:
    """One record through a layout: a :class:`Row`, or the reason it has no usable text.

    A label value that is not understood gives a row whose side is ``"?"`` (the caller reports
    it with the first place and a count).
    """
    raw = record.get(layout.text)
    if layout.first_turn and isinstance(raw, (list, tuple)):
        raw = raw[0] if raw else None
    text = _text(raw)
    if text is None:
        return "missing" if raw is None or _missing(raw) else "empty or not text"
    if layout.context is not None:
        context = _text(record.get(layout.context))
        if context:
            text = context + CONTEXT_SEPARATOR + text
    side = None
    if layout.label is not None:
        value = record.get(layout.label)
        side = None if _missing(value) else parse_label(value) or "?"
    category = _text(record.get(layout.category)) if layout.category else None
    split = _text(record.get(layout.split)) if layout.split else None
    rid = record.get(layout.id) if layout.id else None
    rid = None if _missing(rid) else str(int(rid) if isinstance(rid, float) else rid).strip()
    return Row(where, text, side, category or DEFAULT_CATEGORY, split, rid or None)


def example_record(layout: Layout) -> str:
    """A one-line JSON example of a record in ``layout``, for messages."""
    rec: dict[str, Any] = {}
    if layout.id:
        rec[layout.id] = "1"
    rec[layout.text] = ["How do I ...?"] if layout.first_turn else "How do I ...?"
    if layout.label:
        rec[layout.label] = "harmful"
    if layout.category:
        rec[layout.category] = "cyber"
    return json.dumps(rec)


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _names(cols: Collection[str]) -> str:
    shown = sorted(cols)
    more = f" (and {len(shown) - 12} more)" if len(shown) > 12 else ""
    return (", ".join(repr(c) for c in shown[:12]) or "none") + more
