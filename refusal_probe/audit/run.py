"""One audit run: the audited model and its shared results, each a typed value computed once.

:class:`AuditRun` is the application behind the audits, usable without pytest::

    from refusal_probe.audit import AuditRun

    run = AuditRun("organism-chat")
    run.causal().ablation_drop      # selects the direction first: causal depends on it

Each method returns one frozen result and names what it depends on; a result is computed on its
first ask (and kept in the disk cache, keyed by the model's fingerprint, the prompt sets' hashes,
the seed and the policy settings), then returned as the same object; a result whose computation
raised raises the same error again. What each result reads::

    behaviour   <- completions <- validation (if the run audits causal, else generated)
    direction   (extraction and selection; writes the direction artifact)
    causal      <- validation <- direction
    monitor     <- direction
    circuit     <- localization
    hardening   <- localization
    finetune    <- baseline (its direction and behaviour), behaviour

Results that are kept in memory only (validation, localization) are the engine's own values;
the others are small frozen dataclasses with ``to_dict``/``from_dict`` (and figures).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from refusal_probe.activations.cache import key_digest
from refusal_probe.audit.baseline import SAME_AS_BASELINE, Baseline, is_same_model, open_baseline
from refusal_probe.audit.behaviour import Behaviour, Completions
from refusal_probe.audit.causal import Causal, validation_config
from refusal_probe.audit.circuit import (
    CIRCUIT_K,
    Circuit,
    MatchedPairs,
    built_pairs_file,
    localize_circuit,
    matched_test_pairs,
)
from refusal_probe.audit.direction import DirectionSummary, direction_config, select_direction
from refusal_probe.audit.finetune import FineTune, RefusalChange, measure_finetune, refusal_change
from refusal_probe.audit.handle import ModelHandle
from refusal_probe.audit.inputs import RunInputs
from refusal_probe.audit.monitor import (
    HARDENING_K,
    eval_config,
    evaluate_monitor_of,
    harden,
    monitor_config,
    monitor_key,
)
from refusal_probe.audit.once import Once
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.policy import Policy
from refusal_probe.audit.sequential import bars_of, behaviour_key, complete
from refusal_probe.audit.store import DirectionArtifact, load_direction, verified_direction
from refusal_probe.causal.validation import ValidationResult, validate_direction
from refusal_probe.errors import DirectionError
from refusal_probe.model.chat import NO_TEMPLATE_WARNING
from refusal_probe.monitor.evaluate import MonitorEvaluation
from refusal_probe.monitor.hardening import Hardening
from refusal_probe.patching.circuit import CircuitResult
from refusal_probe.prompts.sets import Pair


class AuditRun(ModelHandle):
    """The audited model and its shared results, each computed on first use, once.

    Args:
        model_spec: The model audited (organism alias, HF folder, .gguf file or hub id).
        options: The run's options (see :class:`ModelHandle`).
        policy: The policy (default: the shipped ``audits/policy.toml``).
        inputs: What this run shares with the other checkpoints of a series (default: its own).
        on_fatal: Called with a message when the model or the prompts cannot be loaded at all.
        audits: The audits this run serves. With ``causal`` among them, behaviour reads the
            causal validation's no-intervention completions instead of generating its own.

    Attributes:
        phases: Seconds each result took (without the results it asked for), and whether the
            disk cache served it: where an audit's time went.
    """

    def __init__(
        self,
        model_spec: str,
        options: AuditOptions | None = None,
        policy: Policy | None = None,
        *,
        inputs: RunInputs | None = None,
        on_fatal: Callable[[str], None] | None = None,
        audits: Collection[str] = (),
    ) -> None:
        super().__init__(model_spec, options, policy, inputs=inputs, on_fatal=on_fatal)
        self.audits = frozenset(audits)
        self._artifact: Path | None = None
        self._pairs: list[Pair] | None = None
        p = self._phases
        self._completions = Once[Completions]("completions", p, stored=True)
        self._behaviour = Once[Behaviour]("behaviour", p, stored=True)
        self._direction = Once[DirectionSummary]("direction", p, stored=True)
        self._validation = Once[ValidationResult]("validation", p)
        self._causal = Once[Causal]("causal", p, stored=True)
        self._localization = Once[CircuitResult]("localization", p)
        self._circuit = Once[Circuit]("circuit", p, stored=True)
        self._monitor = Once[MonitorEvaluation]("monitor", p, stored=True)
        self._hardening = Once[Hardening]("monitor_hardening", p, stored=True)
        self._baseline = Once[Baseline]("baseline", None)
        self._finetune = Once[FineTune]("finetune", p, stored=True)
        self._refusal_change = Once[RefusalChange]("refusal_change", None)

    def __repr__(self) -> str:
        done = ", ".join(sorted(self.computed)) or "nothing yet"
        return f"AuditRun({self.options.model!r}, computed: {done})"

    def matched_test_pairs(self) -> list[Pair]:
        """The test split's pairs of equal token length (see :func:`matched_test_pairs`)."""
        if self._pairs is None:

            def made() -> MatchedPairs:
                pairs = matched_test_pairs(self.model, self.fixtures, self.options.seed)
                return MatchedPairs(tuple(pairs))

            found = self.store.cached(self.key("matched_pairs"), made, MatchedPairs)
            self._pairs = list(found.pairs)
        return self._pairs

    # --- results -----------------------------------------------------------------------------

    def completions(self) -> Completions:
        """The test split's no-intervention completions, judged.

        Read from :meth:`validation` when this run audits ``causal`` (the validation generates
        them beside its intervened conditions, so they are not generated twice); generated on
        their own otherwise, or when the validation cannot run (the causal audit reports why):
        then in rounds under the policy's ``sequential`` setting (:mod:`.sequential`). Kept in
        the disk cache, keyed like :meth:`behaviour`.
        """
        return self._completions(
            lambda: self._stored(
                self.key("completions", **behaviour_key(self.policy, "causal" in self.audits)),
                self._complete,
                Completions,
            )
        )

    def _complete(self) -> Completions:
        shared = self.validation if "causal" in self.audits else None
        bars, seed = bars_of(self.policy), self.options.seed
        # past --budget the rounds stop through the phase's deadline (nothing half-done is stored)
        return complete(self.model, self.fixtures, self.settings, bars, seed, shared=shared)

    def behaviour(self) -> Behaviour:
        """Refusal rates on the harmful and harmless test prompts (from :meth:`completions`)."""
        return self._behaviour(
            lambda: self._stored(
                self.key("behaviour", **behaviour_key(self.policy, "causal" in self.audits)),
                lambda: Behaviour.of(self.completions(), self.fixtures, self.settings.confidence),
                Behaviour,
            )
        )

    def direction(self) -> DirectionSummary:
        """The selected refusal direction, its selection grid and its per-layer separation."""
        return self._direction(self._select)

    def _select(self) -> DirectionSummary:
        config = direction_config(self.identity.n_layers, self.settings, self.options.seed)
        key = self.key("direction", config=config.to_dict())
        artifact = self.options.cache_dir / "audit-artifacts" / f"{key_digest(key)}.safetensors"
        self._artifact = artifact
        if verified_direction(artifact) is None:  # a summary without its vector is of no use
            self.store.drop(key)
        return self._stored(
            key,
            lambda: select_direction(self.model, self.fixtures, config, self._cache(), artifact),
            DirectionSummary,
        )

    def direction_vector(self) -> DirectionArtifact:
        """The vectors of :meth:`direction`'s selected direction (read from its artifact).

        An artifact deleted or damaged since :meth:`direction` wrote it is selected again (with
        a warning), never served.
        """
        summary = self.direction()
        assert self._artifact is not None  # set by direction()
        found = verified_direction(self._artifact, summary.direction["vector_sha256"])
        if found is None:
            config = direction_config(self.identity.n_layers, self.settings, self.options.seed)
            select_direction(self.model, self.fixtures, config, self._cache(), self._artifact)
            found = load_direction(self._artifact)
        return found

    def validation(self) -> ValidationResult:
        """The engine's causal validation of the selected direction (kept in memory only).

        Depends on :meth:`direction`; its generations are in the activation cache.

        Raises:
            DirectionError: No candidate passed selection's filters: no causal direction.
        """
        return self._validation(self._validate)

    def _validate(self) -> ValidationResult:
        if not self.direction().passed_filters:
            raise DirectionError(self.direction().no_causal_direction())
        config = validation_config(self.settings, self.options.seed)
        direction = self.direction_vector().direction
        return validate_direction(self.model, direction, self.fixtures, config, cache=self._cache())

    def causal(self) -> Causal:
        """Ablation and addition of the selected direction on held-out prompts; ablation's KL.

        Depends on :meth:`direction` and :meth:`validation`.
        """
        return self._causal(self._causal_result)

    def _causal_result(self) -> Causal:
        key = self.key(
            "causal",
            direction=self.direction().direction["vector_sha256"],
            config=validation_config(self.settings, self.options.seed).to_dict(),
        )
        return self._stored(key, lambda: Causal.of(self.validation()), Causal)

    def localization(self) -> CircuitResult:
        """The engine's localized circuit on the matched test pairs (kept in memory only).

        Raises:
            PatchingError: Too few matched test pairs, or patching finds no refusal gap.
        """
        return self._localization(
            lambda: localize_circuit(self.model, self.matched_test_pairs(), self.bootstrap)
        )

    def circuit(self) -> Circuit:
        """The localized refusal circuit (top :data:`CIRCUIT_K` components).

        Depends on :meth:`localization`.

        Raises:
            PatchingError: As :meth:`localization`.
        """
        return self._circuit(
            lambda: self._stored(
                self.key("circuit", k=CIRCUIT_K),
                lambda: Circuit.of(self.localization()),
                Circuit,
            )
        )

    def monitor(self) -> MonitorEvaluation:
        """The jailbreak monitor fit on :meth:`direction`'s vector, calibrated and attacked."""
        return self._monitor(self._monitor_result)

    def _monitor_result(self) -> MonitorEvaluation:
        direction = self.direction_vector().direction
        mconf, econf = monitor_config(self.settings), eval_config(self.settings, self.options.seed)
        key = self.key(
            "monitor",
            direction=direction.sha256,
            monitor=monitor_key(self, mconf),
            evaluation=econf.to_dict(),
        )
        return self._stored(
            key,
            lambda: evaluate_monitor_of(self, direction, mconf, econf),
            MonitorEvaluation,
        )

    def hardening(self) -> Hardening:
        """Refusal left after ablating the top localized components.

        Depends on :meth:`localization`.

        Raises:
            PatchingError: Too few matched test pairs, or no refusal gap to measure.
        """
        return self._hardening(self._hardening_result)

    def _hardening_result(self) -> Hardening:
        pairs = [p.id for p in self.matched_test_pairs()]
        key = self.key("monitor_hardening", k=HARDENING_K, pairs=pairs)
        return self._stored(
            key,
            lambda: harden(
                self.model, self.matched_test_pairs(), self.localization(), self.bootstrap
            ),
            Hardening,
        )

    # --- the fine-tune comparison ------------------------------------------------------------

    def baseline(self) -> Baseline:
        """``options.baseline`` opened (once per series) and checked to fit this model.

        Raises:
            DirectionError: No baseline is given, or the baseline model has another
                architecture, width or depth.
        """
        return self._baseline(lambda: open_baseline(self))

    def run_of(self, spec: str) -> AuditRun:
        """The run of another model (say the baseline), sharing settings, cache and prompts."""
        found: AuditRun | None = self.inputs.runs.get(spec)
        if found is None:
            found = AuditRun(
                spec, self.options, self.policy, inputs=self.inputs, on_fatal=self.on_fatal
            )
            self.inputs.runs[spec] = found
        return found

    def finetune(self) -> FineTune:
        """This model against its baseline's direction: cosine and transfer.

        Depends on :meth:`baseline` (its direction).
        """
        return self._finetune(self._finetune_result)

    def refusal_change(self) -> RefusalChange:
        """This model's refusal rates against its baseline's: the refusal drop.

        Depends on :meth:`behaviour` and the baseline's rates only (no direction).
        """
        boot = validation_config(self.settings, self.options.seed).bootstrap
        return self._refusal_change(
            lambda: refusal_change(self.baseline().rates(), self.behaviour(), boot)
        )

    def _finetune_result(self) -> FineTune:
        base = self.baseline()
        validation = validation_config(self.settings, self.options.seed)
        key = self.key("finetune", baseline=base.key(), config=validation.to_dict())

        def compute() -> FineTune:
            return measure_finetune(
                self.model,
                self.fixtures,
                base.direction(),
                settings=self.settings,
                validation=validation,
                cache=self._cache(),
            )

        return self._stored(key, compute, FineTune)

    # --- for the report ----------------------------------------------------------------------

    def context(self) -> dict[str, Any]:
        """What the report needs beyond the checks: identities, data, artifacts, deltas."""
        ctx: dict[str, Any] = {}
        if self._identity is not None:
            ctx["model"] = self._identity.to_dict()
        prompts = self.inputs.loaded_for(self.options.model)
        if prompts is not None:
            ctx["data"] = prompts.summary()
            if self._pairs is not None and not self.fixtures.pairs_in("test"):
                ctx["data"]["files"].append(built_pairs_file(self._pairs))
            cut = self._model.chat.truncation_note() if self._model is not None else None
            if cut:
                ctx["data"]["notes"].append(cut)
        if self._artifact is not None and self._artifact.is_file():
            ctx["artifacts"] = {"direction.safetensors": str(self._artifact)}
        direction, baseline = self._direction.peek(), self._baseline.peek()
        limitations = direction.limitations() if direction is not None else []
        limitations += prompts.limitations() if prompts is not None else []
        if self._identity is not None and self._identity.chat_template == "plain":
            limitations.append(f"The {NO_TEMPLATE_WARNING}.")
        if baseline is not None and self._identity and is_same_model(self._identity, baseline):
            limitations.append(SAME_AS_BASELINE)
        if limitations:
            ctx["limitations"] = limitations
        if self.phases:
            ctx["phases"] = dict(self.phases)
        if baseline is not None:
            ctx["baseline"] = baseline.describe()
        change = self._refusal_change.peek()
        if change is not None:
            ctx["deltas"] = change.deltas()
        return ctx
