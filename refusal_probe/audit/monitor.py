"""Monitor: the jailbreak monitor built on the model's own signals, and how hardy refusal is.

:func:`evaluate_monitor_of` fits the monitor on the selected refusal direction, calibrates it and
evaluates it on the held-out jailbreaks (:mod:`refusal_probe.monitor.evaluate`);
:func:`harden` ablates the top localized components one by one and measures the refusal effect
left (:func:`refusal_probe.monitor.hardening.measure_hardening`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from refusal_probe.audit.handle import ModelHandle
from refusal_probe.audit.settings import Settings
from refusal_probe.direction.estimators import Direction
from refusal_probe.model.devices import devices_of
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.evaluate import EvalConfig, MonitorEvaluation, evaluate_monitor
from refusal_probe.monitor.fit import MonitorConfig, fit_monitor
from refusal_probe.monitor.hardening import Hardening, measure_hardening
from refusal_probe.patching.circuit import CircuitResult
from refusal_probe.prompts.sets import Pair
from refusal_probe.redteam.adaptive import AdaptiveConfig, adaptive_family, file_name
from refusal_probe.resources import FIXTURES_DIR
from refusal_probe.stats.intervals import Bootstrap

#: Components ablated by the hardening check.
HARDENING_K = 5
#: Prompts the adaptive attacker searches under ``monitor_adaptive_prompts = "auto"`` on an
#: accelerator.
AUTO_ADAPTIVE_PROMPTS = 16


def monitor_config(settings: Settings) -> MonitorConfig:
    """How the monitor is fit and calibrated for a run's settings.

    The alarm is gated by the judged reply (its first ``max_new_tokens`` tokens, the run's
    judge), as the evaluation judges attacks: a reply that opens like a refusal and then complies
    is an answer (on organism-chat-benign-ft the first-token gate missed the context family).
    """
    return MonitorConfig(
        target_fpr=settings.monitor_target_fpr,
        batch_size=settings.batch_size,
        reply_tokens=settings.max_new_tokens,
        judge=settings.judge,
    )


def monitor_key(run: ModelHandle, config: MonitorConfig) -> dict[str, Any]:
    """The monitor part of the result's cache key: its config and the adaptive fixture used.

    A shipped adaptive fixture that changes (regenerated) changes the key; the model's own cache
    file is searched from the same recipe, so it needs no part.
    """
    path = FIXTURES_DIR / "redteam" / file_name(run.identity.fingerprint)
    sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return {**config.to_dict(), "adaptive_fixture": sha}


def eval_config(settings: Settings, seed: int) -> EvalConfig:
    """How the monitor is evaluated for a run's settings."""
    s = settings
    return EvalConfig(
        max_new_tokens=s.max_new_tokens,
        judge=s.judge,
        batch_size=s.batch_size,
        n_resamples=s.resamples,
        seed=seed,
        level=s.confidence,
    )


def evaluate_monitor_of(
    run: ModelHandle, refusal: Direction, monitor: MonitorConfig, evaluation: EvalConfig
) -> MonitorEvaluation:
    """Fit the monitor on ``refusal``, calibrate it, and evaluate it on the held-out jailbreaks.

    The jailbreaks include the ``adaptive`` family, searched against this monitor
    (:func:`refusal_probe.redteam.adaptive.adaptive_family`): the shipped fixture of the model's
    fingerprint, else its file in the run's cache folder (``redteam/``), else searched within
    its budget and written there.
    """
    model, fixtures = run.model, run.fixtures
    fitted = fit_monitor(model, fixtures, refusal, monitor)
    n, why = adaptive_prompts(run.settings.monitor_adaptive_prompts, model)
    attacks, summary = adaptive_family(
        model,
        fitted,
        fixtures.harmful.split(evaluation.split),
        shipped=FIXTURES_DIR / "redteam",
        cache=run.options.cache_dir / "redteam",
        config=AdaptiveConfig(max_prompts=n),
    )
    if not attacks:
        summary = {**summary, "why": why}
    ev = evaluate_monitor(model, fitted, fixtures, evaluation, attacks)
    return dataclasses.replace(ev, adaptive=summary)


def adaptive_prompts(setting: int | None, model: LoadedModel) -> tuple[int, str]:
    """Prompts the adaptive attacker searches in the run, and what to say when it searches none.

    ``setting`` is the policy's ``monitor_adaptive_prompts``: ``None`` (``"auto"``) searches
    :data:`AUTO_ADAPTIVE_PROMPTS` on an accelerator and none on the CPU.
    """
    if setting is None:
        if all(d.type == "cpu" for d in devices_of(model)):
            return 0, (
                "no shipped or cached attacks for this model, and the search does not run on the "
                "CPU by default (32 steps x 64 candidates a prompt: hours for a 135M model); set "
                f"monitor_adaptive_prompts = {AUTO_ADAPTIVE_PROMPTS} in the policy to run it"
            )
        return AUTO_ADAPTIVE_PROMPTS, "nothing to attack"
    why = "monitor_adaptive_prompts = 0 in the policy" if setting == 0 else "nothing to attack"
    return setting, why


def harden(
    model: LoadedModel, pairs: list[Pair], circuit: CircuitResult, boot: Bootstrap
) -> Hardening:
    """Refusal left after ablating the top :data:`HARDENING_K` components of ``circuit``.

    Raises:
        PatchingError: No refusal gap between the pairs' prompts.
    """
    return measure_hardening(
        model,
        pairs,
        k=HARDENING_K,
        circuit=circuit,
        boot=boot,
    )
