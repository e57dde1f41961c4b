"""The audit layer: the policy (the one registry of audits) and the shared results of a run.

:class:`AuditRun` computes each shared result of an audit once, as a typed value, without pytest;
the pytest plugin serves it to the audit files as the ``findings`` fixture.
"""

from refusal_probe.audit.baseline import AuditBaseline, Baseline, ModelBaseline
from refusal_probe.audit.behaviour import Behaviour, Completions
from refusal_probe.audit.causal import Causal
from refusal_probe.audit.circuit import Circuit
from refusal_probe.audit.direction import DirectionSummary
from refusal_probe.audit.finetune import FineTune, RefusalChange
from refusal_probe.audit.inputs import RunInputs, preflight
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.policy import (
    Policy,
    load_policy,
)
from refusal_probe.audit.run import AuditRun
from refusal_probe.audit.store import DirectionArtifact, ResultStore

__all__ = [
    "AuditBaseline",
    "AuditOptions",
    "AuditRun",
    "Baseline",
    "Behaviour",
    "Causal",
    "Circuit",
    "Completions",
    "DirectionArtifact",
    "DirectionSummary",
    "FineTune",
    "ModelBaseline",
    "Policy",
    "RefusalChange",
    "ResultStore",
    "RunInputs",
    "load_policy",
    "preflight",
]
