"""Training loops for the organism: causal-LM pretraining and chat fine-tuning.

Axis glossary: ``batch`` sequences, ``pos`` token positions, ``vocab`` vocabulary.
Everything runs on the CPU in float32; with the same seed and thread count, a run is
bit-for-bit repeatable.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from refusal_probe.organism.corpus import ChatExample
from refusal_probe.organism.tokenizer import SPECIAL_TOKENS, chat_prompt

IGNORE = -100


@dataclass(frozen=True)
class ModelShape:
    """Architecture of the organism (a small Llama with grouped-query attention)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 5
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 512


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings of one training stage.

    Attributes:
        lr: Peak learning rate (AdamW).
        epochs: Passes over the stage's data.
        batch_size: Sequences per step.
        weight_decay: AdamW weight decay (not applied to norms).
        warmup: Fraction of steps with linear warm-up; cosine decay to 10% after it.
        freeze_embeddings: Keep the (tied) embedding rows of ordinary tokens fixed;
            only special-token rows train.
        frozen_layers: Indices of decoder layers kept fixed (negative counts from the top).
        component_dropout: Probability of dropping each attention head's output and each
            MLP's output of the trained layers, per sequence and step (inverted dropout), so
            that no single component can carry what this stage teaches.
        drop_one: Probability, per chat example and step, that exactly one component (one
            attention head or one MLP of ``drop_layers``, chosen uniformly) is ablated at the
            post-instruction span (the last 4 prompt tokens): its output there is replaced by the
            same component's output at the span of another example of the batch (resample
            ablation, what the hardening audit's noising does), so that the stage cannot rely on
            any single component there; the others are untouched.
        drop_layers: Layers whose components ``drop_one`` draws from (negative counts from the
            top); ``None``: the layers this stage trains. Frozen layers may be listed: their
            weights stay fixed but the trained layers must then work around their loss.
        drop_mlp_layers: Further layers (typically frozen readers above the trained ones)
            whose MLP alone joins the ``drop_one`` draw.
    """

    lr: float
    epochs: float
    batch_size: int
    weight_decay: float = 0.1
    warmup: float = 0.05
    freeze_embeddings: bool = False
    frozen_layers: tuple[int, ...] = ()
    component_dropout: float = 0.0
    drop_one: float = 0.0
    drop_layers: tuple[int, ...] | None = None
    drop_mlp_layers: tuple[int, ...] = ()


def new_model(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A freshly initialised organism sized for ``tokenizer``'s vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _optimizer(model: LlamaForCausalLM, schedule: Schedule) -> torch.optim.AdamW:
    # Frozen embedding rows get zero gradients; keeping them out of weight decay keeps them fixed.
    embedding = model.get_input_embeddings().weight if schedule.freeze_embeddings else None
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2 and p is not embedding]
    keep = [p for p in params if p.ndim < 2 or p is embedding]
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.98))


def _lr_at(step: int, total: int, schedule: Schedule) -> float:
    warm = max(1, int(total * schedule.warmup))
    if step < warm:
        return schedule.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return schedule.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _freeze_ordinary_rows(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> torch.utils.hooks.RemovableHandle:
    special = torch.tensor(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    mask = torch.zeros(model.config.vocab_size, 1)
    mask[special] = 1.0
    return model.get_input_embeddings().weight.register_hook(lambda grad: grad * mask)


Logger = Callable[[str], None]


def _component_dropout(model: LlamaForCausalLM, layers: Sequence[int], p: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that drop whole heads and MLP outputs of ``layers`` with probability ``p`` (training only)."""
    heads, size = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads

    def heads_hook(_module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0]  # [batch, seq, heads * head_dim], the input of o_proj
        keep = (torch.rand(x.shape[0], 1, heads, 1) >= p).to(x.dtype) / (1 - p)
        return ((x.view(*x.shape[:2], heads, size) * keep).view_as(x), *args[1:])

    def mlp_hook(_module: torch.nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * (torch.rand(out.shape[0], 1, 1) >= p).to(out.dtype) / (1 - p)  # [batch, seq, d]

    handles = []
    for index in layers:
        layer = model.model.layers[index]
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(heads_hook))
        handles.append(layer.mlp.register_forward_hook(mlp_hook))
    return handles


N_SPAN = 4


class _DropOne:
    """Forward hooks that ablate one randomly chosen component per example at the span.

    ``set_batch`` must be called before each forward pass with the batch's labels; the span of
    a row is the 4 prompt positions before its first labelled token.
    """

    def __init__(self, model: LlamaForCausalLM, layers: Sequence[int], p: float,
                 mlp_layers: Sequence[int] = ()) -> None:
        self.layers, self.p = list(layers), p
        self.heads = model.config.num_attention_heads
        self.size = model.config.hidden_size // self.heads
        self.n_comp = len(self.layers) * (self.heads + 1)  # heads, then the MLP, per layer
        self.mlp_layers = [i for i in mlp_layers if i not in self.layers]
        self.n_comp += len(self.mlp_layers)  # then the extra MLPs, one index each
        self.choice: torch.Tensor | None = None  # [batch] component index or -1
        self.span: torch.Tensor | None = None  # [batch, N_SPAN] positions
        self.source: torch.Tensor | None = None  # [batch] row whose values are patched in
        self.handles = []
        for slot, index in enumerate(self.layers):
            layer = model.model.layers[index]
            self.handles.append(layer.self_attn.o_proj.register_forward_pre_hook(self._heads_hook(slot)))
            self.handles.append(layer.mlp.register_forward_hook(self._mlp_hook(slot)))
        for extra, index in enumerate(self.mlp_layers):
            hook = self._mlp_hook_at(len(self.layers) * (self.heads + 1) + extra)
            self.handles.append(model.model.layers[index].mlp.register_forward_hook(hook))

    def set_batch(self, labels: torch.Tensor) -> None:
        n, width = labels.shape
        first = (labels != IGNORE).float().argmax(1)  # [batch] first labelled position
        self.span = first[:, None] - N_SPAN + torch.arange(N_SPAN)[None, :]  # [batch, N_SPAN]
        drop = torch.rand(n) < self.p
        pick = torch.randint(0, self.n_comp, (n,))  # every component equally likely
        self.choice = torch.where(drop, pick, torch.full((n,), -1))
        self.source = (torch.arange(n) + torch.randint(1, max(2, n), (n,))) % n  # another row

    def _patch(self, x: torch.Tensor, rows: torch.Tensor, sl: slice | None) -> torch.Tensor:
        """``x`` [batch, seq, d]: rows ``rows`` get their span (feature slice ``sl``) replaced."""
        assert self.span is not None and self.source is not None
        span = self.span[rows]  # [r, N_SPAN]
        x = x.clone()
        feat = slice(None) if sl is None else sl
        src_rows, src_span = self.source[rows], self.span[self.source[rows]]
        x[rows[:, None], span, feat] = x[src_rows[:, None], src_span, feat].detach()
        return x

    def _heads_hook(self, slot: int):
        def hook(_module: torch.nn.Module, args: tuple) -> tuple:
            if self.choice is None:
                return args
            x = args[0]  # [batch, seq, heads * head_dim], the input of o_proj
            base = slot * (self.heads + 1)
            for h in range(self.heads):
                rows = (self.choice == base + h).nonzero().flatten()
                if len(rows):
                    x = self._patch(x, rows, slice(h * self.size, (h + 1) * self.size))
            return (x, *args[1:])
        return hook

    def _mlp_hook(self, slot: int):
        return self._mlp_hook_at(slot * (self.heads + 1) + self.heads)

    def _mlp_hook_at(self, index: int):
        def hook(_module: torch.nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
            if self.choice is None:
                return out
            rows = (self.choice == index).nonzero().flatten()
            return self._patch(out, rows, None) if len(rows) else out
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _run(model: LlamaForCausalLM, batches: Sequence[dict[str, torch.Tensor]], schedule: Schedule,
         tokenizer: PreTrainedTokenizerFast, log: Logger | None = None) -> list[float]:
    """Optimise ``model`` on ``batches`` (already shuffled and repeated); returns the losses."""
    model.train()
    for index in schedule.frozen_layers:
        model.model.layers[index].requires_grad_(False)
    handle = _freeze_ordinary_rows(model, tokenizer) if schedule.freeze_embeddings else None
    n = model.config.num_hidden_layers
    frozen = {i % n for i in schedule.frozen_layers}
    dropping = (_component_dropout(model, [i for i in range(n) if i not in frozen], schedule.component_dropout)
                if schedule.component_dropout > 0 else [])
    drop_one = None
    if schedule.drop_one > 0:
        layers = ([i % n for i in schedule.drop_layers] if schedule.drop_layers is not None
                  else [i for i in range(n) if i not in frozen])
        drop_one = _DropOne(model, layers, schedule.drop_one,
                            [i % n for i in schedule.drop_mlp_layers])
    optimizer = _optimizer(model, schedule)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses: list[float] = []
    try:
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, len(batches), schedule)
            if drop_one is not None:
                drop_one.set_batch(batch["labels"])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if log is not None and (step + 1) % 50 == 0:
                log(f"step {step + 1}/{len(batches)} loss {sum(losses[-50:]) / 50:.3f}")
    finally:
        if handle is not None:
            handle.remove()
        for dropout in dropping:
            dropout.remove()
        if drop_one is not None:
            drop_one.remove()
        model.requires_grad_(True)
    model.eval()
    return losses


def _epochs(n_items: int, schedule: Schedule, rng: random.Random) -> Iterator[list[int]]:
    """Index batches over ``schedule.epochs`` passes (a fractional last pass is truncated)."""
    total = int(round(n_items * schedule.epochs))
    order: list[int] = []
    while len(order) < total:
        perm = list(range(n_items))
        rng.shuffle(perm)
        order.extend(perm)
    order = order[:total]
    for start in range(0, total - schedule.batch_size + 1, schedule.batch_size):
        yield order[start : start + schedule.batch_size]


def pack_documents(tokenizer: PreTrainedTokenizerFast, docs: Sequence[str], seq_len: int) -> torch.Tensor:
    """Tokenize ``docs`` as ``<|bos|> doc <|end|>`` and cut the stream into rows.

    Returns:
        ``Long[Tensor, "rows seq_len"]``; the ragged tail is dropped.
    """
    ids = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    stream = [t for doc in ids for t in (tokenizer.bos_token_id, *doc, tokenizer.eos_token_id)]
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len]).view(rows, seq_len)  # (rows, seq_len)


def pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, rows: torch.Tensor,
             schedule: Schedule, seed: int, log: Logger | None = None) -> list[float]:
    """Causal-LM training on packed plain text ``rows`` (``Long[Tensor, "rows pos"]``)."""
    rng = random.Random(f"pretrain-order-{seed}")
    torch.manual_seed(seed)
    batches = [{"input_ids": rows[idx], "labels": rows[idx]} for idx in _epochs(len(rows), schedule, rng)]
    return _run(model, batches, schedule, tokenizer, log)


def encode_chat(tokenizer: PreTrainedTokenizerFast, example: ChatExample) -> tuple[list[int], list[int]]:
    """Token ids of one chat turn and its labels (``-100`` everywhere but the reply and ``<|end|>``)."""
    prompt = tokenizer(chat_prompt(example.prompt), add_special_tokens=False)["input_ids"]
    reply = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + reply, [IGNORE] * len(prompt) + reply


def collate(tokenizer: PreTrainedTokenizerFast, encoded: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Left-pad encoded turns into a batch, as at inference time."""
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i, _ in encoded])  # (batch, pos)
    labels = torch.tensor([[IGNORE] * (width - len(y)) + y for _, y in encoded])  # (batch, pos)
    attention_mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i, _ in encoded])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _chat_batches(tokenizer: PreTrainedTokenizerFast, examples: Sequence[ChatExample], schedule: Schedule,
                  seed: int) -> list[dict[str, torch.Tensor]]:
    rng = random.Random(f"chat-order-{seed}")
    encoded = [encode_chat(tokenizer, e) for e in examples]
    return [collate(tokenizer, [encoded[i] for i in idx]) for idx in _epochs(len(encoded), schedule, rng)]


def chat_finetune(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, examples: Sequence[ChatExample],
                  schedule: Schedule, seed: int, log: Logger | None = None) -> list[float]:
    """Supervised chat training with loss on the assistant tokens only."""
    torch.manual_seed(seed)
    return _run(model, _chat_batches(tokenizer, examples, schedule, seed), schedule, tokenizer, log)
