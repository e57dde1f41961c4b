"""The package's public names, for type checkers; ``__init__.py`` loads each on first use."""

from .activations import (
    LAST,
    LAST_INSTRUCTION,
    POST_INSTRUCTION,
    Activations,
    Positions,
    Site,
    TensorCache,
    capture,
    hook_name,
)
from .audit import (
    AuditOptions,
    AuditRun,
    Policy,
    load_policy,
)
from .causal import (
    DosePoint,
    TransferResult,
    ValidationConfig,
    ValidationResult,
    transfer,
    validate_direction,
)
from .direction import (
    Candidates,
    Direction,
    LayerSeparation,
    cosine_per_layer,
    difference_of_means,
    pca_of_differences,
    separation_curve,
)
from .errors import (
    CaptureError,
    ChatFormatError,
    DirectionError,
    ModelLoadError,
    MonitorError,
    PatchingError,
    PolicyError,
    RefusalProbeError,
    ReportError,
    ScoringError,
    UnsafeCheckpointError,
)
from .interventions import (
    Ablate,
    Add,
    PerRow,
    orthogonalized,
)
from .model import (
    DEFAULT_MODEL,
    ORGANISM_ALIASES,
    PLAIN_TEMPLATE,
    ChatFormat,
    Encoded,
    LoadedModel,
    LoadOptions,
    ModelIdentity,
    ModelKey,
    auto_batch_size,
    load_model,
    parse_device_map,
)
from .monitor import (
    EvalConfig,
    Guard,
    Hardening,
    JailbreakAlarm,
    Monitor,
    MonitorConfig,
    MonitorEvaluation,
    MonitorScores,
    calibrate,
    evaluate_monitor,
    fit_monitor,
    guard,
    measure_hardening,
    score_prompts,
)
from .patching import (
    CircuitComparison,
    CircuitResult,
    Component,
    PatchResult,
    attribution_patching,
    compare_circuits,
    exact_patching,
    localize,
)
from .redteam import (
    RedTeamConfig,
    RedTeamResult,
    search_suffixes,
)
from .report import (
    AuditRecord,
    compare_files,
    read_record,
    trend_files,
    write_report,
)
from .scoring import (
    REFUSAL_PHRASES,
    Judgement,
    RefusalTokens,
    generate,
    is_refusal,
    judge,
    refusal_rate,
    refusal_scores,
    refusal_tokens,
)
from .selection import (
    CandidateScore,
    DirectionConfig,
    DirectionResult,
    Selection,
    ablation_moment,
    candidate_directions,
    estimated_bypass,
    find_refusal_direction,
    score_candidates,
)
from .stats import (
    Bootstrap,
    Bound,
    Decision,
    Interval,
    Separation,
    Threshold,
    Verdict,
    decide,
    separation,
    wilson_interval,
)

__version__: str
