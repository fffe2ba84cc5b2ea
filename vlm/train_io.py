"""What `vlm.train` writes: checkpoints (resumable), the best adapter, the final adapter and the loss plot.

Every folder is written under a temporary name and renamed when complete, so the server listing `runs/` never
sees half an adapter.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoints"
BEST = "best"
STATE_FILE = "trainer_state.json"


def atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def latest_checkpoint(out: Path) -> Path | None:
    found = []
    for folder in (out / CHECKPOINTS).glob("step-*"):
        match = re.fullmatch(r"step-(\d+)", folder.name)
        if match and (folder / STATE_FILE).is_file():
            found.append((int(match.group(1)), folder))
    return max(found)[1] if found else None


def _save_adapter(model, folder: Path) -> Path:
    """LoRA weights only (never a full base layer), written to a temporary folder first."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_embedding_layers=False)
    return tmp


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    import torch

    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state['step']}"
    tmp = _save_adapter(model, final)
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               tmp / "optimizer.pt")
    atomic_json(tmp / STATE_FILE, state)  # written last: a folder without it is incomplete
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    steps = sorted((int(p.name[5:]), p) for p in root.glob("step-*") if p.name[5:].isdigit())
    for _, old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(checkpoint: Path, optimizer, scheduler) -> dict:
    import torch

    blob = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)  # never unpickle code
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    random.setstate(blob["rng"]["python"])
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return json.loads((checkpoint / STATE_FILE).read_text())


def save_best(out: Path, model, record: dict) -> None:
    """The adapter of the best validation so far, in out/best (replaced whole)."""
    final = out / BEST
    tmp = _save_adapter(model, final)
    atomic_json(tmp / "best.json", record)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def publish_adapter(out: Path, source: Path | None, model) -> None:
    """The run's adapter files in out/: a copy of `source` (the best checkpoint) or the model as it is now.
    Files replace the previous ones only once complete (the server may be listing runs/)."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if source is not None:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("best.json"))
    else:
        model.save_pretrained(tmp, save_embedding_layers=False)
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()


def plot_losses(path: Path, losses: list[float], evals: list[dict], title: str) -> None:
    """Training loss per step (and its running mean) with the validation loss at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, lw=1, alpha=0.5, label="loss per step")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, lw=2, label=f"mean of {window}")
    points = [(e["step"], e["eval_loss"]) for e in evals if e.get("eval_loss") is not None]
    if points:
        ax.plot(*zip(*points), "o-", lw=1.5, label="validation loss")
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
