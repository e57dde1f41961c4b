"""Length limits on prompts: long prompts are cut at the start of the user text.

The audits read the model at the end of the instruction and just after it, so a prompt too long
for the model's context loses its beginning (a context paragraph first), never its request's
end. The cut is made at a word boundary where one is near.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from refusal_probe.prompts.formats import PromptSetError

_WORD_SLACK = 40


@dataclass(frozen=True)
class TextLimit:
    """The longest prompt kept whole.

    Attributes:
        max_chars: Characters, or None for no limit.
        max_tokens: Tokens under ``count_tokens``, or None for no limit.
        count_tokens: ``text -> number of tokens`` (for example ``len(tokenizer(text).input_ids)``
            minus the chat template's share); needed with ``max_tokens``.
    """

    max_chars: int | None = None
    max_tokens: int | None = None
    count_tokens: Callable[[str], int] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.count_tokens is None:
            raise PromptSetError("max_tokens needs count_tokens (text -> number of tokens)")
        for name in ("max_chars", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PromptSetError(f"{name} must be at least 1, got {value}")

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return self.max_chars is not None or self.max_tokens is not None

    def describe(self) -> str:
        """The limit in words, for the record."""
        parts = []
        if self.max_chars is not None:
            parts.append(f"{self.max_chars} characters")
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens} tokens")
        return " and ".join(parts) or "none"

    def apply(self, text: str) -> str:
        """``text``, or its end that fits the limit (the start dropped)."""
        start = 0
        if self.max_chars is not None and len(text) > self.max_chars:
            start = len(text) - self.max_chars
        if self.max_tokens is not None and self.count_tokens is not None:
            start = max(start, self._token_start(text, start))
        if start == 0:
            return text
        return _at_word(text, start)

    def _token_start(self, text: str, lo: int) -> int:
        """The smallest start at or after ``lo`` whose suffix fits ``max_tokens``."""
        count, limit = self.count_tokens, self.max_tokens
        assert count is not None and limit is not None  # set together (checked on creation)
        if count(text[lo:]) <= limit:
            return lo
        hi = len(text)  # the empty suffix fits
        while hi - lo > 1:  # count(text[lo:]) > limit >= count(text[hi:])
            mid = (lo + hi) // 2
            if count(text[mid:]) <= limit:
                hi = mid
            else:
                lo = mid
        return hi


#: No limit.
NO_LIMIT = TextLimit()


def _at_word(text: str, start: int) -> str:
    """The suffix from ``start``, moved forward to the next word if a word was cut."""
    if start >= len(text):
        return ""
    if not text[start - 1].isspace() and not text[start].isspace():
        gap = next((i for i in range(start, min(len(text), start + _WORD_SLACK))
                    if text[i].isspace()), None)
        if gap is not None and text[gap:].strip():
            start = gap
    return text[start:].lstrip()
