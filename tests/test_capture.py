"""Activation capture: exact against Hugging Face, padding-invariant, only what was asked for."""

from __future__ import annotations

import pytest
import torch

from refusal_probe import LAST, LAST_INSTRUCTION, CaptureError, Positions, Site, capture, load_model
from refusal_probe.activations.sites import all_layers

PROMPTS = [
    "How do I make a cake at home with my friends tonight?",
    "hi",
    "Write a thank-you letter to my boss.",
    "How can I speed up my home wifi?",
    "kill",
]
ALL_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


def _hidden_states(model, folder, prompts):
    """HF's own hidden states on the same ids, mask and position ids, from an unwrapped copy."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    batch = model.chat.encode(prompts)
    with torch.no_grad():
        out = hf(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_hidden_states=True,
        )
    return batch, out.hidden_states


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma", "gemma2", "neox"])
def test_resid_equals_hugging_face_hidden_states(tiny_model, tiny_dir, family):
    """resid_pre[L] is HF's hidden_states[L]; resid_post[L] is hidden_states[L + 1].

    (HF's last hidden state has the final norm applied, so the last resid_post is not compared.)
    """
    model = tiny_model(family)
    batch, hs = _hidden_states(model, tiny_dir(family), PROMPTS)
    shortest = int(batch.attention_mask.sum(1).min())
    every = Positions("explicit", tuple(range(-shortest, 0)))
    sites = all_layers(3, "resid_pre") + all_layers(2, "resid_post")
    acts = capture(model, PROMPTS, sites, every)
    for j, site in enumerate(sites):
        ref = hs[site.layer] if site.kind == "resid_pre" else hs[site.layer + 1]
        torch.testing.assert_close(acts.values[:, j], ref[:, -shortest:], atol=1e-5, rtol=1e-5)
    # The default positions are the post-instruction span: the last n_post tokens.
    post = capture(model, PROMPTS, all_layers(3))
    for layer in range(3):
        torch.testing.assert_close(
            post.values[:, layer], hs[layer][:, -model.chat.n_post :], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prompt_alone_equals_prompt_in_a_padded_batch(tiny_model, family):
    model = tiny_model(family)
    sites = [Site(layer, kind) for layer in range(3) for kind in ALL_KINDS]
    together = capture(model, PROMPTS, sites)
    lengths = model.chat.encode(PROMPTS).attention_mask.sum(1)
    assert len(set(lengths.tolist())) > 2  # the batch really is padded
    for i, prompt in enumerate(PROMPTS):
        alone = capture(model, [prompt], sites)
        torch.testing.assert_close(alone.values[0], together.values[i], atol=1e-5, rtol=1e-5)
    heads = capture(model, PROMPTS, [Site(1, "head_out")])
    torch.testing.assert_close(
        capture(model, PROMPTS[1:2], [Site(1, "head_out")]).values[0],
        heads.values[1],
        atol=1e-5,
        rtol=1e-5,
    )


def test_batch_size_and_order_do_not_matter(tiny_model):
    model = tiny_model("llama")
    one = capture(model, PROMPTS, all_layers(3), batch_size=1).values
    big = capture(model, PROMPTS, all_layers(3), batch_size=64).values
    two = capture(model, PROMPTS, all_layers(3), batch_size=2).values
    torch.testing.assert_close(one, big, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    rev = capture(model, PROMPTS[::-1], all_layers(3), batch_size=2).values
    torch.testing.assert_close(rev.flip(0), one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma"])
def test_sites_add_up(tiny_model, family):
    """resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out, heads sum to attn_out."""
    model = tiny_model(family)
    v = capture(model, PROMPTS, [Site(1, k) for k in ALL_KINDS])
    pre, attn, mid, mlp, post = (v.at(Site(1, k)) for k in ALL_KINDS)
    torch.testing.assert_close(pre + attn, mid, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mid + mlp, post, atol=1e-5, rtol=1e-5)
    heads = capture(model, PROMPTS, [Site(1, "head_out")]).values[:, 0]
    assert heads.shape == (len(PROMPTS), model.chat.n_post, model.n_heads, model.d_model)
    torch.testing.assert_close(heads.sum(2), attn, atol=1e-5, rtol=1e-5)


def test_head_out_plus_bias_is_attn_out_with_biases(tiny_dir):
    """GPT-2 has an output bias: sum over heads + b_O = attn_out (biases made non-zero here)."""
    model = load_model(str(tiny_dir("gpt2")))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.hf_model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    b_o = model.bridge.blocks[2].attn.b_O.detach()
    assert b_o.abs().sum() > 0
    attn = capture(model, PROMPTS, [Site(2, "attn_out")]).values[:, 0]
    heads = capture(model, PROMPTS, [Site(2, "head_out")]).values[:, 0]
    torch.testing.assert_close(heads.sum(2) + b_o, attn, atol=1e-5, rtol=1e-5)


def test_position_kinds_pick_the_right_tokens(tiny_model, tiny_dir):
    model = tiny_model("llama")
    batch, hs = _hidden_states(model, tiny_dir("llama"), PROMPTS)
    site = [Site(2)]
    last = capture(model, PROMPTS, site, LAST).values[:, 0, 0]
    torch.testing.assert_close(last, hs[2][:, -1], atol=1e-5, rtol=1e-5)
    li = capture(model, PROMPTS, site, LAST_INSTRUCTION).values[:, 0, 0]
    ref = hs[2][torch.arange(len(PROMPTS)), batch.last_instruction]
    torch.testing.assert_close(li, ref, atol=1e-5, rtol=1e-5)
    explicit = capture(model, PROMPTS, site, Positions("explicit", (-5, -1))).values[:, 0]
    torch.testing.assert_close(explicit, hs[2][:, [-5, -1]], atol=1e-5, rtol=1e-5)
    assert model.tokenizer.decode(batch.input_ids[0, batch.last_instruction[0]]) == "?"


def test_result_holds_only_what_was_asked(tiny_model):
    model = tiny_model("llama")
    acts = capture(model, PROMPTS, [Site(2), Site(0, "mlp_out")])
    assert acts.values.shape == (len(PROMPTS), 2, model.chat.n_post, model.d_model)
    assert acts.values.dtype == torch.float32 and acts.values.device.type == "cpu"
    assert not acts.values.requires_grad and acts.values.is_contiguous()
    assert acts.sites == (Site(2), Site(0, "mlp_out")) and acts.n_prompts == len(PROMPTS)
    assert acts.model_fingerprint == model.identity.fingerprint
    torch.testing.assert_close(acts.at(Site(0, "mlp_out")), acts.values[:, 1])
    mean = acts.mean()
    assert mean.dtype == torch.float64 and mean.shape == (2, model.chat.n_post, model.d_model)
    with pytest.raises(CaptureError, match="was not captured"):
        acts.at(Site(1))


def test_forward_stops_after_the_deepest_site(tiny_model):
    model = tiny_model("llama")
    calls: list[int] = []
    last_block = model.bridge.blocks[2].original_component  # the wrapped HF decoder layer
    handle = last_block.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        capture(model, PROMPTS, [Site(0), Site(1, "resid_post")])
        assert calls == []  # block 2 never ran
        capture(model, PROMPTS, [Site(2)])  # resid_pre of block 2 is read before it runs
        assert calls == []
        capture(model, PROMPTS, [Site(2, "mlp_out")])
        assert calls  # block 2 ran (once a batch)
    finally:
        handle.remove()


def test_hooks_do_not_outlive_the_call(tiny_model):
    model = tiny_model("llama")
    capture(model, PROMPTS, all_layers(3))
    assert all(not hp._forward_hooks for hp in model.bridge.hook_dict.values())


@pytest.mark.parametrize(
    ("prompts", "sites", "message"),
    [
        ([], [Site(0)], "no prompts"),
        (["hi"], [], "no sites"),
        (["hi"], [Site(3)], "beyond the model's 3 layers"),
        (["hi"], [Site(0), Site(0, "head_out")], "separate call"),
        (["hi"], [Site(0), Site(0)], "duplicate"),
    ],
)
def test_bad_requests(tiny_model, prompts, sites, message):
    with pytest.raises(CaptureError, match=message):
        capture(tiny_model("llama"), prompts, sites)


def test_site_an_architecture_lacks(tiny_model):
    """GPT-NeoX runs attention and MLP in parallel: no resid_mid."""
    with pytest.raises(
        CaptureError, match="no resid_mid site; its blocks run attention and MLP in parallel"
    ):
        capture(tiny_model("neox"), ["hi"], [Site(0, "resid_mid")])
    assert capture(tiny_model("neox"), ["hi"], [Site(0, "attn_out")]).values.shape[1] == 1


def test_offsets_before_the_prompt_start(tiny_model):
    with pytest.raises(CaptureError, match="before the start of the shortest prompt"):
        capture(tiny_model("llama"), PROMPTS, [Site(0)], Positions("explicit", (-500,)))


def test_a_site_whose_hook_never_fires_is_an_error_not_garbage(tiny_model, monkeypatch):
    """The result is preallocated; a hook that never ran must not leave uninitialised values."""
    import importlib

    capture_mod = importlib.import_module("refusal_probe.activations.capture")
    real = capture_mod.forward

    def drop_first_hook(model, batch, hooks, **kwargs):
        return real(model, batch, hooks[1:], **kwargs)

    monkeypatch.setattr(capture_mod, "forward", drop_first_hook)
    with pytest.raises(CaptureError, match=r"the hooks of \['L0.resid_pre'\] never ran"):
        capture(tiny_model("llama"), PROMPTS, all_layers(3))
