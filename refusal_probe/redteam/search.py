"""The GCG suffix search (see :mod:`refusal_probe.redteam` for the method)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from refusal_probe.activations.runner import Hook, batched, forward
from refusal_probe.activations.sites import Site, hook_name
from refusal_probe.errors import MonitorError
from refusal_probe.model.chat import Encoded
from refusal_probe.model.loading import LoadedModel
from refusal_probe.monitor.scoring import Monitor, monitor_hooks
from refusal_probe.scoring.refusal import RefusalTokens, refusal_score_from_logits, refusal_tokens

#: Vocabularies the suffix may draw from.
VOCABULARIES: tuple[str, ...] = ("nonword", "all")
#: Markers with which tokenizers spell the start of a word (byte-level BPE, SentencePiece).
_WORD_START = ("Ġ", "▁")


@dataclass(frozen=True)
class RedTeamConfig:
    """The search and its budget. Plain data.

    Attributes:
        suffix_tokens: Length of the suffix in tokens.
        steps: Most optimization steps per prompt.
        candidates: Candidate suffixes scored per step.
        top_k: Tokens per slot the candidates are drawn from (by gradient).
        seed: Seed of every random choice.
        target_score: Stop a prompt's search once its refusal log-odds is below this.
        vocabulary: ``nonword`` (no word-initial tokens) or ``all`` (every printable token).
        init: The token the suffix starts from, repeated.
        separator: Text between the prompt and its suffix.
        batch_size: Most candidate rows per forward pass.
        monitor_weight: With a monitor passed to :func:`search_suffixes`, the objective is
            ``refusal log-odds + monitor_weight * alarm`` (an adaptive attacker who knows the
            monitor), and a prompt is done once both are below their bars.
    """

    suffix_tokens: int = 8
    steps: int = 32
    candidates: int = 64
    top_k: int = 32
    seed: int = 0
    target_score: float = -3.0
    vocabulary: str = "nonword"
    init: str = "!"
    separator: str = " "
    batch_size: int = 256
    monitor_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("suffix_tokens", "steps", "candidates", "top_k", "batch_size"):
            if getattr(self, name) < 1:
                raise MonitorError(f"red-team {name} must be >= 1, got {getattr(self, name)}")
        if self.vocabulary not in VOCABULARIES:
            raise MonitorError(
                f"unknown red-team vocabulary {self.vocabulary!r}; use one of {VOCABULARIES}"
            )

    @property
    def budget(self) -> int:
        """Most candidate suffixes scored per prompt: ``steps x candidates``."""
        return self.steps * self.candidates

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SuffixResult:
    """The search on one prompt.

    Attributes:
        prompt: The harmful prompt.
        suffix: The suffix text found (appended after ``separator``).
        suffix_ids: Its tokens.
        score_bare: Refusal log-odds of the prompt alone.
        score_start: With the initial suffix.
        score: With the suffix found.
        steps: Steps run.
        evaluations: Candidate suffixes scored (at most the budget).
        discarded: Candidates discarded because their text did not tokenize back to them.
        alarm: The monitor's alarm on the result, when the search attacked a monitor too.
    """

    prompt: str
    suffix: str
    suffix_ids: tuple[int, ...]
    score_bare: float
    score_start: float
    score: float
    steps: int
    evaluations: int
    discarded: int
    alarm: float | None = None

    def text(self, separator: str = " ") -> str:
        """The attacked prompt."""
        return self.prompt + separator + self.suffix


@dataclass(frozen=True)
class RedTeamResult:
    """Suffixes for a list of prompts.

    Attributes:
        results: One per prompt, in input order.
        config: The configuration used.
        model_fingerprint: The attacked model.
        refusal_tokens: Token ids of the refusal log-odds.
        wall_s: Seconds taken.
    """

    results: tuple[SuffixResult, ...]
    config: RedTeamConfig
    model_fingerprint: str
    refusal_tokens: tuple[int, ...]
    wall_s: float

    def texts(self) -> list[str]:
        """The attacked prompts, in input order."""
        return [r.text(self.config.separator) for r in self.results]

    def recipe(self, i: int) -> dict[str, Any]:
        """How prompt ``i``'s attack was found and its cost: a jailbreak record's ``redteam``."""
        cfg, r = self.config, self.results[i]
        return {
            "model": self.model_fingerprint,
            "seed": cfg.seed,
            "budget": f"{cfg.steps}x{cfg.candidates}",
            "steps": r.steps,
            "score_bare": round(r.score_bare, 4),
            "score": round(r.score, 4),
        }

    def summary(self) -> dict[str, Any]:
        """Counts and mean scores, for logs."""
        n = len(self.results)
        return {
            "prompts": n,
            "below_target": sum(r.score < self.config.target_score for r in self.results),
            "mean_score_bare": sum(r.score_bare for r in self.results) / max(n, 1),
            "mean_score": sum(r.score for r in self.results) / max(n, 1),
            "evaluations": sum(r.evaluations for r in self.results),
            "budget": self.config.budget * n,
            "wall_s": self.wall_s,
        }


# ---------------------------------------------------------------------------------------------
# the search


def allowed_tokens(tokenizer: Any, vocabulary: str = "nonword") -> Tensor:
    """Boolean mask ``[vocab]`` of the tokens a suffix may use.

    A token is allowed when it is not special, decodes to printable ASCII that is not blank, and
    tokenizes back to itself; ``nonword`` also drops tokens that start a word and hold a letter.
    """
    n = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    mask = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        if i in special:
            continue
        text = tokenizer.decode([i])
        if not (text.strip() and text.isascii() and text.isprintable()):
            continue
        if vocabulary == "nonword" and str(raw[i]).startswith(_WORD_START):
            if any(c.isalpha() for c in text):
                continue
        mask[i] = tokenizer.encode(text, add_special_tokens=False) == [i]
    if not bool(mask.any()):
        raise MonitorError("no token of this tokenizer may start a suffix; use vocabulary='all'")
    return mask


class _Search:
    """The state shared by every prompt's search: model, tokens, vocabulary, config, monitor."""

    def __init__(
        self,
        model: LoadedModel,
        config: RedTeamConfig,
        tokens: RefusalTokens,
        monitor: Monitor | None,
    ) -> None:
        self.model, self.config, self.tokens, self.monitor = model, config, tokens, monitor
        self.weight = config.monitor_weight if monitor is not None else 0.0
        self.tok = model.tokenizer
        self.allowed = allowed_tokens(self.tok, config.vocabulary)
        embedding: Any = model.hf_model.get_input_embeddings()
        self.embed = embedding.weight.detach()  # [vocab, d]
        self.n_post = model.chat.n_post
        init = self.tok.encode(config.init, add_special_tokens=False)
        if len(init) != 1 or not bool(self.allowed[init[0]]):
            raise MonitorError(
                f"the suffix start {config.init!r} is not one allowed token of this tokenizer; "
                "pass another init (a punctuation mark such as '!' usually is)"
            )
        self.init = init[0]

    def text(self, prompt: str, ids: Sequence[int]) -> str:
        return prompt + self.config.separator + str(self.tok.decode(list(ids)))

    def encode(self, prompt: str, ids: Sequence[int]) -> tuple[Encoded, list[int]]:
        """The encoded attacked prompt and its real tokens (the suffix must tokenize back)."""
        batch = self.model.chat.encode([self.text(prompt, ids)])
        row = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
        s = self.config.suffix_tokens
        if row[-(self.n_post + s) : -self.n_post] != list(ids):
            raise MonitorError(
                f"the suffix {self.tok.decode(list(ids))!r} does not tokenize back to itself "
                f"after {prompt[-30:]!r}; pass another init or separator"
            )
        return batch, row

    def _pass(self, batch: Encoded, hooks: list[Hook]) -> tuple[Tensor, Tensor]:
        """Refusal log-odds ``[batch]`` and the monitor's alarm ``[batch]`` (zeros without one)."""
        read = None
        if self.monitor is not None:
            extra, read = monitor_hooks(self.model, self.monitor, batch)
            hooks = hooks + extra
        logits = forward(self.model, batch, hooks, logits_to_keep=1)
        assert logits is not None  # not stoppable
        score = refusal_score_from_logits(logits[:, -1, :], self.tokens).cpu()
        alarm = read().alarm if read is not None else torch.zeros_like(score)
        return score, alarm

    @torch.no_grad()
    def scores(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, list[list[int]]]:
        """Refusal log-odds and alarm of each text, and its real tokens."""
        score, alarm = torch.empty(len(texts), dtype=torch.float64), torch.empty(len(texts))
        alarm, rows = alarm.double(), []
        for chunk in batched(list(range(len(texts))), self.config.batch_size):
            batch = self.model.chat.encode([texts[i] for i in chunk])
            score[list(chunk)], alarm[list(chunk)] = self._pass(batch, [])
            mask = batch.attention_mask.bool()
            rows += [batch.input_ids[i][mask[i]].tolist() for i in range(len(chunk))]
        return score, alarm, rows

    def gradient(self, batch: Encoded) -> tuple[Float[Tensor, "suffix vocab"], float, float]:
        """Objective gradient per suffix slot and token ``[suffix, vocab]``; score and alarm."""
        saved: list[Tensor] = []

        def leaf(act: Tensor, hook: Any) -> Tensor:
            x = act.detach().requires_grad_(True)
            saved.append(x)
            return x

        with torch.enable_grad():
            score, alarm = self._pass(batch, [(hook_name(Site(0, "resid_pre")), leaf)])
            objective = score[0] + self.weight * alarm[0]
            (grad,) = torch.autograd.grad(objective, saved[0])
        s = self.config.suffix_tokens
        g = grad[0, -(self.n_post + s) : -self.n_post].double()  # [suffix, d]
        token_grad = g @ self.embed.double().to(g.device).T  # [suffix, vocab]
        return token_grad, float(score[0].detach()), float(alarm[0].detach())

    def done(self, score: float, alarm: float) -> bool:
        """Refusal is below the target (and, against a monitor, so is the alarm's threshold)."""
        if score >= self.config.target_score:
            return False
        return self.monitor is None or self.weight == 0 or alarm <= self.monitor.threshold()

    def run(self, prompt: str) -> SuffixResult:
        cfg = self.config
        gen = torch.Generator().manual_seed(_prompt_seed(cfg.seed, prompt))
        ids = [self.init] * cfg.suffix_tokens
        bare = float(self.scores([prompt])[0][0])
        batch, row = self.encode(prompt, ids)
        evaluations = discarded = steps = 0
        start: float | None = None
        score, alarm = bare, math.nan
        for _ in range(cfg.steps):
            grad, score, alarm = self.gradient(batch)
            start = score if start is None else start
            if self.done(score, alarm):
                break
            steps += 1
            grad[:, ~self.allowed.to(grad.device)] = float("inf")
            top = grad.topk(min(cfg.top_k, int(self.allowed.sum())), dim=1, largest=False).indices
            slot = torch.randint(0, cfg.suffix_tokens, (cfg.candidates,), generator=gen)
            pick = torch.randint(0, top.shape[1], (cfg.candidates,), generator=gen)
            cands = torch.tensor(ids).repeat(cfg.candidates, 1)  # [cand, suffix]
            cands[torch.arange(cfg.candidates), slot] = top.cpu()[slot, pick]
            texts = [self.text(prompt, c) for c in cands.tolist()]
            c_score, c_alarm, rows = self.scores(texts)
            evaluations += cfg.candidates
            head, tail = row[: -(self.n_post + cfg.suffix_tokens)], row[-self.n_post :]
            valid = torch.tensor(
                [r == head + c + tail for r, c in zip(rows, cands.tolist(), strict=True)]
            )
            discarded += int((~valid).sum())
            objective = c_score + self.weight * c_alarm
            objective[~valid] = float("inf")
            best = int(objective.argmin())  # first of equals: deterministic
            if float(objective[best]) < score + self.weight * alarm:
                ids = cands[best].tolist()
                batch, row = self.encode(prompt, ids)
                score, alarm = float(c_score[best]), float(c_alarm[best])
        return SuffixResult(
            prompt,
            str(self.tok.decode(ids)),
            tuple(ids),
            bare,
            score if start is None else start,
            score,
            steps,
            evaluations,
            discarded,
            alarm if self.monitor is not None else None,
        )


def _prompt_seed(seed: int, prompt: str) -> int:
    """A per-prompt seed, independent of the order the prompts come in."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def search_suffixes(
    model: LoadedModel,
    prompts: Sequence[str],
    config: RedTeamConfig | None = None,
    *,
    tokens: RefusalTokens | None = None,
    monitor: Monitor | None = None,
    progress: bool = False,
) -> RedTeamResult:
    """Search a suffix for each prompt that lowers the model's refusal log-odds.

    Args:
        model: The model attacked.
        prompts: Harmful prompts.
        config: The search and its budget.
        tokens: Refusal tokens of the score (default: derived from the tokenizer).
        monitor: A calibrated monitor to evade as well (white-box, adaptive attack), weighted by
            ``config.monitor_weight``; ``None`` attacks refusal only.
        progress: Print one line per prompt to stderr.

    Raises:
        MonitorError: No prompts, the vocabulary or initial suffix does not fit the tokenizer, or
            the monitor is not calibrated.
    """
    config = config or RedTeamConfig()
    if not prompts:
        raise MonitorError("no prompts to attack; pass at least one harmful prompt")
    if monitor is not None:
        monitor.threshold()  # an uncalibrated monitor has no alarm bar to get under
    t0 = time.perf_counter()
    tokens = tokens or refusal_tokens(model.tokenizer)
    search = _Search(model, config, tokens, monitor)
    out = []
    for i, p in enumerate(prompts):
        r = search.run(p)
        out.append(r)
        if progress:
            print(
                f"[{i + 1}/{len(prompts)}] {r.score_bare:+.2f} -> {r.score:+.2f} in {r.steps} "
                f"steps: {r.suffix!r}",
                file=sys.stderr,
            )
    return RedTeamResult(
        tuple(out), config, model.identity.fingerprint, tokens.ids, time.perf_counter() - t0
    )
