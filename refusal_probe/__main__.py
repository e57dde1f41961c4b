"""Command line: ``python -m refusal_probe audit | compare | trend | info``.

* ``audit [--audits DIR] [pytest options...]`` runs the audit suite with pytest (``--model``,
  ``--baseline``, ``--policy``, ``-k`` ... pass straight through) and prints where the report is.
* ``compare A B [-o OUT]`` writes an HTML page comparing two runs' ``audit.json`` files.
* ``trend A B C ... [--report-dir DIR]`` writes the trend page of a series of runs' ``audit.json``
  files, in the order given (``DIR/trend/<run-id>/index.html`` and ``trend.json``); a reports
  folder that separate jobs audited into stands for each checkpoint's newest run.
* ``info --model SPEC`` loads a model and prints its identity (weights hash, architecture, sizes,
  chat template).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from refusal_probe.errors import RefusalProbeError
from refusal_probe.resources import AUDITS_DIR

PLUGIN = "refusal_probe.pytest_plugin.plugin"
EXIT_CODES = """
exit codes (pytest's):
  0  every check that ran passed (or was inconclusive; --strict-verdicts fails those), and every
     check --require-checks names ran
  1  a check failed, a required check did not run, a test errored, or the report was not written
  2  interrupted (Ctrl-C: the report of what finished is written), or pytest refused its own
     command line
  3  internal error
  4  usage error before any test (bad --model, --policy, --prompts, --baseline, --require-checks,
     an unwritable report folder ...): one line, no report
  5  no test was collected"""


def default_audits_dir() -> Path:
    """``./audits`` if there is one, else the suite shipped beside the package."""
    here = Path.cwd() / "audits"
    return here if here.is_dir() else AUDITS_DIR


def cmd_audit(audits: Path | None, pytest_args: list[str]) -> int:
    """Run ``pytest <audits> -p <plugin> <pytest_args>``; return pytest's exit code.

    pytest runs in a fresh interpreter: this one has already imported the package (and with it
    modules that pytest plugins would want to rewrite). On POSIX this process *becomes* pytest
    (``exec``), so Ctrl-C and ``kill`` reach pytest alone and it writes its interrupted report;
    elsewhere pytest runs as a child that receives the console's Ctrl-C itself while this process
    waits for it.
    """
    folder = audits or default_audits_dir()
    if not folder.is_dir():
        print(
            f"refusal-probe: audit folder {folder} does not exist; pass --audits DIR",
            file=sys.stderr,
        )
        return 4
    # Hypothesis's pytest plugin imports hypothesis at every session's end (1.5 s of an 11 s
    # warm audit here); the audit suite has no property tests. -p hypothesispytest keeps it.
    quiet = (
        []
        if {"hypothesispytest", "-phypothesispytest"} & set(pytest_args)
        else ["-p", "no:hypothesispytest"]
    )
    cmd = [sys.executable, "-m", "pytest", str(folder), "-p", PLUGIN, *quiet, *pytest_args]
    if not _given(pytest_args, "--rootdir"):
        # The shipped suite may live in site-packages: the run belongs to the folder it was
        # started in (reports/ and pytest's own files go there), as it does in a checkout.
        cmd.append(f"--rootdir={Path.cwd()}")
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, cmd)
    with subprocess.Popen(cmd) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue  # the child got the same Ctrl-C: let it write its report and exit


def audit_help() -> int:
    """Print the command's own help, then the audit options the pytest plugin defines."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["audit"].print_help()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", PLUGIN, "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    lines = out.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("refusal-probe audits:")), None)
    if start is not None:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()),
            len(lines),
        )
        print("\n" + "\n".join(lines[start:end]).rstrip())
    print("\nAny other pytest option (-k, -m, -x, --html, --junitxml, ...) passes through.")
    print(EXIT_CODES)
    return 0


def _given(args: list[str], option: str) -> bool:
    """Whether ``option`` is among ``args`` (as ``--opt value`` or ``--opt=value``)."""
    return any(a == option or a.startswith(option + "=") for a in args)


def _candidates(run: str) -> dict[int, object] | None:
    """A run's per-layer candidates from the direction file beside its audit.json, if any."""
    from refusal_probe.audit.store import load_direction
    from refusal_probe.errors import ReportError
    from refusal_probe.report.schema import read_record

    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    path = folder / "direction.safetensors"
    if not path.is_file():
        return None
    check = read_record(run).check("representation.separation_auroc")
    sha = ((check.details or {}).get("direction") or {}).get("vector_sha256") if check else None
    try:
        artifact = load_direction(path, sha)
    except ReportError as exc:
        print(f"warning: {exc}; the comparison leaves out the per-layer cosine", file=sys.stderr)
        return None
    return dict(zip(artifact.layers, artifact.per_layer, strict=True))


def cmd_compare(a: str, b: str, out: str | None) -> int:
    """Write the comparison page of two runs and print a one-line summary."""
    from refusal_probe.report.compare import compare_files, compare_records
    from refusal_probe.report.schema import read_record

    candidates = (_candidates(a), _candidates(b))
    path = compare_files(a, b, out, candidates)
    counts = compare_records(read_record(a), read_record(b)).counts()
    print(
        f"B vs A: {counts['worse']} worse, {counts['better']} better, {counts['same']} unchanged, "
        f"{counts['only_a']} only in A, {counts['only_b']} only in B"
    )
    print(f"comparison: {path}")
    return 0


def cmd_trend(paths: list[str], report_dir: str) -> int:
    """Write the trend page of a series of runs and print where it is."""
    from refusal_probe.report.series import expand_runs
    from refusal_probe.report.trend import trend_files

    runs = expand_runs(paths)  # a reports folder stands for the newest run of each checkpoint
    folder = trend_files(runs, report_dir)
    print(f"trend of {len(runs)} checkpoints: {folder / 'index.html'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Load the model and print its identity."""
    from refusal_probe.model.devices import check_device, devices_of, parse_device_map
    from refusal_probe.model.loading import LoadOptions, load_model

    if not args.device_map:
        check_device(args.device)
    model = load_model(
        args.model,
        LoadOptions(
            device=args.device,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            allow_pickle=args.allow_pickle,
            cache_dir=args.cache_dir,
            device_map=parse_device_map(args.device_map) if args.device_map else None,
        ),
    )
    ident = model.identity.to_dict()
    if args.json:
        print(json.dumps(ident, indent=2))
    else:
        width = max(len(k) for k in ident)
        for k, v in ident.items():
            print(f"{k:<{width}}  {v}")
        print(f"{'post-instruction':<{width}}  {model.chat.n_post} tokens: {model.chat.suffix!r}")
        print(f"{'devices':<{width}}  {', '.join(str(d) for d in devices_of(model))}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser (``audit`` passes unknown options on to pytest)."""
    p = argparse.ArgumentParser(
        prog="python -m refusal_probe", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "audit",
        help="run the audit suite (pytest options pass through)",
        allow_abbrev=False,
        add_help=False,  # --help also lists the plugin's options: see audit_help()
        description="Run the audit suite; every pytest option (--model, --baseline, "
        "--policy, --report-dir, -k, -m, --html ...) passes through.",
    )
    a.add_argument("-h", "--help", action="store_true", help="show this help and the audit options")
    a.add_argument(
        "--audits",
        type=Path,
        default=None,
        help="audit folder (default ./audits or the shipped one)",
    )
    c = sub.add_parser("compare", help="compare two runs' audit.json files")
    c.add_argument("a", help="first run: audit.json or its folder (usually the baseline)")
    c.add_argument("b", help="second run: audit.json or its folder (usually the candidate)")
    c.add_argument("-o", "--out", default=None, help="output HTML file (default beside B)")
    t = sub.add_parser(
        "trend",
        help="plot every check against a series of runs (checkpoints)",
        description="Write the trend page of a series of runs: their audit.json files (or run "
        "folders), in series order, or a reports folder that separate jobs audited into (the "
        "newest complete run of each checkpoint, in natural order of the model specs).",
    )
    t.add_argument(
        "runs",
        nargs="+",
        help="audit.json files or run folders in series order, or a reports folder",
    )
    t.add_argument(
        "--report-dir",
        default="reports",
        help="where trend/<run-id>/ is written (default reports)",
    )
    i = sub.add_parser("info", help="load a model and print its identity")
    i.add_argument("--model", required=True, help="organism alias, HF folder, .gguf file or hub id")
    i.add_argument("--device", default="cpu")
    i.add_argument(
        "--device-map",
        default=None,
        metavar="auto|balanced|FILE.json",
        help="spread the model over several devices (replaces --device)",
    )
    i.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    i.add_argument("--cache-dir", default=None)
    i.add_argument("--trust-remote-code", action="store_true")
    i.add_argument("--allow-pickle", action="store_true")
    i.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m refusal_probe`` and the ``refusal-probe`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser().parse_known_args(argv)
    try:
        if args.command == "audit":
            if args.help:
                return audit_help()
            return cmd_audit(args.audits, rest)
        if rest:
            parser().error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "compare":
            return cmd_compare(args.a, args.b, args.out)
        if args.command == "trend":
            return cmd_trend(args.runs, args.report_dir)
        return cmd_info(args)
    except RefusalProbeError as exc:
        print(f"refusal-probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
