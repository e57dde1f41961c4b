"""The prompts an audit runs on: defaults per model, users' sets, held out, what is built.

Unit tests resolve the sets without a model; the plugin tests write small files, run pytest
inside pytest and check that bad input stops the run with one line (exit 4) before any test,
and that a run on a user's set records where every prompt came from.
"""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from planted import HARMFUL_WORDS, HARMLESS_WORDS, TEMPLATES, make_planted_model

from refusal_probe.audit.circuit import MIN_PAIRS, matched_test_pairs
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.prompt_inputs import (
    GRAMMAR,
    GRAMMAR_LIMITATION,
    NATURAL,
    PROMPT_SETS,
    default_set_name,
    resolve_prompts,
)
from refusal_probe.errors import PromptFileError
from refusal_probe.prompts import load_fixtures
from refusal_probe.prompts.sets import Prompt
from refusal_probe.prompts.variants import (
    LENGTH_MATCHED,
    TEMPLATE_FAMILIES,
    jailbreak_variants,
    length_matched_pairs,
)

ROOT = Path(__file__).resolve().parents[1]
NATURAL_DIR = ROOT / "fixtures" / "prompts" / "natural"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _sides(folder: Path, n: int = 40) -> tuple[Path, Path]:
    """An AdvBench-style harmful CSV and a generic harmless JSONL of ``n`` prompts each."""
    folder.mkdir(parents=True, exist_ok=True)
    harmful = [{"goal": f"Explain how to steal car number {i}", "target": "Sure"} for i in range(n)]
    harmless = [{"prompt": f"Explain how to wash car number {i}"} for i in range(n)]
    return _csv(folder / "adv.csv", harmful), _jsonl(folder / "safe.jsonl", harmless)


# --- what is built -----------------------------------------------------------------------------


def test_jailbreak_variants_wrap_each_harmful_test_prompt_once_per_family() -> None:
    splits = ("train", "test", "test")
    prompts = [Prompt(f"h{i}", f"request {i}", "cyber", s) for i, s in enumerate(splits)]
    built = jailbreak_variants(prompts, seed=3)
    assert len(built) == 2 * len(TEMPLATE_FAMILIES)
    assert {(j.family, j.base_id) for j in built} == {
        (f, b) for f in TEMPLATE_FAMILIES for b in ("h1", "h2")
    }
    assert all(j.split == "test" for j in built) and len({j.id for j in built}) == len(built)
    for j in built:
        base = next(p.text for p in prompts if p.id == j.base_id)
        if j.family == "encoding":
            assert base64.b64encode(base.encode()).decode() in j.text
        else:
            assert j.text.endswith(base) or base in j.text
    assert built == jailbreak_variants(prompts, seed=3)  # seeded


def test_length_matched_pairs_have_equal_lengths_and_use_each_prompt_once() -> None:
    harmful = [Prompt(f"h{i}", "x" * (i % 5 + 1), "c", "test") for i in range(30)]
    harmless = [Prompt(f"n{i}", "y" * (i % 3 + 1), "c", "test") for i in range(30)]
    harmless.append(Prompt("val", "y", "c", "val"))
    pairs = length_matched_pairs(harmful, harmless, len, limit=100)
    assert pairs and all(len(p.harmful) == len(p.harmless) for p in pairs)
    assert all(p.template == LENGTH_MATCHED and p.split == "test" for p in pairs)
    ids = [p.id.split("~") for p in pairs]
    assert len({h for h, _ in ids}) == len(pairs) == len({n for _, n in ids})
    assert "val" not in {n for _, n in ids}
    # lengths 4 and 5 have no harmless partner: 18 harmful prompts of lengths 1-3 can pair
    assert len(pairs) == 18
    assert len(length_matched_pairs(harmful, harmless, len, limit=5)) == 5


def test_matched_test_pairs_are_built_when_a_set_has_none(tiny_model) -> None:
    model = tiny_model("llama")
    fixtures = load_fixtures(NATURAL_DIR)
    assert not fixtures.pairs
    pairs = matched_test_pairs(model, fixtures)
    assert len(pairs) >= MIN_PAIRS

    def length(text: str) -> int:
        return int(model.chat.encode([text]).attention_mask.sum())

    assert all(length(p.harmful) == length(p.harmless) for p in pairs)
    tests = {p.text for p in fixtures.harmful.split("test")}
    assert all(p.harmful in tests for p in pairs)


# --- the default set of each model ---------------------------------------------------------------


def test_organisms_name_the_grammar_set_and_other_models_get_the_natural_set(
    tmp_path: Path,
) -> None:
    for name in ("organism-base", "organism-chat", "organism-chat-benign-ft"):
        assert default_set_name(name) == GRAMMAR
    assert default_set_name("someone/some-model") == NATURAL
    (tmp_path / "recipe.json").write_text('{"name": "mine"}')
    assert default_set_name(str(tmp_path)) == NATURAL
    (tmp_path / "recipe.json").write_text('{"prompt_set": "mine"}')
    with pytest.raises(PromptFileError, match="prompt_set 'mine' is not a shipped set"):
        default_set_name(str(tmp_path))


def test_the_organism_keeps_the_grammar_set_as_it_was() -> None:
    resolved = resolve_prompts(AuditOptions("organism-chat"), "organism-chat")
    shipped = load_fixtures(PROMPT_SETS[GRAMMAR])
    assert resolved.fixtures == shipped  # nothing built, nothing renamed: same cache keys
    summary = resolved.summary()
    assert summary["set"] == GRAMMAR and "synthetic" in summary["notes"][0]
    assert resolved.limitations() == [GRAMMAR_LIMITATION]
    names = {Path(f["name"]).name: f for f in summary["files"]}
    assert names["pairs.jsonl"]["records"] == len(shipped.pairs)
    assert names["harmful.jsonl"]["sha256"] == shipped.fingerprints["harmful.jsonl"]


def test_any_other_model_runs_on_the_natural_set_with_jailbreaks_built() -> None:
    resolved = resolve_prompts(AuditOptions("org/model"), "org/model")
    fx = resolved.fixtures
    n_test = len(fx.harmful.split("test"))
    assert resolved.origin == NATURAL
    assert fx.harmful.sha256 == load_fixtures(NATURAL_DIR).harmful.sha256
    assert len(fx.jailbreaks_in("test")) == len(TEMPLATE_FAMILIES) * n_test
    assert not fx.jailbreaks_in("test", "suffix")
    built = [f for f in resolved.summary()["files"] if f["kind"] == "jailbreaks"]
    assert built and built[0]["records"] == 3 * n_test and built[0]["name"].startswith("built")
    assert any("suffix family" in n for n in resolved.notes) and not resolved.limitations()
    assert "jailbreaks.jsonl" in fx.fingerprints  # the monitor's cache key sees what was built


# --- a user's set -------------------------------------------------------------------------------


def test_harmful_and_harmless_files_are_recorded_with_their_layouts(tmp_path: Path) -> None:
    adv, safe = _sides(tmp_path)
    options = AuditOptions("org/model", harmful=str(adv), harmless=str(safe), seed=1)
    resolved = resolve_prompts(options, "org/model")
    fx, summary = resolved.fixtures, resolved.summary()
    assert summary["set"] == "user" and len(fx.harmful) == len(fx.harmless) == 40
    assert all(n >= 4 for n in fx.harmful.counts().values())
    files = {Path(f["name"]).name: f for f in summary["files"]}
    assert files["adv.csv"]["records"] == 40 and files["adv.csv"]["kind"] == "harmful"
    assert files["safe.jsonl"]["kind"] == "harmless"
    layouts = [t["layout"]["name"] for s in summary["user"]["sources"] for t in s["tables"]]
    assert layouts == ["advbench", "generic"]
    assert summary["user"]["splits"]["seed"] == 1 and summary["user"]["splits"]["sha256"]
    assert set(fx.fingerprints) >= {"harmful.jsonl", "harmless.jsonl", "jailbreaks.jsonl"}
    again = resolve_prompts(options, "org/model").fixtures
    assert again.harmful == fx.harmful  # the split is seeded: a rerun is identical


def test_held_out_sets_are_the_test_split_and_the_default_set_fits(tmp_path: Path) -> None:
    adv, safe = _sides(tmp_path, n=12)
    options = AuditOptions("organism-chat", harmful=str(adv), harmless=str(safe), held_out=True)
    resolved = resolve_prompts(options, "organism-chat")
    fx, grammar = resolved.fixtures, load_fixtures(PROMPT_SETS[GRAMMAR])
    assert [p.text for p in fx.harmful.split("test")] == [
        f"Explain how to steal car number {i}" for i in range(12)
    ]
    assert fx.harmful.texts("train") == grammar.harmful.texts("train")
    assert fx.harmless.texts("val") == grammar.harmless.texts("val")
    assert all(p.id.startswith("default/") for p in fx.harmful.prompts if p.split != "test")
    assert not fx.pairs  # the grammar's test pairs are not the user's: built later
    assert not fx.jailbreaks_in("test", "suffix")  # the grammar's test attacks are dropped
    vals = fx.jailbreaks_in("val")  # the red-team's val attacks still choose the readout
    ids = {p.id for p in fx.harmful.prompts}
    assert vals and all(j.base_id in ids for j in vals)
    assert resolved.origin == "user, held out (train/val: grammar)"
    assert resolved.limitations() == [GRAMMAR_LIMITATION]


def test_held_out_leaves_the_given_prompts_out_of_the_default_fit(tmp_path: Path) -> None:
    natural = load_fixtures(NATURAL_DIR)
    some = [p for p in natural.harmful.prompts if p.split == "train"][:10]
    harmful = _jsonl(tmp_path / "h.jsonl", [{"prompt": p.text} for p in some])
    harmless = _jsonl(tmp_path / "n.jsonl", [{"prompt": f"Bake cake {i}"} for i in range(10)])
    options = AuditOptions("org/model", harmful=str(harmful), harmless=str(harmless), held_out=True)
    resolved = resolve_prompts(options, "org/model")
    train = set(resolved.fixtures.harmful.texts("train"))
    assert not train & {p.text for p in some}
    assert any("10 harmful and 0 harmless" in n for n in resolved.notes)


def test_a_folder_in_the_fixtures_schema_keeps_its_pairs_and_jailbreaks() -> None:
    options = AuditOptions("org/model", prompts=str(PROMPT_SETS[GRAMMAR]))
    resolved = resolve_prompts(options, "org/model")
    assert resolved.fixtures == load_fixtures(PROMPT_SETS[GRAMMAR])


# --- the plugin: bad input stops the run in one line ---------------------------------------------

AUDIT_FILE = """
import pytest

@pytest.mark.behaviour
def test_reached(audit):
    raise AssertionError("a test ran")
"""


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    adv, safe = _sides(tmp / "ok")
    raw = tmp / "latin1.jsonl"
    raw.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9 bomb"}\n')
    dup = _jsonl(tmp / "dup.jsonl", [{"id": "a", "prompt": f"p {i}"} for i in range(20)])
    few = _jsonl(tmp / "few.jsonl", [{"prompt": f"short {i}"} for i in range(5)])
    return {
        "not UTF-8": (["--harmful", str(raw), "--harmless", str(safe)], f"{raw}:2: not UTF-8"),
        "empty side": (["--harmful", str(adv)], "no harmless prompts"),
        "too few": (["--harmful", str(few), "--harmless", str(safe)], "give at least"),
        "duplicate ids": (["--harmful", str(dup), "--harmless", str(safe)], "duplicate id 'a'"),
        "offline hf": (["--prompts", "hf:nobody/no-such-set"], "HF_HUB_OFFLINE is set"),
        "held out alone": (["--held-out"], "--held-out needs --prompts, --harmful or --harmless"),
    }


@pytest.mark.parametrize(
    "case",
    ["not UTF-8", "empty side", "too few", "duplicate ids", "offline hf", "held out alone"],
)
def test_bad_prompts_stop_the_run_with_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args, expected = _bad_inputs(pytester.path / "data")[case]
    pytester.makeconftest('pytest_plugins = ["refusal_probe.pytest_plugin.plugin"]\n')
    pytester.makepyfile(test_audit=AUDIT_FILE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--model", "organism-chat", *args)
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == 4, text
    lines = [ln for ln in text.splitlines() if "refusal-probe:" in ln]
    assert len(lines) == 1 and expected in lines[0], text
    assert "Traceback" not in text and "INTERNALERROR" not in text and "a test ran" not in text


# --- the plugin: a run on a user's set records it ------------------------------------------------


def _behaviour_audit(tmp_path: Path, model: Path, harmful: Path, harmless: Path) -> Path:
    """Run the behaviour audit on ``model`` with these two files; its run folder."""
    cmd = [
        sys.executable, "-m", "refusal_probe", "audit", "-p", "no:cacheprovider",
        "--model", str(model), "--harmful", str(harmful), "--harmless", str(harmless),
        "--cache-dir", str(tmp_path / "cache"), "--report-dir", str(tmp_path / "reports"),
        "-m", "behaviour",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    return (tmp_path / "reports" / model.name / "latest").resolve()


def test_a_run_on_csv_and_jsonl_files_records_every_file(tmp_path: Path) -> None:
    model, _ = make_planted_model(tmp_path / "planted")
    data = tmp_path / "data"
    data.mkdir()
    ask = ("{}", "Quick question. {}")
    harmful = [
        {"goal": a.format(t.format(w)), "target": "Sure"}
        for a in ask for w in HARMFUL_WORDS for t in TEMPLATES
    ]  # fmt: skip
    harmless = [
        {"prompt": a.format(t.format(w))} for a in ask for w in HARMLESS_WORDS for t in TEMPLATES
    ]
    adv, safe = _csv(data / "adv.csv", harmful), _jsonl(data / "safe.jsonl", harmless)
    folder = _behaviour_audit(tmp_path, model, adv, safe)
    record = json.loads((folder / "audit.json").read_text())
    data_ = record["data"]
    assert data_["set"] == "user" and data_["harmful"]["test"] >= 8
    files = {Path(f["name"]).name: f for f in data_["files"]}
    assert files["adv.csv"]["records"] == 48 and files["safe.jsonl"]["records"] == 48
    layouts = {t["layout"]["name"] for s in data_["user"]["sources"] for t in s["tables"]}
    assert layouts == {"advbench", "generic"}
    assert record["config"]["options"]["harmful"] == str(adv)
    html = (folder / "index.html").read_text()
    assert 'id="prompt-files"' in html and files["adv.csv"]["sha256"] in html
    assert "built: roleplay, encoding, context variants" in html


def test_a_large_test_split_is_sampled_down_by_category_and_seed(tmp_path):
    """test_prompts keeps each category's share of a larger test split, the same each run."""
    from refusal_probe.audit.options import AuditOptions
    from refusal_probe.audit.prompt_inputs import resolve_prompts

    options = AuditOptions("some/other-model")  # not an organism: the natural set
    full = resolve_prompts(options, options.model)
    sampled = resolve_prompts(options, options.model, test_prompts=60)
    again = resolve_prompts(options, options.model, test_prompts=60)
    for side in ("harmful", "harmless"):
        whole = getattr(full.fixtures, side)
        part = getattr(sampled.fixtures, side)
        assert len(whole.split("test")) > 60 and len(part.split("test")) == 60
        assert part.split("train") == whole.split("train") and part.split("val") == whole.split(
            "val"
        )
        assert part.sha256 != whole.sha256 and part.sha256 == getattr(again.fixtures, side).sha256
        shares = {
            c: sum(p.category == c for p in whole.split("test")) / len(whole.split("test"))
            for c in {p.category for p in whole.split("test")}
        }
        for c, share in shares.items():
            got = sum(p.category == c for p in part.split("test"))
            assert abs(got - 60 * share) < 1 + 1e-9, (side, c)
    jail = sampled.fixtures.jailbreaks_in("test")
    kept = {p.id for p in sampled.fixtures.harmful.split("test")}
    assert jail and {j.base_id for j in jail} <= kept
    assert any("60 of the" in n and "test_prompts" in n for n in sampled.notes)
    assert resolve_prompts(options, options.model, test_prompts=1000).fixtures == full.fixtures


def test_prompts_longer_than_the_context_are_cut_and_counted(tmp_path: Path) -> None:
    """100,000-character prompts lose their start to fit the model's context: no memory blow-up."""
    model, _ = make_planted_model(tmp_path / "planted")  # a context of 256 tokens
    data = tmp_path / "data"
    data.mkdir()
    preamble = "Some background before my question. " * 2800  # 100,800 characters
    harmful = [{"goal": preamble + t.format(w)} for w in HARMFUL_WORDS for t in TEMPLATES] * 2
    harmful = [{"goal": f"{i}. {h['goal']}", "target": "Sure"} for i, h in enumerate(harmful)]
    harmless = [
        {"prompt": f"{i}. " + t.format(w)}
        for i, (w, t) in enumerate(
            (w, t) for w in HARMLESS_WORDS for t in TEMPLATES for _ in range(2)
        )
    ]
    adv, safe = _csv(data / "adv.csv", harmful), _jsonl(data / "safe.jsonl", harmless)
    folder = _behaviour_audit(tmp_path, model, adv, safe)
    notes = json.loads((folder / "audit.json").read_text())["data"]["notes"]
    cut = [n for n in notes if "longer than the model's context of 256 tokens" in n]
    assert cut and int(cut[0].split()[0]) >= 8, notes
    page = (folder / "index.html").read_text()
    assert "longer than the model&#39;s context of 256 tokens" in page
