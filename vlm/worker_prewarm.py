"""VLM_PREWARM inside the model worker: everything a load needs that does not need the weights, done before the
first request. No weight bytes are read and no GPU memory is taken (nothing touches CUDA).

1. `import_libraries`: torch, transformers' LLaVA-OneVision classes, accelerate, peft, and xgrammar for constrained
   decoding (seconds: 75-85 % of a small model's cold load).
2. `prepare`, when the base model is a local folder: a dry `from_pretrained` on the meta device (the same code path
   as the real load, so the text and vision model modules are imported and transformers builds its checkpoint
   conversion tables once: ~0.3 s of a 0.5B model's first load), the processor, and the constraint of its tokenizer
   (xgrammar's tokenizer tables and a decode of the whole vocabulary, ~1 s for 150k tokens). The load then reuses
   the processor and the constraint when the folder has not changed since (`folder_key`: names, sizes and
   modification times of its files).
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vlm.cache import content_fingerprint

log = logging.getLogger("vlm.worker")


def import_libraries() -> None:
    import accelerate  # noqa: F401 - device_map="auto" places the model with it
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration  # noqa: F401

    from vlm import constrained

    if constrained.enabled():
        import xgrammar  # noqa: F401


@dataclass
class Prepared:
    """What a pre-warm made for one base folder; a load of the same unchanged folder uses it instead of redoing it."""
    key: str
    processor: object
    constraint: object | None  # vlm.constrained.SchemaConstraint, or None when constrained decoding is off


def folder_key(base_dir: Path | None) -> str | None:
    if base_dir is None:
        return None
    return f"{Path(base_dir).resolve()}|{content_fingerprint(base_dir)}"


def prepare(base_dir: Path, dtype_name: str) -> Prepared:
    """Dry-run the build on the meta device, and make the processor and the constraint for `base_dir`."""
    import torch
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from vlm.constrained import make_constraint

    key = folder_key(base_dir)
    dtype = getattr(torch, dtype_name) if dtype_name in ("float16", "bfloat16", "float32") else torch.float16
    skeleton = LlavaOnevisionForConditionalGeneration.from_pretrained(
        str(base_dir), dtype=dtype, device_map="meta", low_cpu_mem_usage=True, use_safetensors=True,
        local_files_only=True)  # meta: no weight is read, nothing is allocated
    processor = AutoProcessor.from_pretrained(str(base_dir), local_files_only=True)
    constraint = make_constraint(skeleton, processor.tokenizer)  # reads only the config and the tokenizer
    del skeleton
    gc.collect()
    return Prepared(key=key, processor=processor, constraint=constraint)


def prewarm(base_dir: Path | None, dtype_name: str) -> tuple[dict, Prepared | None]:
    """Imports, then `prepare` when there is a local base folder. A failure to prepare is only logged: the load
    that follows does the work itself and reports any real problem with the model."""
    started = time.perf_counter()
    import_libraries()
    imported = time.perf_counter()
    info: dict = {"import_s": round(imported - started, 4)}
    prepared = None
    if base_dir is not None:
        try:
            prepared = prepare(base_dir, dtype_name)
            info["prepare_s"] = round(time.perf_counter() - imported, 4)
        except Exception as exc:  # noqa: BLE001 - a pre-warm must never be the reason a model does not load
            log.warning("pre-warm could not prepare %s (the load will): %s: %s", base_dir, type(exc).__name__, exc)
            info["prepare_error"] = f"{type(exc).__name__}: {exc}"
    return info, prepared
