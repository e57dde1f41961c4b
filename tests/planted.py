"""A tiny model whose refusal is carried by one known direction, and prompt fixtures for it.

The model is a random tiny Llama with hand-set weights:

* the embeddings of *marker* tokens (words that only harmful prompts use) carry ``c * r``, and no
  other embedding has a component along ``r``;
* block 0's attention is uniform over the prompt (zero queries and keys) and copies only the
  ``r`` component, so every later position, the post-instruction ones included, carries
  ``r`` in proportion to the share of marker tokens;
* nothing else writes to the residual stream (the other output projections are zero);
* the unembedding row of the refusal token ``"I"`` is ``beta * r``, and the other rows are small.

So harmful prompts push the next token towards ``"I"`` (the model "refuses", and greedy decoding
repeats ``"I"``), harmless ones do not, and ablating ``r`` removes exactly that. Layer 0's
``resid_pre`` at template tokens is the same for every prompt, as in real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from refusal_probe.testing import make_tiny_model, tiny_tokenizer

HARMFUL_WORDS = ("bomb", "hack", "kill", "threatening")
HARMLESS_WORDS = ("cake", "wifi", "letter", "process")
TEMPLATES = (
    "How do I make a {}?",
    "Tell me about the {}.",
    "Write a note on a {}.",
    "How can I get a {} at home?",
    "Explain the {} to my boss.",
    "What is a {}?",
)
#: What greedy decoding of a "refusal" looks like on this model, for the substring judge.
REFUSAL_TEXT = "III"


def marker_ids(tokenizer) -> set[int]:
    """Word-initial token ids of harmful words that occur in no harmless prompt.

    Word pieces (``"k"``, ``"ing"``) are left out, so the model's own babble has no markers.
    """
    harmful = {
        t
        for w in HARMFUL_WORDS
        for t in tokenizer.encode(" " + w, add_special_tokens=False)
        if tokenizer.decode([t]).startswith(" ")
    }
    harmless = {
        t
        for tpl in TEMPLATES
        for w in HARMLESS_WORDS
        for t in tokenizer.encode(tpl.format(w), add_special_tokens=False)
    }
    return harmful - harmless


def make_planted_model(
    folder: Path,
    *,
    seed: int = 0,
    c: float = 6.0,
    beta: float = 2.0,
    over_refused: tuple[str, ...] = (),
) -> tuple[Path, torch.Tensor]:
    """Build the planted model in ``folder``; returns the folder and the unit direction ``r``.

    ``beta = 0`` gives a model that represents harm along ``r`` but never refuses; the words in
    ``over_refused`` (harmless ones) carry ``r`` too, so the model refuses the harmless prompts
    that use them: over-refusal by the same direction.
    """
    from transformers import AutoModelForCausalLM

    make_tiny_model(folder, "llama", seed=seed)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = tiny_tokenizer()
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(seed + 1)
    r = torch.randn(d, generator=g)
    r /= r.norm()
    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # [vocab, d]
        emb -= (emb @ r)[:, None] * r[None, :]
        rms = emb.pow(2).mean(-1).sqrt().mean()
        extra = {t for w in over_refused for t in tok.encode(" " + w, add_special_tokens=False)}
        for t in marker_ids(tok) | extra:
            emb[t] += c * rms * r
        for i, layer in enumerate(model.model.layers):
            layer.mlp.down_proj.weight.zero_()
            layer.self_attn.o_proj.weight.zero_()
            if i == 0:
                attn = layer.self_attn
                attn.q_proj.weight.zero_()
                attn.k_proj.weight.zero_()
                attn.v_proj.weight.zero_()
                attn.v_proj.weight[0] = r  # kv head 0, dim 0 reads the r component
                attn.o_proj.weight[:, 0] = 4.0 * r  # head 0, dim 0 writes it back along r
        head = model.lm_head.weight  # [vocab, d]
        head.mul_(0.05)
        refusal_id = tok.encode("I", add_special_tokens=False)[0]
        head[refusal_id] = beta * r
    model.save_pretrained(folder, safe_serialization=True)
    return folder, r


def write_fixtures(folder: Path) -> Path:
    """Harmful/harmless prompt files for the planted model (train/val/test splits)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = ("train", "train", "val", "test", "train", "test")
    for name, words, cat in (
        ("harmful", HARMFUL_WORDS, "violence"),
        ("harmless", HARMLESS_WORDS, "chores"),
    ):
        with open(folder / f"{name}.jsonl", "w") as fh:
            n = 0
            for w in words:
                for j, tpl in enumerate(TEMPLATES):
                    rec = {
                        "id": f"{name}-{n}",
                        "text": tpl.format(w),
                        "category": cat,
                        "split": splits[j],
                    }
                    fh.write(json.dumps(rec) + "\n")
                    n += 1
    return folder
