"""Where a run came from: run id, times, operator, software versions, git commit, hardware."""

from __future__ import annotations

import getpass
import os
import platform
import secrets
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

#: Packages whose versions a report records.
PACKAGES: tuple[str, ...] = (
    "refusal-probe",
    "torch",
    "transformers",
    "transformer-lens",
    "tokenizers",
    "safetensors",
    "numpy",
    "pytest",
    "pytest-html",
    "jinja2",
)


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-xxxxxx``: sortable by time, unique by a random suffix."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def utc(ts: float) -> str:
    """An epoch time as ISO 8601 UTC."""
    return (
        datetime.fromtimestamp(ts, timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (``None`` if absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """The commit checked out at ``root`` and whether the tree has changes (read-only git calls)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(dirty)


def hardware(device: str) -> dict[str, Any]:
    """CPU, thread count and accelerator of this machine."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = ", ".join(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            )
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def operator() -> tuple[str, str]:
    """User and host names (``unknown`` where the system cannot say)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return user, socket.gethostname()


def command_line(invocation_dir: Path, args: tuple[str, ...] | list[str]) -> str:
    """The shell command that reproduces a pytest run from its invocation folder."""
    cd = shlex.quote(str(invocation_dir))
    return f"cd {cd} && {shlex.quote(sys.executable)} -m pytest {shlex.join(args)}".rstrip()


def run_info(
    *,
    run_id: str,
    started: float,
    finished: float,
    command: str,
    cwd: Path,
    root: Path,
    device: str,
    seed: int,
    strict: bool,
    exit_status: int,
) -> dict[str, Any]:
    """The ``run`` section of an audit record."""
    user, host = operator()
    commit, dirty = git_state(root)
    versions = package_versions()
    return {
        "id": run_id,
        "started_utc": utc(started),
        "finished_utc": utc(finished),
        "duration_s": round(max(0.0, finished - started), 3),
        "user": user,
        "host": host,
        "command": command,
        "cwd": str(cwd),
        "tool_version": versions.get("refusal-probe") or "unknown",
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "hardware": hardware(device),
        "seed": seed,
        "strict": strict,
        "exit_status": int(exit_status),
    }
