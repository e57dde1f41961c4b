"""The audited model behind an audit run: loaded lazily, keyed, and its results' store.

:class:`ModelHandle` is what every result of an :class:`~refusal_probe.audit.run.AuditRun` needs
besides its inputs: the model (loaded on first use, released between checkpoints of a series),
the prompt sets, the cache key of a result (:meth:`ModelHandle.key`), the disk store that keeps
results between runs, and the phases that time them. It also lets an audit file add a result of
its own (:meth:`ModelHandle.shared`).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from refusal_probe import progress
from refusal_probe.activations.cache import TensorCache
from refusal_probe.audit.budget import Budget
from refusal_probe.audit.inputs import RunInputs
from refusal_probe.audit.once import Once, Phases
from refusal_probe.audit.options import AuditOptions, load_options
from refusal_probe.audit.policy import Policy, load_policy
from refusal_probe.audit.store import R, ResultStore
from refusal_probe.errors import ModelLoadError, RefusalProbeWarning
from refusal_probe.model import loading, memo
from refusal_probe.model.chat import NO_TEMPLATE_WARNING
from refusal_probe.model.devices import devices_of
from refusal_probe.model.identity import ModelKey
from refusal_probe.model.loading import LoadedModel, ModelIdentity
from refusal_probe.prompts.sets import Fixtures
from refusal_probe.stats.intervals import Bootstrap

#: Bumped whenever a result's content or meaning changes (it keys the results cache).
RESULTS_VERSION = "6"  # 4: KL on answered prompts, no fallback direction, separation split;
# 5: the judge is a setting, a successful attack is one complied with
# 6: the monitor's dilution and adaptive families, diluted harmless calibration, request_max

#: Results whose cache keys hold only the harmful and harmless prompt files.
_CORE_RESULTS = frozenset({"behaviour", "direction", "causal", "finetune"})


class ModelHandle:
    """The audited model of a run, its prompt sets, result keys, result store and phases.

    Args:
        model_spec: The model audited (organism alias, HF folder, .gguf file or hub id).
        options: The run's options (default :class:`AuditOptions` defaults); its ``model`` is
            replaced by ``model_spec``.
        policy: The policy whose settings decide generation length, intervals, batch size
            (default: the one ``options.policy`` names, the shipped ``audits/policy.toml``).
        inputs: What this run shares with the other checkpoints of a series (default: its own).
        on_fatal: Called with a message when the model or the prompts cannot be loaded at all
            (the plugin stops the run there); the error is raised in any case.
    """

    def __init__(
        self,
        model_spec: str,
        options: AuditOptions | None = None,
        policy: Policy | None = None,
        *,
        inputs: RunInputs | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.options = replace(options or AuditOptions(model_spec), model=model_spec)
        self.policy = policy or load_policy(self.options.policy)
        self.settings = self.policy.settings
        #: How every bootstrap interval of the run is drawn (the policy's settings, the seed).
        self.bootstrap = Bootstrap(
            self.settings.resamples, self.options.seed, self.settings.confidence
        )
        self.store = ResultStore(self.options.cache_dir)
        self.inputs = inputs or RunInputs(self.options, on_fatal, self.settings.test_prompts)
        self.on_fatal = on_fatal
        #: The run's time budget (``options.budget`` seconds from now; none by default).
        self.budget = Budget(self.options.budget)
        self._phases = Phases(self.budget)
        self._model: LoadedModel | None = None
        self._identity: ModelIdentity | None = None
        self._key: ModelKey | None = None
        self._warned = False
        self._load_error: ModelLoadError | None = None
        self._added: dict[str, Once[Any]] = {}  # results that audit files add (see shared())

    @property
    def computed(self) -> frozenset[str]:
        """The results this run holds so far (computed, or read from the disk cache)."""
        slots = [*vars(self).values(), *self._added.values()]
        return frozenset(o.name for o in slots if isinstance(o, Once) and o.done)

    @property
    def phases(self) -> dict[str, dict[str, Any]]:
        """Seconds per result, exclusive of the results it asked for, and whether it was cached."""
        return self._phases.seconds

    @property
    def model(self) -> LoadedModel:
        """The audited model, loaded on first use (a failed load fails every later use at once)."""
        if self._load_error is not None:
            raise self._load_error
        if self._model is None:
            o = self.options
            try:
                with progress.phase(f"loading {o.model}"):
                    self._model = loading.load_model(o.model, load_options(o))
            except ModelLoadError as exc:
                self._load_error = exc
                self.fatal(f"--model {o.model}: {exc}")
                raise
            self._identity = self._model.identity
            self._key = self._model.key
            memo.remember(o.model, load_options(o), o.cache_dir, self._key, self._identity)
            self._warn_plain()
        return self._model

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (a run whose results are all cached never loads it)."""
        return self._model is not None

    @property
    def identity(self) -> ModelIdentity:
        """The model's identity (known without reloading a released model, or remembered)."""
        if self._identity is None:
            self._recall()
        return self._identity if self._identity is not None else self.model.identity

    @property
    def model_key(self) -> ModelKey:
        """The model's cache key: the loaded model's, else a remembered one, else loaded for it.

        Remembered: from the last load of the same files today (:mod:`refusal_probe.model.memo`).
        """
        if self._model is not None:
            return self._model.key
        if self._key is None:
            self._recall()
        return self._key if self._key is not None else self.model.key

    def _recall(self) -> None:
        o = self.options
        found = memo.recall(o.model, load_options(o), o.cache_dir)
        if found is not None:
            self._key, self._identity = found
            self._warn_plain()

    def _warn_plain(self) -> None:
        if (
            self._identity is not None
            and self._identity.chat_template == "plain"
            and not self._warned
        ):
            self._warned = True  # shown by pytest, not only logged
            warnings.warn(
                f"{self.options.model}: {NO_TEMPLATE_WARNING}", RefusalProbeWarning, stacklevel=3
            )

    @property
    def fixtures(self) -> Fixtures:
        """The prompt sets this model is audited on (the user's, or its default set)."""
        return self.inputs.fixtures_for(self.options.model)

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

    def shared(
        self,
        what: str,
        compute: Callable[[], Any],
        *,
        load: Callable[[dict[str, Any]], Any] | None = None,
        **key: Any,
    ) -> Any:
        """A result an audit file adds (say a new audit's), computed once per run like the rest.

        Args:
            what: The result's name (unique within the run).
            compute: Makes the result; with ``load`` it must have ``to_dict()``.
            load: Rebuilds the result from its ``to_dict()`` data, or returns ``None`` to force a
                recompute; with it the result is kept in the disk cache, without it in memory.
            **key: What else the result depends on (JSON data), beyond the model's fingerprint,
                the prompt sets, the seed and the policy settings, which are always in the key.
        """
        once = self._added.setdefault(what, Once(what, self._phases, stored=load is not None))

        def through_store() -> Any:
            full = self.key(what, **key)
            hit = self.store.get(full)
            value = load(hit) if load is not None and hit is not None else None
            if value is None:
                self._phases.computing()
                value = compute()
                self.store.put(full, value.to_dict())
            return value

        return once(through_store if load is not None else compute)

    # --- keys and the store ------------------------------------------------------------------

    def fatal(self, message: str) -> None:
        """Tell the runner (the plugin) that the run cannot go on: ``on_fatal(message)``."""
        if self.on_fatal is not None:
            self.on_fatal(message)

    def _cache(self) -> TensorCache:
        return TensorCache(self.options.cache_dir)

    def _stored(self, key: dict[str, Any], compute: Callable[[], R], result_type: type[R]) -> R:
        """``compute()`` through the disk cache, telling the phases when it really computes."""

        def fresh() -> R:
            self._phases.computing()
            return compute()

        return self.store.cached(key, fresh, result_type)

    def key(self, what: str, **extra: Any) -> dict[str, Any]:
        """What a result depends on: the model's key, the prompt files, the seed and settings.

        The model's key is the engine caches' own (weights, the chat template as rendered now,
        placement, dtype): a template that writes the date gives other keys on another day.
        """
        fps = self.fixtures.fingerprints
        if what in _CORE_RESULTS:  # regenerating the jailbreaks or pairs leaves these valid
            fps = {k: v for k, v in fps.items() if k in ("harmful.jsonl", "harmless.jsonl")}
        return {
            "what": what,
            "measures": RESULTS_VERSION,
            "model": self.model_key.to_dict(),
            "prompts": dict(fps),
            "seed": self.options.seed,
            "settings": self.settings.__dict__,
            **extra,
        }
