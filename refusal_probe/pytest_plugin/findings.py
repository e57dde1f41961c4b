"""Shared results of one audit run, computed lazily and once, and kept in the disk cache.

:class:`Findings` holds the audited model and computes each result the first time an audit asks
for it: :meth:`~Findings.behaviour` (greedy completions, no direction needed),
:meth:`~Findings.direction` (extraction + selection), :meth:`~Findings.causal` (validation of the
selected direction) and :meth:`~Findings.finetune` (against ``--baseline``). So ``pytest audits/
-k behaviour`` generates completions and nothing else, and a second run reads every result from
the cache (keyed by the model's fingerprint, the prompt sets' hashes and the settings) instead of
recomputing it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from refusal_probe.activations.cache import key_digest
from refusal_probe.audit.policy import Policy
from refusal_probe.errors import ModelLoadError, ScoringError
from refusal_probe.model.devices import devices_of
from refusal_probe.model.loading import LoadedModel
from refusal_probe.pytest_plugin.inputs import RunInputs, load_options
from refusal_probe.pytest_plugin.measures import (
    MEASURES_VERSION,
    Behaviour,
    Causal,
    DirectionSummary,
)
from refusal_probe.pytest_plugin.session import AuditOptions
from refusal_probe.pytest_plugin.store import ResultStore, load_direction, save_direction
from refusal_probe.stats.intervals import Bootstrap

log = logging.getLogger(__name__)

#: Components in the localized circuit (the localization and fine-tune overlap audits).
CIRCUIT_K = 5
#: Fewer matched test pairs than this cannot localize anything worth reporting.
MIN_PAIRS = 8

#: Results computed here; their cache keys hold only the harmful and harmless prompt files.
_CORE_RESULTS = frozenset({"behaviour", "direction", "causal", "finetune"})


class Findings:
    """The audited model and its shared results, each computed on first use.

    Args:
        options: The run's options (``options.model`` is the model audited here).
        policy: The policy (its settings decide generation length, intervals, batch size).
        on_fatal: Called with a message when the model or the prompts cannot be loaded at all
            (the plugin stops the run there); without it the error is raised.
        inputs: What this checkpoint shares with the others of the run (default: its own).
    """

    def __init__(
        self,
        options: AuditOptions,
        policy: Policy,
        on_fatal: Callable[[str], None] | None = None,
        *,
        inputs: RunInputs | None = None,
    ) -> None:
        self.options = options
        self.policy = policy
        self.settings = policy.settings
        #: How every bootstrap interval of the run is drawn (the policy's settings, the run's seed).
        self.bootstrap = Bootstrap(self.settings.resamples, options.seed, self.settings.confidence)
        self.store = ResultStore(options.cache_dir)
        #: Seconds each shared result took (without the results it asked for), and whether the
        #: disk cache served it: where an audit's time went.
        self.phases: dict[str, dict[str, Any]] = {}
        self._nested: list[float] = []
        self.inputs = inputs or RunInputs(options, on_fatal)
        self._on_fatal = on_fatal
        self._model: LoadedModel | None = None
        self._identity: Any = None
        self._load_error: ModelLoadError | None = None
        self._memo: dict[str, Any] = {}
        #: The audits selected in this run (set by the plugin); lets results share work.
        self.wanted: set[str] = set()

    def __repr__(self) -> str:
        done = ", ".join(sorted(self._memo)) or "nothing yet"
        return f"Findings({self.options.model!r}, computed: {done})"

    # --- inputs ------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        """The audited model, loaded on first use (a failed load fails every later use at once)."""
        if self._load_error is not None:
            raise self._load_error
        if self._model is None:
            from refusal_probe.model.loading import load_model

            o = self.options
            try:
                self._model = load_model(o.model, load_options(o))
            except ModelLoadError as exc:
                self._load_error = exc
                self._fatal(f"--model {o.model}: {exc}")
                raise
            self._identity = self._model.identity
        return self._model

    @property
    def identity(self) -> Any:
        """The model's identity (known without reloading a released model)."""
        return self._identity if self._identity is not None else self.model.identity

    def release(self) -> None:
        """Drop the loaded model (its results and identity stay); the next use loads it again.

        A series releases each checkpoint when its tests are done, so one model is in memory at
        a time.
        """
        if self._model is None:
            return
        device_types = {d.type for d in devices_of(self._model)}
        self._model = None
        gc.collect()
        if "cuda" in device_types:
            torch.cuda.empty_cache()

    @property
    def fixtures(self) -> Any:
        """The prompt sets (``--prompts`` or the shipped fixtures), shared by the run."""
        return self.inputs.fixtures

    def _fatal(self, message: str) -> None:
        if self._on_fatal is not None:
            self._on_fatal(message)

    def _prompt_hashes(self, what: str) -> dict[str, str]:
        """Hashes of the prompt files a result depends on.

        The built-in results read only the harmful and harmless sets, so regenerating the
        jailbreaks or the pairs does not invalidate them; other results key on every file.
        """
        fps = self.fixtures.fingerprints
        if what in _CORE_RESULTS:
            return {k: v for k, v in fps.items() if k in ("harmful.jsonl", "harmless.jsonl")}
        return dict(fps)

    def _key(self, what: str, **extra: Any) -> dict[str, Any]:
        return {
            "what": what,
            "measures": MEASURES_VERSION,
            "model": self.model.key.to_dict(),
            "prompts": self._prompt_hashes(what),
            "seed": self.options.seed,
            "settings": self.settings.__dict__,
            **extra,
        }

    def shared(
        self,
        what: str,
        compute: Callable[[], Any],
        *,
        load: Callable[[dict[str, Any]], Any] | None = None,
        **key: Any,
    ) -> Any:
        """Compute a result once per run; with ``load``, keep it in the disk cache too.

        This is how an audit file adds a result of its own (say a localization audit's circuit)
        without touching the plugin: ``findings.shared("localization", compute, load=...)``.

        Args:
            what: The result's name (unique within the run).
            compute: Makes the result; with ``load`` it must have ``to_dict()``.
            load: Rebuilds the result from its ``to_dict()`` data, or returns ``None`` to force a
                recompute; without it the result is kept in memory only.
            **key: What else the result depends on (JSON data), beyond the model's fingerprint,
                the prompt sets, the seed and the policy settings, which are always in the key.
        """
        if what in self._memo:
            return self._memo[what]
        if f"{what}!" in self._memo:  # it failed earlier in this run: fail the same way, at once
            raise self._memo[f"{what}!"]
        try:
            value = self._load_or_compute(what, compute, load, key)
        except Exception as exc:
            self._memo[f"{what}!"] = exc
            raise
        self._memo[what] = value
        return value

    def _load_or_compute(
        self,
        what: str,
        compute: Callable[[], Any],
        load: Callable[[dict[str, Any]], Any] | None,
        key: dict[str, Any],
    ) -> Any:
        value = None
        self._nested.append(0.0)  # seconds spent in results this one asks for
        t0 = time.perf_counter()
        try:
            if load is not None:
                full_key = self._key(what, **key)
                hit = self.store.get(full_key)
                value = load(hit) if hit is not None else None
            cached = value is not None
            if value is None:
                value = compute()
                if load is not None:
                    self.store.put(full_key, value.to_dict())
        finally:
            total = time.perf_counter() - t0
            inner = self._nested.pop()
            if self._nested:
                self._nested[-1] += total
        self.phases[what] = {"seconds": round(total - inner, 3), "cached": cached}
        return value

    # --- results -----------------------------------------------------------------------------

    def behaviour(self) -> Behaviour:
        """Refusal rates on the harmful and harmless test prompts (greedy, substring judge).

        When the run also validates the direction, the validation's no-intervention completions
        are the same prompts judged the same way, so behaviour is read from them instead of
        generating twice; if the validation cannot run, behaviour is generated on its own.
        """
        if "behaviour" not in self._memo and "causal" in self.wanted:
            with contextlib.suppress(Exception):  # the causal audit reports its own failure
                self.causal()
        return self.shared("behaviour", self._behaviour, load=Behaviour.from_dict)

    def _behaviour(self) -> Behaviour:
        from refusal_probe.scoring.generation import judge

        fx, s = self.fixtures, self.settings
        harmful, harmless = fx.harmful.texts("test"), fx.harmless.texts("test")
        j = judge(
            self.model,
            harmful + harmless,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            level=s.confidence,
        )
        n = len(harmful)
        rows = list(zip(j.prompts, j.completions, j.refused, strict=True))
        return self._behaviour_of(rows[:n], rows[n:])

    def _behaviour_of(
        self, harmful: list[tuple[str, str, bool]], harmless: list[tuple[str, str, bool]]
    ) -> Behaviour:
        """Behaviour from judged ``(prompt, completion, refused)`` rows of the test split."""
        from refusal_probe.stats.intervals import wilson_interval

        level = self.settings.confidence
        cats = [p.category for p in self.fixtures.harmless.split("test")]
        edgy = [r for (_, _, r), c in zip(harmless, cats, strict=True) if c == "edgy"]

        def rate(rows: list[tuple[str, str, bool]]) -> Any:
            return wilson_interval(sum(r for _, _, r in rows), len(rows), level)

        def ex(rows: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
            return [{"prompt": p, "completion": c, "refused": r} for p, c, r in rows[:3]]

        return Behaviour(
            harmful=rate(harmful),
            harmless=rate(harmless),
            edgy=wilson_interval(sum(edgy), len(edgy), level) if edgy else None,
            examples={"harmful": ex(harmful), "harmless": ex(harmless)},
            max_new_tokens=self.settings.max_new_tokens,
        )

    def direction_config(self) -> Any:
        """The engine's direction configuration for this run."""
        from refusal_probe.selection.selection import DirectionConfig

        s = self.settings
        return DirectionConfig(
            batch_size=s.batch_size,
            n_resamples=s.resamples,
            seed=self.options.seed,
            n_select=s.selection_prompts,
            layers=(
                tuple(range(0, self.model.n_layers, s.selection_layer_stride))
                if s.selection_layer_stride > 1
                else None
            ),
            positions=tuple(range(-s.selection_positions, 0)) if s.selection_positions else None,
            screen=s.selection_screen or None,
        )

    def direction(self) -> DirectionSummary:
        """The selected refusal direction, its selection grid and its per-layer separation."""
        if "direction" in self._memo:
            return self._memo["direction"]
        config = self.direction_config().to_dict()
        artifact = self._artifact_path(self._key("direction", config=config))

        def load(d: dict[str, Any]) -> DirectionSummary | None:
            return DirectionSummary.from_dict(d) if artifact.is_file() else None

        summary = self.shared(
            "direction", lambda: self._direction(artifact), load=load, config=config
        )
        self._memo["artifact"] = artifact
        return summary

    def _direction(self, artifact: Path) -> DirectionSummary:
        from refusal_probe.activations.cache import TensorCache
        from refusal_probe.selection.search import find_refusal_direction

        config, cache = self.direction_config(), TensorCache(self.options.cache_dir)
        try:
            result = find_refusal_direction(self.model, self.fixtures, config, cache=cache)
        except ScoringError as exc:
            # A model that rarely refuses leaves (almost) no harmful prompt with a positive refusal
            # score, so the reference method's filter empties the sets. The question "is there a
            # harmful-vs-harmless direction, and does it cause refusal?" still has an answer:
            # fit on unfiltered prompts, and say so in the report.
            log.warning("direction: %s; fitting on unfiltered prompts instead", exc)
            result = find_refusal_direction(
                self.model, self.fixtures, replace(config, filter_prompts=False), cache=cache
            )
        j = result.candidates.offsets.index(result.direction.position)
        save_direction(
            artifact,
            result.direction,
            result.candidates.vectors[:, j],
            result.candidates.layers,
        )
        return DirectionSummary.of(result)

    def _artifact_path(self, key: dict[str, Any]) -> Path:
        return self.options.cache_dir / "audit-artifacts" / f"{key_digest(key)}.safetensors"

    def direction_vector(self) -> tuple[Any, torch.Tensor, tuple[int, ...]]:
        """The selected ``Direction``, and each layer's candidate there ``[layer, d]``."""
        self.direction()
        return load_direction(self._memo["artifact"])

    def validation_config(self) -> Any:
        """The engine's validation configuration for this run."""
        from refusal_probe.causal.validation import ValidationConfig

        s = self.settings
        return ValidationConfig(
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            n_resamples=s.resamples,
            seed=self.options.seed,
            level=s.confidence,
        )

    def causal(self) -> Causal:
        """Ablation and addition of the selected direction on held-out prompts; ablation's KL."""
        summary = self.direction()
        return self.shared(
            "causal",
            self._causal,
            load=Causal.from_dict,
            direction=summary.direction["vector_sha256"],
            config=self.validation_config().to_dict(),
        )

    def _causal(self) -> Causal:
        from refusal_probe.causal.validation import validate_direction

        direction, _, _ = self.direction_vector()
        from refusal_probe.activations.cache import TensorCache

        v = validate_direction(
            self.model,
            direction,
            self.fixtures,
            self.validation_config(),
            cache=TensorCache(self.options.cache_dir),
        )
        if (
            "behaviour" not in self._memo
            and v.config.max_new_tokens == self.settings.max_new_tokens
        ):
            j = v.judgements

            def rows(name: str) -> list[tuple[str, str, bool]]:
                return list(zip(j[name].prompts, j[name].completions, j[name].refused, strict=True))

            b = self._behaviour_of(rows("harmful_baseline"), rows("harmless_baseline"))
            self.shared("behaviour", lambda: b, load=lambda _: None)  # memo + disk, as if generated
        return Causal.of(v, self.bootstrap)

    # --- localization ------------------------------------------------------------------------

    def matched_test_pairs(self) -> list[Any]:
        """The test split's (harmful, harmless) pairs whose prompts have equal token lengths.

        Raises:
            PatchingError: Fewer than :data:`MIN_PAIRS` of them under this tokenizer.
        """
        from refusal_probe.errors import PatchingError
        from refusal_probe.prompts.sets import matched_pairs

        model = self.model

        def length(text: str) -> int:
            return int(model.chat.encode([text]).attention_mask.sum())

        pairs = matched_pairs(self.fixtures.pairs_in("test"), length)
        if len(pairs) < MIN_PAIRS:
            raise PatchingError(
                f"only {len(pairs)} test pairs have equal token lengths under this tokenizer "
                f"(need {MIN_PAIRS}); add pairs.jsonl with harmful and harmless prompts of equal "
                "token length"
            )
        return pairs

    def circuit(self) -> Any:
        """The localized refusal circuit on the matched test pairs.

        The top :data:`CIRCUIT_K` heads and MLPs over the post-instruction span, ranked by
        attribution patching and confirmed by exact patching
        (:func:`refusal_probe.patching.localize`), summarized as a
        :class:`~refusal_probe.pytest_plugin.measures.Circuit`. A cached circuit is read without
        loading the model (a baseline checkpoint of a series is not loaded again); one computed
        in this run is also kept whole, for :meth:`localized`.

        Raises:
            PatchingError: Too few matched test pairs (:meth:`matched_test_pairs`), or patching
                finds no refusal gap.
        """
        from refusal_probe.pytest_plugin.measures import Circuit

        def compute() -> Circuit:
            from refusal_probe.patching import localize

            pairs = self.matched_test_pairs()
            result = localize(
                self.model,
                [(p.harmful, p.harmless) for p in pairs],
                k=CIRCUIT_K,
                boot=self.bootstrap,
            )
            self._memo["circuit_result"] = result
            return Circuit.of(result)

        return self.shared("circuit", compute, load=Circuit.from_dict, k=CIRCUIT_K)

    def localized(self) -> Any:
        """The whole ``CircuitResult`` if this run localized it, else ``None``.

        ``None`` when the disk cache served the summary. The hardening audit ablates these
        components instead of localizing the same pairs again.
        """
        return self._memo.get("circuit_result")

    # --- baseline ----------------------------------------------------------------------------

    def baseline(self) -> Any:
        """The baseline of the fine-tune audit (see :mod:`refusal_probe.pytest_plugin.finetune`)."""
        if "baseline" not in self._memo:
            self._memo["baseline"] = self.inputs.baseline(self)
        return self._memo["baseline"]

    def finetune(self) -> Any:
        """The candidate against its baseline: direction cosine, transfer, refusal drop."""
        if "finetune" in self._memo:
            return self._memo["finetune"]
        from refusal_probe.pytest_plugin.finetune import FineTune, measure_finetune

        base = self.baseline()
        return self.shared(
            "finetune",
            lambda: measure_finetune(self, base),
            load=FineTune.from_dict,
            baseline=base.key(),
            config=self.validation_config().to_dict(),
        )

    # --- for the report ----------------------------------------------------------------------

    def context(self) -> dict[str, Any]:
        """What the report needs beyond the checks: identities, data, artifacts, deltas."""
        ctx: dict[str, Any] = {}
        if self._identity is not None:
            ctx["model"] = self._identity.to_dict()
        if self.inputs.fixtures_loaded:
            ctx["data"] = self.fixtures.summary()
        if "artifact" in self._memo and Path(self._memo["artifact"]).is_file():
            ctx["artifacts"] = {"direction.safetensors": str(self._memo["artifact"])}
        if "direction" in self._memo:
            d = self._memo["direction"]
            notes = []
            if not d.filtered:
                notes.append(
                    "Too few prompts passed the reference method's filter (harmful prompts the "
                    "model refuses by its refusal-token score, harmless ones it does not): the "
                    "model rarely refuses. The direction was fit and selected on all prompts."
                )
            if not d.passed_filters:
                notes.append(
                    "No candidate direction passed every selection filter; the one with the lowest "
                    "bypass score was used anyway, so the causal figures describe a direction of "
                    "weaker standing."
                )
            if notes:
                ctx["limitations"] = notes
        if self.phases:
            ctx["phases"] = dict(self.phases)
        if "baseline" in self._memo:
            ctx["baseline"] = self._memo["baseline"].describe()
        if "finetune" in self._memo:
            ctx["deltas"] = self._memo["finetune"].deltas()
        return ctx


def baseline_findings(findings: Findings) -> Findings:
    """Findings of the baseline model, sharing the run's settings, cache and prompt sets.

    A baseline that is also a checkpoint of the run shares that checkpoint's findings.
    """
    o = findings.options
    spec = str(o.baseline)
    if spec not in findings.inputs.known:
        findings.inputs.known[spec] = Findings(
            replace(o, model=spec, baseline=None),
            findings.policy,
            findings._on_fatal,
            inputs=findings.inputs,
        )
    return findings.inputs.known[spec]
