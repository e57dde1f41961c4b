"""What a run reads besides computing: the checks before any test, and what checkpoints share.

:func:`preflight` checks the policy, every checkpoint's spec, the baseline, the device map and the
prompt files before any test runs, loading no model; :func:`load_options` turns the run's options
into the loader's; :class:`RunInputs` holds what every checkpoint of a run shares, each opened
once: the prompt sets, the baseline, and every checkpoint's
:class:`~refusal_probe.pytest_plugin.findings.Findings`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refusal_probe.errors import ModelLoadError, PromptFileError
from refusal_probe.model.loading import LoadOptions
from refusal_probe.pytest_plugin.session import AuditOptions

if TYPE_CHECKING:
    from refusal_probe.pytest_plugin.findings import Findings
    from refusal_probe.pytest_plugin.session import AuditSession


class RunInputs:
    """What every checkpoint of a run shares: the prompt sets and the baseline, each opened once.

    A series of checkpoints reads the prompt files once, and opens ``--baseline`` once (a
    baseline model is loaded once and its results computed once, whichever checkpoint asks
    first); each checkpoint is still checked against the baseline on its own.

    Args:
        options: The run's options.
        on_fatal: Called with a message when the prompts cannot be loaded at all.
    """

    def __init__(
        self, options: AuditOptions, on_fatal: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self._on_fatal = on_fatal
        self._fixtures: Any = None
        self._baseline: Any = None
        #: Every checkpoint's findings by spec, so a baseline that is also a checkpoint of the
        #: series is loaded and computed once.
        self.known: dict[str, Findings] = {}

    @property
    def fixtures(self) -> Any:
        """The prompt sets (``--prompts`` or the shipped fixtures)."""
        if self._fixtures is None:
            from refusal_probe.prompts.sets import load_fixtures

            try:
                self._fixtures = load_fixtures(self.options.prompts)
            except PromptFileError as exc:
                if self._on_fatal is not None:
                    self._on_fatal(str(exc))
                raise
        return self._fixtures

    @property
    def fixtures_loaded(self) -> bool:
        """Whether the prompt sets have been read (so a report can describe them)."""
        return self._fixtures is not None

    def baseline(self, candidate: Findings) -> Any:
        """The baseline, opened on first use, checked to fit ``candidate``."""
        from refusal_probe.pytest_plugin.finetune import check_fits_candidate, open_baseline

        if self._baseline is None:
            self._baseline = open_baseline(candidate)
        else:
            check_fits_candidate(candidate, self._baseline)
        return self._baseline


def preflight(session: AuditSession) -> None:
    """Check the policy, every checkpoint's spec, the baseline and the prompts, loading no model.

    Raises:
        RefusalProbeError: Naming the problem, and for a checkpoint of a models file its
            ``file:line`` (the plugin turns it into a usage error).
    """
    from refusal_probe.pytest_plugin.finetune import check_baseline_compatible

    o = session.options
    session.policy  # noqa: B018 - raises PolicyError naming the bad key
    configs = [(c, spec_config(c.spec, c.origin)) for c in session.checkpoints]
    session.inputs.fixtures  # noqa: B018 - raises PromptFileError listing file:line problems
    if o.device_map:
        from refusal_probe.model.devices import parse_device_map

        parse_device_map(o.device_map)
    if o.baseline:
        for c, config in configs:
            check_baseline_compatible(c.spec, config, o.baseline, what=c.origin)


def load_options(o: AuditOptions) -> LoadOptions:
    """How the run's options load a model: device or device map, dtype, the safety opt-ins."""
    from refusal_probe.model.devices import parse_device_map

    return LoadOptions(
        device=o.device,
        dtype=o.dtype,
        trust_remote_code=o.trust_remote_code,
        allow_pickle=o.allow_pickle,
        cache_dir=str(o.cache_dir),
        device_map=parse_device_map(o.device_map) if o.device_map else None,
    )


def spec_config(spec: str, what: str) -> dict[str, Any] | None:
    """The ``config.json`` of a local spec (``None`` for hub ids and GGUF files), or a clear error.

    Resolution is the loader's own (:func:`refusal_probe.model.sources.resolve`), so an alias or a
    path is judged here exactly as ``load_model`` will judge it; only hub ids are left for load
    time, since resolving one may download it.

    Raises:
        ModelLoadError: The spec names nothing loadable (the loader's message, naming the option).
    """
    from refusal_probe.model import sources

    path = Path(spec).expanduser()
    hub_like = (
        spec.count("/") == 1
        and not spec.startswith((".", "/", "~"))
        and not path.exists()
        and spec not in sources.ORGANISM_ALIASES
    )
    if hub_like:
        return None
    try:
        source, folder, _ = sources.resolve(spec)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{what} {spec}: {exc}") from None
    return None if source == "gguf" else _read_config(Path(folder) / "config.json")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not a readable config.json ({exc})") from None
