"""The jailbreak monitor: readouts, the harmfulness search, the monitor, its evaluation, hardening."""

from refusal_probe.monitor.evaluate import (
    EvalConfig,
    MonitorEvaluation,
    evaluate_monitor,
)
from refusal_probe.monitor.fit import MonitorConfig, calibrate, fit_monitor
from refusal_probe.monitor.hardening import (
    Hardening,
    measure_hardening,
)
from refusal_probe.monitor.live import (
    Guard,
    JailbreakAlarm,
    guard,
)
from refusal_probe.monitor.scoring import Monitor, MonitorScores, score_prompts

__all__ = [
    "EvalConfig",
    "Guard",
    "Hardening",
    "JailbreakAlarm",
    "Monitor",
    "MonitorConfig",
    "MonitorEvaluation",
    "MonitorScores",
    "calibrate",
    "evaluate_monitor",
    "fit_monitor",
    "guard",
    "measure_hardening",
    "score_prompts",
]
