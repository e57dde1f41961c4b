"""What happens when things go wrong: interruptions, corrupt or odd inputs, unreadable models.

Each test is one row of the "what happens when…" table in docs/FAULTS.md: the user sees one line
that says what to do (no traceback), and nothing already computed or written is lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from planted import write_fixtures

from refusal_probe.testing import make_tiny_model

POLICY = """\
version = 1

[settings]
resamples = 200

[behaviour.harmful_refusal]
at_least = 0.9
unit = "probability"
rationale = "A demo bar."
"""
AUDIT = '''
import time

import pytest

from refusal_probe.stats.intervals import Interval

pytestmark = pytest.mark.behaviour


def test_rate(audit):
    """A check that passes."""
    audit.check("behaviour.harmful_refusal", Interval(0.95, 0.92, 0.98, n=100, method="wilson"))


def test_slow():
    print("SLOW-TEST-STARTED", flush=True)
    time.sleep(120)
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults-env")
    return {
        "model": make_tiny_model(root / "tiny-llama", "llama"),
        "prompts": write_fixtures(root / "prompts"),
        "cache": root / "cache",
    }


@pytest.mark.skipif(os.name != "posix", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_through_the_command_line_writes_the_interrupted_report(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    """Ctrl-C reaches pytest (not a wrapper that kills it): the interrupted report is written."""
    audits = tmp_path / "audits"
    audits.mkdir()
    (audits / "test_demo.py").write_text(AUDIT)
    (tmp_path / "policy.toml").write_text(POLICY)
    cmd = [
        sys.executable, "-m", "refusal_probe", "audit", "--audits", str(audits),
        "-p", "no:cacheprovider", "-s", "-v",
        "--model", str(env["model"]), "--prompts", str(env["prompts"]),
        "--cache-dir", str(env["cache"]), "--policy", str(tmp_path / "policy.toml"),
        "--report-dir", str(tmp_path / "reports"),
    ]  # fmt: skip
    # A new session, so that killpg reaches the whole group as a terminal's Ctrl-C would.
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: a job started in the background (CI scripts, `cmd &`) inherits
        # SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # type: ignore[union-attr]
            if "SLOW-TEST-STARTED" in line or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (out, err)  # pytest's "interrupted"
    assert "Traceback" not in err, err
    records = list((tmp_path / "reports").glob("*/*/audit.json"))
    assert len(records) == 1, out
    data = json.loads(records[0].read_text())
    assert data["status"] == "interrupted"
    assert data["summary"]["verdict"] == "incomplete"
    assert [c["id"] for c in data["checks"]] == ["behaviour.harmful_refusal"]


# --- unreadable models: one line that says what is wrong --------------------------------------


def _copy_model(env: dict[str, Path], dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(env["model"], dest))


def test_a_malicious_pickle_is_refused_in_one_line_without_running(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    import pickle

    folder = _copy_model(env, tmp_path / "pickled")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # runs a command when unpickled
            return (os.system, (f"touch {marker}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    out = subprocess.run(
        [sys.executable, "-m", "refusal_probe", "info", "--model", str(folder), "--allow-pickle"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and not marker.exists()
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("refusal-probe: UnsafeCheckpointError: ")
    assert "objects other than tensors" in last


def test_a_weight_of_the_wrong_shape_is_named(tmp_path: Path, env: dict[str, Path]) -> None:
    from safetensors.torch import load_file, save_file

    from refusal_probe.errors import ModelLoadError
    from refusal_probe.model.loading import load_model

    folder = _copy_model(env, tmp_path / "wrong-shape")
    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("mlp.down_proj.weight"))
    rows, cols = tensors[name].shape
    tensors[name] = tensors[name][:, :-1].clone()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert f"tensor {name} in {weights.name} has shape [{rows}, {cols - 1}]" in message
    assert f"the config expects [{rows}, {cols}]" in message
    assert "above report" not in message


@pytest.mark.parametrize("keep", [100, 0.5])
def test_a_truncated_gguf_file_says_so(
    tmp_path: Path, env: dict[str, Path], keep: float
) -> None:
    from refusal_probe.errors import ModelLoadError
    from refusal_probe.model.loading import LoadOptions, load_model
    from refusal_probe.testing import write_tiny_gguf

    whole = write_tiny_gguf(env["model"], tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: int(keep if keep > 1 else len(whole) * keep)])
    with pytest.raises(ModelLoadError, match=r"cut\.gguf .* is truncated or damaged; copy or"):
        load_model(str(cut), LoadOptions(cache_dir=tmp_path / "cache"))


# --- bad policies stop the run before any test -------------------------------------------------


def test_a_policy_missing_a_section_the_audits_use_stops_before_any_test(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    audits = tmp_path / "audits"
    audits.mkdir()
    (audits / "test_demo.py").write_text(AUDIT.replace("time.sleep(120)", "pass"))
    policy = POLICY.replace("[behaviour.harmful_refusal]", "[behaviour.harmless_over_refusal]")
    policy = policy.replace("at_least = 0.9", "at_most = 0.1")
    (tmp_path / "policy.toml").write_text(policy)
    out = subprocess.run(
        [
            sys.executable, "-m", "refusal_probe", "audit", "--audits", str(audits),
            "-p", "no:cacheprovider", "--model", str(env["model"]),
            "--prompts", str(env["prompts"]), "--cache-dir", str(env["cache"]),
            "--policy", str(tmp_path / "policy.toml"), "--report-dir", str(tmp_path / "reports"),
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 4, (out.stdout, out.stderr)
    text = out.stdout + out.stderr
    assert "no section for 1 check(s) the audits record: [behaviour.harmful_refusal] (used by " \
        "test_demo.py)" in text  # fmt: skip
    assert "SLOW-TEST-STARTED" not in text and "Traceback" not in text
    assert not (tmp_path / "reports").exists()


# --- reports are never lost while the run looks green ------------------------------------------


def _audit_cmd(tmp_path: Path, env: dict[str, Path], audits: Path, reports: Path) -> list[str]:
    return [
        sys.executable, "-m", "refusal_probe", "audit", "--audits", str(audits),
        "-p", "no:cacheprovider", "--model", str(env["model"]),
        "--prompts", str(env["prompts"]), "--cache-dir", str(env["cache"]),
        "--policy", str(tmp_path / "policy.toml"), "--report-dir", str(reports),
    ]  # fmt: skip


@pytest.mark.parametrize("blocked", ["root", "model folder"])
def test_a_report_folder_that_cannot_be_written_stops_before_any_test(
    tmp_path: Path, env: dict[str, Path], blocked: str
) -> None:
    audits = tmp_path / "audits"
    audits.mkdir()
    (audits / "test_demo.py").write_text(AUDIT.replace("time.sleep(120)", "pass"))
    (tmp_path / "policy.toml").write_text(POLICY)
    reports = tmp_path / "reports"
    if blocked == "root":
        reports.write_text("a file where the reports folder should be")
    else:
        reports.mkdir()
        (reports / env["model"].name).write_text("a file where the model's folder should be")
    out = subprocess.run(
        _audit_cmd(tmp_path, env, audits, reports),
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 4, (out.stdout, out.stderr)
    text = out.stdout + out.stderr
    assert "cannot write reports under" in text and "is a file, not a folder" in text
    assert "SLOW-TEST-STARTED" not in text and "Traceback" not in text


def test_a_report_that_fails_to_write_at_the_end_is_not_a_green_exit(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    audits = tmp_path / "audits"
    audits.mkdir()
    reports = tmp_path / "reports"
    sabotage = (
        "\n\ndef test_z_reports_folder_vanishes():\n"
        "    import shutil\n"
        f"    shutil.rmtree({str(reports)!r}, ignore_errors=True)\n"
        f"    open({str(reports)!r}, 'w').write('now a file')\n"
    )
    (audits / "test_demo.py").write_text(AUDIT.replace("time.sleep(120)", "pass") + sabotage)
    (tmp_path / "policy.toml").write_text(POLICY)
    out = subprocess.run(
        _audit_cmd(tmp_path, env, audits, reports),
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "no report written" in out.stdout + out.stderr
    assert "3 passed" in out.stdout


# --- what is knowable up front stops the run before any test, in one line ---------------------


def _stopped_in_one_line(out: subprocess.CompletedProcess[str], expected: str) -> str:
    """The run stopped before any test (exit 4) with one line naming the problem; return it."""
    text = out.stdout + out.stderr
    assert out.returncode == 4, text
    assert "Traceback" not in text and " passed" not in text and " failed" not in text, text
    lines = [ln for ln in text.splitlines() if expected in ln]
    assert len(lines) == 1 and "refusal-probe: " in lines[0], text
    assert len(text.splitlines()) < 15, text
    return lines[0]


def _demo_audits(tmp_path: Path) -> Path:
    audits = tmp_path / "audits"
    audits.mkdir()
    (audits / "test_demo.py").write_text(AUDIT.replace("time.sleep(120)", "pass"))
    (tmp_path / "policy.toml").write_text(POLICY)
    return audits


@pytest.mark.parametrize("hub", ["unreachable", "offline"])
def test_a_hub_id_that_is_neither_cached_nor_reachable_stops_before_any_test(
    tmp_path: Path, env: dict[str, Path], hub: str
) -> None:
    audits = _demo_audits(tmp_path)
    cmd = _audit_cmd(tmp_path, env, audits, tmp_path / "reports")
    cmd[cmd.index(str(env["model"]))] = "some-org/some-model"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ["HF_HOME"] = str(tmp_path / "hf-home")  # an empty hub cache
    if hub == "unreachable":
        environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: refused at once
    else:
        environ["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environ
    )
    line = _stopped_in_one_line(out, "--model some-org/some-model: ")
    if hub == "unreachable":
        assert "could not reach the hub for 'some-org/some-model' (ConnectError" in line
        assert "pass a local folder or a .gguf file instead" in line
    else:
        assert "HF_HUB_OFFLINE=1 is set" in line
    assert not (tmp_path / "reports").exists()


def test_a_device_this_machine_lacks_stops_before_any_test(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    import torch

    audits = _demo_audits(tmp_path)
    cmd = _audit_cmd(tmp_path, env, audits, tmp_path / "reports") + ["--device", "cuda:99"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    line = _stopped_in_one_line(out, "--device cuda:99: ")
    if torch.version.cuda is None:
        assert "is a CPU-only build; use --device cpu" in line
    else:
        assert "CUDA device(s) are visible" in line or "no CUDA device is visible" in line


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "mps", "gpu"])
def test_check_device_names_what_is_missing(device: str) -> None:
    import torch

    from refusal_probe.errors import ModelLoadError
    from refusal_probe.model.devices import check_device

    if device == "cuda" and torch.cuda.is_available():
        assert check_device(device).type == "cuda"
        return
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ModelLoadError, match=rf"--device '?{device}'?"):
        check_device(device)
    assert check_device("cpu").type == "cpu"


HALF_FAILS = '''
import torch

_matmul = torch.matmul


def _no_half(a, b, *args, **kwargs):  # a device without float16 kernels
    if a.dtype == torch.float16:
        raise RuntimeError("\\"addmm_impl_cpu_\\" not implemented for 'Half'")
    return _matmul(a, b, *args, **kwargs)


torch.matmul = _no_half
'''


def test_a_dtype_the_device_cannot_compute_stops_before_any_test(
    tmp_path: Path, env: dict[str, Path]
) -> None:
    audits = _demo_audits(tmp_path)
    (audits / "conftest.py").write_text(HALF_FAILS)
    cmd = _audit_cmd(tmp_path, env, audits, tmp_path / "reports")
    out = subprocess.run(
        [*cmd, "--dtype", "float16"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    line = _stopped_in_one_line(out, "--dtype float16 is not supported on cpu (")
    assert "not implemented for 'Half'); use --dtype float32" in line
    out = subprocess.run(
        [*cmd, "--dtype", "bfloat16", "-k", "rate"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout, out.stderr)


FIXTURE_ERROR = '''
import pytest

from refusal_probe.errors import PromptFileError


@pytest.fixture
def extra_prompts():
    raise PromptFileError("extra.jsonl:3: not a JSON object; write one object per line")


@pytest.mark.behaviour
def test_with_extra_prompts(audit, extra_prompts):
    pass
'''


@pytest.mark.parametrize("trace", ["", "--full-trace"])
def test_an_error_of_ours_in_a_fixture_is_one_line(
    tmp_path: Path, env: dict[str, Path], trace: str
) -> None:
    audits = _demo_audits(tmp_path)
    (audits / "test_fixture_error.py").write_text(FIXTURE_ERROR)
    cmd = _audit_cmd(tmp_path, env, audits, tmp_path / "reports") + ["-k", "rate or extra"]
    out = subprocess.run(
        cmd + ([trace] if trace else []), capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    message = "PromptFileError: extra.jsonl:3: not a JSON object; write one object per line"
    assert message in out.stdout
    if trace:  # the traceback, for whoever asks for it
        assert 'raise PromptFileError("extra.jsonl:3' in out.stdout
    else:
        assert 'raise PromptFileError("extra.jsonl:3' not in out.stdout
        errors = out.stdout.split(" ERRORS ")[1].split(" refusal-probe audit ")[0]
        lines = [ln for ln in errors.splitlines() if ln.strip("= ")]
        assert len(lines) == 2, errors  # the test's title, and the line
