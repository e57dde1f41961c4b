"""What a run reads besides computing: the checks before anything runs, and what runs share.

:func:`preflight` checks every checkpoint's spec, the baseline, the device map and the prompt
files, loading no model; :func:`missing_checks`, that the policy has a section for every check
the audit files record. :class:`RunInputs` holds what every checkpoint of a run shares, each
opened once: the prompt sets, the baseline, and every checkpoint's
:class:`~refusal_probe.audit.run.AuditRun`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from refusal_probe.audit.baseline import Baseline, check_baseline_compatible, spec_config
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.policy import Policy
from refusal_probe.errors import PolicyError, PromptFileError
from refusal_probe.model.devices import parse_device_map
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

    Attributes:
        baseline: The opened ``--baseline`` (``None`` until a checkpoint opens it).
        runs: Every checkpoint's audit run by spec (``AuditRun``), so a baseline that is also a
            checkpoint of the series is loaded and computed once.
    """

    def __init__(
        self, options: AuditOptions, on_fatal: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self.on_fatal = on_fatal
        self.baseline: Baseline | None = None
        self.runs: dict[str, Any] = {}
        self._fixtures: Fixtures | None = None

    @property
    def fixtures(self) -> Fixtures:
        """The prompt sets (``--prompts`` or the shipped fixtures)."""
        if self._fixtures is None:
            try:
                self._fixtures = sets.load_fixtures(self.options.prompts)
            except PromptFileError as exc:
                if self.on_fatal is not None:
                    self.on_fatal(str(exc))
                raise
        return self._fixtures

    @property
    def fixtures_loaded(self) -> bool:
        """Whether the prompt sets have been read (so a report can describe them)."""
        return self._fixtures is not None


def preflight(
    options: AuditOptions, checkpoints: Sequence[tuple[str, str]], inputs: RunInputs
) -> None:
    """Check every checkpoint's spec, the prompts, the device map and the baseline.

    Loads no model.

    Args:
        options: The run's options.
        checkpoints: ``(spec, origin)`` of every checkpoint (origin: ``--model`` or
            ``FILE:LINE:`` of a models file).
        inputs: What the run shares (its prompt sets are read here).

    Raises:
        RefusalProbeError: Naming the problem, and for a checkpoint of a models file its
            ``file:line``.
    """
    configs = [(spec, origin, spec_config(spec, origin)) for spec, origin in checkpoints]
    inputs.fixtures  # noqa: B018 - raises PromptFileError listing file:line problems
    if options.device_map:
        parse_device_map(options.device_map)
    if options.baseline:
        for spec, origin, config in configs:
            check_baseline_compatible(spec, config, options.baseline, what=origin)


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
