"""Write the adaptive family's fixture of a model: suffixes searched against its audited monitor.

The monitor is the one an audit fits on the model (the policy's settings, the audit's selected
refusal direction); ``--prompts`` harmful test prompts of the model's default set (a seeded
sample, as an audit's own search takes ``monitor_adaptive_prompts`` of them; the shipped fixtures
hold all 96) are attacked with the shipped budget (:data:`refusal_probe.redteam.adaptive.ADAPTIVE`: 8 suffix
tokens, 32 steps x 64 candidates, alarm weight 1, seed 0). The file goes to ``--out`` (default
``fixtures/redteam``), named by the model's fingerprint, where audits of that model find it.

    python benchmarks/adaptive_fixtures.py --model organism-chat --cache-dir /tmp/rp-cache --prompts 96
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from refusal_probe.audit.monitor import monitor_config
from refusal_probe.audit.options import AuditOptions
from refusal_probe.audit.run import AuditRun
from refusal_probe.monitor.fit import fit_monitor
from refusal_probe.redteam.adaptive import AdaptiveConfig, adaptive_family
from refusal_probe.resources import FIXTURES_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="organism-chat")
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=FIXTURES_DIR / "redteam")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--prompts", type=int, default=96, help="harmful test prompts attacked (a seeded sample)"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run = AuditRun(a.model, AuditOptions(model=a.model, cache_dir=a.cache_dir))
    direction = run.direction_vector().direction
    monitor = fit_monitor(run.model, run.fixtures, direction, monitor_config(run.settings))
    t0 = time.perf_counter()
    _, summary = adaptive_family(
        run.model,
        monitor,
        run.fixtures.harmful.split("test"),
        cache=a.out,
        config=AdaptiveConfig(max_prompts=a.prompts),
    )
    print({**summary, "wall_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
