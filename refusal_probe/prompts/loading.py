"""Load a user's prompt sets: any supported source, its layout recognised, split, checked.

:func:`load_prompt_source` reads one source (what ``--harmful``, ``--harmless`` or ``--prompts``
names); :func:`load_user_prompts` reads those given, merges them and checks both sides have
enough prompts in every split the audits use. Every problem is one line naming the place and
what to do (:class:`~refusal_probe.prompts.formats.PromptSetError`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from refusal_probe.prompts.formats import (
    SIDES,
    Layout,
    PromptSetError,
    Row,
    accepted_labels,
    detect_layout,
    example_record,
    read_row,
)
from refusal_probe.prompts.limits import NO_LIMIT, TextLimit
from refusal_probe.prompts.loaded import (
    Duplicate,
    LoadedPrompts,
    SourceRecord,
    TableRecord,
    check_ready,
    check_sides_disjoint,
    merge,
    prompt_set,
)
from refusal_probe.prompts.sets import Prompt
from refusal_probe.prompts.sources import Table, read_source
from refusal_probe.prompts.splits import (
    DEFAULT_FRACTIONS,
    DEFAULT_MINIMUM,
    HELD_OUT,
    Fractions,
    assign_splits,
    normalize_split,
)


@dataclass(frozen=True)
class Fields:
    """Explicit column names (``--text-field``, ``--label-field``, ``--category-field``)."""

    text: str | None = None
    label: str | None = None
    category: str | None = None
    split: str | None = None
    id: str | None = None


def load_prompt_source(
    source: str | Path,
    *,
    side: str | None = None,
    text_field: str | None = None,
    label_field: str | None = None,
    category_field: str | None = None,
    split_field: str | None = None,
    id_field: str | None = None,
    fractions: Fractions = DEFAULT_FRACTIONS,
    seed: int = 0,
    held_out: bool = False,
    max_chars: int | None = None,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> LoadedPrompts:
    """Read one prompt source into harmful and harmless prompt sets.

    Args:
        source: A ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` file, a folder of them, a
            ``datasets.save_to_disk`` folder, or ``hf:<name>[:<config>][@<split>]``.
        side: ``harmful`` or ``harmless`` when the source was given as one side: records without
            a label are on it, records labelled for the other side are dropped (counted).
            None: each record's side comes from its label or its layout (AdvBench: harmful).
        text_field: Column holding the request (overrides the recognised layout).
        label_field: Column saying harmful or harmless.
        category_field: Column holding the category (free text).
        split_field: Column holding the split (``train``/``val``/``test``, ``validation``/``dev``).
        id_field: Column holding ids (otherwise made from a hash of each text).
        fractions: Shares of the automatic split, used when the source has no splits.
        seed: Seed of the automatic split.
        held_out: Put every prompt in the test split (a benchmark measured with a direction fit
            on another set); the source's own splits are ignored.
        max_chars: Longest prompt in characters; longer ones lose their start (counted).
        max_tokens: Longest prompt in tokens under ``count_tokens``; the same.
        count_tokens: ``text -> number of tokens``, needed with ``max_tokens``.

    Returns:
        The prompts of each side (a side may be empty) with the record of how they were read.

    Raises:
        PromptSetError: One line: the source is unreadable, its layout unknown, records lack
            text or a usable label, ids repeat, a split value is unknown, or ``side`` was given
            and nothing is left on it.
    """
    if side is not None and side not in SIDES:
        raise PromptSetError(f"unknown side {side!r}; use harmful or harmless")
    fields = Fields(text_field, label_field, category_field, split_field, id_field)
    limit = TextLimit(max_chars, max_tokens, count_tokens)
    tables, notes = _named_splits(read_source(source))
    if side is not None and len({t.side for t in tables if t.side}) < 2:
        # A file name alone (safe_completions.csv) does not overrule the side it was given as;
        # a folder or data set naming both sides does.
        tables = [replace(t, side=None) for t in tables]
    if not any(t.rows for t in tables):
        raise PromptSetError(f"{source}: no records; a prompt set needs at least one prompt")
    rows: dict[str, list[Row]] = {s: [] for s in SIDES}
    records, other_side = [], 0
    for table in tables:
        layout = _layout(table, fields)
        records.append(TableRecord(table.name, table.sha256, layout, len(table.rows)))
        read, dropped = _sided_rows(table, layout, side)
        other_side += dropped
        for row in read:
            rows[row.side or ""].append(row)
        if side is not None and layout.side not in (None, side) and layout.label is None:
            notes.append(f"{table.name}: a {layout.name} file (a {layout.side} set) was given "
                         f"as the {side} side")
    if side is not None and not rows[side]:
        why = f" ({other_side} records are labelled for the other side)" if other_side else ""
        raise PromptSetError(f"{source}: no {side} prompts{why}")
    sets, truncated, duplicates, methods = {}, [], [], set()
    for s in SIDES:
        kept, cut, dups = _clean(rows[s], s, limit)
        prompts, method = _split(kept, s, fractions, seed, held_out)
        sets[s], methods = prompts, methods | ({method} if prompts else set())
        truncated += [f"{s}/{p.id}" for p in prompts if p.id in cut]
        duplicates += dups
    check_sides_disjoint(sets["harmful"], sets["harmless"])
    record = SourceRecord(
        str(source), side, tuple(records), "+".join(sorted(methods)) or "none",
        {s: len(sets[s]) for s in SIDES}, other_side,
    )
    return LoadedPrompts(
        prompt_set("harmful", sets["harmful"]), prompt_set("harmless", sets["harmless"]),
        (record,), seed, HELD_OUT if held_out else fractions, limit.describe(),
        tuple(truncated), tuple(duplicates), tuple(notes),
    )


def load_user_prompts(
    *,
    prompts: str | Path | None = None,
    harmful: str | Path | None = None,
    harmless: str | Path | None = None,
    held_out: bool = False,
    minimum: Mapping[str, int] = DEFAULT_MINIMUM,
    fields: Fields | None = None,
    fractions: Fractions = DEFAULT_FRACTIONS,
    seed: int = 0,
    limit: TextLimit = NO_LIMIT,
) -> LoadedPrompts:
    """Read ``--prompts``, ``--harmful`` and ``--harmless`` (those given) and check them.

    Args:
        prompts: A labelled set (both sides).
        harmful: A source read as the harmful side.
        harmless: A source read as the harmless side.
        held_out: Every prompt goes to the test split (only its minimum is checked).
        minimum: Fewest prompts per side per split.
        fields: Explicit column names, applied to every source.
        fractions: Shares of the automatic split.
        seed: Seed of the automatic split.
        limit: Length limit (prompts over it lose their start; counted).

    Raises:
        PromptSetError: As :func:`load_prompt_source`, and when a side is empty or a split has
            too few prompts (saying how many are needed).
    """
    fields = fields or Fields()
    given = [(p, s) for p, s in ((prompts, None), (harmful, "harmful"), (harmless, "harmless"))
             if p is not None]
    loaded = [
        load_prompt_source(
            p, side=s, text_field=fields.text, label_field=fields.label,
            category_field=fields.category, split_field=fields.split, id_field=fields.id,
            fractions=fractions, seed=seed, held_out=held_out, max_chars=limit.max_chars,
            max_tokens=limit.max_tokens, count_tokens=limit.count_tokens,
        )
        for p, s in given
    ]
    result = merge(*loaded)
    check_ready(result, minimum, held_out=held_out)
    return result


def _named_splits(tables: list[Table]) -> tuple[list[Table], list[str]]:
    """Tables whose names give splits keep them only if the names give two or more splits.

    A data set published as one ``train`` split (AdvBench on the hub), or a split chosen with
    ``@train``, is all the data there is, not a training set: it is split automatically.
    """
    named = {t.split for t in tables if t.split is not None}
    if len(named) != 1:
        return tables, []
    (only,) = named
    note = f"{tables[0].name}: its only split {only!r} is all its data; it was split by its rows"
    return [replace(t, split=None) for t in tables], [note]


def _layout(table: Table, fields: Fields) -> Layout:
    return detect_layout(
        table.columns(), where=table.name, text=fields.text, label=fields.label,
        category=fields.category, split=fields.split, id=fields.id,
    )


def _sided_rows(table: Table, layout: Layout, side: str | None) -> tuple[list[Row], int]:
    """The table's rows, each with its side settled, and how many were on the other side."""
    out: list[Row] = []
    missing: list[tuple[str, str]] = []
    bad_labels: list[str] = []
    unsided: list[str] = []
    dropped = 0
    for where, rec in table.rows:
        row = read_row(rec, layout, where)
        if isinstance(row, str):
            missing.append((where, row))
            continue
        if row.side == "?":
            bad_labels.append(where)
            continue
        own = row.side or table.side
        if side is not None and own not in (None, side):
            dropped += 1
            continue
        settled = side or own or layout.side
        if settled is None:
            unsided.append(where)
            continue
        out.append(replace(row, side=settled, split=row.split or table.split))
    if missing:
        where, why = missing[0]
        raise PromptSetError(
            f"{where}: no text in field {layout.text!r} ({why}){_others(missing)}; every record "
            f"needs one, e.g. {example_record(layout)} (or name the column with --text-field)"
        )
    if bad_labels:
        value = dict(table.rows)[bad_labels[0]].get(layout.label or "")
        raise PromptSetError(
            f"{bad_labels[0]}: label {value!r} in {layout.label!r} is not understood"
            f"{_others(bad_labels)}; use {accepted_labels()}"
        )
    if unsided:
        raise PromptSetError(
            f"{table.name}: {len(unsided)} records have no label, so their side is unknown; "
            "pass the source as --harmful or --harmless, or give a label column (harmful/"
            "harmless) with --label-field"
        )
    return out, dropped


def _clean(
    rows: list[Row], side: str, limit: TextLimit
) -> tuple[list[Row], set[str], list[Duplicate]]:
    """Rows cut to the limit, repeats of a text dropped, ids checked or made.

    Returns the rows kept, the ids of those cut, and the repeats dropped.
    """
    cut: set[str] = set()
    first: dict[str, int] = {}
    repeats: dict[int, list[str]] = {}
    kept: list[Row] = []
    for row in rows:
        text = limit.apply(row.text) if limit.active else row.text
        if not text:
            raise PromptSetError(f"{row.where}: nothing of the prompt fits {limit.describe()}")
        if text in first:
            repeats.setdefault(first[text], []).append(row.where)
            continue
        first[text] = len(kept)
        rid = row.id or f"{side}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        kept.append(replace(row, text=text, id=rid))
        if text != row.text:
            cut.add(rid)
    ids: dict[str, str] = {}
    clashes = []
    for row in kept:
        if row.id in ids:
            clashes.append((row.where, row.id, ids[row.id]))
        ids.setdefault(row.id or "", row.where)
    if clashes:
        where, rid, earlier = clashes[0]
        raise PromptSetError(
            f"{where}: duplicate id {rid!r} (first at {earlier}){_others(clashes)}; ids must "
            "be unique per side: fix them, or drop the id column so ids are made from the texts"
        )
    dups = [Duplicate(side, kept[i].where, tuple(w), kept[i].text[:80]) for i, w in repeats.items()]
    return kept, cut, dups


def _split(
    rows: list[Row], side: str, fractions: Fractions, seed: int, held_out: bool
) -> tuple[list[Prompt], str]:
    """The rows as prompts with their splits, and how the splits were decided."""
    if held_out:
        return [Prompt(r.id or "", r.text, r.category, "test") for r in rows], "held-out"
    given = [r for r in rows if r.split is not None]
    if not given:
        split = assign_splits(((r.id or "", r.category) for r in rows), fractions, seed)
        return [Prompt(r.id or "", r.text, r.category, split[r.id or ""]) for r in rows], "auto"
    if len(given) < len(rows):
        lacking = [r.where for r in rows if r.split is None]
        raise PromptSetError(
            f"{lacking[0]}: no split while {len(given)} other {side} records have one"
            f"{_others(lacking)}; give every record a split, or none to split automatically"
        )
    unknown = [r.where for r in rows if normalize_split(r.split or "") is None]
    if unknown:
        value = next(r.split for r in rows if r.where == unknown[0])
        raise PromptSetError(
            f"{unknown[0]}: unknown split {value!r}{_others(unknown)}; use train, val or test "
            "(validation and dev mean val)"
        )
    return [
        Prompt(r.id or "", r.text, r.category, normalize_split(r.split or "") or "") for r in rows
    ], "column"


def _others(items: list) -> str:
    n = len(items) - 1
    return f" ({n} other record{'s' if n != 1 else ''} too)" if n > 0 else ""
