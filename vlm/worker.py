"""The model worker: a child process that owns torch, the model and its memory (like Ollama's runner).

Started as `python -m vlm.worker`. JSON lines on stdin/stdout; the real stdout fd carries the protocol only
(sys.stdout and fd 1 are pointed at stderr, so library prints cannot corrupt it); logs go to stderr.

parent -> worker: {"op": "load", "base", "adapter", "dtype", "device_map", "default_base"}
                  {"op": "generate", "id", "system", "prompt", "images": [base64], "max_new_tokens", "temperature", "seed"?,
                   "json_schema"?}  (the answer is constrained to the schema: vlm.constrained)
                  {"op": "set_adapter", "id", "adapter"}  (another LoRA adapter; the base model stays loaded)
                  {"op": "cancel", "id"} | {"op": "status"} | {"op": "shutdown"}
                  {"op": "prewarm", "base"?, "adapter"?, "dtype"?, "default_base"?}  (import torch & co now and,
                  for a local base folder, dry-run its build on the meta device and make its processor and decoding
                  constraint: vlm.worker_prewarm; no weight bytes, no GPU memory)
worker -> parent: {"event": "progress", "fraction", "phase"} | {"event": "ready", "info": {...}}
                  {"event": "token", "id", "text"} | {"event": "done", "id", "text", "prompt_tokens",
                  "completion_tokens", "timings", "finish_reason"} | {"event": "error", "id", "message", "code"}
                  {"event": "status", "rss_bytes", "gpu_bytes", "busy"} | {"event": "adapter_set", "id", "info"}
                  {"event": "prewarmed", "info": {"import_s", "prepare_s"?, "prepare_error"?}}
progress phases (fraction is within the phase): reading weights (checking the files, and reading the bytes the
page cache lacks), importing libraries, building model (from_pretrained: the weights copied into the model), loading
adapter; the parent (vlm.load_progress) turns them into one bar.
Exiting the process is how every byte of RAM and GPU memory (CUDA context included) goes back.

This module is the message loop and the loaded model's state; a generation's streaming, cancel and constrained
decoding are `vlm.worker_generation`; finding and checking the files a load reads is `vlm.model_files`.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path

from vlm import worker_generation, worker_prewarm
from vlm.adapter_slots import AdapterError, AdapterSlots, same_base
from vlm.dtype_choice import DTYPES, choose_dtype, cpu_flags
from vlm.model_files import base_model_folder, check_adapter_dir, check_adapter_weights, files_to_read, hf_offline, \
    pre_read, resolve_base
from vlm.worker_errors import WorkerError, describe_exception

log = logging.getLogger("vlm.worker")


# ---------------------------------------------------------------- protocol plumbing
class Channel:
    """Writes events to the protocol fd; one line per event, whole lines only."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=True) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                os._exit(0)  # the parent is gone: nothing left to serve


# ---------------------------------------------------------------- the model and what is done with it
class Engine:
    def __init__(self, channel: Channel):
        self.channel = channel
        self.model = None
        self.processor = None
        self.info: dict = {}
        self.cancel_event = threading.Event()
        self.current_id: str | None = None
        # ids cancelled before their generate was reached (a bounded memory: the parent re-sends cancels anyway)
        self.cancelled_early: collections.deque = collections.deque(maxlen=64)
        self.loading = False
        self.base_override: str | None = None  # the operator named the base (VLM_BASE_MODEL): no base check
        self.adapters = AdapterSlots()
        self.constraint = None  # vlm.constrained.SchemaConstraint of the loaded model's tokenizer
        self.prepared: worker_prewarm.Prepared | None = None  # what a pre-warm made for a base folder

    def progress(self, fraction: float, phase: str) -> None:
        self.channel.send("progress", fraction=round(min(max(fraction, 0.0), 1.0), 4), phase=phase)

    def load(self, msg: dict) -> None:
        adapter = msg.get("adapter")
        adapter_dir = check_adapter_dir(adapter) if adapter else None
        base = resolve_base(msg.get("base"), adapter, msg.get("default_base"))
        base_dir = base_model_folder(base)
        dtype_name = msg.get("dtype") or "auto"
        if dtype_name not in DTYPES:
            raise WorkerError(f"dtype must be auto, float16, bfloat16 or float32, not {dtype_name!r}", "bad_request")
        files = files_to_read(base_dir, adapter_dir)
        t0 = time.perf_counter()
        read = pre_read(files, self.progress)  # before the slow imports, so a corrupt file fails fast
        t_read = time.perf_counter()
        prepared, self.prepared = self.prepared, None
        if prepared is not None and (base_dir is None or prepared.key != worker_prewarm.folder_key(base_dir)):
            prepared = None  # pre-warmed for another base, or the folder changed since

        self.progress(0.0, "importing libraries")  # seconds of its own (75-85 % of a small model's load) unless pre-warmed
        import torch

        dtype_name, dtype_reason = choose_dtype(dtype_name, cuda=torch.cuda.is_available(), flags=cpu_flags())
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration  # noqa: F401 - timed here

        t_import = time.perf_counter()
        self.progress(0.0, "building model")
        model, processor = self._build(base, base_dir, getattr(torch, dtype_name), msg.get("device_map") or "auto",
                                       processor=prepared.processor if prepared else None)
        t_build = time.perf_counter()
        if adapter_dir is not None:
            self.progress(0.0, "loading adapter")
            model = self._with_adapter(model, adapter_dir)
        model.eval()
        self._keep(model, processor, adapter_dir, base_override=msg.get("base") or None, prepared=prepared)
        self.info = {
            "model": base, "adapter": str(adapter_dir) if adapter_dir else None, "dtype": dtype_name,
            "dtype_reason": dtype_reason, "read_bytes": read["read_bytes"], "cached_bytes": read["cached_bytes"],
            "used_prewarm": prepared is not None,
            "device": str(getattr(model, "device", "cpu")),
            "param_count": sum(p.numel() for p in model.parameters()),
            "timings": {"read_s": round(t_read - t0, 4), "import_s": round(t_import - t_read, 4),
                        "build_s": round(t_build - t_import, 4), "adapter_s": round(time.perf_counter() - t_build, 4)},
        }

    @staticmethod
    def _build(base: str, base_dir: Path | None, dtype, device_map: str, processor=None):
        """The base model and its processor (unless a pre-warm made it), from the local folder when there is one."""
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

        source = str(base_dir) if base_dir else base
        local_only = base_dir is not None or hf_offline()
        try:
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                source, dtype=dtype, device_map=device_map, low_cpu_mem_usage=True, use_safetensors=True,
                local_files_only=local_only)
            if processor is None:
                processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
        except Exception as exc:  # noqa: BLE001 - any library failure becomes one clear reason
            raise WorkerError(f"base model {base} could not be loaded: {describe_exception(exc)}",
                              "load_failed") from None
        return model, processor

    @staticmethod
    def _with_adapter(model, adapter_dir: Path):
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        except Exception as exc:  # noqa: BLE001
            raise WorkerError(f"adapter {adapter_dir} could not be loaded: {describe_exception(exc)}",
                              "bad_adapter") from None

    def _keep(self, model, processor, adapter_dir: Path | None, base_override: str | None,
              prepared: worker_prewarm.Prepared | None) -> None:
        from vlm.constrained import make_constraint

        self.model, self.processor = model, processor
        self.constraint = prepared.constraint if prepared else make_constraint(model, processor.tokenizer)
        self.base_override = base_override
        self.adapters.reset(adapter_dir)

    def prewarm(self, msg: dict) -> dict:
        """VLM_PREWARM: import what a load needs and, for a local base folder, prepare what does not need its
        weights (vlm.worker_prewarm), so the first load costs only the read and the build."""
        base_dir = None
        try:
            adapter = msg.get("adapter")
            base_dir = base_model_folder(resolve_base(msg.get("base"), adapter if adapter and Path(adapter).is_dir()
                                                      else None, msg.get("default_base")))
        except WorkerError as exc:  # the load reports it; the imports are still worth doing
            log.info("pre-warm imports only: %s", exc.message)
        info, self.prepared = worker_prewarm.prewarm(base_dir, msg.get("dtype") or "auto")
        return info

    def set_adapter(self, msg: dict) -> dict:
        """Make another LoRA adapter active on the loaded base. On any failure the previous one stays active."""
        if self.model is None:
            raise WorkerError("no model is loaded", "not_loaded")
        adapter_dir = check_adapter_dir(msg.get("adapter") or "")
        loaded = str(self.info.get("model") or "")
        named = resolve_base(None, str(adapter_dir), loaded)
        if not self.base_override and not same_base(named, loaded):
            raise WorkerError(f"adapter {adapter_dir.name} was trained on base model {named}, but {loaded} is "
                              "loaded; unload the model and load it with this adapter instead", "base_mismatch")
        check_adapter_weights(adapter_dir)
        try:
            self.model, info = self.adapters.activate(self.model, adapter_dir)
        except AdapterError as exc:
            raise WorkerError(exc.message, exc.code) from None
        self.info["adapter"] = str(adapter_dir)
        return info

    def generate(self, msg: dict) -> None:
        if self.model is None:  # before the imports: answering this must not wait seconds for torch
            raise WorkerError("no model is loaded", "not_loaded")
        worker_generation.generate(self.model, self.processor, self.constraint, msg, self.channel, self.cancel_event)

    def status(self) -> dict:
        import psutil

        gpu = 0
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            gpu = int(torch.cuda.memory_reserved())
        return {"rss_bytes": psutil.Process().memory_info().rss, "gpu_bytes": gpu, "busy": self.current_id}


# ---------------------------------------------------------------- main loop
def _reader(stdin, engine: Engine, jobs: "queue.Queue[dict | None]") -> None:
    """Reads commands; answers cancel and status at once so they work while a generation runs."""
    for line in stdin:
        try:
            msg = json.loads(line)
            op = msg["op"]
        except (ValueError, KeyError, TypeError):
            engine.channel.send("error", id=None, message=f"malformed command: {line[:200]!r}", code="bad_request")
            continue
        if op == "cancel":
            if msg.get("id") is None or msg.get("id") == engine.current_id:
                engine.cancel_event.set()
            else:  # not started yet (it is still in the queue): it must not start at all
                engine.cancelled_early.append(msg["id"])
        elif op == "status":
            engine.channel.send("status", **engine.status())
        elif op == "shutdown":
            if engine.loading:
                os._exit(0)  # a load cannot be interrupted; ending the process is the cancel
            break
        else:
            jobs.put(msg)
    # shutdown or the parent closed stdin: stop the generation in flight, then leave even if the main loop is busy
    engine.cancel_event.set()
    jobs.put(None)
    timer = threading.Timer(3.0, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def _run_job(engine: Engine, msg: dict) -> None:
    """One queued command (load, prewarm, set_adapter, generate); every failure is answered as an error event."""
    channel = engine.channel
    op, req_id = msg.get("op"), msg.get("id")
    try:
        if op == "load":
            if engine.model is not None:
                raise WorkerError("a model is already loaded in this worker", "bad_request")
            engine.loading = True
            engine.load(msg)
            channel.send("ready", info=engine.info)
        elif op == "prewarm":
            channel.send("prewarmed", info=engine.prewarm(msg))
        elif op == "set_adapter":
            channel.send("adapter_set", id=req_id, info=engine.set_adapter(msg))
        elif op == "generate":
            if req_id is not None and req_id in engine.cancelled_early:
                raise WorkerError("generation was cancelled", "cancelled")
            engine.cancel_event.clear()
            engine.current_id = req_id
            engine.generate(msg)
        else:
            raise WorkerError(f"unknown op {op!r}", "bad_request")
    except WorkerError as exc:
        channel.send("error", id=req_id, message=exc.message, code=exc.code)
    except MemoryError:
        channel.send("error", id=req_id, message="out of memory", code="out_of_memory")
    except Exception as exc:  # noqa: BLE001 - keep serving; the log has the traceback
        log.exception("%s failed", op)
        code = "load_failed" if op == "load" else "generate_failed"
        channel.send("error", id=req_id, message=f"{op} failed: {describe_exception(exc)}", code=code)
    finally:
        engine.current_id = None
        engine.loading = False


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # C-level writes to fd 1 now land on stderr
    sys.stdout = sys.stderr
    logging.basicConfig(level=os.environ.get("VLM_WORKER_LOG", "INFO"), stream=sys.stderr,
                        format="worker %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    engine = Engine(Channel(protocol))
    jobs: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(sys.stdin, engine, jobs), daemon=True, name="stdin").start()
    while (msg := jobs.get()) is not None:
        _run_job(engine, msg)
    protocol.flush()
    os._exit(0)  # skip interpreter teardown (seconds with torch loaded); the OS reclaims everything


if __name__ == "__main__":
    sys.exit(main())
