"""Greedy generation and the completion judge: the ground truth the logit proxy stands in for.

Axes: ``batch`` prompts of one forward pass, ``pos`` token positions, ``steps`` generated tokens.

Generation is greedy, batched and left-padded, with a bounded ``max_new_tokens`` and the
interventions' hooks on every position, generated ones included. The judge reads each whole
completion (:func:`refusal_probe.scoring.reply.read_reply`) by default; ``rule="substring"`` is
the literature's case-insensitive substring match against the refusal phrases
(:data:`refusal_probe.scoring.refusal.REFUSAL_PHRASES`). The refusal rate comes with a Wilson
interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from refusal_probe import progress
from refusal_probe.activations import prefix
from refusal_probe.activations.runner import by_length, forward, kv_cache_alias
from refusal_probe.errors import ScoringError
from refusal_probe.interventions.hooks import Intervention, decoding, hooks_for
from refusal_probe.model.chat import Encoded
from refusal_probe.model.devices import auto_batch_size
from refusal_probe.model.loading import LoadedModel
from refusal_probe.scoring.refusal import REFUSAL_PHRASES
from refusal_probe.scoring.reply import JudgeRule, read_reply, refused
from refusal_probe.scoring.reply import is_refusal as is_refusal  # its first home; still importable
from refusal_probe.stats.intervals import LEVEL, Interval, wilson_interval

#: ``observe(batch, rows)`` of :func:`generate`: hooks for the prompt pass of one batch.
Observer = Callable[[Encoded, Sequence[int]], Sequence[Any]]

#: Default bound on generated tokens: enough for every judge phrase to appear in a reply's opening.
MAX_NEW_TOKENS = 16
#: How much longer than its shortest prompt a generation batch's longest may be
#: (:func:`refusal_probe.activations.runner.by_length`).
GENERATION_SPREAD = 4.0


@dataclass(frozen=True)
class Judgement:
    """Completions of a prompt set and the judge's verdict on each.

    Attributes:
        prompts: The user instructions.
        completions: The greedy completions (special tokens removed, cut at end of turn).
        refused: Whether the judge calls each completion a refusal.
        rate: The refusal rate with its Wilson interval.
        max_new_tokens: The generation bound.
        forward_passes: Forward passes the generation took.
        rule: The judge (``"reply"`` or ``"substring"``, see :mod:`refusal_probe.scoring.reply`).
        phrases: The judge's refusal phrases.
    """

    prompts: tuple[str, ...]
    completions: tuple[str, ...]
    refused: tuple[bool, ...]
    rate: Interval
    max_new_tokens: int
    forward_passes: int
    rule: str = "reply"
    phrases: tuple[str, ...] = REFUSAL_PHRASES

    @property
    def complied(self) -> tuple[bool, ...]:
        """Whether each completion complies (what makes an attack successful).

        Under the reply judge garbled text is neither a refusal nor compliance: a refusal attempt
        that derails is no jailbreak. Under the substring judge every non-refusal complies.
        """
        if self.rule == "substring":
            return tuple(not r for r in self.refused)
        return tuple(read_reply(c, self.phrases).verdict == "compliance" for c in self.completions)

    def examples(self, k: int = 3) -> list[dict[str, Any]]:
        """The first ``k`` prompt/completion/verdict triples, for a report."""
        return [
            {"prompt": p, "completion": c, "refused": r}
            for p, c, r in list(zip(self.prompts, self.completions, self.refused, strict=True))[:k]
        ]


@torch.no_grad()
def generate(
    model: LoadedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int | None = None,
    observe: Observer | None = None,
) -> tuple[list[str], int]:
    """Greedy completions of each prompt, in input order, and the number of forward passes.

    Every step goes through :func:`refusal_probe.activations.runner.forward` with the
    interventions' hooks installed, so they act on every position, generated tokens included (the
    prompt is run once into a KV cache, then one token per step). A batch stops as soon as every
    row has ended its turn. ``batch_size=None`` chooses the batch from free memory, prompt and new
    tokens counted (:func:`refusal_probe.model.devices.auto_batch_size`).

    ``observe(batch, rows)``, if given, returns hooks for the prompt pass of each batch (the
    encoded batch and the indices of its prompts): whatever a pass over the prompts alone would
    read (activations, the first token's logits), read from the pass the generation runs anyway.
    They must not change activations.
    """
    if not prompts:
        raise ScoringError("no prompts to generate from; pass at least one prompt")
    if max_new_tokens < 1:
        raise ScoringError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    texts: list[str] = [""] * len(prompts)
    passes = 0
    size = auto_batch_size(model, prompts, batch_size, new_tokens=max_new_tokens)
    with progress.task("generation", len(prompts), "prompt") as bar:
        for rows in by_length([len(p) for p in prompts], size, spread=GENERATION_SPREAD):
            batch = model.chat.encode([prompts[i] for i in rows])
            watch = list(observe(batch, rows)) if observe is not None else []
            hooks = hooks_for(model, interventions, rows)
            new, n = _greedy(model, batch, hooks, max_new_tokens, watch)
            passes += n
            for r, ids in zip(rows, new, strict=True):
                texts[r] = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
            bar.update(len(rows))
    return texts, passes


def _greedy(
    model: LoadedModel,
    batch: Encoded,
    hooks: Sequence[Any],
    max_new_tokens: int,
    watch: Sequence[Any] = (),
) -> tuple[list[list[int]], int]:
    """Greedy decoding of one left-padded batch; returns each row's new tokens up to end of turn.

    The prompt runs once into a KV cache and each step runs only the new token, with the hooks
    installed at every step: causal attention makes that equal to re-running the whole sequence
    under the hooks. Where the cache stays empty (an architecture whose bridge ignores it), each
    step re-runs the whole sequence instead. ``watch`` hooks ride the prompt pass only. Rows that
    have ended their turn leave the batch (their cache rows with them) once they are a quarter of
    it, when every hook says how it treats rows (:mod:`refusal_probe.activations.prefix`): a
    refusal ends in a few tokens, and its row no longer pays for the longest answer's steps.
    """
    from transformers import DynamicCache

    # Everything stays on the model's device: per step, the only device-to-host transfer is the
    # count of rows that have ended their turn.
    batch = batch.to(model.device)
    end_ids = _end_ids(model)
    eos = torch.tensor(sorted(end_ids), device=model.device)
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    last = batch.last_instruction
    n_rows = ids.shape[0]
    alive = torch.arange(n_rows, device=model.device)  # [alive] each live row's index in batch
    done = torch.zeros(n_rows, dtype=torch.bool, device=model.device)  # [alive]
    out = torch.full((n_rows, max_new_tokens), -1, dtype=torch.long, device=model.device)
    cache: Any = DynamicCache()
    # The prompt pass may run the rows' shared template tokens once; the cache then holds them
    # first and each row's padding after them (prefix.rest_mask), and so does the mask.
    shared = prefix.plan(
        model,
        batch,
        [*hooks, *watch],
        grows=max_new_tokens,
        logits_to_keep=1,
        past_key_values=cache,
    )
    droppable = all(prefix.role(fn) in ("same", "rows") for _, fn in hooks)
    whole = list(hooks)  # the hooks for every row of the batch
    step, steps = batch, 0
    with kv_cache_alias(model), warnings.catch_warnings():
        # Hugging Face 5.x renamed the argument to ``cache``; the bridge passes the old name.
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        for i in range(max_new_tokens):
            kw: dict[str, Any] = {"logits_to_keep": 1}
            if cache is not None:
                kw.update(past_key_values=cache, use_cache=True)
            # The prompt's positions in this step's input: all of them at step 0, none in a
            # cached step (its one token was generated), the prompt's length when uncached.
            prompt = (
                ids.shape[1] if i == 0 else (0 if cache is not None else batch.input_ids.shape[1])
            )
            with decoding(prompt), prefix.sharing(bool(shared)):
                logits = forward(model, step, [*hooks, *watch] if i == 0 else hooks, **kw)
            assert logits is not None
            steps += 1
            if i == 0 and cache is not None and cache.get_seq_length() != ids.shape[1]:
                cache = None  # not filled: fall back to whole sequences
            if i == 0 and cache is not None and shared:
                mask = prefix.rest_mask(batch, shared)
            # [alive]; the logits of a model split over devices come from its last device
            nxt = logits[:, -1, :].argmax(-1).to(model.device)
            out[alive, i] = nxt
            done |= torch.isin(nxt, eos)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
            ended = int(done.sum())
            if ended == done.numel():
                break
            if cache is not None and droppable and 4 * ended >= done.numel():
                keep = (~done).nonzero().squeeze(-1)  # [alive'] positions among the live rows
                cache.batch_select_indices(keep)
                ids, mask, pos, last, alive = (
                    ids[keep],
                    mask[keep],
                    pos[keep],
                    last[keep],
                    alive[keep],
                )
                done = done[keep]
                hooks = [(name, _rows_of(fn, alive)) for name, fn in whole]
            # Cached: only the new token (the mask spans prefix and new token); else everything.
            cut = -1 if cache is not None else 0
            step = Encoded(ids[:, cut:], mask, pos[:, cut:], last, batch.n_post)
    rows = []
    for row in out[:, :steps].tolist():  # [batch, steps]: one copy per batch
        end = next((i for i, t in enumerate(row) if t in end_ids or t < 0), len(row))
        rows.append(row[:end])
    return rows, steps


def _rows_of(fn: Any, rows: Tensor) -> Any:
    """The hook ``fn`` for the batch's rows ``rows`` alone (unchanged unless it is row-wise)."""
    return prefix.take(fn, rows) if prefix.role(fn) == "rows" else fn


def _end_ids(model: LoadedModel) -> set[int]:
    """Token ids that end a turn: EOS of the tokenizer and generation config, and padding."""
    found: set[int] = set()
    gen = getattr(model.hf_model, "generation_config", None)
    for value in (
        model.tokenizer.eos_token_id,
        model.tokenizer.pad_token_id,
        getattr(gen, "eos_token_id", None),
    ):
        found.update(
            v for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None
        )
    return {int(v) for v in found}


def judge(
    model: LoadedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    phrases: Sequence[str] = REFUSAL_PHRASES,
    batch_size: int | None = None,
    level: float = LEVEL,
    observe: Observer | None = None,
    rule: JudgeRule = "reply",
) -> Judgement:
    """Generate greedily and judge each completion.

    ``rule``: the judge, ``"reply"`` (reads the whole completion) or ``"substring"`` (a refusal
    phrase anywhere); ``observe``: hooks for each batch's prompt pass (see :func:`generate`).
    """
    completions, passes = generate(
        model,
        prompts,
        interventions,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        observe=observe,
    )
    verdicts = tuple(refused(c, rule, phrases) for c in completions)
    return Judgement(
        tuple(prompts),
        tuple(completions),
        verdicts,
        wilson_interval(sum(verdicts), len(verdicts), level),
        max_new_tokens,
        passes,
        rule,
        tuple(phrases),
    )


def refusal_rate(
    model: LoadedModel,
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    phrases: Sequence[str] = REFUSAL_PHRASES,
    batch_size: int | None = None,
    rule: JudgeRule = "reply",
) -> Interval:
    """The share of ``prompts`` whose greedy completion the judge ``rule`` calls a refusal.

    Returns:
        An :class:`~refusal_probe.stats.intervals.Interval` with ``n`` and ``k``: a 95% Wilson
        interval.
    """
    return judge(
        model,
        prompts,
        interventions,
        max_new_tokens=max_new_tokens,
        phrases=phrases,
        batch_size=batch_size,
        rule=rule,
    ).rate
