"""Causal validation: does the selected direction mediate refusal?

The engine's :func:`~refusal_probe.causal.validation.validate_direction` ablates and adds the
direction on held-out prompts; :class:`Causal` keeps what the audits and the report need from it:
the rates, the paired changes with their intervals, ablation's KL and the dose-response curve.

The KL check reads the harmless test prompts the model *answers* (refusal log-odds < 0 at the last
prompt position, selection's filter): on a prompt it over-refuses, ablation turning the refusal
into an answer is a large KL and exactly the intended effect. The over-refused prompts' KL, the
all-prompts KL and the KL of ablating random directions (a reference cost) are kept beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from refusal_probe.audit.figures import rate_bars
from refusal_probe.audit.settings import Settings
from refusal_probe.causal.validation import ValidationConfig, ValidationResult
from refusal_probe.report.record import Figure
from refusal_probe.stats.intervals import Interval, paired_rate_difference


def validation_config(settings: Settings, seed: int) -> ValidationConfig:
    """The engine's validation configuration for a run's settings."""
    s = settings
    return ValidationConfig(
        max_new_tokens=s.max_new_tokens,
        judge=s.judge,
        batch_size=s.batch_size,
        n_resamples=s.resamples,
        seed=seed,
        level=s.confidence,
    )


#: The fields of :class:`Causal` that are intervals.
_INTERVALS = (
    *("harmful_baseline", "harmful_ablated", "harmless_baseline", "harmless_added"),
    *("ablation_drop", "addition_rise", "kl", "kl_all", "kl_over_refused", "kl_random"),
)


@dataclass(frozen=True)
class Causal:
    """Causal tests of the selected direction on held-out prompts.

    Attributes:
        harmful_baseline: Harmful refusal rate, no intervention.
        harmful_ablated: Harmful refusal rate, direction ablated everywhere.
        harmless_baseline: Harmless refusal rate, no intervention.
        harmless_added: Harmless refusal rate, direction added at its layer.
        ablation_drop: Paired drop of harmful refusal under ablation (bootstrap over prompts).
        addition_rise: Paired rise of harmless refusal under addition.
        kl: Mean KL(base ‖ ablated) on the harmless prompts the model answers, nats, bootstrap
            interval (its ``n`` counts them).
        dose: Mean ``P_R`` per addition coefficient: ``alpha``, ``harmful``, ``harmless`` intervals.
        interventions: What was applied in each condition.
        examples: A few completions per condition.
        kl_all: The same KL on every harmless test prompt (the figure before over-refused prompts
            were set apart).
        kl_over_refused: The KL on the harmless prompts the model over-refuses (``n``: how many).
        kl_random: The KL of ablating random directions of the same norm, on answered prompts.
    """

    harmful_baseline: Interval
    harmful_ablated: Interval
    harmless_baseline: Interval
    harmless_added: Interval
    ablation_drop: Interval
    addition_rise: Interval
    kl: Interval
    dose: list[dict[str, Any]]
    interventions: dict[str, str]
    examples: dict[str, list[dict[str, Any]]]
    kl_all: Interval
    kl_over_refused: Interval
    kl_random: Interval

    @classmethod
    def of(cls, v: ValidationResult) -> Causal:
        """Summarize a validation (with its own configuration's bootstrap)."""
        boot, j = v.config.bootstrap, v.judgements
        drop = paired_rate_difference(
            j["harmful_baseline"].refused, j["harmful_ablated"].refused, boot.level
        )
        rise = paired_rate_difference(
            j["harmless_added"].refused, j["harmless_baseline"].refused, boot.level
        )
        return cls(
            v.harmful_baseline,
            v.harmful_ablated,
            v.harmless_baseline,
            v.harmless_added,
            drop,
            rise,
            v.kl_answered,
            [
                {"alpha": p.alpha, "harmful": p.harmful.to_dict(), "harmless": p.harmless.to_dict()}
                for p in v.dose_response
            ],
            dict(v.interventions),
            {k: x.examples(3) for k, x in j.items()},
            v.kl_ablation,
            v.kl_over_refused,
            v.kl_random,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        d = asdict(self)
        for k in _INTERVALS:
            d[k] = getattr(self, k).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Causal:
        """Inverse of :meth:`to_dict`."""
        intervals = {k: Interval.from_dict(d[k]) for k in _INTERVALS}
        return cls(
            **intervals, dose=d["dose"], interventions=d["interventions"], examples=d["examples"]
        )

    def kl_details(self) -> dict[str, Any]:
        """The KL check's evidence: the answered and over-refused prompts, the reference cost."""
        n_over = self.kl_over_refused.n or 0
        return {
            "prompts": "harmless test prompts the model answers (refusal log-odds < 0)",
            "n_answered": self.kl.n or 0,
            "n_over_refused": n_over,
            "kl_answered": self.kl.to_dict(),
            "kl_over_refused": self.kl_over_refused.to_dict() if n_over else None,
            "kl_all_harmless": self.kl_all.to_dict(),
            "kl_random_direction": self.kl_random.to_dict(),
        }

    def kl_figure(self, threshold: float | None = None) -> Figure:
        """The ablation's KL on answered and over-refused prompts, beside the random reference."""
        rows = [
            ("answered harmless (the check)", self.kl),
            ("over-refused harmless", self.kl_over_refused),
            ("all harmless", self.kl_all),
            ("random direction, answered", self.kl_random),
        ]
        return Figure(
            "table",
            "KL of the ablation on harmless test prompts (nats)",
            {
                "columns": ["prompts", "n", "mean KL [95% CI]"],
                "rows": [[name, iv.n or 0, str(iv)] for name, iv in rows],
            },
            "Over-refused prompts are those whose refusal log-odds is ≥ 0 (selection's filter); "
            "there the ablation removes a refusal, which is its purpose, not a cost. The random "
            "row ablates seeded Gaussian directions of the same norm"
            + (f"; bar ≤ {threshold:g}" if threshold is not None else ""),
        )

    def rates_figure(self) -> Figure:
        """Refusal rates with and without the interventions."""
        return rate_bars(
            ["harmful", "harmless"],
            [
                ("no intervention", [self.harmful_baseline, self.harmless_baseline]),
                (
                    "ablated (harmful) / added (harmless)",
                    [self.harmful_ablated, self.harmless_added],
                ),
            ],
            None,
            "Refusal with the direction ablated (harmful prompts) and added (harmless prompts)",
            "If the direction mediates refusal, ablation removes refusal of harmful requests and "
            "addition "
            "makes the model refuse harmless ones; whiskers: 95% Wilson intervals",
        )

    def dose_figure(self) -> Figure:
        """Dose-response: mean refusal probability against the addition coefficient."""
        xs = [p["alpha"] for p in self.dose]

        def s(name: str, key: str) -> dict[str, Any]:
            return {
                "name": name,
                "y": [p[key]["value"] for p in self.dose],
                "lo": [p[key]["low"] for p in self.dose],
                "hi": [p[key]["high"] for p in self.dose],
            }

        return Figure(
            "line",
            "Steering dose-response: refusal probability against the addition coefficient",
            {
                "x": xs,
                "series": [s("harmful prompts", "harmful"), s("harmless prompts", "harmless")],
                "x_label": "coefficient α (x ← x + α·r at the direction's layer)",
                "y_label": "mean P(refusal token)",
                "y_range": [0, 1],
                "mark_x": 0.0,
            },
            "Logit proxy: next-token probability mass on refusal tokens; a graded rise with α "
            "shows a "
            "dose-dependent effect rather than a cliff; band: 95% bootstrap interval",
        )
