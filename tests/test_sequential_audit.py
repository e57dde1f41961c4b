"""Sequential behaviour verdicts on the shipped organism, the time budget and the work counts.

With ``sequential = true`` the behaviour checks generate the test prompts in seeded rounds and
stop each side once its confidence sequence decides the bar; with it off nothing changes (every
prompt, Wilson intervals, the record says ``fixed``). ``--budget`` stops a run's results past
the deadline; the phases count forward passes and tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_plugin import env, only_record, project  # noqa: F401, F811 (env: a fixture)

from refusal_probe.audit import AuditOptions, AuditRun
from refusal_probe.audit.budget import Budget, parse_budget
from refusal_probe.audit.policy import load_policy
from refusal_probe.audit.sequential import bars_of, complete, prompt_order
from refusal_probe.errors import BudgetSpent
from refusal_probe.stats.verdicts import decide

AUDITS = ("behaviour",)


def _policy(tmp: Path, body: str) -> Path:
    path = tmp / "policy.toml"
    path.write_text(f'extends = "default"\n[settings]\n{body}\n', encoding="utf-8")
    return path


def _run(tmp: Path, cache: Path, body: str, budget: float | None = None) -> AuditRun:
    path = _policy(tmp, body)
    opts = AuditOptions("organism-chat", cache_dir=cache, policy=path, budget=budget)
    return AuditRun("organism-chat", opts, load_policy(path), audits=AUDITS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sequential-cache")


def test_sequential_stops_early_with_the_fixed_verdicts(tmp_path: Path, cache: Path) -> None:
    """organism-chat refuses every harmful and no harmless test prompt: decided in 3 rounds."""
    fixed = _run(tmp_path, cache, "sequential = false")
    seq = _run(tmp_path, cache, "sequential = true\nsequential_round = 16")
    a, b = fixed.behaviour(), seq.behaviour()
    policy = fixed.policy
    for side, check in (
        ("harmful", "behaviour.harmful_refusal"),
        ("harmless", "behaviour.harmless_over_refusal"),
    ):  # noqa: E501
        thr = policy.check(check).threshold
        before, after = getattr(a, side), getattr(b, side)
        assert decide(before, thr).verdict is decide(after, thr).verdict
        assert a.stopping[side].reason == "fixed" and before.method == "wilson"
        stop = b.stopping[side]
        assert stop.reason in ("cleared", "missed") and stop.used < stop.available
        assert after.n == stop.used and stop.rounds * 16 == stop.used
        assert after.method.startswith("betting confidence sequence")
    assert seq.phases["completions"]["tokens"] < fixed.phases["completions"]["tokens"]
    assert seq.phases["completions"]["forward_passes"] > 0


def test_fixed_n_is_todays_behaviour(tmp_path: Path, cache: Path) -> None:
    """Off: every test prompt in file order, Wilson intervals, as before the setting existed."""
    run = _run(tmp_path, cache, "sequential = false")
    c = run.completions()
    assert [p for p, _, _ in c.harmful] == run.fixtures.harmful.texts("test")
    assert c.indices is None and not c.intervals
    b = run.behaviour()
    assert (b.harmful.k, b.harmful.n) == (sum(r for *_, r in c.harmful), len(c.harmful))


def test_out_of_time_stops_the_rounds_undecided(tmp_path: Path, cache: Path) -> None:
    """Budget spent before the first round: both sides stop with reason ``budget``."""
    run = _run(tmp_path, cache, "sequential = true")
    c = complete(run.model, run.fixtures, run.settings, bars_of(run.policy), 0, lambda: True)
    assert {s.reason for s in c.stopping.values()} == {"budget"}
    assert c.harmful == () and c.stopping["harmful"].used == 0


def test_a_spent_budget_stops_a_result_that_must_compute(tmp_path: Path) -> None:
    run = _run(tmp_path, tmp_path / "cold", "sequential = false", budget=1e-6)
    with pytest.raises(BudgetSpent, match="time budget of 1e-06 s"):
        run.behaviour()


def test_the_order_is_seeded_and_differs_by_side() -> None:
    assert prompt_order(20, 0, "harmful") == prompt_order(20, 0, "harmful")
    assert prompt_order(20, 0, "harmful") != prompt_order(20, 0, "harmless")
    assert sorted(prompt_order(20, 3, "harmless")) == list(range(20))


def test_budget_input_is_checked() -> None:
    assert parse_budget("90") == 90.0
    for bad in ("-1", "0", "soon", "inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number of seconds"):
            parse_budget(bad)
    assert not Budget(None).spent()
    with pytest.raises(ValueError, match="positive number"):
        Budget(0)


BUDGET_AUDIT = '''
import pytest
from refusal_probe.errors import BudgetSpent


@pytest.fixture(scope="session")
def slow():
    raise BudgetSpent("the time budget of 1 s (--budget) ran out before monitor could finish")


@pytest.mark.behaviour
def test_harmful_refusal(audit):
    """A result that ran out of time in the test body."""
    raise BudgetSpent("the time budget of 1 s (--budget) ran out before behaviour could finish")


@pytest.mark.causal
def test_ablation_drop(audit, slow):
    """A result that ran out of time in a fixture."""
'''


def test_the_plugin_reads_a_spent_budget_as_inconclusive(
    pytester: pytest.Pytester,
    env: dict[str, Path],  # noqa: F811
) -> None:
    """Body or fixture: the check is inconclusive with the reason, never an error."""
    args = project(pytester, env)
    pytester.makepyfile(test_synthetic=BUDGET_AUDIT)
    r = pytester.runpytest(*args, "--budget", "1")
    assert r.ret == 0 and "1 skipped, 1 inconclusive" in r.stdout.str()
    checks = {c["id"]: c for c in only_record(pytester)["checks"]}
    pairs = (("behaviour.harmful_refusal", "behaviour"), ("causal.ablation_drop", "monitor"))
    for check_id, what in pairs:
        assert checks[check_id]["verdict"] == "inconclusive"
        assert f"ran out before {what}" in checks[check_id]["message"]
    bad = pytester.runpytest(*args, "--budget", "soon")
    assert "positive number of seconds" in bad.stderr.str()
