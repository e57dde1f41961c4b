"""The baseline of the fine-tune audit: a parent model, or an earlier run's audit.json.

A :class:`ModelBaseline` wraps the parent's own audit run, whose results are computed (and cached)
like the candidate's; an :class:`AuditBaseline` reads an earlier run's record, whose folder holds
the direction it selected (``direction.safetensors``) and whose checks hold its refusal rates.
Both are checked to fit the candidate before anything is compared:
:func:`check_baseline_compatible` from the checkpoints' config files, loading nothing, and
:func:`mismatch` once the candidate is loaded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from refusal_probe.audit.behaviour import Behaviour
from refusal_probe.audit.circuit import Circuit
from refusal_probe.audit.direction import DirectionSummary
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.store import DirectionArtifact, load_direction
from refusal_probe.errors import DirectionError, ModelLoadError, RefusalProbeWarning, ReportError
from refusal_probe.model import sources
from refusal_probe.model.loading import ModelIdentity
from refusal_probe.report.record import AuditRecord, CheckRecord, Delta
from refusal_probe.report.schema import read_record
from refusal_probe.stats.intervals import Interval, wilson_interval


class BaselineRun(Protocol):
    """What the fine-tune audit reads from the parent model's audit run."""

    options: AuditOptions

    @property
    def identity(self) -> ModelIdentity:
        """The model's identity."""
        ...  # pragma: no cover

    def behaviour(self) -> Behaviour:
        """Its refusal rates."""
        ...  # pragma: no cover

    def direction(self) -> DirectionSummary:
        """Its selected direction."""
        ...  # pragma: no cover

    def direction_vector(self) -> DirectionArtifact:
        """Its selected direction's vectors."""
        ...  # pragma: no cover

    def circuit(self) -> Circuit:
        """Its localized circuit."""
        ...  # pragma: no cover


class ModelBaseline:
    """A baseline model, audited with the same settings as the candidate.

    Attributes:
        run: The baseline model's own audit run.
    """

    def __init__(self, run: BaselineRun) -> None:
        """Wrap the baseline's own audit run."""
        self.run = run

    def key(self) -> dict[str, Any]:
        """What the candidate's comparison results depend on."""
        return {
            "kind": "model",
            "fingerprint": self.run.identity.fingerprint,
            "direction": self.run.direction().direction["vector_sha256"],
        }

    def describe(self) -> dict[str, Any]:
        """The report's ``baseline`` section."""
        return {
            "kind": "model",
            "spec": self.run.options.model,
            "identity": self.run.identity.to_dict(),
            "run_id": None,
        }

    def direction(self) -> DirectionArtifact:
        """The baseline's selected direction and its per-layer candidates at that position."""
        return self.run.direction_vector()

    def rates(self) -> tuple[Interval, Interval]:
        """The baseline's harmful and harmless refusal rates."""
        b = self.run.behaviour()
        return b.harmful, b.harmless


class AuditBaseline:
    """An earlier run's audit.json (and the direction file beside it)."""

    def __init__(self, path: Path, record: AuditRecord) -> None:
        """Wrap a validated record read from ``path``."""
        self.path = path if path.suffix == ".json" else path / "audit.json"
        self.record = record

    @classmethod
    def open(cls, spec: str) -> AuditBaseline:
        """Read and validate the audit.json (or run folder) ``spec``."""
        return cls(Path(spec), read_record(spec))

    def key(self) -> dict[str, Any]:
        """What the candidate's comparison results depend on."""
        art = self.path.parent / "direction.safetensors"
        return {
            "kind": "audit",
            "run_id": self.record.run["id"],
            "model": self.record.model.get("fingerprint"),
            "direction_file": art.stat().st_size if art.is_file() else None,
        }

    def describe(self) -> dict[str, Any]:
        """The report's ``baseline`` section."""
        return {
            "kind": "audit",
            "spec": str(self.path),
            "identity": self.record.model,
            "run_id": self.record.run["id"],
        }

    def direction(self) -> DirectionArtifact:
        """The direction the earlier run selected (its ``direction.safetensors``), verified.

        The file must match its own checksums and the vector's SHA-256 the audit.json records.

        Raises:
            ReportError: The earlier run selected no direction, or its file is damaged.
        """
        art = self.path.parent / "direction.safetensors"
        if not art.is_file():
            raise ReportError(
                f"--baseline {self.path}: that run selected no direction (no {art.name} beside "
                "it; its representation, causal and monitor audits did not run), so the "
                "fine-tune audit has nothing to compare; pass the parent model as --baseline, "
                "or re-run that audit with its representation audit"
            )
        return load_direction(art, self.vector_sha256())

    def vector_sha256(self) -> str | None:
        """The selected direction's SHA-256 as the audit.json records it (``None``: not there)."""
        for c in self.record.checks:
            d = c.details.get("direction") if isinstance(c.details, dict) else None
            if isinstance(d, dict) and d.get("vector_sha256"):
                return str(d["vector_sha256"])
        return None

    def rates(self) -> tuple[Interval, Interval]:
        """The harmful and harmless refusal rates the earlier run measured."""
        out = []
        for cid in ("behaviour.harmful_refusal", "behaviour.harmless_over_refusal"):
            c = self.record.check(cid)
            if c is None or c.value is None or not c.n:
                raise ReportError(
                    f"baseline audit {self.path} has no {cid} check; re-run its behaviour audit"
                )
            k = int(round(c.value * c.n))
            out.append(wilson_interval(k, c.n, c.level))
        return out[0], out[1]


Baseline = ModelBaseline | AuditBaseline


#: Said (console warning and report limitation) when ``--baseline`` is the audited model itself.
SAME_AS_BASELINE = (
    "The --baseline has the same weights fingerprint as the audited model, so the fine-tune "
    "checks compare the model with itself and pass trivially; pass the parent checkpoint (or its "
    "audit.json) as --baseline."
)


class _Run(Protocol):
    """What :func:`open_baseline` reads of an :class:`~refusal_probe.audit.run.AuditRun`."""

    options: AuditOptions
    inputs: Any
    model: Any

    def run_of(self, spec: str) -> Any: ...  # noqa: D102

    def fatal(self, message: str) -> None: ...  # noqa: D102


def open_baseline(run: _Run) -> Baseline:
    """``run.options.baseline`` opened (once per series) and checked to fit ``run``'s model.

    Raises:
        DirectionError: No baseline is given, or the baseline model has another architecture,
            width or depth.
    """
    spec = run.options.baseline
    if not spec:
        raise DirectionError(
            "no baseline given; pass options.baseline (--baseline SPEC_OR_AUDIT_JSON)"
        )
    opened = run.inputs.baseline
    if opened is None:
        opened = AuditBaseline.open(spec) if is_audit(spec) else ModelBaseline(run.run_of(spec))
    if isinstance(opened, ModelBaseline):
        problem = mismatch(run.model.identity, opened.run.identity)
        if problem is not None:
            run.fatal(problem)
            raise DirectionError(problem)
    if is_same_model(run.model.identity, opened):
        warnings.warn(SAME_AS_BASELINE, RefusalProbeWarning, stacklevel=3)
    run.inputs.baseline = opened
    return opened


def is_same_model(candidate: ModelIdentity, baseline: Baseline) -> bool:
    """Whether ``baseline`` is the candidate model itself (same weights fingerprint)."""
    fingerprint = baseline.describe()["identity"].get("fingerprint")
    return bool(fingerprint) and fingerprint == candidate.fingerprint


def is_audit(spec: str) -> bool:
    """Whether a ``--baseline`` names an earlier run (its audit.json or folder), not a model."""
    return spec.endswith(".json") or (Path(spec) / "audit.json").is_file()


def unopened(spec: str | None) -> dict[str, Any] | None:
    """The report's ``baseline`` section for a ``--baseline`` no test opened (``None``: none)."""
    if not spec:
        return None
    kind = "audit" if is_audit(spec) else "model"
    return {"kind": kind, "spec": spec, "identity": None, "run_id": None}


def deltas_against(
    checks: Sequence[CheckRecord], baseline_json: str, skip: set[str]
) -> list[Delta]:
    """Each check's value beside the same check in the baseline audit (but those in ``skip``)."""
    base = read_record(baseline_json)
    out = []
    for c in checks:
        b = base.check(c.id)
        if b is None or c.id in skip:
            continue
        delta = c.value - b.value if c.value is not None and b.value is not None else None
        out.append(Delta(c.id, c.title, c.value, b.value, delta))
    return out


def mismatch(candidate: ModelIdentity, baseline: ModelIdentity) -> str | None:
    """Why a baseline model does not fit the candidate (architecture, width, depth), or ``None``."""
    mi, bi = candidate, baseline
    if (mi.architecture, mi.d_model, mi.n_layers) == (bi.architecture, bi.d_model, bi.n_layers):
        return None
    return (
        f"--baseline {bi.spec} ({bi.architecture}, d_model {bi.d_model}, {bi.n_layers} "
        f"layers) does not match --model {mi.spec} ({mi.architecture}, d_model "
        f"{mi.d_model}, {mi.n_layers} layers); the fine-tune audit compares checkpoints of "
        "one architecture"
    )


def check_baseline_compatible(
    model_spec: str, model_cfg: dict[str, Any] | None, baseline: str, *, what: str = "--model"
) -> None:
    """Refuse a baseline of another architecture or size before anything is loaded.

    ``what`` names where the model was given (``--model``, or a models file's ``FILE:LINE:``).

    Raises:
        ReportError: The baseline audit.json is missing or corrupted.
        ModelLoadError: The baseline names nothing, or has another architecture, width or depth.
    """
    if is_audit(baseline):
        m = read_record(baseline).model
        base = (str(m.get("architecture")), int(m.get("d_model", 0)), int(m.get("n_layers", 0)))
    else:
        cfg = spec_config(baseline, "--baseline")
        if cfg is None:
            return
        base = _shape(cfg)
    if model_cfg is None:
        return
    mine = _shape(model_cfg)
    if base != mine:
        raise ModelLoadError(
            f"--baseline {baseline} is a {base[0]} with d_model {base[1]} and {base[2]} layers, "
            f"but {what} "
            f"{model_spec} is a {mine[0]} with d_model {mine[1]} and {mine[2]} layers; the "
            "fine-tune audit "
            "compares checkpoints of one architecture (a parent and its fine-tune)"
        )


def spec_config(spec: str, what: str) -> dict[str, Any] | None:
    """The ``config.json`` of a local spec (``None`` for hub ids and GGUF files), or a clear error.

    Resolution is the loader's own (:func:`refusal_probe.model.sources.resolve`), so an alias or a
    path is judged here exactly as ``load_model`` will judge it. A hub id is only checked to be
    cached or reachable (:func:`~refusal_probe.model.sources.check_hub`): resolving one may
    download it.

    Raises:
        ModelLoadError: The spec names nothing loadable (the loader's message, naming the option).
    """
    path = Path(spec).expanduser()
    hub_like = (
        spec.count("/") == 1
        and not spec.startswith((".", "/", "~"))
        and not path.exists()
        and spec not in sources.ORGANISM_ALIASES
    )
    if hub_like:
        try:
            sources.check_hub(spec)  # cached or reachable, before anything runs
        except ModelLoadError as exc:
            raise ModelLoadError(f"{what} {spec}: {exc}") from None
        return None
    try:
        source, folder, _ = sources.resolve(spec)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{what} {spec}: {exc}") from None
    return None if source in ("gguf", "adapter") else _read_config(Path(folder) / "config.json")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not a readable config.json ({exc})") from None


def _shape(cfg: dict[str, Any]) -> tuple[str, int, int]:
    arch = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
    d = int(cfg.get("hidden_size") or cfg.get("n_embd") or 0)
    n = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
    return str(arch), d, n
