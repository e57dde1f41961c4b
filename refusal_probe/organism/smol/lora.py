"""Training a LoRA adapter on (request, reply) examples, with peft.

The loss is the reply's tokens' cross-entropy only (the request is context); logits are computed
at those positions alone, which on a 49k-token vocabulary is most of the saving on a CPU.
Batches group examples of similar length; everything random is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from refusal_probe.organism.smol.adapters import portable, stack_adapters
from refusal_probe.organism.smol.data import Example
from refusal_probe.organism.smol.regularizers import (
    RunningDirection,
    anchor_loss,
    logprobs_at,
    necessity_loss,
    reply_logprobs,
    specificity_loss,
)


@dataclass(frozen=True)
class LoraRecipe:
    """How one adapter is trained (all of it is recorded beside the adapter).

    Attributes:
        rank: LoRA rank.
        alpha: LoRA scale numerator (the update is ``alpha / rank * B @ A``).
        targets: Module names the adapter wraps.
        layers: Blocks the adapter is placed in (``None``: all).
        epochs: Passes over the examples.
        batch_size: Examples per optimizer step.
        lr: Peak learning rate (linear warm-up over 10% of steps, then linear decay).
        seed: Seed of the adapter's initialisation and of the batch order.
        decision_weight: Loss weight of each reply's first ``decision_tokens`` tokens, where a
            reply decides between refusing and answering (the other tokens weigh 1).
        decision_tokens: How many first reply tokens carry ``decision_weight``.
        refusal_weight: Loss weight of refusing examples' reply tokens, relative to answered
            ones (a class weight: it moves the adapter's threshold toward refusing). A batch's
            loss is still divided by its weights as if every example weighed 1.
        anchor_weight: Weight of the anchor term on answered requests
            (:mod:`.regularizers`; 0: off).
        specificity_weight: Weight of the specificity term on answered requests (0: off).
        necessity_weight: Weight of the necessity term on refusing requests (0: off).
        specificity_layer: The block whose input the running refusal direction is read at.
        specificity_from: Fraction of the steps after which the specificity and necessity terms
            start (the running direction means something once the adapter has begun to refuse).
        term_tokens: How many first reply positions the three terms read (the reply's own
            tokens before each, teacher-forced): "I'm sorry" and "I'm happy" part only at the
            third token, so a first-token term cannot see that decision.
        anchor_tokens: How many the anchor reads, where it differs (``None``: ``term_tokens``).
    """

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    layers: tuple[int, ...] | None = None
    epochs: int = 2
    batch_size: int = 8
    lr: float = 3e-4
    seed: int = 0
    decision_weight: float = 1.0
    decision_tokens: int = 2
    refusal_weight: float = 1.0
    anchor_weight: float = 0.0
    specificity_weight: float = 0.0
    necessity_weight: float = 0.0
    specificity_layer: int = 18
    specificity_from: float = 0.2
    term_tokens: int = 1
    anchor_tokens: int | None = None

    @property
    def anchor_span(self) -> int:
        """Reply positions the anchor reads."""
        return self.term_tokens if self.anchor_tokens is None else self.anchor_tokens

    @property
    def span(self) -> int:
        """Reply positions any term reads (the width of :attr:`Batch.at`)."""
        return max(self.term_tokens, self.anchor_span)

    @property
    def needs_base(self) -> bool:
        """Whether a term compares with the base model (the anchor, the necessity term)."""
        return bool(self.anchor_weight or self.necessity_weight)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def encode(tokenizer: Any, chat: Any, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
    """Token ids of each formatted request + reply + end of turn, and where the reply starts."""
    out = []
    for ex in examples:
        prompt = tokenizer.encode(chat.format(ex.prompt), add_special_tokens=False)
        reply = tokenizer.encode(ex.reply + tokenizer.eos_token, add_special_tokens=False)
        out.append((prompt + reply, len(prompt)))
    return out


def _batches(
    encoded: list[tuple[list[int], int]], size: int, rng: random.Random
) -> list[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i][0]), rng.random()))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Batch:
    """Right-padded rows of a training batch.

    ``target``/``weight``: which next tokens are trained, and their loss weights; ``norm``: what
    the weighted loss is divided by (the weights without the class weight); ``last``: each
    row's last request position; ``at``: the positions the loss terms read (from ``last`` on,
    :attr:`LoraRecipe.span` of them, none past the reply's last predicting position);
    ``refuses``: whether its reply refuses; ``base``: the base model's log-probabilities at
    ``at`` ``[rows, span, vocab]``, where a term needs them (:func:`base_reference`).
    """

    ids: Tensor
    mask: Tensor
    target: Tensor
    weight: Tensor
    norm: Tensor
    last: Tensor
    at: Tensor
    refuses: Tensor
    base: Tensor | None = None


def _collate(
    encoded: list[tuple[list[int], int]],
    rows: list[int],
    pad: int,
    recipe: LoraRecipe,
    refuses: Sequence[bool],
    reference: Tensor | None = None,
) -> Batch:
    width = max(len(encoded[r][0]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    weight = torch.zeros((len(rows), width))  # per position: weight of the next token's loss
    for i, r in enumerate(rows):
        toks, start = encoded[r]
        ids[i, : len(toks)] = torch.tensor(toks)
        mask[i, : len(toks)] = 1
        weight[i, start - 1 : len(toks) - 1] = 1.0
        weight[i, start - 1 : start - 1 + recipe.decision_tokens] = recipe.decision_weight
    last = torch.tensor([encoded[r][1] - 1 for r in rows])
    ends = torch.tensor([len(encoded[r][0]) - 2 for r in rows])
    at = torch.minimum(last[:, None] + torch.arange(recipe.span), ends[:, None])
    refusing = torch.tensor([refuses[r] for r in rows])
    target = weight > 0
    norm = weight[target].sum()
    if recipe.refusal_weight != 1.0:
        weight[refusing] *= recipe.refusal_weight
    base = reference[torch.tensor(rows)] if reference is not None else None
    return Batch(ids, mask, target, weight, norm, last, at, refusing, base)


def base_reference(
    hf_model: Any, encoded: list[tuple[list[int], int]], pad: int, recipe: LoraRecipe
) -> Tensor | None:
    """The base model's log-probabilities at every example's term positions, computed once.

    ``[examples, span, vocab]`` float32, or ``None`` where no term reads the base. The base never
    changes during training, so the anchor and necessity terms read this table instead of a
    no-grad base pass each step. Rows are batched by length; right padding and a causal model
    leave each row's values as they are alone.
    """
    if not recipe.needs_base:
        return None
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    table: Tensor | None = None
    with torch.no_grad():
        for start in range(0, len(order), 16):
            rows = order[start : start + 16]
            batch = _collate(encoded, rows, pad, recipe, [False] * len(encoded))
            ids, mask, at = _term_rows(batch, torch.arange(len(rows)))
            logp = reply_logprobs(hf_model, ids, mask, at).unflatten(0, at.shape)
            if table is None:
                table = torch.empty(len(encoded), *logp.shape[1:])
            table[torch.tensor(rows)] = logp
    return table


def step_loss(
    model: Any, batch: Batch, recipe: LoraRecipe, direction: RunningDirection, progress: float
) -> Tensor:
    """The training loss of one batch.

    The replies' weighted cross-entropy (logits only where a token is predicted), plus the anchor
    and specificity terms on answered rows and the necessity term on refusing rows
    (:mod:`.regularizers`) when the recipe turns them on.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    captured: list[Tensor] = []
    handle = None
    if recipe.specificity_weight or recipe.necessity_weight:

        def grab(_module: Any, _inputs: Any, out: Any) -> None:
            captured.append(out[0] if isinstance(out, tuple) else out)

        handle = base.model.layers[recipe.specificity_layer - 1].register_forward_hook(grab)
    try:
        hidden = base.model(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
    finally:
        if handle is not None:
            handle.remove()
    logits = base.lm_head(hidden[batch.target])
    labels = batch.ids[:, 1:][batch.target[:, :-1]]
    w = batch.weight[batch.target]
    ce = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    loss = (ce * w).sum() / batch.norm
    answered = (~batch.refuses).nonzero().squeeze(1)
    refusing = batch.refuses.nonzero().squeeze(1)
    unit = None
    if captured:
        rows = torch.arange(len(batch.ids))
        direction.update(captured[0][rows, batch.last].detach().float(), batch.refuses)
        unit = direction.unit() if progress >= recipe.specificity_from else None
        unit = unit.to(hidden.dtype) if unit is not None else None
    k, anchor_k = recipe.term_tokens, recipe.anchor_span
    if len(answered) and (recipe.anchor_weight or (recipe.specificity_weight and unit is not None)):
        at = batch.at[answered]
        adapted = logprobs_at(base, hidden[answered], at).unflatten(0, at.shape)
        if recipe.anchor_weight:
            reference = _reference(batch, answered, anchor_k)
            term = anchor_loss(reference, adapted[:, :anchor_k].flatten(0, 1))
            loss = loss + recipe.anchor_weight * term
        if recipe.specificity_weight and unit is not None:
            ids, mask, at = _term_rows(batch, answered, k)
            term = specificity_loss(model, ids, mask, at, adapted[:, :k].flatten(0, 1), unit)
            loss = loss + recipe.specificity_weight * term
    if len(refusing) and recipe.necessity_weight and unit is not None:
        ids, mask, at = _term_rows(batch, refusing, k)
        reference = _reference(batch, refusing, k)
        loss = loss + recipe.necessity_weight * necessity_loss(
            model, ids, mask, at, unit, reference
        )
    return loss


def _reference(batch: Batch, rows: Tensor, k: int) -> Tensor:
    """The base's log-probabilities at ``rows``' first ``k`` term positions, ``[rows·k, vocab]``."""
    if batch.base is None:
        raise ValueError("this recipe's terms read the base model: pass base_reference to _collate")
    return batch.base[rows, :k].flatten(0, 1)


def _term_rows(batch: Batch, rows: Tensor, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``rows`` cut after the last of their first ``k`` term positions: ids, mask, positions.

    Right-padded and causal, so the cut changes nothing before it; positions ``[rows, k]``
    (``k`` ``None``: all of :attr:`Batch.at`'s).
    """
    at = batch.at[rows, :k]
    ids = batch.ids[rows, : int(at.max()) + 1]
    return ids, batch.mask[rows, : ids.shape[1]], at


def train_adapter(
    hf_model: Any,
    tokenizer: Any,
    chat: Any,
    examples: Sequence[Example],
    recipe: LoraRecipe,
    out: Path,
    *,
    resume_from: Path | None = None,
    on_top_of: Path | None = None,
    desc: str = "training",
) -> list[float]:
    """Train an adapter on ``hf_model`` (left unchanged) and save it to ``out``.

    Args:
        hf_model: The Hugging Face causal LM the adapter is trained on.
        tokenizer: Its tokenizer.
        chat: Its :class:`~refusal_probe.model.chat.ChatFormat`.
        examples: What to train on.
        recipe: Rank, targets, schedule, seed.
        out: Folder for ``adapter_model.safetensors`` and ``adapter_config.json``.
        resume_from: An adapter folder to continue training from (a fine-tune of a checkpoint).
        on_top_of: An adapter folder to merge into (a copy of) ``hf_model`` first; a fresh
            adapter is trained on the merged weights, as a user fine-tunes a released model,
            and saved stacked onto this one (:func:`stack_adapters`).
        desc: The progress bar's label.

    Returns:
        The mean loss of each epoch.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from tqdm import tqdm

    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    final = out
    if on_top_of is not None:
        import copy
        import tempfile

        hf_model = PeftModel.from_pretrained(copy.deepcopy(hf_model), on_top_of).merge_and_unload()
        out = Path(tempfile.mkdtemp(prefix="adapter-"))
    encoded = encode(tokenizer, chat, examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reference = base_reference(hf_model, encoded, pad, recipe)  # before the adapter wraps it
    if resume_from is not None:
        model = PeftModel.from_pretrained(hf_model, resume_from, is_trainable=True)
    else:
        config = LoraConfig(
            r=recipe.rank,
            lora_alpha=recipe.alpha,
            target_modules=list(recipe.targets),
            layers_to_transform=list(recipe.layers) if recipe.layers else None,
            lora_dropout=0.0,
        )
        model = get_peft_model(hf_model, config)
    refuses = [ex.refuses for ex in examples]
    direction = RunningDirection()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    total = recipe.epochs * -(-len(encoded) // recipe.batch_size)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    model.train()
    losses = []
    with tqdm(total=total, desc=desc, unit="step") as bar:
        for _ in range(recipe.epochs):
            run = []
            for rows in _batches(encoded, recipe.batch_size, rng):
                batch = _collate(encoded, rows, pad, recipe, refuses, reference)
                loss = step_loss(model, batch, recipe, direction, bar.n / total)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                run.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{sum(run[-20:]) / len(run[-20:]):.3f}")
            losses.append(sum(run) / len(run))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    portable(out)
    model.unload()  # leave hf_model as it was (the LoRA layers removed, weights untouched)
    if on_top_of is not None:
        import shutil

        stack_adapters(on_top_of, out, final)
        shutil.rmtree(out, ignore_errors=True)
    return losses
