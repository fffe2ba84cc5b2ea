"""The model worker: a child process that owns torch, the model and its memory (like Ollama's runner).

Started as `python -m vlm.worker`. JSON lines on stdin/stdout; the real stdout fd carries the protocol only
(sys.stdout and fd 1 are pointed at stderr, so library prints cannot corrupt it); logs go to stderr.

parent -> worker: {"op": "load", "base", "adapter", "dtype", "device_map", "default_base"}
                  {"op": "generate", "id", "system", "prompt", "images": [base64], "max_new_tokens", "temperature",
                   "json_schema"?}  (the answer is constrained to the schema: vlm.constrained)
                  {"op": "set_adapter", "id", "adapter"}  (another LoRA adapter; the base model stays loaded)
                  {"op": "cancel", "id"} | {"op": "status"} | {"op": "shutdown"}
                  {"op": "prewarm"}  (import torch/transformers/peft now; no weights, no GPU memory)
worker -> parent: {"event": "progress", "fraction", "phase"} | {"event": "ready", "info": {...}}
                  {"event": "token", "id", "text"} | {"event": "done", "id", "text", "prompt_tokens",
                  "completion_tokens", "timings", "finish_reason"} | {"event": "error", "id", "message", "code"}
                  {"event": "status", "rss_bytes", "gpu_bytes", "busy"} | {"event": "adapter_set", "id", "info"}
                  {"event": "prewarmed", "info": {"import_s"}}
progress phases (fraction is within the phase): reading weights, importing libraries, building model, loading
adapter; the parent (vlm.load_progress) turns them into one bar.
Exiting the process is how every byte of RAM and GPU memory (CUDA context included) goes back.
"""
from __future__ import annotations

import base64
import collections
import io
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path

from vlm.adapter_slots import AdapterError, AdapterSlots, same_base
from vlm.dtype_choice import DTYPES, choose_dtype, cpu_flags
from vlm.train_data import chat_messages

log = logging.getLogger("vlm.worker")

DEFAULT_BASE_MODEL = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
READ_CHUNK = 16 * 1024 * 1024


class WorkerError(Exception):
    def __init__(self, message: str, code: str = "load_failed"):
        super().__init__(message)
        self.message, self.code = message, code


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


# ---------------------------------------------------------------- loading
def resolve_base(base: str | None, adapter: str | None, default: str | None) -> str:
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


def pre_read(files: list[tuple[Path, str]], progress) -> None:
    """Read every weight byte once: validates files and warms the page cache for the mmap-backed load."""
    total = sum(p.stat().st_size for p, _ in files) or 1
    done, last = 0, 0.0
    for path, role in files:
        try:
            check_safetensors(path)
        except (OSError, ValueError) as exc:
            raise WorkerError(f"{role} {path} is corrupt: {exc}", "corrupt_weights") from None
        with open(path, "rb", buffering=0) as fh:
            buf = bytearray(READ_CHUNK)
            while n := fh.readinto(buf):
                done += n
                now = time.monotonic()
                if now - last > 0.1:
                    progress(done / total, "reading weights")
                    last = now
    progress(1.0, "reading weights")


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

    def progress(self, fraction: float, phase: str) -> None:
        self.channel.send("progress", fraction=round(min(max(fraction, 0.0), 1.0), 4), phase=phase)

    def load(self, msg: dict) -> None:
        adapter = msg.get("adapter")
        adapter_dir = _check_adapter_dir(adapter) if adapter else None
        base = resolve_base(msg.get("base"), adapter, msg.get("default_base"))
        base_dir = self._base_folder(base)

        dtype_name = msg.get("dtype") or "auto"
        if dtype_name not in DTYPES:
            raise WorkerError(f"dtype must be auto, float16, bfloat16 or float32, not {dtype_name!r}", "bad_request")

        files = [(p, "base model weights") for p in weight_files(base_dir)] if base_dir else []
        if adapter_dir is not None:
            files += [(p, "adapter") for p in weight_files(adapter_dir)]
        if base_dir is not None and not weight_files(base_dir):
            raise WorkerError(f"base model folder {base_dir} has no .safetensors weights", "not_found")
        t0 = time.perf_counter()
        pre_read(files, self.progress)  # before the slow imports, so a corrupt file fails fast
        t_read = time.perf_counter()

        self.progress(0.0, "importing libraries")  # seconds of its own (75-85 % of a small model's load) unless pre-warmed
        import torch

        dtype_name, dtype_reason = choose_dtype(dtype_name, cuda=torch.cuda.is_available(), flags=cpu_flags())
        dtype = getattr(torch, dtype_name)
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

        source = str(base_dir) if base_dir else base
        local = base_dir is not None
        t_import = time.perf_counter()
        self.progress(0.0, "building model")
        try:
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                source, dtype=dtype, device_map=msg.get("device_map") or "auto", low_cpu_mem_usage=True,
                use_safetensors=True, local_files_only=local or _offline())
            processor = AutoProcessor.from_pretrained(source, local_files_only=local or _offline())
        except Exception as exc:  # noqa: BLE001 - any library failure becomes one clear reason
            raise WorkerError(f"base model {base} could not be loaded: {_reason(exc)}", "load_failed") from None
        t_build = time.perf_counter()
        if adapter_dir is not None:
            self.progress(0.0, "loading adapter")
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
            except Exception as exc:  # noqa: BLE001
                raise WorkerError(f"adapter {adapter_dir} could not be loaded: {_reason(exc)}", "bad_adapter") from None
        model.eval()
        self.model, self.processor = model, processor
        from vlm.constrained import make_constraint

        self.constraint = make_constraint(model, processor.tokenizer)
        self.base_override = msg.get("base") or None
        self.adapters.reset(adapter_dir)
        self.info = {
            "model": base, "adapter": str(adapter_dir) if adapter_dir else None, "dtype": dtype_name,
            "dtype_reason": dtype_reason,
            "device": str(getattr(model, "device", "cpu")),
            "param_count": sum(p.numel() for p in model.parameters()),
            "timings": {"read_s": round(t_read - t0, 4), "import_s": round(t_import - t_read, 4),
                        "build_s": round(t_build - t_import, 4), "adapter_s": round(time.perf_counter() - t_build, 4)},
        }

    @staticmethod
    def prewarm() -> dict:
        """Import what a load needs (VLM_PREWARM) without touching weights or the GPU: the first load then costs
        only the read and the build."""
        started = time.perf_counter()
        import torch  # noqa: F401
        import peft  # noqa: F401
        from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration  # noqa: F401

        return {"import_s": round(time.perf_counter() - started, 4)}

    def _base_folder(self, base: str) -> Path | None:
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
            if _offline():
                raise WorkerError(f"base model {base} is not a local folder and is not in the Hugging Face cache "
                                  "(HF_HUB_OFFLINE is set)", "not_found") from None
            return None  # from_pretrained downloads it

    def set_adapter(self, msg: dict) -> dict:
        """Make another LoRA adapter active on the loaded base. On any failure the previous one stays active."""
        if self.model is None:
            raise WorkerError("no model is loaded", "not_loaded")
        adapter_dir = _check_adapter_dir(msg.get("adapter") or "")
        loaded = str(self.info.get("model") or "")
        named = resolve_base(None, str(adapter_dir), loaded)
        if not self.base_override and not same_base(named, loaded):
            raise WorkerError(f"adapter {adapter_dir.name} was trained on base model {named}, but {loaded} is "
                              "loaded; unload the model and load it with this adapter instead", "base_mismatch")
        for path in weight_files(adapter_dir):
            try:
                check_safetensors(path)
            except (OSError, ValueError) as exc:
                raise WorkerError(f"adapter {path} is corrupt: {exc}", "bad_adapter") from None
        try:
            self.model, info = self.adapters.activate(self.model, adapter_dir)
        except AdapterError as exc:
            raise WorkerError(exc.message, exc.code) from None
        self.info["adapter"] = str(adapter_dir)
        return info

    # ------------------------------------------------------------ generation
    def generate(self, msg: dict) -> None:
        if self.model is None:  # before the imports: answering this must not wait seconds for torch
            raise WorkerError("no model is loaded", "not_loaded")
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        req_id = msg.get("id")
        t0 = time.perf_counter()
        images = [_decode_image(b) for b in msg.get("images") or []]
        messages = chat_messages(msg.get("system") or "", msg.get("prompt") or "", len(images))
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=text, images=images or None, return_tensors="pt")
        device, dtype = self.model.device, self.model.dtype
        inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in inputs.items()}
        prompt_len = int(inputs["input_ids"].shape[1])
        tokenizer = self.processor.tokenizer
        channel, cancel = self.channel, self.cancel_event
        first_token: list[float] = []

        class Stream(BaseStreamer):
            """Emits decoded text as tokens arrive, holding back an incomplete UTF-8 character."""

            def __init__(self):
                self.ids: list[int] = []
                self.sent = 0
                self.skip_prompt = True

            def put(self, value):
                if self.skip_prompt:  # generate() first passes the prompt ids
                    self.skip_prompt = False
                    return
                self.ids.extend(int(t) for t in value.reshape(-1).tolist())
                if not first_token:
                    first_token.append(time.perf_counter())
                self._flush(final=False)

            def end(self):
                self._flush(final=True)

            def _flush(self, final: bool):
                text = tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                if not final and text.endswith("\ufffd"):
                    return
                if len(text) > self.sent:
                    channel.send("token", id=req_id, text=text[self.sent:])
                    self.sent = len(text)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        temperature = float(msg.get("temperature") or 0.0)
        max_new_tokens = int(msg.get("max_new_tokens") or 512)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        streamer = Stream()
        schema = msg.get("json_schema")
        constrain = [self.constraint.processor(schema)] if schema and self.constraint is not None else []
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Cancelled()]), pad_token_id=tokenizer.pad_token_id,
                logits_processor=constrain or None, **sampling)
        if cancel.is_set():
            raise WorkerError("generation was cancelled", "cancelled")
        new_ids = output[0, prompt_len:].tolist()
        final = tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        finish = "stop" if (new_ids and new_ids[-1] in eos_ids) or len(new_ids) < max_new_tokens else "length"
        end = time.perf_counter()
        timings = {"generate": round(end - t0, 4)}
        if first_token:
            timings["first_token"] = round(first_token[0] - t0, 4)
        self.channel.send("done", id=req_id, text=final, prompt_tokens=prompt_len,
                          completion_tokens=len(new_ids), timings=timings, finish_reason=finish)

    def status(self) -> dict:
        import psutil

        gpu = 0
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            gpu = int(torch.cuda.memory_reserved())
        return {"rss_bytes": psutil.Process().memory_info().rss, "gpu_bytes": gpu, "busy": self.current_id}


def _check_adapter_dir(adapter: str) -> Path:
    adapter_dir = Path(adapter)
    if not adapter or not adapter_dir.is_dir():
        raise WorkerError(f"adapter folder {adapter_dir} does not exist", "not_found")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise WorkerError(f"adapter folder {adapter_dir} has no adapter_config.json", "bad_adapter")
    return adapter_dir


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def _decode_image(data: str):
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise WorkerError(f"an image could not be decoded: {_reason(exc)}", "bad_image") from None


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


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # C-level writes to fd 1 now land on stderr
    sys.stdout = sys.stderr
    logging.basicConfig(level=os.environ.get("VLM_WORKER_LOG", "INFO"), stream=sys.stderr,
                        format="worker %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    channel = Channel(protocol)
    engine = Engine(channel)
    jobs: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(sys.stdin, engine, jobs), daemon=True, name="stdin").start()
    while (msg := jobs.get()) is not None:
        op, req_id = msg.get("op"), msg.get("id")
        try:
            if op == "load":
                if engine.model is not None:
                    raise WorkerError("a model is already loaded in this worker", "bad_request")
                engine.loading = True
                engine.load(msg)
                channel.send("ready", info=engine.info)
            elif op == "prewarm":
                channel.send("prewarmed", info=engine.prewarm())
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
            channel.send("error", id=req_id, message=f"{op} failed: {_reason(exc)}", code=code)
        finally:
            engine.current_id = None
            engine.loading = False
    protocol.flush()
    os._exit(0)  # skip interpreter teardown (seconds with torch loaded); the OS reclaims everything


if __name__ == "__main__":
    sys.exit(main())
