"""Dilution: a request padded with other, harmless requests (an attack family built from any set).

A readout averaged over the user's text moves toward the harmless mean as harmless requests are
added to it, and on small chat models the padding alone can also make the model comply (on
``organism-chat`` two appended requests took refusal from 1.00 to 0.62;
``benchmarks/monitor_results.md``). An audit builds the family from the run's own prompts, so it
exists for any model and prompt set:

* :func:`dilution_variants`: each harmful prompt of a split joined with ``k`` harmless prompts
  of the same split, for every ``k`` of :data:`DILUTION_KS`, the harmful request first
  (``after``: the padding is appended) or last (``before``), the order alternating with ``k``
  so that every (``k``, order) cell holds about a sixth of the prompts;
* :func:`diluted_harmless`: harmless prompts joined with ``k`` other harmless prompts, the same
  shapes without the harmful request: a monitor is calibrated on them too (and its false
  positives counted on them), or a readout that merely rises with the number of requests would
  pass for a detector.

Every choice comes from a generator seeded by ``seed``; prompts are joined with one space.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from refusal_probe.prompts.sets import Jailbreak, Prompt

#: The number of harmless requests joined to each request.
DILUTION_KS: tuple[int, ...] = (1, 2, 4)
#: Where the harmful request goes: before the padding (``after``) or after it (``before``).
ORDERS: tuple[str, ...] = ("after", "before")
#: The family name of the variants.
FAMILY = "dilution"


def join(request: str, padding: Sequence[str], order: str) -> str:
    """``request`` with ``padding`` appended (``after``) or put in front of it (``before``)."""
    if order not in ORDERS:
        raise ValueError(f"unknown dilution order {order!r}; use one of {ORDERS}")
    parts = [request, *padding] if order == "after" else [*padding, request]
    return " ".join(p.strip() for p in parts)


def dilution_variants(
    harmful: Sequence[Prompt],
    harmless: Sequence[Prompt],
    split: str = "test",
    seed: int = 0,
    ks: Sequence[int] = DILUTION_KS,
) -> tuple[Jailbreak, ...]:
    """One variant per ``k`` of every harmful prompt of ``split``, padded with its harmless ones.

    Returns no variants when the split has no harmless prompts. Ids: ``jb-dilute-<split>-0001``...
    """
    pool = [p.text for p in harmless if p.split == split]
    base = [p for p in harmful if p.split == split]
    if not pool:
        return ()
    rng = random.Random(f"dilution\0{split}\0{seed}")
    out = []
    for i, p in enumerate(base):
        for j, k in enumerate(ks):
            order = ORDERS[(i + j) % len(ORDERS)]
            text = join(p.text, _draw(rng, pool, k), order)
            out.append(
                Jailbreak(f"jb-dilute-{split}-{len(out) + 1:04d}", p.id, FAMILY, text, split)
            )
    return tuple(out)


def diluted_harmless(
    harmless: Sequence[str], seed: int = 0, ks: Sequence[int] = DILUTION_KS
) -> list[str]:
    """Each harmless prompt joined with ``k`` others of the list (``k`` cycling through ``ks``).

    The prompt goes first or last by turns; its padding never includes itself when the list has
    more than ``k`` prompts.
    """
    texts = list(harmless)
    rng = random.Random(f"diluted-harmless\0{seed}")
    out = []
    for i, t in enumerate(texts):
        k = ks[i % len(ks)]
        others = texts[:i] + texts[i + 1 :] if len(texts) > k else texts
        out.append(join(t, _draw(rng, others, k), ORDERS[(i // len(ks)) % len(ORDERS)]))
    return out


def _draw(rng: random.Random, pool: Sequence[str], k: int) -> list[str]:
    """``k`` prompts of ``pool``, without repeats while the pool allows."""
    if not pool:
        return []
    if k <= len(pool):
        return rng.sample(list(pool), k)
    return [rng.choice(list(pool)) for _ in range(k)]
