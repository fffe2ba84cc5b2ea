"""Finding and checking the files a model load reads: the base model folder, the adapter folder, the weights.

Used by the model worker before its slow imports (so a missing or corrupt file fails fast and clearly) and by the
web process to check uploaded adapters. Imports nothing heavy: no torch, transformers or peft.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from vlm.page_cache import resident_fraction
from vlm.worker_errors import WorkerError

DEFAULT_BASE_MODEL = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
READ_CHUNK = 16 * 1024 * 1024
CACHED_ENOUGH = 0.999  # share of a file's pages in the page cache above which the pre-read skips it


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_base(base: str | None, adapter: str | None, default: str | None) -> str:
    """The base model to load: the one named, else the one the adapter was trained on, else the default."""
    if base:
        return base
    if adapter:
        cfg = Path(adapter) / "adapter_config.json"
        try:
            named = json.loads(cfg.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError) as exc:
            raise WorkerError(f"adapter config {cfg} cannot be read: {exc}", "bad_adapter") from None
        if named:
            return str(named)
    return default or DEFAULT_BASE_MODEL


def check_adapter_dir(adapter: str) -> Path:
    adapter_dir = Path(adapter)
    if not adapter or not adapter_dir.is_dir():
        raise WorkerError(f"adapter folder {adapter_dir} does not exist", "not_found")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise WorkerError(f"adapter folder {adapter_dir} has no adapter_config.json", "bad_adapter")
    return adapter_dir


def base_model_folder(base: str) -> Path | None:
    """The local folder holding the base model, or None when only the network could provide it."""
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WorkerError(f"base model folder {path} has no config.json", "not_found")
        return path
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise WorkerError(f"base model folder {base} does not exist", "not_found")
    try:  # a hub name: use the local cache when it is there
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, local_files_only=True))
    except Exception:  # noqa: BLE001
        if hf_offline():
            raise WorkerError(f"base model {base} is not a local folder and is not in the Hugging Face cache "
                              "(HF_HUB_OFFLINE is set)", "not_found") from None
        return None  # from_pretrained downloads it


def check_safetensors(path: Path) -> None:
    """Validate the header and size of a safetensors file, so a truncated or garbled file gets a clear reason."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"file is only {size} bytes")
        header_len = int.from_bytes(head, "little")
        if header_len <= 0 or 8 + header_len > size:
            raise ValueError(f"header length {header_len} does not fit in a {size}-byte file")
        try:
            header = json.loads(fh.read(header_len))
        except ValueError:
            raise ValueError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise ValueError(f"truncated: {size} bytes, tensors need {expected}")


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _check_weights(path: Path, role: str, code: str) -> None:
    """check_safetensors as a WorkerError with the file's role ("adapter", "base model weights") and code."""
    try:
        check_safetensors(path)
    except (OSError, ValueError) as exc:
        raise WorkerError(f"{role} {path} is corrupt: {exc}", code) from None


def check_adapter_weights(adapter_dir: Path) -> None:
    for path in weight_files(adapter_dir):
        _check_weights(path, "adapter", "bad_adapter")


def files_to_read(base_dir: Path | None, adapter_dir: Path | None) -> list[tuple[Path, str]]:
    """The weight files of a load with the role each plays (for error messages); a local base needs weights."""
    files = [(p, "base model weights") for p in weight_files(base_dir)] if base_dir else []
    if adapter_dir is not None:
        files += [(p, "adapter") for p in weight_files(adapter_dir)]
    if base_dir is not None and not weight_files(base_dir):
        raise WorkerError(f"base model folder {base_dir} has no .safetensors weights", "not_found")
    return files


def pre_read(files: list[tuple[Path, str]], progress) -> dict:
    """Validate every weight file and read the bytes the page cache lacks, once, sequentially: the load that
    follows then copies from memory, and a cold read shows real progress. A file the cache already holds whole is
    not read again (that read would be a copy as long as the load itself); returns {"read_bytes", "cached_bytes"}."""
    total = sum(p.stat().st_size for p, _ in files) or 1
    done, last, cached = 0, 0.0, 0
    for path, role in files:
        _check_weights(path, role, "corrupt_weights")
        if (resident_fraction(path) or 0.0) >= CACHED_ENOUGH:
            size = path.stat().st_size
            done, cached = done + size, cached + size
            progress(done / total, "reading weights")
            continue
        with open(path, "rb", buffering=0) as fh:
            buf = bytearray(READ_CHUNK)
            while n := fh.readinto(buf):
                done += n
                now = time.monotonic()
                if now - last > 0.1:
                    progress(done / total, "reading weights")
                    last = now
    progress(1.0, "reading weights")
    return {"read_bytes": done - cached, "cached_bytes": cached}
