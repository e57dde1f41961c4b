"""One cache key for every layer: a chat template that renders the date invalidates every result.

Some chat templates (Llama 3's) write today's date into the prompt. The activations, the
measurements (filter scores, selection, validation) and an audit's results all depend on the
rendered prompt, so on another day none of them may be served from the cache.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from types import SimpleNamespace

import pytest
from planted import REFUSAL_TEXT, make_planted_model, write_fixtures

from refusal_probe import LoadOptions, ModelKey, TensorCache, load_model
from refusal_probe.audit.handle import ModelHandle
from refusal_probe.causal.validation import ValidationConfig, validate_direction
from refusal_probe.model.identity import placement_of
from refusal_probe.prompts.sets import load_fixtures
from refusal_probe.selection.config import DirectionConfig
from refusal_probe.selection.search import find_refusal_direction
from refusal_probe.testing import TINY_CHAT_TEMPLATE, tiny_tokenizer

capture_mod = importlib.import_module("refusal_probe.activations.capture")
template_utils = importlib.import_module("transformers.utils.chat_template_utils")

#: The tiny template with the day of the month before the user's turn (Llama 3 writes the date).
DATED_TEMPLATE = "{{ strftime_now('%d') }}" + TINY_CHAT_TEMPLATE
FAST = DirectionConfig(n_resamples=100)
JUDGE = ValidationConfig(
    phrases=(REFUSAL_TEXT,), judge="substring", max_new_tokens=4, n_resamples=100, add_span="all"
)


class _Clock:
    """Stands in for ``datetime`` where chat templates read the time (``strftime_now``)."""

    today = datetime(2026, 12, 6, 23, 59)

    @classmethod
    def now(cls, tz=None):
        return cls.today


@pytest.fixture
def clock(monkeypatch):
    monkeypatch.setattr(template_utils, "datetime", _Clock)
    monkeypatch.setattr(_Clock, "today", datetime(2026, 12, 6, 23, 59))
    return _Clock


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """The planted model (refusal along one known direction) with a template that renders a date."""
    root = tmp_path_factory.mktemp("dated")
    folder, _ = make_planted_model(root / "model")
    tiny_tokenizer(DATED_TEMPLATE).save_pretrained(folder)
    return load_model(str(folder)), load_fixtures(write_fixtures(root / "prompts"))


class _Captures:
    """Counts the forward passes of activation capture."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = capture_mod.forward

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(capture_mod, "forward", counting)


def test_the_model_key_changes_with_the_rendered_date_and_nothing_else(dated, clock):
    model, _ = dated
    before = model.key
    assert model.chat.format("hi").startswith("06")
    clock.today = datetime(2026, 12, 7, 0, 1)
    after = model.key
    assert model.chat.format("hi").startswith("07")
    changed = {k for k, v in before.to_dict().items() if after.to_dict()[k] != v}
    assert changed == {"chat_rendered_sha256"}
    assert before.chat_template_sha256 == after.chat_template_sha256


def test_a_new_day_recomputes_every_cached_result(dated, clock, tmp_path, monkeypatch):
    model, fx = dated
    cache = TensorCache(tmp_path / "cache")
    captures = _Captures(monkeypatch)

    def run():
        found = find_refusal_direction(model, fx, FAST, cache=cache)
        return found, validate_direction(model, found.direction, fx, JUDGE, cache=cache)

    found, validated = run()
    cold = captures.calls
    assert cold > 0 and found.forward_passes["filter"] > 0 and found.selection.forward_passes > 0
    assert validated.forward_passes > 0

    # the same day: every result is served from the cache
    found, validated = run()
    assert captures.calls == cold
    assert found.forward_passes["filter"] == 0 and found.selection.forward_passes == 0
    assert validated.forward_passes == 0

    # the next day the prompts render differently: nothing may be served
    clock.today = datetime(2026, 12, 7, 0, 1)
    found, validated = run()
    assert captures.calls == 2 * cold, "activations were served across a date change"
    assert found.forward_passes["filter"] > 0, "filter scores were served across a date change"
    assert found.selection.forward_passes > 0, "the selection was served across a date change"
    assert validated.forward_passes > 0, "the validation was served across a date change"


def test_an_audit_result_key_changes_with_the_rendered_date(dated, clock):
    """An audit run keys its results on the same model key as the engine's caches."""
    model, _ = dated
    class Run(SimpleNamespace):
        @property
        def model_key(self):  # as ModelHandle's, for a loaded model: taken when asked
            return self.model.key

    run = Run(
        model=model,
        options=SimpleNamespace(seed=0),
        settings=SimpleNamespace(max_new_tokens=16),
        fixtures=SimpleNamespace(fingerprints={"harmful.jsonl": "h", "harmless.jsonl": "l"}),
    )
    before = ModelHandle.key(run, "behaviour")
    assert before["model"] == model.key.to_dict()
    clock.today = datetime(2026, 12, 7, 0, 1)
    assert ModelHandle.key(run, "behaviour") != before


def test_placement_names_the_device_kind_never_its_index():
    assert placement_of("cuda:1", None) == placement_of("cuda:0", None) == "cuda"
    assert placement_of("cpu", None) == "cpu"
    assert placement_of("cpu", "auto") == "device_map=auto"
    one = placement_of("cpu", {"model.layers.0": 0, "lm_head": "cuda:1"})
    assert one == placement_of("cpu", {"lm_head": "cuda:0", "model.layers.0": 1})
    assert one != placement_of("cpu", {"model.layers.0": 0, "lm_head": "cpu"})


def test_dtype_and_placement_are_part_of_the_key(tiny_dir):
    folder = str(tiny_dir("llama"))
    a = load_model(folder).key
    b = load_model(folder, LoadOptions(dtype="bfloat16")).key
    assert isinstance(a, ModelKey) and a.placement == "cpu" and a.dtype == "float32"
    assert b.dtype == "bfloat16" and a.weights_sha256 == b.weights_sha256 and a != b
