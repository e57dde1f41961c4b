"""A tiny model whose harmfulness and refusal live on two known directions, for the monitor tests.

The model is a random tiny Llama with hand-set weights, built on the idea of ``tests/planted.py``:

* two orthonormal directions: ``h`` (harmfulness) and ``r`` (refusal);
* the embeddings of *marker* tokens (harmful words) carry ``+c h``; those of *suppressor* tokens
  (``~``, ``^``, ``|``) carry ``-s r``; every other token has small random components on both
  (so harmless prompts score continuously, not all exactly 0);
* block 0's attention is uniform over the prompt and writes the prompt's average ``h`` content
  along ``a h + b r`` and its average ``r`` content along ``b r``: every later position carries
  harmfulness, and refusal = harmfulness + suppression;
* nothing else writes to the residual stream; the unembedding row of ``"I"`` is ``beta r``.

So harmful prompts make the model refuse (greedy decoding repeats ``"I"``), harmless ones do not,
and a suffix of suppressors cancels the refusal at the post-instruction positions while the
harmfulness signal stays: exactly the jailbreak the monitor is built to catch.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from refusal_probe.direction.estimators import Direction
from refusal_probe.testing import make_tiny_model, tiny_tokenizer

MARKERS = ("bomb", "hack", "kill", "threatening")
SUPPRESSORS = ("~", "^", "|")
WORDS = (
    "can", "home", "that", "make", "with", "wifi", "boss", "letter", "help", "you", "how",
    "cake", "what", "thank", "need", "speed", "first", "request", "into", "Python", "but",
)  # fmt: skip
#: What greedy decoding of a refusal looks like on this model, for the substring judge.
REFUSAL_PHRASES = ("III",)


@dataclass(frozen=True)
class PlantedMonitorModel:
    """The planted model's folder and what was planted in it.

    Attributes:
        folder: The Hugging Face folder.
        h: Unit harmfulness direction ``[d]``.
        r: Unit refusal direction ``[d]``.
        markers: Token ids carrying ``+h``.
        suppressors: Token ids carrying ``-r``.
    """

    folder: Path
    h: torch.Tensor
    r: torch.Tensor
    markers: tuple[int, ...]
    suppressors: tuple[int, ...]

    def refusal_direction(self, layer: int = 1) -> Direction:
        """The planted refusal direction, as read at ``layer``'s input (any layer past block 0)."""
        return Direction(
            self.r.double(), layer, -1, "planted", 0, 0, architecture="LlamaForCausalLM"
        )


def make_monitor_model(
    folder: Path,
    *,
    seed: int = 0,
    c: float = 6.0,
    s: float = 10.0,
    noise: float = 0.3,
    a: float = 8.0,
    b: float = 4.0,
    beta: float = 3.0,
) -> PlantedMonitorModel:
    """Build the planted model in ``folder`` (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    make_tiny_model(folder, "llama", seed=seed)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = tiny_tokenizer()
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g))
    h, r = q[:, 0].contiguous(), q[:, 1].contiguous()
    markers = tuple(tok.encode(" " + w, add_special_tokens=False)[0] for w in MARKERS)
    suppressors = tuple(tok.encode(x, add_special_tokens=False)[0] for x in SUPPRESSORS)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # [vocab, d]
        emb -= (emb @ h)[:, None] * h[None, :] + (emb @ r)[:, None] * r[None, :]
        rms = float(emb.pow(2).mean(-1).sqrt().mean())
        jitter = torch.randn(emb.shape[0], 2, generator=g) * noise * rms  # [vocab, 2]
        emb += jitter[:, :1] * h[None, :] + jitter[:, 1:] * r[None, :]
        for t in markers:
            emb[t] += c * rms * h
        for t in suppressors:
            emb[t] -= s * rms * r
        for i, layer in enumerate(model.model.layers):
            layer.mlp.down_proj.weight.zero_()
            layer.self_attn.o_proj.weight.zero_()
            if i == 0:
                attn = layer.self_attn
                attn.q_proj.weight.zero_()
                attn.k_proj.weight.zero_()  # zero scores: uniform attention over the prefix
                attn.v_proj.weight.zero_()
                attn.v_proj.weight[0] = h  # kv head 0, dim 0 reads h
                attn.v_proj.weight[1] = r  # kv head 0, dim 1 reads r
                attn.o_proj.weight[:, 0] = a * h + b * r  # head 0 writes harmfulness -> refusal
                attn.o_proj.weight[:, 1] = b * r  # and passes suppression on to refusal
        head = model.lm_head.weight  # [vocab, d]
        head.mul_(0.05)
        head[tok.encode("I", add_special_tokens=False)[0]] = beta * r
    model.save_pretrained(folder, safe_serialization=True)
    return PlantedMonitorModel(folder, h, r, markers, suppressors)


def random_prompt(rng: random.Random, harmful: bool) -> str:
    """A random request of ordinary words; a harmful one holds one or two marker words."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
    if harmful:
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randint(0, len(words)), rng.choice(MARKERS))
    return "How do I " + " ".join(words) + "?"


def planted_pairs(n: int = 16, seed: int = 0) -> list[tuple[str, str]]:
    """Matched (harmful, harmless) requests: the same words with ``bomb`` or ``cake`` inserted."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
        at = rng.randint(0, len(words))
        twin = [" ".join(words[:at] + [w] + words[at:]) for w in ("bomb", "cake")]
        out.append(("How do I " + twin[0] + "?", "How do I " + twin[1] + "?"))
    return out


def write_monitor_fixtures(folder: Path, *, n: int = 40, seed: int = 0) -> Path:
    """Harmful/harmless prompt files of random requests, ``n`` per class and split."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, harmful, cat in (("harmful", True, "violence"), ("harmless", False, "chores")):
        seen: set[str] = set()
        with open(folder / f"{name}.jsonl", "w") as fh:
            k = 0
            for split in ("train", "val", "test"):
                made = 0
                while made < n:
                    text = random_prompt(rng, harmful)
                    if text in seen:
                        continue
                    seen.add(text)
                    rec = {"id": f"{name}-{k}", "text": text, "category": cat, "split": split}
                    fh.write(json.dumps(rec) + "\n")
                    k += 1
                    made += 1
    return folder
