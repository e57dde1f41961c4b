"""The policy's run-wide settings: interval level, resamples, judge, generation, selection budget.

Read from the ``[settings]`` table of the policy file (and the files it extends); each key has a
type and a range, and a problem names the file that gave the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from refusal_probe.scoring.reply import JUDGES, JudgeRule

#: A value as read, with the file it came from (errors name that file).
Sourced = tuple[Any, Path]


@dataclass(frozen=True)
class Settings:
    """Run-wide settings of the audits.

    Attributes:
        confidence: Two-sided confidence level of every interval (0.5 < c < 1).
        resamples: Bootstrap resamples behind each bootstrap interval.
        max_new_tokens: Greedy generation length for the completion judge.
        judge: The completion judge: ``"reply"`` reads the whole completion (what follows a
            refusal phrase included), ``"substring"`` counts any refusal phrase anywhere, as
            the literature does (:mod:`refusal_probe.scoring.reply`).
        batch_size: Prompts per forward pass; ``None`` (``"auto"`` in the file) chooses it from
            the free memory of the model's device
            (:func:`refusal_probe.model.devices.auto_batch_size`).
        fit_prompts: Train prompts per class the candidate directions are fit on, a seeded
            sample stratified by category (0: the whole train split). The reference method
            fits on 128; the difference of means of a few hundred prompts barely moves, and
            the fit's captures at every layer are most of a deep model's direction phase.
        selection_prompts: Validation prompts per class that score each candidate direction
            (the reference method uses 32).
        selection_layer_stride: Score candidates at every ``n``-th layer only (1: every layer).
        selection_positions: Score candidates at the last ``n`` post-instruction positions only
            (0: all of them). With the stride, this bounds the selection cost on deep models.
        monitor_target_fpr: False-positive rate on harmless validation prompts that the
            monitor's thresholds are calibrated for (its operating point).
        selection_screen: Score exactly only the ``n`` candidates that a first-order
            (attribution) estimate of their ablation effect ranks best (0: score every
            candidate, the reference procedure); see :mod:`refusal_probe.selection.screening`.
        selection_race: Score the candidates on growing subsets of the validation prompts and
            drop the ones that surely fail a filter or lose on bypass
            (:mod:`refusal_probe.selection.racing`); ``False``: every candidate on every prompt.
        test_prompts: Test prompts per side the audits measure: a larger test split is
            sampled down to this many, stratified by category and seeded (0: every one). The
            grammar set's 96 per side are all kept; the natural set's 262 and 314 are sampled.
        monitor_adaptive_prompts: Harmful test prompts the monitor's adaptive attacker searches
            a suffix for in the run when no fixture or cache file of the model holds its attacks
            (:mod:`refusal_probe.redteam.adaptive`; about 2,000 forward rows each); 0: none, the
            family is then absent; ``None`` (``"auto"``, the default): 16 when the model runs on
            an accelerator, none on the CPU (the search would take hours on a 135M model there;
            the report says so). The shipped organisms' files hold all 96.
        sequential: Sequential verdicts for the behaviour checks: generate the test prompts in
            seeded rounds and stop a side once its confidence sequence decides its bar
            (:mod:`refusal_probe.audit.sequential`); ``False``: every prompt, fixed n.
        sequential_round: Prompts per side in each round of a sequential check.
    """

    confidence: float = 0.95
    resamples: int = 1000
    max_new_tokens: int = 24
    judge: JudgeRule = "reply"
    batch_size: int | None = None
    fit_prompts: int = 0
    selection_prompts: int = 32
    selection_layer_stride: int = 1
    selection_positions: int = 0
    selection_screen: int = 0
    selection_race: bool = False
    monitor_target_fpr: float = 0.02
    test_prompts: int = 128
    monitor_adaptive_prompts: int | None = None
    sequential: bool = False
    sequential_round: int = 16

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (an automatic batch size reads ``"auto"``)."""
        d = asdict(self)
        for key in _AUTO:
            d[key] = "auto" if d[key] is None else d[key]
        return d


#: Numeric settings that also take ``"auto"`` (read as ``None``).
_AUTO = ("batch_size", "monitor_adaptive_prompts")
#: Settings that take one of a few words, and the words.
_SETTING_CHOICES: dict[str, tuple[str, ...]] = {"judge": JUDGES}
#: Settings that are true or false.
_SETTING_FLAGS = ("sequential", "selection_race")

_SETTING_RANGES: dict[str, tuple[type, float, float]] = {
    "confidence": (float, 0.5, 0.999),
    "resamples": (int, 100, 100_000),
    "max_new_tokens": (int, 1, 1024),
    "batch_size": (int, 1, 4096),
    "fit_prompts": (int, 0, 1_000_000),
    "selection_prompts": (int, 2, 4096),
    "selection_layer_stride": (int, 1, 64),
    "selection_positions": (int, 0, 64),
    "selection_screen": (int, 0, 100_000),
    "monitor_target_fpr": (float, 0.001, 0.5),
    "test_prompts": (int, 0, 1_000_000),
    "monitor_adaptive_prompts": (int, 0, 100_000),
    "sequential_round": (int, 1, 100_000),
}


def read_settings(table: dict[str, Sourced], errors: list[tuple[Path, str]]) -> Settings:
    """Validate the merged ``[settings]`` table, adding ``(file, problem)`` to ``errors``."""
    values: dict[str, Any] = {}
    for key, (val, file) in table.items():
        if key in _SETTING_CHOICES:
            if val in _SETTING_CHOICES[key]:
                values[key] = val
            else:
                words = " or ".join(f'"{c}"' for c in _SETTING_CHOICES[key])
                errors.append((file, f"[settings] {key}: must be {words}, got {val!r}"))
            continue
        if key in _SETTING_FLAGS:
            if isinstance(val, bool):
                values[key] = val
            else:
                errors.append((file, f"[settings] {key}: must be true or false, got {val!r}"))
            continue
        if key not in _SETTING_RANGES:
            known = ", ".join([*_SETTING_RANGES, *_SETTING_CHOICES, *_SETTING_FLAGS])
            errors.append((file, f"[settings] {key}: unknown key; known: {known}"))
            continue
        if key in _AUTO and val == "auto":
            values[key] = None
            continue
        kind, lo, hi = _SETTING_RANGES[key]
        ok_type = isinstance(val, int) if kind is int else isinstance(val, (int, float))
        if isinstance(val, bool) or not ok_type:
            auto = ' or "auto"' if key in _AUTO else ""
            errors.append(
                (
                    file,
                    f"[settings] {key}: must be {'an integer' if kind is int else 'a number'}"
                    f"{auto}, got {val!r}",
                )
            )
        elif not lo <= val <= hi:
            errors.append((file, f"[settings] {key}: {val!r} is outside [{lo:g}, {hi:g}]"))
        else:
            values[key] = kind(val)
    return Settings(**values)
