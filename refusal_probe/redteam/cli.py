"""The command line: ``python -m refusal_probe.redteam --model SPEC --out DIR``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from refusal_probe.errors import MonitorError, RefusalProbeError
from refusal_probe.prompts.sets import SPLITS
from refusal_probe.redteam.fixture import next_number, suffix_records, write_suffix_family
from refusal_probe.redteam.search import VOCABULARIES, RedTeamConfig, search_suffixes


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m refusal_probe.redteam --model SPEC --out DIR``."""
    p = argparse.ArgumentParser(
        prog="python -m refusal_probe.redteam",
        description="Search adversarial suffixes (GCG) for the harmful prompts of one split and "
        "write them as the 'suffix' family of DIR/jailbreaks.jsonl (test split) or "
        "DIR/jailbreaks-SPLIT.jsonl (another split; the monitor chooses its readout with the val "
        "attacks).",
    )
    p.add_argument("--model", default="organism-chat", help="model spec (default organism-chat)")
    p.add_argument("--out", required=True, type=Path, help="folder of jailbreaks.jsonl to update")
    p.add_argument("--prompts", type=Path, default=None, help="prompt folder (default --out)")
    p.add_argument(
        "--split", default="test", choices=SPLITS, help="harmful split to attack (default test)"
    )
    p.add_argument("--limit", type=int, default=None, help="attack only the first N prompts")
    d = RedTeamConfig()
    for name in ("suffix_tokens", "steps", "candidates", "top_k", "seed", "batch_size"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--target-score", type=float, default=d.target_score)
    p.add_argument("--vocabulary", choices=VOCABULARIES, default=d.vocabulary)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 unless OMP_NUM_THREADS is set: on shared cores a "
        "second thread mostly waits)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-prompt progress lines")
    a = p.parse_args(argv)
    try:
        return _run(a)
    except RefusalProbeError as exc:
        print(f"refusal-probe redteam: {exc}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    from refusal_probe.model.loading import LoadOptions, load_model
    from refusal_probe.prompts.sets import load_fixtures

    if a.threads is not None or "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(a.threads or 1)
    out: Path = a.out
    if not out.is_dir():
        raise MonitorError(f"--out {out} is not a folder; pass the prompt fixtures folder")
    fixtures = load_fixtures(a.prompts or out)
    base = fixtures.harmful.split(a.split)[: a.limit]
    if not base:
        raise MonitorError(f"no harmful prompts in split {a.split!r} to attack")
    config = RedTeamConfig(
        suffix_tokens=a.suffix_tokens,
        steps=a.steps,
        candidates=a.candidates,
        top_k=a.top_k,
        seed=a.seed,
        target_score=a.target_score,
        vocabulary=a.vocabulary,
        batch_size=a.batch_size,
    )
    model = load_model(a.model, LoadOptions(device=a.device))
    result = search_suffixes(model, [b.text for b in base], config, progress=not a.quiet)
    records = suffix_records(result, [b.id for b in base], next_number(out, a.split), a.split)
    path = write_suffix_family(out, records, a.split)
    s = result.summary()
    print(
        f"{path}: {len(records)} suffix records; refusal log-odds {s['mean_score_bare']:+.2f} -> "
        f"{s['mean_score']:+.2f} (mean), {s['below_target']}/{s['prompts']} below "
        f"{config.target_score:g}; {s['evaluations']} of {s['budget']} candidate evaluations, "
        f"{s['wall_s']:.0f}s"
    )
    return 0
