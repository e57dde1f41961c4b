"""What a run reads besides computing: the checks before anything runs, and what runs share.

:func:`preflight` checks every checkpoint's spec, the baseline, the device map and the prompt
files, loading no model; :func:`missing_checks`, that the policy has a section for every check
the audit files record. :class:`RunInputs` holds what every checkpoint of a run shares, each
opened once: the prompt sets, the baseline, and every checkpoint's
:class:`~refusal_probe.audit.run.AuditRun`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from refusal_probe.audit.baseline import (
    AuditBaseline,
    Baseline,
    check_baseline_compatible,
    is_audit,
    spec_config,
)
from refusal_probe.audit.circuit import MIN_PAIRS
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.policy import Policy
from refusal_probe.audit.prompt_inputs import (
    ResolvedPrompts,
    default_set_name,
    resolve_prompts,
    user_given,
)
from refusal_probe.errors import PolicyError, PromptFileError
from refusal_probe.model.devices import check_device, check_dtype, parse_device_map
from refusal_probe.model.hf import parse_dtype
from refusal_probe.prompts import sets
from refusal_probe.prompts.sets import Fixtures


class RunInputs:
    """What every checkpoint of a run shares: the prompt sets and the baseline, each opened once.

    A series of checkpoints reads the prompt files once, and opens ``--baseline`` once (a
    baseline model is loaded once and its results computed once, whichever checkpoint asks
    first); each checkpoint is still checked against the baseline on its own.

    Args:
        options: The run's options.
        on_fatal: Called with a message when the prompts cannot be loaded at all.
        test_prompts: At most this many test prompts per side (the policy's ``test_prompts``;
            ``0``: all).

    Attributes:
        baseline: The opened ``--baseline`` (``None`` until a checkpoint opens it).
        runs: Every checkpoint's audit run by spec (``AuditRun``), so a baseline that is also a
            checkpoint of the series is loaded and computed once.
    """

    def __init__(
        self,
        options: AuditOptions,
        on_fatal: Callable[[str], None] | None = None,
        test_prompts: int = 0,
    ) -> None:
        self.options = options
        self.test_prompts = test_prompts
        self.on_fatal = on_fatal
        self.baseline: Baseline | None = None
        self.runs: dict[str, Any] = {}
        self._prompts: dict[str, ResolvedPrompts] = {}

    def prompts_for(self, spec: str) -> ResolvedPrompts:
        """The prompt sets ``spec`` is audited on (see :mod:`~refusal_probe.audit.prompt_inputs`).

        Read once per set: checkpoints on the same default set, or on the user's, share it.
        """
        try:
            held_out = self.options.held_out or not user_given(self.options)
            name = default_set_name(spec) if held_out else "user"
            if name not in self._prompts:
                self._prompts[name] = resolve_prompts(self.options, spec, self.test_prompts)
            return self._prompts[name]
        except PromptFileError as exc:
            if self.on_fatal is not None:
                self.on_fatal(str(exc))
            raise

    def fixtures_for(self, spec: str) -> Fixtures:
        """The prompt sets of ``spec`` as the engine reads them."""
        return self.prompts_for(spec).fixtures

    @property
    def fixtures(self) -> Fixtures:
        """The prompt sets of the run's (first) model."""
        return self.fixtures_for(self.options.model)

    def loaded_for(self, spec: str) -> ResolvedPrompts | None:
        """The prompt sets of ``spec`` if they have been read (so a report can describe them)."""
        if not self._prompts:
            return None
        return self.prompts_for(spec)


class Need(NamedTuple):
    """Prompts an audit cannot run without.

    Attributes:
        kind: ``harmful``, ``harmless`` or ``pairs`` (the matched pairs).
        split: The split they must be in.
        at_least: How many it needs.
        use: What it needs them for (for the reason a report gives).
    """

    kind: str
    split: str
    at_least: int
    use: str


_TEST = (Need("harmful", "test", 1, "measure"), Need("harmless", "test", 1, "measure"))
#: Selecting the direction fits on train, selects on val and measures separation on test.
_DIRECTION = (
    Need("harmful", "train", 1, "fit the direction"),
    Need("harmless", "train", 1, "fit the direction"),
    Need("harmful", "val", 1, "select the direction"),
    Need("harmless", "val", 1, "select the direction"),
    *_TEST,
)

#: What each audit needs from the prompt sets: the one place the audits' splits are listed.
NEEDS: dict[str, tuple[Need, ...]] = {
    "behaviour": _TEST,
    "representation": _DIRECTION,
    "causal": _DIRECTION,
    "localization": (Need("pairs", "test", 1, "localize the circuit"),),
    "monitor": (
        *_DIRECTION,
        Need("harmful", "train", 4, "fit the monitor"),
        Need("harmless", "train", 4, "fit the monitor"),
        Need("harmless", "val", 1, "calibrate the monitor"),
    ),
    # against an audit.json (its direction read from disk) or a model (whose direction is
    # selected here: see needs_of)
    "finetune": (*_DIRECTION[:2], *_TEST),
}


def needs_of(audit: str, options: AuditOptions) -> tuple[Need, ...]:
    """What ``audit`` needs from the prompt sets with these options (see :data:`NEEDS`)."""
    if audit == "finetune" and options.baseline and not is_audit(options.baseline):
        return _DIRECTION  # the baseline model's direction is selected on these prompts
    return NEEDS.get(audit, ())


def unmet_needs(fixtures: Fixtures, audits: Iterable[str], options: AuditOptions) -> dict[str, str]:
    """Why each of ``audits`` cannot run on these prompt sets, by audit (absent: it can)."""
    have = {
        "harmful": fixtures.harmful.counts(),
        "harmless": fixtures.harmless.counts(),
        "pairs": {s: len(fixtures.pairs_in(s)) for s in sets.SPLITS},
    }
    buildable = min(have["harmful"]["test"], have["harmless"]["test"])
    if not have["pairs"]["test"] and buildable >= MIN_PAIRS:  # paired by token length later
        have["pairs"]["test"] = buildable
    out = {}
    for audit in audits:
        short = [n for n in needs_of(audit, options) if have[n.kind][n.split] < n.at_least]
        if short:
            n = short[0]
            label = "matched pairs" if n.kind == "pairs" else f"{n.kind} prompts"
            built = (
                f" (and {buildable} test prompts per side to pair by token length, where "
                f"{MIN_PAIRS} are needed)"
                if n.kind == "pairs"
                else ""
            )
            out[audit] = (
                f"the prompt sets ({fixtures.root}) have {have[n.kind][n.split]} {label} in the "
                f"{n.split!r} split{built}; the {audit} audit needs at least {n.at_least} to "
                f"{n.use}"
            )
    return out


def preflight(
    options: AuditOptions,
    checkpoints: Sequence[tuple[str, str]],
    inputs: RunInputs,
    audits: Collection[str] = (),
) -> dict[str, str]:
    """Check every checkpoint's spec, the prompts, the device (and dtype) and the baseline.

    Loads no model; a hub id is only looked up (cached, or the hub reachable).

    Args:
        options: The run's options.
        checkpoints: ``(spec, origin)`` of every checkpoint (origin: ``--model`` or
            ``FILE:LINE:`` of a models file).
        inputs: What the run shares (its prompt sets are read here).
        audits: The audits selected to run.

    Returns:
        The audits the prompt sets cannot serve, each with its reason (see :data:`NEEDS`);
        the others run.

    Raises:
        RefusalProbeError: Naming the problem, and for a checkpoint of a models file its
            ``file:line``; or, when no selected audit can run on the prompt sets, every reason.
        ReportError: A ``--baseline`` audit.json for the fine-tune audit has no direction
            file, or a damaged one.
    """
    configs = [(spec, origin, spec_config(spec, origin)) for spec, origin in checkpoints]
    # one line for a user's set (PromptSetError), file:line problems for a fixtures folder
    every = {spec: inputs.fixtures_for(spec) for spec, _ in checkpoints}
    if options.device_map:
        parse_device_map(options.device_map)
    else:  # the device exists, and the dtype computes there
        check_dtype(str(check_device(options.device)), parse_dtype(options.dtype))
    if options.baseline:
        for spec, origin, config in configs:
            check_baseline_compatible(spec, config, options.baseline, what=origin)
        if "finetune" in audits and is_audit(options.baseline):
            inputs.baseline = AuditBaseline.open(options.baseline)
            inputs.baseline.direction()  # present and verified, or a one-line ReportError
    unmet: dict[str, str] = {}
    for fixtures in every.values():
        unmet = {**unmet_needs(fixtures, audits, options), **unmet}
    if unmet and len(unmet) == len(set(audits)):
        raise PromptFileError("no selected audit can run: " + "; ".join(unmet.values()))
    return unmet


#: ``audit.check("<audit>.<name>", ...)`` with a literal id, as audit files write it.
_CHECK_CALL = re.compile(r"""\.check\(\s*["']([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)["']""")


def missing_checks(policy: Policy, files: Iterable[Path]) -> None:
    """Stop before any test when the audit ``files`` record checks the policy lacks.

    The check ids are read from the files' source (``audit.check("id", ...)`` with a literal id);
    an id built at run time is still caught when its test records it. Files that are not Python
    source are skipped.

    Raises:
        PolicyError: One line naming every missing section and the files that use them.
    """
    used: dict[str, set[str]] = {}  # check id -> the files that record it
    for path in sorted(p for p in set(files) if p.suffix == ".py"):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for check_id in _CHECK_CALL.findall(source):
            if check_id not in policy.checks:
                used.setdefault(check_id, set()).add(path.name)
    if used:
        listed = "; ".join(f"[{c}] (used by {', '.join(sorted(f))})" for c, f in used.items())
        raise PolicyError(
            f"{policy.path}: no section for {len(used)} check(s) the audits record: {listed}; "
            "add each with at_least/at_most, unit and rationale"
        )
