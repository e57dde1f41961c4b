"""Devices, dtypes and batch sizes, end to end, on the CPU.

There is no GPU here, so placement across devices is checked with the ``meta`` device standing
in for a second one (an operation mixing a CPU tensor into a meta activation raises, as one
mixing ``cuda:0`` into ``cuda:1`` would), the CUDA memory probe with a patched
``torch.cuda.mem_get_info``, and a device map with every module on ``"cpu"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refusal_probe.activations.capture import capture
from refusal_probe.activations.sites import Site, all_layers
from refusal_probe.direction.estimators import Direction
from refusal_probe.errors import ModelLoadError
from refusal_probe.interventions.hooks import Ablate, Add, PerRow
from refusal_probe.model import devices
from refusal_probe.model.devices import (
    CPU_MAX_BATCH,
    GPU_MAX_BATCH,
    ActivationSize,
    PerDevice,
    auto_batch_size,
    batch_size_for,
    parse_device_map,
)
from refusal_probe.model.loading import LoadOptions, load_model
from refusal_probe.scoring.generation import generate
from refusal_probe.scoring.refusal import refusal_scores

PROMPTS = ["How do I make a cake at home?", "hi", "Write a thank-you letter to my boss."]
GiB = 1 << 30


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refusal_probe.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("dev") / "llama", "llama")


@pytest.fixture(scope="module")
def f32(folder: Path):
    return load_model(str(folder))


def direction_for(model, layer: int = 1) -> Direction:
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)) * 3
    return Direction(v, layer, -1, "test", 1, 1, architecture=model.identity.architecture)


# --- batch sizes --------------------------------------------------------------------------------


def test_batch_size_arithmetic() -> None:
    # 10 GiB free, 60% usable, 100 MiB per prompt -> floor(6144 / 100) = 61 prompts.
    assert batch_size_for(10 * GiB, 100 << 20, max_batch=256) == 61
    assert batch_size_for(10 * GiB, 100 << 20, max_batch=32) == 32  # capped
    assert batch_size_for(10 * GiB, 100 << 20, max_batch=256, fraction=1.0) == 102
    assert batch_size_for(1 << 20, 100 << 20, max_batch=256) == 1  # never below one
    assert batch_size_for(0, 100 << 20, max_batch=256) == 1
    assert batch_size_for(GiB, 0, max_batch=7) == 7


def test_activation_size_per_prompt() -> None:
    # A 7B-like shape in bfloat16: d 4096, MLP 11008, 32 layers, 32 heads, 8 KV heads of 128.
    size = ActivationSize(
        d_model=4096, d_mlp=11008, n_layers=32, n_heads=32, kv_width=1024, d_vocab=32000,
        bytes_per_value=2,
    )
    per_token = 2 * (4 * 4096 + 3 * 11008 + 2 * 32 * 1024)  # block activations + KV cache
    attention = 4 * 2 * 32 * 100 * 100  # float32 scores and probabilities, 100 x 100 per head
    logits = 4 * 2 * 32000  # one position, twice
    assert size.bytes_per_prompt(100) == 100 * per_token + attention + logits
    assert size.bytes_per_prompt(100, logit_positions=100) == (
        100 * per_token + attention + 100 * logits
    )
    assert size.bytes_per_prompt(100) == 25_804_800  # about 25 MB per 100-token prompt
    # 40 GiB free: about 1000 such prompts fit, so the cap decides; 2 GiB: 0.6 * 2 GiB / 25.8 MB.
    assert batch_size_for(40 * GiB, size.bytes_per_prompt(100), max_batch=256) == 256
    assert batch_size_for(2 * GiB, size.bytes_per_prompt(100), max_batch=256) == 49


def test_the_model_shape_is_read_from_its_config(f32) -> None:
    size = ActivationSize.of(f32)
    assert (size.d_model, size.d_mlp, size.n_layers, size.n_heads) == (64, 128, 3, 4)
    assert (size.kv_width, size.bytes_per_value) == (2 * 16, 4)  # 2 KV heads of 16; float32


def test_auto_batch_size_on_cuda_uses_the_tightest_device(
    f32, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {0: 40 * GiB, 1: 3 * 1024 * 1024}  # the second GPU is nearly full
    cuda = [torch.device("cuda", 0), torch.device("cuda", 1)]
    monkeypatch.setattr(devices, "devices_of", lambda model: cuda)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (free[d.index], 80 * GiB))
    seq = f32.chat.encode([max(PROMPTS, key=len)]).seq_len
    need = ActivationSize.of(f32).bytes_per_prompt(seq)
    want = batch_size_for(free[1], need, max_batch=GPU_MAX_BATCH)
    assert 1 < want < GPU_MAX_BATCH  # the arithmetic, not the cap, decides here
    assert auto_batch_size(f32, PROMPTS) == want
    # Generated tokens lengthen every row.
    longer = ActivationSize.of(f32).bytes_per_prompt(seq + 64)
    assert auto_batch_size(f32, PROMPTS, new_tokens=64) == batch_size_for(
        free[1], longer, max_batch=GPU_MAX_BATCH
    )
    assert auto_batch_size(f32, PROMPTS, 5) == 5  # a fixed size is kept as is
    with pytest.raises(ValueError, match=">= 1"):
        auto_batch_size(f32, PROMPTS, 0)


def test_auto_batch_size_on_the_cpu(f32, monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_batch_size(f32, PROMPTS) == CPU_MAX_BATCH  # a tiny model fits many times over
    monkeypatch.setattr(devices, "free_bytes", lambda d: 40_000)  # RAM nearly exhausted
    assert auto_batch_size(f32, PROMPTS) == 1
    monkeypatch.setattr(devices, "free_bytes", lambda d: None)  # the system cannot say
    assert auto_batch_size(f32, PROMPTS, max_batch=512) == 512


def test_the_engine_chooses_batches_automatically(f32, monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory for one prompt at a time: capture and generation still give the same results.
    sites = all_layers(3)
    want = capture(f32, PROMPTS, sites, batch_size=len(PROMPTS)).values
    texts = generate(f32, PROMPTS, max_new_tokens=3, batch_size=len(PROMPTS))[0]
    monkeypatch.setattr(devices, "free_bytes", lambda d: 1)
    assert torch.allclose(capture(f32, PROMPTS, sites).values, want, atol=1e-5)
    got, passes = generate(f32, PROMPTS, max_new_tokens=3)
    assert got == texts and passes > 3  # one batch per prompt, several steps each


# --- device maps ----------------------------------------------------------------------------------


def test_device_maps_are_parsed_with_clear_errors(tmp_path: Path) -> None:
    assert parse_device_map("auto") == "auto" and parse_device_map("balanced") == "balanced"
    good = tmp_path / "map.json"
    good.write_text(json.dumps({"model.layers.0": 0, "lm_head": "cuda:1"}))
    assert parse_device_map(str(good)) == {"model.layers.0": 0, "lm_head": "cuda:1"}
    with pytest.raises(ModelLoadError, match="neither a strategy"):
        parse_device_map("everywhere")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ModelLoadError, match="not a readable JSON"):
        parse_device_map(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text('["cpu"]')
    with pytest.raises(ModelLoadError, match="expected a JSON object"):
        parse_device_map(str(tmp_path / "list.json"))
    (tmp_path / "deep.json").write_text('{"lm_head": ["cpu"]}')
    with pytest.raises(ModelLoadError, match=r"bad entries: 'lm_head': \['cpu'\]"):
        parse_device_map(str(tmp_path / "deep.json"))


def test_a_device_map_loads_and_gives_the_same_results(folder: Path, f32) -> None:
    layers = {f"model.layers.{i}": "cpu" for i in range(3)}
    device_map = {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    split = load_model(str(folder), LoadOptions(device_map=device_map))
    assert split.identity.fingerprint == f32.identity.fingerprint  # placement is not identity
    assert split.device == torch.device("cpu") and devices.devices_of(split) == [split.device]
    sites = all_layers(3)
    assert torch.allclose(
        capture(split, PROMPTS, sites).values, capture(f32, PROMPTS, sites).values, atol=1e-6
    )
    d = direction_for(f32)
    plan = [Ablate(d), Add(d, layer=2, alpha=0.5)]
    assert torch.allclose(
        refusal_scores(split, PROMPTS, interventions=plan),
        refusal_scores(f32, PROMPTS, interventions=plan),
        atol=1e-6,
    )


def test_each_xdist_worker_gets_a_gpu_of_its_own() -> None:
    from refusal_probe.model.devices import worker_device

    assert [worker_device("cuda:worker", f"gw{i}", n_gpus=4) for i in range(5)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"
    ]
    assert worker_device("cuda:worker", "", n_gpus=2) == "cuda:0"  # no xdist: the first GPU
    assert worker_device("cuda:1", "gw3", n_gpus=4) == "cuda:1"  # anything else as given
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        worker_device("cuda:worker", "gw0", n_gpus=0)


# --- placement of vectors and indices -----------------------------------------------------------


def test_per_device_copies_are_made_once_per_device_and_dtype() -> None:
    v = PerDevice(torch.arange(4.0))
    meta16 = torch.empty(2, 4, device="meta", dtype=torch.bfloat16)
    a, b = v.like(meta16), v.like(meta16)
    assert a is b and (a.device.type, a.dtype) == ("meta", torch.bfloat16)
    assert v.like(torch.zeros(4)) is not a and v.like(torch.zeros(4)).device.type == "cpu"
    idx = PerDevice(torch.tensor([0, 2]))
    assert idx.on(torch.device("meta")).dtype == torch.long  # indices keep their dtype
    assert "copies=2" in repr(v)  # meta bfloat16, cpu float32


@pytest.mark.parametrize("kind", ["ablate", "add", "per_row"])
def test_hooks_act_on_the_device_and_dtype_of_their_activation(f32, kind: str) -> None:
    # A layer on another device hands its hook activations there; "meta" stands in for it.
    d = direction_for(f32)
    ivs = {
        "ablate": Ablate(d),
        "add": Add(d, layer=1),
        "per_row": PerRow(((Ablate(d), Add(d, layer=1)), ())),
    }
    hooks = ivs[kind].hooks(f32, rows=[0, 1])
    act = torch.empty(2, 5, f32.d_model, device="meta", dtype=torch.bfloat16)
    for _, fn in hooks:
        out = fn(act, None)
        assert (out.device.type, out.dtype, out.shape) == ("meta", torch.bfloat16, act.shape)


# --- dtypes ---------------------------------------------------------------------------------------


def test_bfloat16_runs_end_to_end_with_float32_captures_and_float64_statistics(
    folder: Path, f32
) -> None:
    bf16 = load_model(str(folder), LoadOptions(dtype="bfloat16"))
    assert bf16.dtype == torch.bfloat16 and bf16.identity.dtype == "bfloat16"
    sites = [Site(0, "resid_pre"), Site(2, "resid_post"), Site(1, "head_out")]
    acts = capture(bf16, PROMPTS, sites[:2])
    assert acts.values.dtype == torch.float32 and acts.values.device.type == "cpu"
    assert acts.mean().dtype == torch.float64
    ref = capture(f32, PROMPTS, sites[:2]).values
    assert torch.allclose(acts.values, ref, atol=0.1, rtol=0.05)  # bfloat16 keeps ~3 digits
    heads = capture(bf16, PROMPTS, sites[2:])
    assert heads.values.dtype == torch.float32 and heads.values.shape[-2] == bf16.n_heads
    d = direction_for(f32)
    scores = refusal_scores(bf16, PROMPTS, interventions=[Ablate(d)])
    assert scores.dtype == torch.float64 and torch.isfinite(scores).all()
    # The ablated stream is (nearly, in bfloat16) orthogonal to the direction at every layer.
    ablated = capture_ablated(bf16, d)
    proj = (ablated.double() @ d.unit.double()).abs().max()
    assert proj < 0.05 * ablated.double().norm(dim=-1).max()
    texts, _ = generate(bf16, PROMPTS, [Add(d, alpha=2.0)], max_new_tokens=2)
    assert len(texts) == len(PROMPTS)


def capture_ablated(model, d: Direction) -> torch.Tensor:
    """The residual stream at every layer's input with ``d`` ablated, ``[prompt, layer, d]``."""
    from refusal_probe.activations.runner import forward
    from refusal_probe.activations.sites import hook_name
    from refusal_probe.interventions.hooks import hooks_for

    seen: list[torch.Tensor] = []
    batch = model.chat.encode(PROMPTS)
    read = [
        (hook_name(Site(i, "resid_pre")), lambda act, hook: seen.append(act[:, -1].float()))
        for i in range(model.n_layers)
    ]
    with torch.no_grad():
        forward(model, batch, hooks_for(model, [Ablate(d)]) + read)
    return torch.stack(seen, dim=1)


# --- through the plugin ---------------------------------------------------------------------------

AUDIT = '''
import pytest
import torch

from refusal_probe.activations.capture import capture
from refusal_probe.activations.sites import all_layers
from refusal_probe.stats.intervals import Interval


@pytest.mark.behaviour
def test_rate(audit, findings):
    """Synthetic rate, after checking how the model was loaded."""
    m = findings.model
    assert m.dtype == torch.bfloat16 and findings.options.device_map.endswith("map.json")
    assert findings.settings.batch_size is None  # "auto" in the policy
    prompts = findings.fixtures.harmful.texts("test")[:3]
    acts = capture(m, prompts, all_layers(m.n_layers), batch_size=findings.settings.batch_size)
    assert acts.values.dtype == torch.float32 and acts.values.device.type == "cpu"
    audit.check("demo.rate", Interval(0.95, 0.92, 0.98, n=100, method="wilson"))
'''


def test_the_plugin_honours_dtype_device_map_and_automatic_batches(
    pytester: pytest.Pytester, folder: Path, f32, tmp_path: Path
) -> None:
    from planted import write_fixtures

    pytester.makeconftest('pytest_plugins = ["refusal_probe.pytest_plugin.plugin"]\n')
    pytester.makefile(
        ".toml",
        policy='version = 1\n\n[settings]\nbatch_size = "auto"\n\n[demo.rate]\nat_least = 0.9\n'
        'unit = "probability"\nrationale = "A demo bar."\n',
    )
    pytester.makepyfile(test_dev=AUDIT)
    (pytester.path / "map.json").write_text(
        json.dumps({"model": "cpu", "lm_head": "cpu"})
    )
    args = [
        "-p", "no:cacheprovider",
        "--model", str(folder),
        "--prompts", str(write_fixtures(tmp_path / "prompts")),
        "--cache-dir", str(tmp_path / "cache"),
        "--policy", "policy.toml",
        "--report-dir", "reports",
    ]
    r = pytester.runpytest(*args, "--dtype", "bfloat16", "--device-map", "map.json")
    r.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "reports" / "llama" / "latest" / "audit.json").read_text())
    assert data["model"]["dtype"] == "bfloat16"
    assert data["config"]["options"]["device_map"] == "map.json"
    assert data["config"]["policy"]["settings"]["batch_size"] == "auto"
    assert data["run"]["hardware"]["device"] == "device_map=map.json"
    r = pytester.runpytest(*args, "--device-map", "x")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "--device-map 'x' is neither a strategy" in r.stdout.str()
