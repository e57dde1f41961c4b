"""The audit layer: the policy (the one registry of audits and checks) and the shared results of a run."""

from refusal_probe.audit.policy import (
    Policy,
    load_policy,
)

__all__ = [
    "Policy",
    "load_policy",
]
