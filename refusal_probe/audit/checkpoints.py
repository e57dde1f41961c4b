"""The checkpoints a run audits: ``--model`` (once or several times) and ``--models-file``.

One checkpoint is the plain run: no parametrization, one report. Several make a series (say the
checkpoints of a fine-tune): every audit test runs once per checkpoint (``test_x[<label>]``),
each checkpoint gets its own report, and a trend page plots every check against the checkpoints.

A models file holds one spec per line, in order; ``#`` starts a comment (at the start of a line,
or after a space), and blank lines are skipped. A relative path is read relative to the file's
folder, so a file can sit beside the checkpoints it lists::

    # fine-tune of organism-chat, every 500 steps
    organism-chat
    runs/ft/checkpoint-500
    runs/ft/checkpoint-1000   # the one we shipped
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from refusal_probe.errors import OptionError
from refusal_probe.report.render import model_slugs

_COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class Checkpoint:
    """One model of a run.

    Attributes:
        spec: The model spec, as :func:`refusal_probe.model.loading.load_model` takes it.
        label: A short name, distinct within the run: the test id (``test_x[label]``), the report
            folder (``reports/<label>/``) and the trend page's column.
        origin: Where it was given (``--model``, or ``FILE:LINE:`` of a models file), for errors.
    """

    spec: str
    label: str
    origin: str = "--model"


def read_models_file(path: str | Path) -> list[tuple[str, str]]:
    """The ``(spec, origin)`` entries of a models file, in order (see the module docstring).

    Raises:
        OptionError: The file is missing, unreadable or lists no checkpoint.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionError(
            f"--models-file {path}: no such file; pass a text file with one checkpoint per line"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"--models-file {path}: cannot read it ({exc})") from None
    entries = []
    for n, line in enumerate(text.splitlines(), start=1):
        spec = _COMMENT.sub("", line).strip()
        if spec:
            entries.append((_relative_to(spec, path.parent), f"{path}:{n}:"))
    if not entries:
        raise OptionError(
            f"--models-file {path}: lists no checkpoint (only blank lines and # comments); put "
            "one model spec per line"
        )
    return entries


def _relative_to(spec: str, folder: Path) -> str:
    """A relative path that exists beside the file, as a path from here; anything else as is."""
    path = Path(spec).expanduser()
    if not path.is_absolute() and (folder / path).exists():
        return str(folder / path)
    return spec


def resolve_checkpoints(
    models: Sequence[str] | None, models_file: str | None, default: str
) -> tuple[Checkpoint, ...]:
    """The run's checkpoints: every ``--model``, then the models file's entries, in order.

    Args:
        models: The ``--model`` values (``None`` or empty when the option was not given).
        models_file: The ``--models-file`` path, if given.
        default: The model audited when neither option is given (the ini ``audit_model``).

    Raises:
        OptionError: A checkpoint is given twice (naming both places), or the models file is
            bad.
    """
    entries = [(m, "--model") for m in models or ()]
    if models_file:
        entries += read_models_file(models_file)
    if not entries:
        entries = [(default, "--model")]
    first: dict[str, str] = {}
    for spec, origin in entries:
        key = str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() else spec
        if key in first:
            raise OptionError(
                f"{origin.rstrip(':')}: checkpoint {spec!r} is already given at "
                f"{first[key].rstrip(':')}; list each checkpoint once"
            )
        first[key] = origin
    labels = model_slugs([spec for spec, _ in entries])
    return tuple(
        Checkpoint(spec, label, origin)
        for (spec, origin), label in zip(entries, labels, strict=True)
    )
