"""One generation inside the model worker: chat inputs, text streamed as tokens arrive, the stopping criterion that
makes a cancel end `generate()`, and decoding constrained to a JSON schema (`vlm.constrained`).

torch and transformers are imported when a generation runs, not when this module is: the worker answers status
and errors before it has paid for those imports.
"""
from __future__ import annotations

import base64
import io
import threading
import time

from vlm.train_data import chat_messages
from vlm.worker_errors import WorkerError, describe_exception


def decode_image(data: str):
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise WorkerError(f"an image could not be decoded: {describe_exception(exc)}", "bad_image") from None


def model_inputs(model, processor, msg: dict) -> dict:
    """The request's chat (system, prompt, images) as tensors on the model's device, floats in its dtype."""
    import torch

    images = [decode_image(b) for b in msg.get("images") or []]
    messages = chat_messages(msg.get("system") or "", msg.get("prompt") or "", len(images))
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=images or None, return_tensors="pt")
    device, dtype = model.device, model.dtype
    return {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in inputs.items()}


def text_streamer(tokenizer, emit):
    """A transformers streamer that calls emit(text) with each newly decoded piece, holding back an incomplete
    UTF-8 character; `first_token_at` is the perf_counter time the first new token arrived."""
    from transformers.generation.streamers import BaseStreamer

    class TextStream(BaseStreamer):
        def __init__(self):
            self.ids: list[int] = []
            self.sent = 0
            self.skip_prompt = True
            self.first_token_at: float | None = None

        def put(self, value):
            if self.skip_prompt:  # generate() first passes the prompt ids
                self.skip_prompt = False
                return
            self.ids.extend(int(t) for t in value.reshape(-1).tolist())
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self._flush(final=False)

        def end(self):
            self._flush(final=True)

        def _flush(self, final: bool):
            text = tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if not final and text.endswith("\ufffd"):
                return
            if len(text) > self.sent:
                emit(text[self.sent:])
                self.sent = len(text)

    return TextStream()


def stop_on_cancel(cancel: threading.Event):
    """Stopping criteria that end generate() at the next token once `cancel` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


def sampling_options(temperature: float) -> dict:
    return {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}


def finish_reason(model, new_ids: list[int], max_new_tokens: int) -> str:
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    return "stop" if (new_ids and new_ids[-1] in eos_ids) or len(new_ids) < max_new_tokens else "length"


def generate(model, processor, constraint, msg: dict, channel, cancel: threading.Event) -> None:
    """Run one generate request: "token" events while it runs, then "done"; a cancel raises WorkerError.
    constraint: the loaded tokenizer's vlm.constrained.SchemaConstraint (None: json_schema is ignored)."""
    import torch

    req_id = msg.get("id")
    t0 = time.perf_counter()
    inputs = model_inputs(model, processor, msg)
    prompt_len = int(inputs["input_ids"].shape[1])
    tokenizer = processor.tokenizer
    max_new_tokens = int(msg.get("max_new_tokens") or 512)
    streamer = text_streamer(tokenizer, lambda text: channel.send("token", id=req_id, text=text))
    schema = msg.get("json_schema")
    constrain = [constraint.processor(schema)] if schema and constraint is not None else []
    temperature = float(msg.get("temperature") or 0.0)
    if temperature > 0 and msg.get("seed") is not None:
        torch.manual_seed(int(msg["seed"]))  # the worker runs one generation at a time: the global RNG is its own
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, streamer=streamer, stopping_criteria=stop_on_cancel(cancel),
            pad_token_id=tokenizer.pad_token_id, logits_processor=constrain or None,
            **sampling_options(temperature))
    if cancel.is_set():
        raise WorkerError("generation was cancelled", "cancelled")
    new_ids = output[0, prompt_len:].tolist()
    final = tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    timings = {"generate": round(time.perf_counter() - t0, 4)}
    if streamer.first_token_at is not None:
        timings["first_token"] = round(streamer.first_token_at - t0, 4)
    channel.send("done", id=req_id, text=final, prompt_tokens=prompt_len, completion_tokens=len(new_ids),
                 timings=timings, finish_reason=finish_reason(model, new_ids, max_new_tokens))
