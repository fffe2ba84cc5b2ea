"""Turn logged examples (`vlm.dataset`) into model inputs for LoRA training (used by `vlm.train`).

Each example becomes the chat the model saw (system, user with its images) plus the assistant answer it should
have given (the example's `target` as JSON), rendered with the processor's own chat template, images expanded to
image tokens by the processor. Labels are -100 everywhere except the assistant answer (and its end-of-turn).
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def target_text(example: dict) -> str:
    """The answer the model is taught: the same JSON shape vlm.prompts asks for."""
    return json.dumps(example["target"], ensure_ascii=False)


def chat_messages(system: str, user: str, n_images: int) -> list[dict]:
    """The chat the model sees, as the serving worker and training both build it: images before the text."""
    messages = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    parts = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": user}]
    messages.append({"role": "user", "content": parts})
    return messages


class ExampleEncoder:
    """Encodes one example at a time (micro-batch of 1: image counts and sizes differ between examples)."""

    def __init__(self, processor, max_length: int = 8192):
        self.processor = processor
        self.max_length = max_length

    @staticmethod
    def _images(example: dict) -> list:
        from PIL import Image

        images = []
        for path in example.get("image_paths") or []:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        return images

    def encode(self, example: dict) -> dict | None:
        """Tensors for the model's forward (with `labels`), or None when the example is longer than max_length
        (cutting it could split the image tokens, which the model refuses)."""
        images = self._images(example)
        prompt_messages = chat_messages(example.get("system") or "", example["user"], len(images))
        full_messages = prompt_messages + [
            {"role": "assistant", "content": [{"type": "text", "text": target_text(example)}]}]
        prompt = self.processor.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
        full = self.processor.apply_chat_template(full_messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently with an answer appended; "
                             "cannot tell which tokens are the answer")
        kwargs = {"images": images} if images else {}
        batch = self.processor(text=full, return_tensors="pt", **kwargs)
        prompt_ids = self.processor(text=prompt, return_tensors="pt", **kwargs)["input_ids"][0]
        input_ids = batch["input_ids"][0]
        n_prompt = int(prompt_ids.shape[0])
        if input_ids.shape[0] > self.max_length:
            log.warning("example %s is %d tokens, over --max-length %d: skipped", example.get("id"),
                        input_ids.shape[0], self.max_length)
            return None
        if not bool((input_ids[:n_prompt] == prompt_ids).all()):
            raise ValueError("the tokenised prompt is not a prefix of the tokenised example")
        labels = input_ids.clone()
        labels[:n_prompt] = IGNORE_INDEX
        batch = dict(batch)
        batch["labels"] = labels.unsqueeze(0)
        return batch


def training_loss(model, batch: dict, prompt_weight: float = 0.0, image_token_id: int | None = None):
    """The answer's mean token loss (the model's own loss), plus `prompt_weight` times the language-model loss
    on the prompt's text tokens (never on image placeholders): OpenAI's old `prompt_loss_weight`. Predicting the
    prompt, with its repeated names and numbers, is where a model learns to look back and copy."""
    if prompt_weight <= 0:
        return model(**batch).loss
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    answer = labels[:, 1:] != IGNORE_INDEX
    prompt = ~answer & (batch["attention_mask"][:, 1:] > 0)
    if image_token_id is not None:
        prompt &= targets != image_token_id
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = nll.view(targets.shape)
    answer_loss = nll[answer].mean()
    prompt_loss = nll[prompt].mean() if bool(prompt.any()) else torch.zeros((), device=nll.device)
    return answer_loss + prompt_weight * prompt_loss


def to_device(batch: dict, device, dtype) -> dict:
    """Floating tensors (pixel values) take the model's dtype; ids and masks keep theirs."""
    import torch

    return {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in batch.items()}
