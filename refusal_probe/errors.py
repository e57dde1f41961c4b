"""Exception types. Every message names the object at fault and says what to do."""

from __future__ import annotations


class RefusalProbeError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelLoadError(RefusalProbeError):
    """A model spec could not be resolved or loaded safely."""


class UnsafeCheckpointError(ModelLoadError):
    """The checkpoint needs pickle or remote code, which the user has not allowed."""


class PromptFileError(RefusalProbeError):
    """A prompt fixture file is malformed; the message lists ``file:line: problem`` entries."""


class ChatFormatError(RefusalProbeError):
    """A prompt could not be formatted, or its post-instruction span could not be found."""


class CaptureError(RefusalProbeError):
    """An activation capture request is inconsistent (bad sites, positions or prompts)."""


class DirectionError(RefusalProbeError):
    """A direction does not fit the model or activations it is applied to."""


class ScoringError(RefusalProbeError):
    """Refusal scoring cannot proceed (no refusal tokens, no prompts left after filtering)."""


class PatchingError(RefusalProbeError):
    """Activation patching inputs are inconsistent (for example unmatched pair lengths)."""


class PolicyError(RefusalProbeError):
    """The audit policy file has an unknown key or a bad value."""


class OptionError(RefusalProbeError):
    """A command-line option, or a file it names, is wrong (the plugin makes it a usage error)."""


class ReportError(RefusalProbeError):
    """An audit record could not be read, validated or written."""


class MonitorError(RefusalProbeError):
    """The jailbreak monitor or its red-team cannot run as asked (uncalibrated, bad inputs)."""


class BudgetSpent(RefusalProbeError):
    """The run's time budget (``--budget``) ran out before a result could be computed."""


class RefusalProbeWarning(UserWarning):
    """Something the audit worked around but a reader of its results must know.

    Shown in pytest's warnings summary, and in the report's limitations: a tokenizer without a
    chat template, a baseline equal to the model.
    """
