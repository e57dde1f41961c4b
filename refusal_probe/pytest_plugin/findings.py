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
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from refusal_probe.cache import key_digest
from refusal_probe.errors import ModelLoadError, PromptFileError, ReportError, ScoringError
from refusal_probe.models import LoadedModel, LoadOptions
from refusal_probe.policy import Policy
from refusal_probe.pytest_plugin.measures import (
    MEASURES_VERSION,
    Behaviour,
    Causal,
    DirectionSummary,
)
from refusal_probe.pytest_plugin.session import AuditOptions, AuditSession

log = logging.getLogger(__name__)

#: Results computed here; their cache keys hold only the harmful and harmless prompt files.
_CORE_RESULTS = frozenset({"behaviour", "direction", "causal", "finetune"})


class ResultStore:
    """JSON results under ``root/audit-results/<digest>.json``, written atomically, checksummed."""

    def __init__(self, root: Path) -> None:
        """Create a store under ``root`` (made on first write)."""
        self.dir = Path(root) / "audit-results"

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result for ``key``, or ``None`` (a damaged entry is deleted and missed)."""
        path = self.dir / f"{key_digest(key)}.json"
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            body = json.dumps(entry["result"], sort_keys=True)
            if entry["sha256"] != hashlib.sha256(body.encode()).hexdigest():
                raise ValueError("checksum mismatch")
            return entry["result"]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("audit result cache entry %s is damaged (%s); recomputing", path, exc)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: dict[str, Any], result: dict[str, Any]) -> None:
        """Store ``result`` (JSON data) for ``key``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        body = json.dumps(result, sort_keys=True)
        entry = {"key": key, "sha256": hashlib.sha256(body.encode()).hexdigest(), "result": result}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entry, fh)
        os.replace(tmp, self.dir / f"{key_digest(key)}.json")


class Findings:
    """The audited model and its shared results, each computed on first use.

    Args:
        options: The run's options (``options.model`` is the model audited here).
        policy: The policy (its settings decide generation length, intervals, batch size).
        on_fatal: Called with a message when the model or the prompts cannot be loaded at all
            (the plugin stops the run there); without it the error is raised.
    """

    def __init__(
        self, options: AuditOptions, policy: Policy, on_fatal: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self.policy = policy
        self.settings = policy.settings
        self.store = ResultStore(options.cache_dir)
        self._on_fatal = on_fatal
        self._model: LoadedModel | None = None
        self._fixtures: Any = None
        self._memo: dict[str, Any] = {}
        #: The audits selected in this run (set by the plugin); lets results share work.
        self.wanted: set[str] = set()

    def __repr__(self) -> str:
        done = ", ".join(sorted(self._memo)) or "nothing yet"
        return f"Findings({self.options.model!r}, computed: {done})"

    # --- inputs ------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        """The audited model, loaded on first use."""
        if self._model is None:
            from refusal_probe.models import load_model

            o = self.options
            try:
                self._model = load_model(
                    o.model,
                    LoadOptions(
                        device=o.device,
                        dtype=o.dtype,
                        trust_remote_code=o.trust_remote_code,
                        allow_pickle=o.allow_pickle,
                        cache_dir=str(o.cache_dir),
                    ),
                )
            except ModelLoadError as exc:
                self._fatal(f"--model {o.model}: {exc}")
                raise
        return self._model

    @property
    def fixtures(self) -> Any:
        """The prompt sets (``--prompts`` or the shipped fixtures)."""
        if self._fixtures is None:
            from refusal_probe.prompts import load_fixtures

            try:
                self._fixtures = load_fixtures(self.options.prompts)
            except PromptFileError as exc:
                self._fatal(str(exc))
                raise
        return self._fixtures

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
        m = self.model.identity
        return {
            "what": what,
            "measures": MEASURES_VERSION,
            "model": m.fingerprint,
            "weights": m.weights_sha256,
            "template": m.chat_template_sha256,
            "device": self.options.device,
            "dtype": self.options.dtype,
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
        if load is not None:
            full_key = self._key(what, **key)
            hit = self.store.get(full_key)
            value = load(hit) if hit is not None else None
        if value is None:
            value = compute()
            if load is not None:
                self.store.put(full_key, value.to_dict())
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
        from refusal_probe.scoring import judge

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
        from refusal_probe.stats import wilson_interval

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
        from refusal_probe.selection import DirectionConfig

        return DirectionConfig(
            batch_size=self.settings.batch_size,
            n_resamples=self.settings.resamples,
            seed=self.options.seed,
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
        from refusal_probe.cache import TensorCache
        from refusal_probe.selection import find_refusal_direction

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
        from refusal_probe.validation import ValidationConfig

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
        from refusal_probe.validation import validate_direction

        direction, _, _ = self.direction_vector()
        from refusal_probe.cache import TensorCache

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
        s = self.settings
        return Causal.of(v, n_resamples=s.resamples, seed=self.options.seed, level=s.confidence)

    # --- baseline ----------------------------------------------------------------------------

    def baseline(self) -> Any:
        """The baseline of the fine-tune audit (see :mod:`refusal_probe.pytest_plugin.finetune`)."""
        if "baseline" not in self._memo:
            from refusal_probe.pytest_plugin.finetune import open_baseline

            self._memo["baseline"] = open_baseline(self)
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
        if self._model is not None:
            ctx["model"] = self._model.identity.to_dict()
        if self._fixtures is not None:
            ctx["data"] = self._fixtures.summary()
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
        if "baseline" in self._memo:
            ctx["baseline"] = self._memo["baseline"].describe()
        if "finetune" in self._memo:
            ctx["deltas"] = self._memo["finetune"].deltas()
        return ctx


# ---------------------------------------------------------------------------------------------
# the direction artifact (read back by a later run's --baseline)


def save_direction(
    path: Path, direction: Any, per_layer: torch.Tensor, layers: tuple[int, ...]
) -> None:
    """Write a direction and the candidates of every layer at its position, atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {k: getattr(direction, k) for k in direction.__dataclass_fields__ if k != "vector"}
    meta = {
        "direction": json.dumps(fields),
        "layers": json.dumps(list(layers)),
        "format": "refusal-probe/direction/1",
    }
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {
                "vector": direction.vector.double().contiguous(),
                "per_layer": per_layer.double().contiguous(),
            },
            tmp,
            metadata=meta,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_direction(path: Path) -> tuple[Any, torch.Tensor, tuple[int, ...]]:
    """Read what :func:`save_direction` wrote.

    Raises:
        ReportError: The file is missing or not a direction file.
    """
    from safetensors import safe_open

    from refusal_probe.directions import Direction

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            vector, per_layer = fh.get_tensor("vector"), fh.get_tensor("per_layer")
        fields = json.loads(meta["direction"])
        layers = tuple(json.loads(meta["layers"]))
    except (OSError, KeyError, ValueError, Exception) as exc:  # safetensors raises its own types
        raise ReportError(
            f"{path} is not a readable refusal-probe direction file ({exc}); re-run the audit "
            "that wrote it"
        ) from None
    return Direction(vector=vector, **fields), per_layer, layers


# ---------------------------------------------------------------------------------------------
# preflight: cheap checks before any test runs


def preflight(session: AuditSession) -> None:
    """Check the policy, the model spec, the baseline and the prompts without loading a model.

    Raises:
        RefusalProbeError: Naming the problem (the plugin turns it into a usage error).
    """
    from refusal_probe.pytest_plugin.finetune import check_baseline_compatible

    o = session.options
    session.findings.wanted = set(session.audit_items.values())
    session.policy  # noqa: B018 - raises PolicyError naming the bad key
    config = spec_config(o.model, "--model")
    session.findings.fixtures  # noqa: B018 - raises PromptFileError listing file:line problems
    if o.baseline:
        check_baseline_compatible(o.model, config, o.baseline)


def spec_config(spec: str, what: str) -> dict[str, Any] | None:
    """The ``config.json`` of a local spec (``None`` for hub ids and GGUF files), or a clear error.

    Resolution is the loader's own (:func:`refusal_probe.models._resolve`), so an alias or a
    path is judged here exactly as ``load_model`` will judge it; only hub ids are left for load
    time, since resolving one may download it.

    Raises:
        ModelLoadError: The spec names nothing loadable (the loader's message, naming the option).
    """
    from refusal_probe import models

    path = Path(spec).expanduser()
    hub_like = (
        spec.count("/") == 1
        and not spec.startswith((".", "/", "~"))
        and not path.exists()
        and spec not in models.ORGANISM_ALIASES
    )
    if hub_like:
        return None
    try:
        source, folder, _ = models._resolve(spec, LoadOptions())
    except ModelLoadError as exc:
        raise ModelLoadError(f"{what} {spec}: {exc}") from None
    return None if source == "gguf" else _read_config(Path(folder) / "config.json")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not a readable config.json ({exc})") from None


def baseline_findings(findings: Findings) -> Findings:
    """Findings of the baseline model, sharing the run's settings and cache."""
    o = findings.options
    return Findings(
        replace(o, model=str(o.baseline), baseline=None), findings.policy, findings._on_fatal
    )
