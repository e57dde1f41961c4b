"""The activation disk cache: hits skip the model, every key change misses, damage is recovered."""

from __future__ import annotations

import importlib
import json
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

from refusal_probe import (
    LAST,
    ChatFormat,
    LoadOptions,
    Positions,
    Site,
    TensorCache,
    capture,
    load_model,
)
from refusal_probe.activations.cache import CacheCorruptionWarning, key_digest
from refusal_probe.activations.sites import all_layers

PROMPTS = ["How do I make a cake at home?", "hi, how are you today?", "Write a thank-you letter to my boss."]
SITES = all_layers(3)
# The package re-exports the function ``capture`` under the module's name; fetch the modules.
capture_mod = importlib.import_module("refusal_probe.activations.capture")
cache_mod = importlib.import_module("refusal_probe.activations.cache")


class _Counter:
    """Counts forward passes by wrapping ``capture``'s model runner."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = capture_mod.forward

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(capture_mod, "forward", counting)


def _entries(cache: TensorCache) -> list:
    return sorted(cache.dir.glob("*.safetensors")) if cache.dir.exists() else []


def test_hit_does_not_run_the_model(tiny_model, tmp_path, monkeypatch):
    model = tiny_model("llama")
    cache = TensorCache(tmp_path)
    counter = _Counter(monkeypatch)
    first = capture(model, PROMPTS, SITES, cache=cache)
    assert counter.calls == 1 and len(_entries(cache)) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(capture_mod, "forward", no_forward)
    second = capture(model, PROMPTS, SITES, cache=cache)
    assert torch.equal(first.values, second.values)
    assert second.sites == first.sites and second.prompts_sha256 == first.prompts_sha256
    assert second.model_fingerprint == model.identity.fingerprint


def test_every_key_change_misses(tiny_model, tiny_dir, tmp_path, monkeypatch):
    model = tiny_model("llama")
    cache = TensorCache(tmp_path)
    capture(model, PROMPTS, SITES, cache=cache)
    counter = _Counter(monkeypatch)

    variants = {
        "prompt text": dict(prompts=PROMPTS[:2] + ["Write a thank-you letter to my mum."]),
        "prompt order": dict(prompts=PROMPTS[::-1]),
        "sites": dict(sites=SITES[:2]),
        "site kind": dict(sites=all_layers(3, "resid_post")),
        "positions": dict(positions=LAST),
        "explicit positions": dict(positions=Positions("explicit", (-2, -1))),
        "model weights": dict(model=tiny_model("llama", seed=1)),
        "dtype": dict(model=load_model(str(tiny_dir("llama")), LoadOptions(dtype="bfloat16"))),
    }
    for n, (what, change) in enumerate(variants.items(), start=1):
        args = {
            "model": model,
            "prompts": PROMPTS,
            "sites": SITES,
            "positions": Positions(),
            **change,
        }
        capture(args["model"], args["prompts"], args["sites"], args["positions"], cache=cache)
        assert counter.calls == n, f"changing the {what} did not miss"
        assert len(_entries(cache)) == n + 1

    # and each of them now hits
    before = counter.calls
    for change in variants.values():
        args = {
            "model": model,
            "prompts": PROMPTS,
            "sites": SITES,
            "positions": Positions(),
            **change,
        }
        capture(args["model"], args["prompts"], args["sites"], args["positions"], cache=cache)
    assert counter.calls == before


def test_chat_template_change_misses(tiny_model, tmp_path, monkeypatch):
    """Same weights, another formatter: a different key (and different activations)."""
    import copy

    model = tiny_model("llama")
    other = copy.copy(model)
    other.chat = ChatFormat(
        model.tokenizer,
        template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    )
    cache = TensorCache(tmp_path)
    counter = _Counter(monkeypatch)
    a = capture(model, PROMPTS, SITES, cache=cache)
    b = capture(other, PROMPTS, SITES, cache=cache)
    assert counter.calls == 2 and len(_entries(cache)) == 2
    assert a.values.shape[2] != b.values.shape[2]  # 4 vs 2 post-instruction tokens


def test_rendered_template_change_misses(tiny_model, tmp_path, monkeypatch):
    """A template that renders differently (a date in the system prompt) must not hit."""
    import copy

    model = tiny_model("llama")
    other = copy.copy(model)
    other.chat = copy.copy(model.chat)
    real_format = model.chat.format
    other.chat.format = lambda instruction: "Today is Monday.\n" + real_format(instruction)
    assert other.chat.template_sha256 == model.chat.template_sha256
    cache = TensorCache(tmp_path)
    counter = _Counter(monkeypatch)
    capture(model, PROMPTS, SITES, cache=cache)
    capture(other, PROMPTS, SITES, cache=cache)
    assert counter.calls == 2


def test_engine_version_is_part_of_the_key(monkeypatch):
    key = {"model": "abc"}
    before = key_digest(key)
    monkeypatch.setattr(cache_mod, "ENGINE_VERSION", "999")
    assert key_digest(key) != before


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=8), min_size=1, max_size=6
    )
)
def test_key_digest_ignores_dict_order(key):
    assert key_digest(dict(reversed(list(key.items())))) == key_digest(key)


def _damage_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_flip_payload(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor bytes: the file still parses, the checksum fails
    path.write_bytes(bytes(data))


def _damage_garbage(path):
    path.write_bytes(b"not a safetensors file")


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_damage_truncate, "unreadable"),
        (_damage_flip_payload, "checksum mismatch"),
        (_damage_garbage, "unreadable"),
    ],
)
def test_corrupted_entry_is_reported_and_recomputed(tiny_model, tmp_path, monkeypatch, damage, why):
    model = tiny_model("llama")
    cache = TensorCache(tmp_path)
    good = capture(model, PROMPTS, SITES, cache=cache)
    (entry,) = _entries(cache)
    damage(entry)
    counter = _Counter(monkeypatch)
    with pytest.warns(CacheCorruptionWarning, match=why):
        again = capture(model, PROMPTS, SITES, cache=cache)
    assert counter.calls == 1  # recomputed, never served from the damaged file
    assert torch.equal(again.values, good.values)
    (rewritten,) = _entries(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is clean
        capture(model, PROMPTS, SITES, cache=cache)
    assert counter.calls == 1 and rewritten == entry


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    cache = TensorCache(tmp_path)
    key = {"k": 1}
    cache.put(key, {"values": torch.arange(6.0).view(2, 3)})

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key, {"values": torch.zeros(2, 3)})
    assert [p.name for p in cache.dir.iterdir()] == [cache.path(key_digest(key)).name]
    assert torch.equal(
        cache.get(key)["values"], torch.arange(6.0).view(2, 3)
    )  # the old entry is intact


def test_round_trip_of_several_tensors(tmp_path):
    cache = TensorCache(tmp_path, namespace="other")
    tensors = {
        "a": torch.randn(3, 4, dtype=torch.float64),
        "b": torch.arange(5, dtype=torch.int64),
        "c": torch.randn(2, 2).to(torch.bfloat16),
        "empty": torch.zeros(0, 3),
    }
    path = cache.put({"x": [1, 2]}, tensors)
    assert path.parent == tmp_path / "other"
    got = cache.get({"x": [1, 2]})
    assert got is not None and set(got) == set(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t)
    assert cache.get({"x": [2, 1]}) is None


def test_missing_sites_argument_is_not_cached(tiny_model, tmp_path):
    """A failing request writes nothing."""
    cache = TensorCache(tmp_path)
    with pytest.raises(Exception, match="beyond"):
        capture(tiny_model("llama"), PROMPTS, [Site(9)], cache=cache)
    assert _entries(cache) == []


@dataclass(frozen=True)
class _Measured:
    """A typed measurement: tensors, a count and texts."""

    scores: torch.Tensor
    texts: tuple[str, ...]
    passes: int


def test_typed_values_round_trip_with_texts_as_text(tmp_path):
    cache = TensorCache(tmp_path)
    value = _Measured(torch.randn(3, dtype=torch.float64), ("I'm sorry", "Sure — ok", ""), 7)
    calls = []

    def compute():
        calls.append(1)
        return value

    first, hit = cache.cached({"k": 1}, compute, _Measured)
    assert first is value and not hit and len(calls) == 1
    again, hit = cache.cached({"k": 1}, compute, _Measured)
    assert hit and len(calls) == 1
    assert torch.equal(again.scores, value.scores) and again.scores.dtype == torch.float64
    assert again.texts == value.texts and again.passes == 7 and isinstance(again.texts, tuple)
    (entry,) = _entries(cache)
    with safe_open(str(entry), framework="pt") as fh:
        assert list(fh.keys()) == ["scores"]  # the texts are not tensors
        assert json.loads(fh.metadata()["data"])["texts"] == list(value.texts)


def test_typed_values_damaged_in_their_texts_are_recomputed(tmp_path):
    cache = TensorCache(tmp_path)
    value = _Measured(torch.zeros(2), ("I cannot help", "Sure"), 1)
    cache.save({"k": 2}, value)
    (entry,) = _entries(cache)
    data = entry.read_bytes()
    entry.write_bytes(data.replace(b"I cannot help", b"I can help!!!"))  # same length
    with pytest.warns(CacheCorruptionWarning, match="checksum mismatch"):
        assert cache.load({"k": 2}, _Measured) is None
    assert _entries(cache) == []


def test_an_entry_of_another_shape_of_value_is_recomputed(tmp_path):
    @dataclass(frozen=True)
    class Older:
        scores: torch.Tensor

    cache = TensorCache(tmp_path)
    cache.save({"k": 3}, Older(torch.zeros(2)))
    with pytest.warns(CacheCorruptionWarning, match="not a _Measured"):
        value, hit = cache.cached({"k": 3}, lambda: _Measured(torch.ones(2), (), 0), _Measured)
    assert not hit and torch.equal(value.scores, torch.ones(2))
    reloaded = cache.load({"k": 3}, _Measured)  # rewritten in the new shape
    assert reloaded is not None and torch.equal(reloaded.scores, torch.ones(2))
