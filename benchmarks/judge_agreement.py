"""Agreement of the completion judges with the project's labelled completions (fixtures/judge/).

For each judge ("reply", the default, and "substring", the literature's) and each source of
completions: precision and recall of "refusal" and accuracy, each a proportion with a 95% Wilson
interval (:func:`refusal_probe.stats.intervals.wilson_interval`). A label "garbled" counts as not
a refusal (fixtures/judge/README.md gives the labelling rules).

Run from the repository root; prints the Markdown tables of benchmarks/judge_results.md:
    PYTHONPATH=$PWD python benchmarks/judge_agreement.py
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from refusal_probe.scoring.reply import JUDGES, read_reply, refused
from refusal_probe.stats.intervals import Interval, wilson_interval

LABELLED = Path(__file__).resolve().parents[1] / "fixtures" / "judge" / "completions.jsonl"


def rows() -> list[dict]:
    """The labelled completions."""
    return [json.loads(x) for x in LABELLED.read_text(encoding="utf-8").splitlines() if x]


def agreement(items: Iterable[dict], rule: str) -> dict[str, Interval]:
    """Precision, recall and accuracy of judge ``rule`` against the labels of ``items``."""
    tp = fp = fn = tn = 0
    for r in items:
        truth, said = r["label"] == "refusal", refused(r["completion"], rule)
        tp += truth and said
        fp += said and not truth
        fn += truth and not said
        tn += not truth and not said
    return {
        "precision": wilson_interval(tp, tp + fp),
        "recall": wilson_interval(tp, tp + fn),
        "accuracy": wilson_interval(tp + tn, tp + fp + fn + tn),
    }


def _cell(i: Interval) -> str:
    if i.n == 0:
        return "—"
    return f"{i.value:.2f} [{i.low:.2f}, {i.high:.2f}] ({i.k}/{i.n})"


def table(data: list[dict]) -> str:
    """One Markdown table: per source and judge, precision, recall, accuracy."""
    sources = sorted({r["source"] for r in data}) + ["all"]
    lines = [
        "| source | n | refusals | judge | precision | recall | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sources:
        sub = [r for r in data if s in ("all", r["source"])]
        n_ref = sum(r["label"] == "refusal" for r in sub)
        for rule in JUDGES:
            a = agreement(sub, rule)
            lines.append(
                f"| {s} | {len(sub)} | {n_ref} | {rule} | {_cell(a['precision'])} | "
                f"{_cell(a['recall'])} | {_cell(a['accuracy'])} |"
            )
    return "\n".join(lines)


def garbled(data: list[dict]) -> str:
    """How the reply judge reads the completions labelled garbled."""
    g = [r for r in data if r["label"] == "garbled"]
    hit = sum(read_reply(r["completion"]).verdict == "garbled" for r in g)
    sub = sum(refused(r["completion"], "substring") for r in g)
    return (
        f"Garbled completions: {len(g)}; the reply judge reads {hit} of them as garbled, the "
        f"substring judge calls {sub} of them refusals."
    )


def misses(data: list[dict]) -> str:
    """The completions the reply judge gets wrong, with their labels."""
    out = ["| id | label | reply judge says | completion |", "|---|---|---|---|"]
    for r in data:
        rd = read_reply(r["completion"])
        if rd.refused != (r["label"] == "refusal"):
            text = r["completion"].replace("\n", " ").replace("|", "\\|")[:110]
            out.append(f"| {r['id']} | {r['label']} | {rd.verdict} ({rd.reason}) | {text} |")
    return "\n".join(out)


def main() -> None:
    """Print the tables."""
    data = rows()
    print(table(data), "", garbled(data), "", misses(data), sep="\n")


if __name__ == "__main__":
    main()
