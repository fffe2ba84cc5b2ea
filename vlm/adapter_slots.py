"""LoRA adapters kept on one loaded base model, for switching without reloading the base (used by `vlm.worker`).

Adapters are keyed by a fingerprint of their files, so switching back to a recent adapter is instant and a folder
retrained in place is loaded again. At most `max_loaded` adapters stay in memory; the least recently used goes.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path


class AdapterError(Exception):
    def __init__(self, message: str, code: str = "bad_adapter"):
        super().__init__(message)
        self.message, self.code = message, code


def adapter_fingerprint(adapter_dir: Path) -> str:
    parts = [str(adapter_dir.resolve())]
    for path in sorted([adapter_dir / "adapter_config.json", *adapter_dir.glob("*.safetensors")]):
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def same_base(a: str, b: str) -> bool:
    """Two base model references name the same model: equal, or the same existing folder."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


class AdapterSlots:
    def __init__(self, max_loaded: int = 3):
        self.max_loaded = max_loaded
        self._names: dict[str, str] = {}  # fingerprint -> peft adapter name, least recently used first

    def reset(self, initial: Path | None) -> None:
        """After a fresh load: PeftModel.from_pretrained named the first adapter "default"."""
        self._names = {adapter_fingerprint(initial): "default"} if initial is not None else {}

    def activate(self, model, adapter_dir: Path):
        """Make adapter_dir the active adapter of model (a PeftModel, or a bare base that gets wrapped).
        Returns (model, info). On failure the previously active adapter stays active."""
        from peft import PeftModel

        t0 = time.perf_counter()
        key = adapter_fingerprint(adapter_dir)
        name = self._names.pop(key, None)
        cached = name is not None
        if name is None:
            name = "a_" + key[:16]
            try:
                if isinstance(model, PeftModel):
                    model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
                else:
                    model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name, is_trainable=False)
            except Exception as exc:  # noqa: BLE001 - any library failure becomes one clear reason
                if isinstance(model, PeftModel) and name in model.peft_config:
                    model.delete_adapter(name)  # a half-loaded adapter must not linger
                raise AdapterError(f"adapter {adapter_dir} could not be loaded: {_reason(exc)}") from None
        model.set_adapter(name)
        model.eval()
        self._names[key] = name
        while len(self._names) > self.max_loaded:
            model.delete_adapter(self._names.pop(next(iter(self._names))))
        return model, {"adapter": str(adapter_dir), "adapter_name": name, "cached": cached,
                       "loaded_adapters": len(self._names), "switch_s": round(time.perf_counter() - t0, 4)}
