"""The refusal-probe pytest plugin: options, markers, and the one session object.

The audits' markers are not declared here: each audit of the policy file (a top-level table of
``audits/policy.toml``, or of ``--policy FILE``) is registered as a marker, with its description.

Registered from the repository's root ``conftest.py`` (``pytest_plugins = [...]``); elsewhere use
``pytest -p refusal_probe.pytest_plugin.plugin`` or ``python -m refusal_probe audit``.

Everything heavy is lazy: configuring the plugin loads no model, so ``pytest tests/`` pays
nothing for it. An audit test asks for shared results through fixtures
(:mod:`refusal_probe.pytest_plugin.fixtures`), and each result is computed on first use.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from refusal_probe.audit.budget import parse_budget
from refusal_probe.audit.checkpoints import resolve_checkpoints
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.policy import DEFAULT_POLICY
from refusal_probe.audit.prompt_inputs import HELD_OUT_HELP, PROMPT_OPTION_DESTS, PROMPT_OPTIONS
from refusal_probe.audit.required import parse_required
from refusal_probe.errors import ModelLoadError, OptionError, PolicyError
from refusal_probe.model.devices import worker_device
from refusal_probe.model.loading import DEFAULT_MODEL, default_cache_dir
from refusal_probe.pytest_plugin import fixtures as fixtures_module
from refusal_probe.pytest_plugin.hooks import AuditHooks
from refusal_probe.pytest_plugin.session import SESSION_KEY, AuditSession

_DTYPES = ("float32", "bfloat16", "float16")
_XDIST_GROUP = (
    "a pytest-xdist group (--dist loadgroup): a series keeps each checkpoint on one worker"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the audit options (all in one group) and their ini defaults."""
    g = parser.getgroup("refusal-probe", "refusal-probe audits")
    g.addoption(
        "--model",
        metavar="SPEC",
        action="append",
        default=None,
        help=f"model to audit: organism alias, HF folder, .gguf file or hub id "
        f"(default {DEFAULT_MODEL}); give it several times to audit a series of checkpoints",
    )
    g.addoption(
        "--models-file",
        metavar="FILE",
        default=None,
        help="audit a series of checkpoints listed in FILE (one spec per line, # comments); "
        "each gets a report, and a trend page plots every check against them",
    )
    g.addoption(
        "--baseline",
        metavar="SPEC_OR_AUDIT_JSON",
        default=None,
        help="parent checkpoint, or audit.json of an earlier run; enables the fine-tune audit",
    )
    g.addoption(
        "--policy",
        metavar="FILE",
        default=None,
        help="policy file of thresholds (default audits/policy.toml)",
    )
    g.addoption(
        "--report-dir",
        metavar="DIR",
        default=None,
        help="where reports are written (default reports/)",
    )
    g.addoption("--no-report", action="store_true", default=False, help="write no report folder")
    g.addoption(
        "--device",
        default=None,
        help="torch device (default cpu); cuda:worker gives each pytest-xdist worker its own GPU",
    )
    g.addoption(
        "--device-map",
        metavar="auto|balanced|FILE.json",
        default=None,
        help="spread the model over several devices (accelerate device map: a strategy, or a "
        "JSON file of module name -> device); replaces --device",
    )
    g.addoption("--dtype", default=None, choices=_DTYPES, help="model dtype (default float32)")
    g.addoption(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is fastest on a busy machine",
    )
    g.addoption("--seed", type=int, default=None, help="seed of every random choice (default 0)")
    g.addoption(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="disk cache of activations and results "
        "(default $REFUSAL_PROBE_CACHE or ~/.cache/refusal-probe)",
    )
    g.addoption(
        "--trust-remote-code",
        action="store_true",
        default=False,
        help="let the checkpoint's own Python code run (read it first)",
    )
    g.addoption(
        "--allow-pickle",
        action="store_true",
        default=False,
        help="allow pickle weight files (.bin/.pt), which can run code when loaded",
    )
    for flag, metavar, help_text in PROMPT_OPTIONS:
        g.addoption(flag, metavar=metavar, default=None, help=help_text)
    g.addoption("--held-out", action="store_true", default=False, help=HELD_OUT_HELP)
    g.addoption(
        "--strict-verdicts",
        action="store_true",
        default=False,
        help="inconclusive verdicts fail",
    )
    g.addoption(
        "--budget",
        metavar="SECONDS",
        type=parse_budget,
        default=None,
        help="time budget per checkpoint: results past it stop, their checks inconclusive",
    )
    g.addoption(
        "--require-checks",
        metavar="all|ID,...",
        default=None,
        help="exit 1 unless these checks ran: 'all' (every enabled check that applies; a "
        "fine-tune check without --baseline does not), or check ids and audit names",
    )
    parser.addini("audit_model", "default --model", default=DEFAULT_MODEL)
    parser.addini(
        "audit_policy", "default --policy, relative to the rootdir", default="audits/policy.toml"
    )
    parser.addini(
        "audit_report_dir", "default --report-dir, relative to the rootdir", default="reports"
    )
    parser.addini("audit_device", "default --device", default="cpu")
    parser.addini("audit_threads", "default --threads (empty: torch's choice)", default="")
    parser.addini("audit_strict", "inconclusive verdicts fail", type="bool", default=False)
    parser.addini("audit_require_checks", "default --require-checks", default="")


def pytest_configure(config: pytest.Config) -> None:
    """Resolve the options, register the session object and the policy's audits as markers."""
    options = resolve_options(config)
    threads = config.getoption("threads")
    if threads is None and config.getini("audit_threads"):
        threads = _int_ini(config, "audit_threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--threads {threads}: give a number of threads >= 1")
        import torch

        torch.set_num_threads(threads)
    try:
        checkpoints = resolve_checkpoints(
            config.getoption("--model"), config.getoption("models_file"), options.model
        )
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    session = AuditSession(replace(options, model=checkpoints[0].spec), checkpoints)
    try:
        policy = session.policy  # the registry of audits: a bad file stops the run at once
        required = config.getoption("require_checks") or config.getini("audit_require_checks")
        session.required = parse_required(required, policy)
    except PolicyError as exc:
        raise pytest.UsageError(str(exc)) from None
    markers = {a.name: a.description or f"the {a.name} audit" for a in policy.audits}
    for name, text in {**markers, "xdist_group": _XDIST_GROUP}.items():
        if not any(line.split(":")[0].strip() == name for line in config.getini("markers")):
            config.addinivalue_line("markers", f"{name}: {text}")
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(AuditHooks(config, session), "refusal-probe-hooks")
    if not config.pluginmanager.is_registered(fixtures_module):
        config.pluginmanager.register(fixtures_module, "refusal-probe-fixtures")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the session object and release the models it holds."""
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        hooks = config.pluginmanager.get_plugin("refusal-probe-hooks")
        if hooks is not None:
            config.pluginmanager.unregister(hooks)
        del config.stash[SESSION_KEY]


def resolve_options(config: pytest.Config) -> AuditOptions:
    """Options from the command line, then the ini file, then the defaults."""
    opt = config.getoption
    root = Path(config.rootpath)
    policy = opt("--policy")
    if policy is None:
        policy = root / config.getini("audit_policy")
        if not policy.is_file():  # running outside the repository: the suite's own policy
            policy = DEFAULT_POLICY
    report_dir = Path(opt("--report-dir") or root / config.getini("audit_report_dir"))
    strict = bool(opt("strict_verdicts") or config.getini("audit_strict"))
    if opt("device_map") and opt("--device"):
        raise pytest.UsageError(
            f"--device {opt('--device')} and --device-map {opt('device_map')}: a device map "
            "places every layer itself; pass one of the two"
        )
    models = opt("--model")
    try:
        device = worker_device(opt("--device") or config.getini("audit_device"))
    except ModelLoadError as exc:
        raise pytest.UsageError(str(exc)) from None
    return AuditOptions(
        model=models[0] if models else config.getini("audit_model"),
        baseline=opt("--baseline"),
        policy=Path(policy),
        policy_explicit=opt("--policy") is not None,
        report_dir=report_dir,
        write_report=not opt("no_report"),
        device=device,
        dtype=opt("--dtype") or "float32",
        seed=0 if opt("--seed") is None else int(opt("--seed")),
        cache_dir=Path(opt("cache_dir") or default_cache_dir()),
        trust_remote_code=bool(opt("trust_remote_code")),
        allow_pickle=bool(opt("allow_pickle")),
        strict=strict,
        device_map=opt("device_map"),
        held_out=bool(opt("held_out")),
        budget=opt("budget"),
        **{dest: opt(dest) for dest in PROMPT_OPTION_DESTS},
    )


def _int_ini(config: pytest.Config, name: str) -> int:
    value = str(config.getini(name)).strip()
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"ini option {name} = {value!r}: give a whole number") from None
