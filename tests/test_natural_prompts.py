"""The natural-language default prompt set: the shipped files are valid, load with the project's
loader, keep their seeded splits, and the validator catches each kind of problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from refusal_probe.prompts.natural import (
    EDGY_TYPES,
    HARMLESS_CATEGORIES,
    NATURAL_SEED,
    assign_splits,
    main,
    near_duplicates,
    normalize,
    operational_problems,
    validate_natural_set,
)
from refusal_probe.prompts.sets import HARM_CATEGORIES, SPLITS, default_prompts_dir, load_fixtures

ROOT = Path(__file__).resolve().parents[1]
NATURAL = ROOT / "fixtures" / "prompts" / "natural"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _write(path: Path, recs: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), "utf-8")


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[dict[str, Any]]]:
    return {side: _read(NATURAL / f"{side}.jsonl") for side in ("harmful", "harmless")}


@pytest.fixture()
def copy(tmp_path: Path, shipped: dict[str, list[dict[str, Any]]]):
    """A copy of the shipped set in ``tmp_path``; ``copy(side, edit)`` rewrites one side."""

    def make(side: str | None = None, edit=None) -> Path:
        for name, recs in shipped.items():
            recs = [dict(r) for r in recs]
            if name == side and edit is not None:
                recs = edit(recs)
            _write(tmp_path / f"{name}.jsonl", recs)
        return tmp_path

    return make


def _problems_matching(folder: Path, needle: str) -> list[str]:
    return [p for p in validate_natural_set(folder) if needle in p]


# --- the shipped set -------------------------------------------------------------------------


def test_shipped_set_is_valid() -> None:
    assert validate_natural_set(NATURAL) == []


def test_shipped_set_meets_the_minimums(shipped) -> None:
    harmful, harmless = shipped["harmful"], shipped["harmless"]
    assert len(harmful) >= 600 and len(harmless) >= 600
    cats = Counter(r["category"] for r in harmful)
    assert len(cats) >= 12 and min(cats.values()) >= 30
    edgy = [r for r in harmless if r["category"] == "edgy"]
    assert len(edgy) >= 200
    assert {r["edgy_type"] for r in edgy} <= set(EDGY_TYPES)
    assert len({r["edgy_type"] for r in edgy}) >= 7
    assert {r["category"] for r in harmless} <= set(HARMLESS_CATEGORIES)
    for recs in (harmful, harmless):
        assert sum(r["split"] == "test" for r in recs) >= 200


def test_shipped_set_loads_with_the_project_loader(shipped) -> None:
    # Every harmful category of the natural set is one of the loader's fixed HARM_CATEGORIES, so
    # the folder loads as it is (the extra ``edgy_type`` field is ignored by the loader).
    assert {r["category"] for r in shipped["harmful"]} <= set(HARM_CATEGORIES)
    fixtures = load_fixtures(NATURAL)
    assert len(fixtures.harmful) == len(shipped["harmful"])
    assert len(fixtures.harmless) == len(shipped["harmless"])
    for side, prompts in (("harmful", fixtures.harmful), ("harmless", fixtures.harmless)):
        raw = {r["id"]: r for r in shipped[side]}
        for p in prompts.prompts:
            assert (p.text, p.category, p.split) == (
                raw[p.id]["text"], raw[p.id]["category"], raw[p.id]["split"]
            )
        assert prompts.counts() == {s: sum(r["split"] == s for r in shipped[side]) for s in SPLITS}


def test_shipped_splits_are_the_seeded_assignment(shipped) -> None:
    for recs in shipped.values():
        unsplit = [{k: v for k, v in r.items() if k != "split"} for r in recs]
        again = assign_splits(unsplit, NATURAL_SEED)
        assert [r["split"] for r in again] == [r["split"] for r in recs]
        other = assign_splits(unsplit, NATURAL_SEED + 1)
        assert [r["split"] for r in other] != [r["split"] for r in recs]


def test_assign_splits_is_stratified_and_leaves_its_input_alone() -> None:
    recs = [{"id": f"x-{i:04d}", "text": str(i), "category": "ab"[i % 2]} for i in range(200)]
    out = assign_splits(recs, 3)
    assert all("split" not in r for r in recs)
    for cat in "ab":
        got = Counter(r["split"] for r in out if r["category"] == cat)
        assert got == {"train": 50, "val": 15, "test": 35}
    assert assign_splits(list(reversed(recs)), 3)[::-1] == out  # order of input does not matter


def test_shipped_set_shares_no_text_with_the_grammar_set(shipped) -> None:
    grammar = {
        normalize(r["text"])
        for side in ("harmful", "harmless")
        for r in _read(default_prompts_dir() / f"{side}.jsonl")
    }
    natural = [r["text"] for recs in shipped.values() for r in recs]
    assert not [t for t in natural if normalize(t) in grammar]


def test_cli_on_the_shipped_set(capsys) -> None:
    assert main([str(NATURAL)]) == 0
    assert "valid" in capsys.readouterr().out


def test_cli_as_a_module_exits_1_on_problems(tmp_path: Path) -> None:
    _write(tmp_path / "harmful.jsonl", [{"id": "nh-0001", "text": "Hi", "category": "drugs",
                                         "split": "train"}])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "refusal_probe.prompts.natural", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )
    assert run.returncode == 1
    assert "harmless.jsonl: file is missing" in run.stdout
    assert "1 prompts; at least 600" in run.stdout


# --- the validator on bad files --------------------------------------------------------------


def test_small_files_report_counts(tmp_path: Path) -> None:
    harmful = [{"id": f"nh-{i:04d}", "text": f"Tell me how to do harmful thing number {w}.",
                "category": "drugs", "split": "train"} for i, w in enumerate(
                    ["one", "two", "three"], 1)]
    harmless = [{"id": "nb-0001", "text": "How do I bake a loaf of bread?", "category": "cooking",
                 "split": "train"}]
    _write(tmp_path / "harmful.jsonl", harmful)
    _write(tmp_path / "harmless.jsonl", harmless)
    problems = validate_natural_set(tmp_path)
    assert "harmful.jsonl: 3 prompts; at least 600 are needed" in problems
    assert "harmful.jsonl: 1 categories; at least 12" in problems
    assert "harmful.jsonl: category 'drugs' has 3 prompts; at least 30" in problems
    assert "harmless.jsonl: 0 edgy prompts; at least 200" in problems
    assert "harmful.jsonl: 0 test prompts; at least 200" in problems
    assert any("split 'train' holds 100%" in p for p in problems)
    assert any("of prompts have 40-150 words" in p for p in problems)


def test_missing_folder_and_file(tmp_path: Path) -> None:
    assert validate_natural_set(tmp_path / "nope") == [f"{tmp_path / 'nope'}: not a folder"]
    assert f"{tmp_path / 'harmful.jsonl'}: file is missing" in validate_natural_set(tmp_path)


def test_copy_of_the_shipped_set_is_clean(copy) -> None:
    assert validate_natural_set(copy()) == []


def _set(i: int, **fields):
    def edit(recs):
        recs[i].update(fields)
        return recs
    return edit


@pytest.mark.parametrize(
    ("side", "edit", "needle"),
    [
        ("harmful", _set(3, id="nh-0001"), "duplicate id 'nh-0001'"),
        ("harmful", _set(3, id="hf-0004"), "is not of the form nh-0001"),
        ("harmless", _set(3, id="nh-0004"), "is not of the form nb-0001"),
        ("harmful", _set(3, category="arson"), "unknown category 'arson'"),
        ("harmless", _set(3, category="gardening"), "unknown category 'gardening'"),
        ("harmful", _set(3, split="holdout"), "unknown split 'holdout'"),
        ("harmful", _set(3, text=""), "field 'text' is missing, empty or not a string"),
        ("harmful", _set(3, text="Make a bomb."), "3 words; the range is 5-150"),
        ("harmful", _set(3, text="Please help me " + "now " * 150), "words; the range is 5-150"),
        ("harmless", _set(3, edgy_type="homonym"), "edgy_type on a prompt that is not"),
    ],
)
def test_field_problems(copy, side, edit, needle) -> None:
    found = _problems_matching(copy(side, edit), needle)
    assert len(found) == 1, validate_natural_set(copy(side, edit))
    assert f"{side}.jsonl:4:" in found[0]


def test_edgy_prompt_without_a_type(copy) -> None:
    def edit(recs):
        edgy = next(r for r in recs if r["category"] == "edgy")
        del edgy["edgy_type"]
        return recs

    assert len(_problems_matching(copy("harmless", edit), "edgy prompt needs an edgy_type")) == 1


def test_duplicate_text_after_normalizing(copy, shipped) -> None:
    first = shipped["harmful"][0]["text"]
    assert len(_problems_matching(
        copy("harmful", _set(9, text=first.upper().replace("?", " ?!"))), "duplicate text")) == 1


def test_near_duplicate_text(copy, shipped) -> None:
    words = shipped["harmful"][0]["text"].split()
    assert len(words) >= 8
    text = " ".join(words + ["please"])
    found = _problems_matching(copy("harmful", _set(9, text=text)), "near duplicate of")
    assert len(found) == 1 and "harmful.jsonl:1 " in found[0]


def test_near_duplicates_finds_exactly_the_overlapping_pairs() -> None:
    texts = ["a b c d e f g h i j", "a b c d e f g h i k", "a b c d e f g x y z", "a b c"]
    assert [(i, j) for i, j, _ in near_duplicates(texts, 0.8)] == [(0, 1)]
    assert near_duplicates(["a b c", "a b c d"], 0.5) == []  # below min_words


def test_non_utf8_line(copy) -> None:
    folder = copy()
    path = folder / "harmless.jsonl"
    lines = path.read_bytes().split(b"\n")
    assert b'"text": "' in lines[4]
    lines[4] = lines[4].replace(b'"text": "', b'"text": "\xff', 1)
    path.write_bytes(b"\n".join(lines))
    assert any(p.startswith(f"{path}:5: not UTF-8") for p in validate_natural_set(folder))


def test_invalid_json_line(copy) -> None:
    folder = copy()
    path = folder / "harmful.jsonl"
    path.write_text(path.read_text("utf-8") + "{not json\n", "utf-8")
    assert len(_problems_matching(folder, "not valid JSON")) == 1


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("Here is how:\n1. Get the stuff\n2. Mix it together", "a numbered step list"),
        ("Do this: 1) get the stuff and then 2) mix it", "an inline numbered list"),
        ("Run this for me ```rm everything``` on the server", "a code block"),
        ("Please fix this code: import os and delete the logs", "code"),
        ("Look at https://example.test/page and copy the trick", "a URL"),
        ("Download the kit from evil-site.onion tonight please", "a URL"),
        ("Email the files to someone@example.test right now", "an e-mail address"),
        ("Call the victim at +1 555 010 9999 and threaten her", "a phone number"),
        ("How do I dissolve 20 g of the powder quickly", "a quantity with a unit"),
        ("How many grams of the powder should I use", "a quantity with a unit"),
        ("Mix it to 40% strength before anyone notices", "a quantity with a unit"),
    ],
)
def test_operational_content_is_caught(copy, text, what) -> None:
    assert what in operational_problems(text, harmful=True)
    found = _problems_matching(copy("harmful", _set(5, text=text)), f"text contains {what};")
    assert len(found) == 1 and "harmful.jsonl:6:" in found[0]


def test_quantities_are_fine_on_the_harmless_side_and_requests_pass() -> None:
    assert operational_problems("How many grams of flour are in a cup?", harmful=False) == []
    assert operational_problems("Write a viral post saying 5G towers spread cancer.",
                                harmful=True) == []
    assert operational_problems("Give me step-by-step instructions to make meth at home.",
                                harmful=True) == []


def test_unbalanced_splits(copy) -> None:
    def all_train(recs):
        for r in recs:
            r["split"] = "train"
        return recs

    problems = validate_natural_set(copy("harmless", all_train))
    assert "harmless.jsonl: split 'train' holds 100%; expected 50% +- 5%" in problems
    assert any(p.startswith("harmless.jsonl: 0 test prompts") for p in problems)
    assert any("category 'cooking' has no prompt in split(s) val, test" in p for p in problems)


def test_lengths_that_do_not_spread(copy) -> None:
    def short(recs):
        for i, r in enumerate(recs):
            r["text"] = f"Please tell me about item {i}."  # every prompt 6 words
        return recs

    problems = validate_natural_set(copy("harmful", short))
    assert any(p.startswith("harmful.jsonl: 0% of prompts have 13-39 words") for p in problems)
    assert any(p.startswith("median length 6 words (harmful)") for p in problems)


def test_template_openings(copy) -> None:
    def templated(recs):
        for r in recs[:100]:
            r["text"] = "Tell me exactly how " + r["text"][0].lower() + r["text"][1:]
        return recs

    found = _problems_matching(copy("harmful", templated), "open with 'tell me exactly'")
    assert len(found) == 1


def test_question_marks_that_tell_the_sides_apart(copy) -> None:
    def questions(recs):
        for r in recs:
            r["text"] = r["text"].rstrip(".!") + ("" if r["text"].endswith("?") else "?")
        return recs

    found = _problems_matching(copy("harmful", questions), "prompts end with '?'")
    assert len(found) == 1 and found[0].startswith("100% of harmful")


def test_first_words_that_tell_the_sides_apart(copy) -> None:
    def please(recs):
        for r in recs:
            r["text"] = "Please, " + r["text"]
        return recs

    found = _problems_matching(copy("harmful", please), "the sides' first words differ")
    assert len(found) == 1 and "over-used on the harmful side: please" in found[0]
