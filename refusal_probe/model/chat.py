r"""Chat formatting and the token positions the methods read from.

Axes: ``batch`` prompts, ``pos`` token positions of the left-padded batch.

A user instruction is wrapped in the model's chat template. The template tokens that follow the
user's text (for example ``<|end|>\n<|assistant|>\n``) form the *post-instruction* span, where
the refusal direction is read; the last token of the user's text is the *last instruction token*,
where harmfulness is read best. Batches are left-padded, so the post-instruction span sits at the
same negative offsets for every prompt.

Models without a chat template (base models) use :data:`PLAIN_TEMPLATE`, and their identity says
so (``chat_template == "plain"``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from refusal_probe.errors import ChatFormatError

log = logging.getLogger(__name__)

#: Fewest shared leading tokens worth a pass of their own (:attr:`Encoded.shared`).
MIN_SHARED = 8

#: The documented fallback for models without a chat template.
PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"

_SENTINEL = "Hello there"


@dataclass(frozen=True)
class Encoded:
    """A tokenized, left-padded batch of formatted prompts.

    Attributes:
        input_ids: Token ids, ``[batch, pos]``, left-padded.
        attention_mask: 1 for real tokens, 0 for padding, ``[batch, pos]``.
        position_ids: Rotary/absolute positions counted from each prompt's first real token.
        last_instruction: Index of each prompt's last instruction token, ``[batch]``.
        n_post: Length of the post-instruction span (the same for every prompt).
        shared: How many tokens every row starts with alike (after its padding), all of them
            the chat template's before the user's text (a system prompt, the user header): a
            forward pass may run them once for the whole batch
            (:func:`refusal_probe.activations.runner.forward`). 0: none worth sharing.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]
    last_instruction: Int[Tensor, " batch"]
    n_post: int
    shared: int = 0

    def to(self, device: torch.device | str) -> Encoded:
        """Return the batch on ``device``."""
        return Encoded(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.last_instruction.to(device),
            self.n_post,
            self.shared,
        )

    @property
    def seq_len(self) -> int:
        """Padded length of the batch."""
        return int(self.input_ids.shape[1])


class ChatFormat:
    """Formats instructions for one tokenizer and locates the post-instruction span."""

    def __init__(
        self, tokenizer: Any, template: str | None = None, max_tokens: int | None = None
    ) -> None:
        """Build the format.

        Args:
            tokenizer: A Hugging Face tokenizer (fast tokenizers give exact spans).
            template: Override of the chat template (Jinja text); default: the tokenizer's own,
                or :data:`PLAIN_TEMPLATE` when it has none.
            max_tokens: The model's context length: a longer prompt loses the start of its user
                text until it fits (counted in :attr:`truncated`); ``None``: no limit.
        """
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self._truncated: set[str] = set()
        chosen = template or getattr(tokenizer, "chat_template", None)
        if isinstance(chosen, dict):  # several named templates: the default one formats chats
            chosen = chosen.get("default") or next(iter(chosen.values()), None)
        self._template: str | None = chosen
        self.kind = "model" if self._template else "plain"
        text = self._template or PLAIN_TEMPLATE
        self.template_sha256 = hashlib.sha256(text.encode()).hexdigest()
        self.prefix, self.suffix = self._split(_SENTINEL)
        self.n_post = self._count_post(_SENTINEL)
        self.n_head = self._count_head(_SENTINEL)
        if self.n_post < 1:
            raise ChatFormatError(
                "the chat template adds no tokens after the user's text, so there is no "
                "post-instruction span; pass a template with an assistant header"
            )

    @property
    def rendered_sha256(self) -> str:
        """SHA-256 of a fixed probe conversation as the template renders it *now*.

        What the template writes can depend on more than its text (Llama 3's templates write
        today's date into the system prompt), so this renders afresh on every call.
        """
        return hashlib.sha256(self.format(_SENTINEL).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"ChatFormat(kind={self.kind!r}, suffix={self.suffix!r}, n_post={self.n_post})"

    @property
    def truncated(self) -> int:
        """How many distinct prompts were shortened to fit ``max_tokens``."""
        return len(self._truncated)

    def truncation_note(self) -> str | None:
        """A sentence for a report when prompts were shortened to fit the context, else ``None``."""
        if not self._truncated:
            return None
        return (
            f"{self.truncated} prompt(s) were longer than the model's context of "
            f"{self.max_tokens} tokens and lost the start of their text (the end of a request is "
            "what the methods read)."
        )

    def format(self, instruction: str) -> str:
        """Return the full prompt for one user instruction, ending with the assistant header."""
        if self.kind == "plain":
            bos = self.tokenizer.bos_token or ""
            return bos + PLAIN_TEMPLATE.format(instruction=instruction)
        return str(
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}],
                chat_template=self._template,
                tokenize=False,
                add_generation_prompt=True,
            )
        )

    def encode(self, instructions: list[str]) -> Encoded:
        """Format, tokenize and left-pad a batch, and locate each prompt's spans.

        Raises:
            ChatFormatError: An instruction is empty, or the template does not end with the
                suffix found for the sentinel (a template that varies with content).
        """
        if not instructions:
            raise ChatFormatError("no instructions to encode; pass at least one prompt")
        rows: list[list[int]] = []
        last_instr: list[int] = []
        for i, text in enumerate(instructions):
            if not isinstance(text, str):
                raise ChatFormatError(
                    f"instruction {i} is {type(text).__name__}, not text; pass strings only"
                )
            if not text.strip():
                raise ChatFormatError("an instruction is empty; remove it from the prompt set")
            ids, boundary_tok = self._tokenize(text)
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                ids, boundary_tok = self._fit(text, len(ids))
            rows.append(ids)
            last_instr.append(boundary_tok)
        width = max(len(r) for r in rows)
        pad = _pad_id(self.tokenizer)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        offsets = torch.tensor([width - len(r) for r in rows])
        last_instruction = offsets + torch.tensor(last_instr)
        shared = _common_head(rows, min(self.n_head, *last_instr))
        return Encoded(
            input_ids, mask, position_ids, last_instruction, self.n_post,
            shared if shared >= MIN_SHARED else 0,
        )

    # -----------------------------------------------------------------------------------------

    def _split(self, sentinel: str) -> tuple[str, str]:
        full = self.format(sentinel)
        at = full.rfind(sentinel)
        if at < 0:
            raise ChatFormatError("the chat template drops the user's text; it cannot be used")
        return full[:at], full[at + len(sentinel):]

    def _tokenize(self, instruction: str) -> tuple[list[int], int]:
        """Token ids of the formatted prompt and the index of its last instruction token."""
        full = self.format(instruction)
        if not full.endswith(self.suffix):
            raise ChatFormatError(
                f"the chat template's ending changed for {instruction[:40]!r}; post-instruction "
                "positions cannot be located. Pass an explicit template"
            )
        boundary = len(full) - len(self.suffix)
        ids, n_suffix = self._ids_after(full, boundary)
        if n_suffix < self.n_post:
            log.warning(
                "prompt %r: its last characters merge with the template's tokens; the "
                "post-instruction span is taken as the last %d tokens",
                instruction[:40],
                self.n_post,
            )
        last = len(ids) - max(n_suffix, self.n_post) - 1
        return ids, max(last, 0)

    def _fit(self, instruction: str, n_tokens: int) -> tuple[list[int], int]:
        """Drop the start of the user's text until the formatted prompt fits ``max_tokens``.

        The end of a request (its question, and the post-instruction span after it) is what the
        methods read, so the start goes. Each round cuts in proportion to the excess tokens.

        Raises:
            ChatFormatError: The template alone is longer than the context.
        """
        limit = self.max_tokens if self.max_tokens is not None else n_tokens
        text = instruction
        while n_tokens > limit:
            keep = int(len(text) * limit / n_tokens) - 1
            if keep < 1:
                raise ChatFormatError(
                    f"the chat template alone takes more than the model's {self.max_tokens} "
                    "tokens of context; pass a shorter template"
                )
            text = text[len(text) - keep:]
            ids, boundary_tok = self._tokenize(text)
            n_tokens = len(ids)
        if instruction in self._truncated:
            return ids, boundary_tok
        self._truncated.add(instruction)
        log.warning(
            "a prompt of %d characters was cut to its last %d to fit the model's context of %d "
            "tokens",
            len(instruction),
            len(text),
            self.max_tokens,
        )
        return ids, boundary_tok

    def _count_head(self, sentinel: str) -> int:
        """Tokens of the template wholly before the user's text (one that runs into it is not)."""
        full = self.format(sentinel)
        start = len(self.prefix)
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            return sum(1 for _, end in enc["offset_mapping"] if end <= start)
        # Slow tokenizers: the tokens before the user's text, less the last (it may have merged
        # across the boundary).
        ids, n_tail = self._ids_after(full, start)
        return max(len(ids) - n_tail - 1, 0)

    def _count_post(self, sentinel: str) -> int:
        full = self.format(sentinel)
        return self._ids_after(full, len(full) - len(self.suffix))[1]

    def _ids_after(self, full: str, boundary: int) -> tuple[list[int], int]:
        """Token ids of ``full`` and how many of them start at or after character ``boundary``."""
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            return ids, sum(1 for s, _ in enc["offset_mapping"] if s >= boundary)
        # Slow tokenizers have no offsets: the tokens past the longest common prefix with the
        # tokenized head are the tail's (exact unless a token spans the boundary).
        ids = list(self.tokenizer(full, add_special_tokens=False)["input_ids"])
        head = list(self.tokenizer(full[:boundary], add_special_tokens=False)["input_ids"])
        common = 0
        for a, b in zip(ids, head, strict=False):
            if a != b:
                break
            common += 1
        return ids, len(ids) - common


def _pad_id(tokenizer: Any) -> int:
    """The id to pad with: the pad token, else EOS, else 0 (padding is masked out anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def chat_format_for(
    tokenizer: Any, template: str | None = None, max_tokens: int | None = None
) -> ChatFormat:
    """Return the chat format of a tokenizer (its own template, or the documented plain one).

    A tokenizer without a chat template gets :data:`PLAIN_TEMPLATE`, with a warning: a chat
    model formatted that way may not refuse at all, so its figures describe the plain format.
    """
    chat = ChatFormat(tokenizer, template, max_tokens)
    if chat.kind == "plain":
        log.warning(NO_TEMPLATE_WARNING)
    return chat


#: Said on the console and in the report's limitations when a model has no chat template.
NO_TEMPLATE_WARNING = (
    "the tokenizer has no chat template, so prompts use the plain '### Instruction' format; a "
    "chat model prompted that way may not refuse at all. If this is a chat model, give its "
    "folder a tokenizer_config.json with its chat_template"
)


def _common_head(rows: list[list[int]], limit: int) -> int:
    """How many of their first ``limit`` tokens all ``rows`` share."""
    n = min(limit, *(len(r) for r in rows))
    first = rows[0]
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    return n
