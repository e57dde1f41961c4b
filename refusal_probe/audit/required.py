"""Checks a run must run: ``--require-checks all`` or a named list, and those a run missed.

An audit whose checks are skipped, deselected or never reached still ends green unless it is
told which checks matter. :func:`parse_required` reads the option against the policy (an unknown
name is a usage error before any test); :func:`unmet` says, after the run, which required checks
did not run and why.

``all`` is every check the policy enables, less those *not applicable* to the run: a check whose
test needs ``--baseline`` when none was given. A check named explicitly (alone, through its
audit's name, or beside ``all``) is required whatever the run: naming ``finetune.direction_cosine``
without ``--baseline`` fails the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from refusal_probe.audit.policy import Policy
from refusal_probe.errors import PolicyError

#: The option value that requires every enabled check of the policy.
ALL = "all"
#: The ``not_run`` kind of a check that cannot apply to this run (a fine-tune check without
#: ``--baseline``): not a failure of the run, and not counted by ``all``.
NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class RequiredChecks:
    """The checks a run must run for a green exit.

    Attributes:
        ids: Every required check id, in the policy's order.
        named: The ids named explicitly (directly or through their audit): required even where
            they are not applicable.
        spec: The option's text, as given (for messages and the record).
    """

    ids: tuple[str, ...]
    named: frozenset[str]
    spec: str


@dataclass(frozen=True)
class Unmet:
    """A required check that did not run.

    Attributes:
        id: The check id.
        reason: Why it did not run, in words (the not-run entry's kind and reason).
    """

    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id} ({self.reason})"


def parse_required(spec: str | None, policy: Policy) -> RequiredChecks | None:
    """Read ``--require-checks``: ``all``, check ids and audit names, comma-separated.

    Args:
        spec: The option's value (``None`` or blank: nothing is required).
        policy: The run's policy, which names the known checks and audits.

    Returns:
        The required checks, or ``None`` when nothing is required.

    Raises:
        PolicyError: A name is neither ``all``, a check id nor an audit of the policy (one line
            naming it and the policy file).
    """
    names = [n.strip() for n in (spec or "").split(",") if n.strip()]
    if not names:
        return None
    enabled = [cid for cid, c in policy.checks.items() if c.enabled]
    named: list[str] = []
    unknown = []
    for name in names:
        if name == ALL:
            continue
        if name in policy.checks:
            named.append(name)
        elif name in policy.audit_names:
            named += [cid for cid in enabled if cid.split(".", 1)[0] == name]
        else:
            unknown.append(name)
    if unknown:
        raise PolicyError(
            f"--require-checks {spec}: {', '.join(unknown)} is not a check or audit of "
            f"{policy.path}; give 'all' or ids such as {', '.join(list(policy.checks)[:3])}"
        )
    wanted = set(named) | (set(enabled) if ALL in names else set())
    ids = tuple(cid for cid in policy.checks if cid in wanted)
    return RequiredChecks(ids, frozenset(named), ",".join(names))


def unmet(
    required: RequiredChecks | None,
    ran: Iterable[str],
    not_run: Iterable[Mapping[str, str]],
) -> list[Unmet]:
    """The required checks that did not run, in the policy's order.

    Args:
        required: What the run must run (``None``: nothing).
        ran: Ids of the checks that reached a verdict.
        not_run: The run's not-run entries (``id``, ``kind``, ``reason``).

    Returns:
        One entry per required check without a verdict; a check not applicable to the run is
        left out unless it was named explicitly.
    """
    if required is None:
        return []
    done = set(ran)
    why = {n["id"]: n for n in not_run}
    out = []
    for cid in required.ids:
        if cid in done:
            continue
        entry = why.get(cid)
        if entry is not None and entry["kind"] == NOT_APPLICABLE and cid not in required.named:
            continue
        reason = f"{entry['kind']}: {entry['reason']}" if entry else "no test recorded it"
        out.append(Unmet(cid, reason))
    return out
