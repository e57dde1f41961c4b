"""Statistics: one interval type, one bootstrap, Wilson, confidence sequences, verdicts."""

from refusal_probe.stats.intervals import (
    Bootstrap,
    Interval,
    bootstrap,
    bootstrap_mean,
    paired_difference,
    paired_rate_difference,
    rate,
    rate_difference,
    two_sample_difference,
    wilson_interval,
)
from refusal_probe.stats.separation import (
    Separation,
    auroc,
    best_threshold_accuracy,
    cohens_d,
    conformal_threshold,
    separation,
    tpr_at_fpr,
)
from refusal_probe.stats.sequential import (
    SequentialCheck,
    Stopping,
    confidence_path,
    sequence_interval,
)
from refusal_probe.stats.verdicts import (
    Bound,
    Decision,
    Threshold,
    Verdict,
    decide,
    worst,
)

__all__ = [
    "Bootstrap",
    "Bound",
    "Decision",
    "Interval",
    "Separation",
    "SequentialCheck",
    "Stopping",
    "Threshold",
    "Verdict",
    "auroc",
    "best_threshold_accuracy",
    "bootstrap",
    "bootstrap_mean",
    "cohens_d",
    "confidence_path",
    "conformal_threshold",
    "decide",
    "paired_difference",
    "paired_rate_difference",
    "rate",
    "rate_difference",
    "separation",
    "sequence_interval",
    "tpr_at_fpr",
    "two_sample_difference",
    "wilson_interval",
    "worst",
]
