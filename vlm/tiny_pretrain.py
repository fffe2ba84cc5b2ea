"""Task-agnostic pre-training of the tiny base (vlm.tiny) on in-context recall, as real pre-training gives a base.

A real base (Qwen2-0.5B) has induction heads from pre-training: it can copy a value that appeared earlier in the
context, which every "set X to 180 mm" request needs. The tiny random base has none, and the proposal benchmark
showed LoRA on the task data does not grow them on 2 cores. This trains the whole language model (not LoRA) on
random token sequences, nothing of the CAD task:

- repeat: a random segment, random filler, the segment again (the loss is on the repeat): plain copying;
- recall: random key/value pairs, then keys asked again; the loss is on each value: the token after an earlier
  occurrence of the current key, a few tokens back (what a parameter's value in the answer needs).

Run: python -m vlm.tiny_pretrain BASE_DIR [--steps 3000]  (writes the trained weights back into BASE_DIR)
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _repeat_sequence(rng: random.Random, vocab: range, length: int) -> tuple[list[int], list[int]]:
    segment = [rng.choice(vocab) for _ in range(rng.randint(8, length // 3))]
    filler = [rng.choice(vocab) for _ in range(rng.randint(0, length - 2 * len(segment)))]
    tokens = segment + filler + segment
    labels = [-100] * (len(segment) + len(filler) + 1) + segment[1:]  # the first repeated token is not predictable
    return tokens, labels


def _recall_sequence(rng: random.Random, vocab: range, length: int) -> tuple[list[int], list[int]]:
    pairs = rng.randint(4, max(4, length // 12))
    keys = rng.sample(vocab, pairs)
    values = [rng.choice(vocab) for _ in keys]
    gap = max(0, (length // 2 - 2 * pairs) // pairs)  # filler between pairs: recall over prompt-like distances
    tokens, labels = [], []
    for k, v in zip(keys, values):
        filler = [rng.choice(vocab) for _ in range(rng.randint(0, gap))]
        tokens += [k, v, *filler]
        labels += [-100] * (2 + len(filler))
    asked = rng.sample(range(pairs), min(pairs, (length - len(tokens)) // 2))
    for i in asked:
        tokens += [keys[i], values[i]]
        labels += [-100, values[i]]
    return tokens, labels


def batch(rng: random.Random, vocab: range, size: int, length: int):
    """(input_ids, labels) tensors, right-padded to the longest; labels already shifted by the model (HF style)."""
    import torch

    rows = [(_repeat_sequence if rng.random() < 0.5 else _recall_sequence)(rng, vocab, length) for _ in range(size)]
    width = max(len(t) for t, _ in rows)
    ids = torch.zeros((size, width), dtype=torch.long)
    labels = torch.full((size, width), -100, dtype=torch.long)
    mask = torch.zeros((size, width), dtype=torch.long)
    for i, (t, lab) in enumerate(rows):
        ids[i, :len(t)] = torch.tensor(t)
        # HF shifts labels inside the loss: label[j] is the target of position j-1, so align target to its token
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(t)] = 1
    return ids, labels, mask


def recall_accuracy(model, rng: random.Random, vocab: range, length: int, size: int = 64) -> dict:
    import torch

    out = {}
    for name, make in (("repeat", _repeat_sequence), ("recall", _recall_sequence)):
        hit = total = 0
        for _ in range(size):
            tokens, labels = make(rng, vocab, length)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([tokens])).logits[0]
            predicted = logits.argmax(-1).tolist()
            for j in range(1, len(tokens)):
                if labels[j] != -100:
                    hit += predicted[j - 1] == labels[j]
                    total += 1
        out[name] = hit / max(total, 1)
    return out


def pretrain(base_dir: Path, *, steps: int = 3000, batch_size: int = 16, length: int = 96, lr: float = 3e-3,
             seed: int = 0, log_every: int = 250) -> dict:
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    lm = model.model.language_model
    params = list(lm.parameters())
    vocab = range(300, model.config.text_config.vocab_size - 16)  # ordinary tokens, no specials
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    started, history = time.perf_counter(), []
    for step in range(1, steps + 1):
        ids, labels, mask = batch(rng, vocab, batch_size, length)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            model.eval()
            accuracy = recall_accuracy(model, random.Random(10_000 + step), vocab, length, size=24)
            model.train()
            history.append({"step": step, "loss": round(loss.item(), 4), **accuracy})
            log.info("step %d loss %.3f repeat %.1f%% recall %.1f%% (%.0f s)", step, loss.item(),
                     100 * accuracy["repeat"], 100 * accuracy["recall"], time.perf_counter() - started)
    model.eval()
    model.save_pretrained(base_dir, safe_serialization=True)
    final = recall_accuracy(model, random.Random(99), vocab, length, size=64)
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1), "final": final,
            "history": history}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", type=Path)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = pretrain(args.base, steps=args.steps, batch_size=args.batch, length=args.length, lr=args.lr,
                      seed=args.seed)
    log.info("final accuracy: repeat %.1f%%, recall %.1f%% in %.0f s", 100 * result["final"]["repeat"],
             100 * result["final"]["recall"], result["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
