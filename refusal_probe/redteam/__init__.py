"""Red-team for the monitor: a bounded greedy-coordinate-gradient (GCG) suffix search.

Axes: ``cand`` candidate suffixes of one step, ``pos`` token positions, ``suffix`` the suffix's
token slots, ``d`` d_model, ``vocab`` vocabulary.

For one harmful prompt, a suffix of ``suffix_tokens`` tokens is appended to the user's text
(``prompt + separator + suffix``) and optimized to *lower the refusal log-odds* of the model
(:func:`refusal_probe.scoring.refusal.refusal_score_from_logits`), as GCG does (Zou et al. 2023):

1. one forward and backward pass gives the gradient of the score with respect to the one-hot
   token at each suffix slot (the gradient at the residual stream entering block 0, times the
   embedding matrix: a positive embedding scale does not change the ranking);
2. ``candidates`` suffixes are sampled, each swapping one slot for one of its ``top_k`` tokens
   with the most negative gradient;
3. every candidate is scored exactly (one batched forward pass), and the best replaces the current
   suffix if it scores lower.

With a monitor (:mod:`refusal_probe.monitor.fit`) and ``monitor_weight > 0`` the objective becomes
``refusal log-odds + monitor_weight * alarm``: the adaptive attacker who knows the detector.

The search stops after ``steps`` steps or once the score is below ``target_score``; it never
evaluates more than ``steps x candidates`` candidates per prompt. Candidates are scored on the
*re-tokenized text*, and a candidate whose text does not tokenize back to its own tokens is
discarded, so the saved text is exactly what was optimized. Every random choice comes from a
generator seeded by ``seed`` and the prompt's text: the same seed gives the same suffixes,
whatever the order of the prompts.

The default vocabulary holds no word-initial tokens (``nonword``): a suffix of whole words can
change the topic of the request ("... spreadsheet") instead of suppressing refusal, and a
substring judge would count that as a jailbreak.

``python -m refusal_probe.redteam --model organism-chat --out fixtures/prompts`` regenerates the
``suffix`` family of ``jailbreaks.jsonl`` in ``--out`` (the other families' lines are kept byte for
byte); nothing is written outside that folder.
"""

from refusal_probe.redteam.cli import main
from refusal_probe.redteam.fixture import (
    FAMILY,
    next_number,
    suffix_records,
    write_suffix_family,
)
from refusal_probe.redteam.search import (
    VOCABULARIES,
    RedTeamConfig,
    RedTeamResult,
    SuffixResult,
    allowed_tokens,
    search_suffixes,
)

__all__ = [
    "FAMILY",
    "VOCABULARIES",
    "RedTeamConfig",
    "RedTeamResult",
    "SuffixResult",
    "allowed_tokens",
    "main",
    "next_number",
    "search_suffixes",
    "suffix_records",
    "write_suffix_family",
]
