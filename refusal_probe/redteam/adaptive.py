"""The adaptive family: suffixes searched against refusal and the monitor's alarm at once.

The attacker is white-box: the red-team's GCG (:mod:`refusal_probe.redteam.search`) with the
objective ``refusal log-odds + monitor_weight x alarm``, where the alarm is read by the monitor's
own hooks in the same pass, so its gradient reaches the suffix through the monitor's readouts.
A prompt's search stops early only when refusal is below its bar *and* the alarm below its
threshold; otherwise it spends the whole budget (:data:`ADAPTIVE`: 8 tokens, 32 steps x 64
candidates per prompt).

The attacks of one model are kept in one file named by the model's fingerprint,
``adaptive-<fingerprint[:16]>.jsonl``: the shipped organisms' files are fixtures
(``fixtures/redteam/``, with their recipe in its README); for any other model the family is
searched in the run, on at most ``max_prompts`` harmful prompts (a seeded sample), and the file
is written to the run's cache folder, where the next run finds it. Each record carries its cost
(steps, candidates scored, suffix tokens) and the scores it reached.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refusal_probe.atomic import write_text_atomic
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.scoring import Monitor
from refusal_probe.prompts.sets import Jailbreak, Prompt
from refusal_probe.redteam.search import RedTeamConfig, RedTeamResult, search_suffixes

#: The family name.
FAMILY = "adaptive"
#: The shipped budget: the fixtures' suffix search, with the alarm weighted in.
ADAPTIVE = RedTeamConfig(monitor_weight=1.0)


@dataclass(frozen=True)
class AdaptiveConfig:
    """The adaptive family's budget. Plain data.

    Attributes:
        search: The suffix search (its ``monitor_weight`` must be positive).
        max_prompts: Most harmful prompts attacked when the family is searched in the run
            (0: never searched; the family then exists only where a file holds it).
        seed: Seed of that sample.
    """

    search: RedTeamConfig = ADAPTIVE
    max_prompts: int = 32
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dataclasses.asdict(self)


def file_name(fingerprint: str) -> str:
    """The file holding one model's adaptive attacks."""
    return f"adaptive-{fingerprint[:16]}.jsonl"


def adaptive_family(
    model: LoadedModel,
    monitor: Monitor,
    harmful: Sequence[Prompt],
    *,
    shipped: Path | None = None,
    cache: Path | None = None,
    config: AdaptiveConfig | None = None,
) -> tuple[tuple[Jailbreak, ...], dict[str, Any]]:
    """The adaptive attacks on ``harmful`` (one split's prompts), and where they came from.

    Looks for the model's file in ``shipped``, then in ``cache``; searches when neither holds
    attacks on these prompts, and writes the file to ``cache`` (when given).

    Returns:
        The jailbreaks (family ``adaptive``), and a summary: ``source`` (``shipped``, ``cache``
        or ``searched``), the budget, and the mean and largest cost per attacked prompt.
    """
    config = config or AdaptiveConfig()
    name = file_name(model.identity.fingerprint)
    for source, folder in (("shipped", shipped), ("cache", cache)):
        if folder is not None and (folder / name).is_file():
            records = [json.loads(line) for line in (folder / name).read_text().splitlines()]
            found = _matching(records, harmful)
            if found:
                return _jailbreaks(found, harmful), _summary(found, source, folder / name)
    prompts = _sample(harmful, config)
    if not prompts:
        return (), {"source": "none", "n": 0, "budget": None, "file": None}
    result = search_suffixes(model, [p.text for p in prompts], config.search, monitor=monitor)
    records = attack_records(result, prompts)
    path = write_records(cache / name, records) if cache is not None else None
    return _jailbreaks(records, harmful), _summary(records, "searched", path)


def attack_records(result: RedTeamResult, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
    """One record per attacked prompt: the attack, its recipe and its cost."""
    cfg = result.config
    return [
        {
            "base_id": p.id,
            "base_text": p.text,
            "split": p.split,
            "family": FAMILY,
            "text": r.text(cfg.separator),
            "suffix": r.suffix,
            "redteam": {
                **result.recipe(i),
                "monitor_weight": cfg.monitor_weight,
                "suffix_tokens": cfg.suffix_tokens,
                "evaluations": r.evaluations,
                "alarm": None if r.alarm is None else round(r.alarm, 4),
            },
        }
        for i, (p, r) in enumerate(zip(prompts, result.results, strict=True))
    ]


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``records`` to ``path`` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _matching(records: list[dict[str, Any]], harmful: Sequence[Prompt]) -> list[dict[str, Any]]:
    """The records whose base prompt is one of ``harmful``, with the same text."""
    texts = {p.id: p.text for p in harmful}
    return [r for r in records if texts.get(r["base_id"]) == r["base_text"]]


def _sample(harmful: Sequence[Prompt], config: AdaptiveConfig) -> list[Prompt]:
    prompts = list(harmful)
    if len(prompts) <= config.max_prompts:
        return prompts
    if config.max_prompts <= 0:
        return []
    keep = set(random.Random(config.seed).sample(range(len(prompts)), config.max_prompts))
    return [p for i, p in enumerate(prompts) if i in keep]


def _jailbreaks(
    records: Sequence[dict[str, Any]], harmful: Sequence[Prompt]
) -> tuple[Jailbreak, ...]:
    split = {p.id: p.split for p in harmful}
    return tuple(
        Jailbreak(f"jb-adaptive-{i + 1:04d}", r["base_id"], FAMILY, r["text"], split[r["base_id"]])
        for i, r in enumerate(records)
    )


def _summary(records: Sequence[dict[str, Any]], source: str, path: Path | None) -> dict[str, Any]:
    costs = [r["redteam"] for r in records]
    n = max(len(costs), 1)
    return {
        "source": source,
        "file": str(path) if path else None,
        "n": len(records),
        "budget": costs[0]["budget"] if costs else None,
        "suffix_tokens": costs[0]["suffix_tokens"] if costs else None,
        "monitor_weight": costs[0]["monitor_weight"] if costs else None,
        "mean_steps": sum(c["steps"] for c in costs) / n,
        "max_steps": max((c["steps"] for c in costs), default=0),
        "mean_evaluations": sum(c["evaluations"] for c in costs) / n,
        "below_refusal_bar": sum(c["score"] < ADAPTIVE.target_score for c in costs),
    }
