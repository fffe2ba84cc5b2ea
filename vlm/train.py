"""Train a LoRA adapter for LLaVA-OneVision on the examples the UI logged (`vlm.dataset`).

    python -m vlm.train --data data/dataset --base llava-hf/llava-onevision-qwen2-7b-ov-hf --out runs/my-lora
    python -m vlm.train ... --resume          # continue from the latest out/checkpoints/step-N

Writes out/adapter_config.json + adapter_model.safetensors (PEFT's save_pretrained: the server and
`POST /api/vlm/adapter` load it), out/training_summary.json and out/loss_curve.png. Checkpoints (adapter, optimizer,
scheduler, RNG state) go to out/checkpoints/step-N every --save-every optimizer steps. The example order is a
function of --seed and the epoch, so a resumed run sees the same examples it would have seen without the stop.
Runs in its own process (torch is imported here, never by the web server).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

log = logging.getLogger("vlm.train")

DEFAULT_BASE = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
# The language model's attention projections only: SigLIP's layers also have q_proj/k_proj/v_proj.
DEFAULT_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vlm.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="dataset folder (or server data dir) or an export")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: local folder or Hugging Face name")
    p.add_argument("--out", required=True, type=Path, help="run folder, e.g. runs/NAME")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps; overrides --epochs when > 0")
    p.add_argument("--grad-accum", type=int, default=8, help="examples per optimizer step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=-1, help="-1: 5%% of the steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default=DEFAULT_TARGET, help="regex over module names")
    p.add_argument("--max-length", type=int, default=8192, help="longer examples are skipped")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N optimizer steps (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out/checkpoints")
    p.add_argument("--overwrite", action="store_true", help="start again even if out/ has checkpoints")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 (or float16) on CUDA, float32 on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs a line per step instead)")
    args = p.parse_args(argv)
    for name in ("grad_accum", "r", "alpha", "max_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.epochs <= 0 and args.max_steps <= 0:
        p.error("give --epochs > 0 or --max-steps > 0")
    return args


def _atomic_json(path: Path, obj) -> None:
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


def _pick_device_dtype(args):
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = args.dtype
    if name == "auto":
        name = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device.startswith("cuda") else "float32"
    return torch.device(device), getattr(torch, name), name


def _base_ref(base: str) -> str:
    """A local base folder is recorded as an absolute path, so the server finds it from any working directory."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() else base


def build_model(args, checkpoint: Path | None, device, dtype):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    local = Path(args.base).expanduser().is_dir() or offline
    processor = AutoProcessor.from_pretrained(args.base, local_files_only=local)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(args.base, dtype=dtype, local_files_only=local,
                                                                   low_cpu_mem_usage=True).to(device)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        if checkpoint is not None:
            model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
        else:
            lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                              target_modules=args.target_modules, bias="none")
            model = get_peft_model(model, lora)
    model.peft_config["default"].base_model_name_or_path = _base_ref(args.base)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise SystemExit(f"--target-modules {args.target_modules!r} matches no module of {args.base}")
    return model, processor, trainable


def _lr_lambda(total: int, warmup: int):
    def factor(step: int) -> float:  # linear warm-up, then linear decay to 10% of the peak
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, total - warmup))
    return factor


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    import torch

    root = out / CHECKPOINTS
    final = root / f"step-{state['step']}"
    tmp = root / f".step-{state['step']}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_embedding_layers=False)  # LoRA weights only, never a full base layer
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               tmp / "optimizer.pt")
    _atomic_json(tmp / STATE_FILE, state)  # written last: a folder without it is incomplete
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    steps = sorted((int(p.name[5:]), p) for p in root.glob("step-*") if p.name[5:].isdigit())
    for _, old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _restore(checkpoint: Path, optimizer, scheduler) -> dict:
    import torch

    blob = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)  # never unpickle code
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    random.setstate(blob["rng"]["python"])
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return json.loads((checkpoint / STATE_FILE).read_text())


def save_final(out: Path, model) -> None:
    """Adapter files replace the previous ones only once complete (the server may be listing runs/)."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_embedding_layers=False)  # LoRA weights only, never a full base layer
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    tmp.rmdir()


def plot_losses(path: Path, losses: list[float], title: str) -> None:
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
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def train(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from vlm.dataset import load_examples
    from vlm.train_data import ExampleEncoder, to_device

    out: Path = args.out
    checkpoint = latest_checkpoint(out) if args.resume else None
    if args.resume and checkpoint is None:
        raise SystemExit(f"--resume: no checkpoint under {out / CHECKPOINTS} to continue from")
    if not args.resume and latest_checkpoint(out) is not None and not args.overwrite:
        raise SystemExit(f"{out} already has checkpoints: pass --resume to continue or --overwrite to start again")
    if args.overwrite and not args.resume:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    examples = load_examples(args.data)
    if not examples:
        raise SystemExit(f"no usable training examples in {args.data}")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device, dtype, dtype_name = _pick_device_dtype(args)
    model, processor, trainable = build_model(args, checkpoint, device, dtype)
    encoder = ExampleEncoder(processor, max_length=args.max_length)
    n = len(examples)
    total = args.max_steps if args.max_steps > 0 else max(1, math.ceil(n * args.epochs / args.grad_accum))
    warmup = args.warmup_steps if args.warmup_steps >= 0 else max(1, round(total * 0.05))
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))
    state = {"step": 0, "losses": [], "lrs": [], "elapsed_s": 0.0, "skipped": 0, "base": _base_ref(args.base)}
    if checkpoint is not None:
        state = _restore(checkpoint, optimizer, scheduler)
        if state.get("base") != _base_ref(args.base):
            raise SystemExit(f"checkpoint {checkpoint} was trained on {state.get('base')}, not {args.base}")
        log.info("resuming from %s (step %d of %d)", checkpoint, state["step"], total)
    out.mkdir(parents=True, exist_ok=True)
    log.info("%d examples, %d optimizer steps of %d examples, %d trainable parameters, %s on %s", n, total,
             args.grad_accum, sum(p.numel() for p in trainable), dtype_name, device)

    def example_at(micro: int) -> dict:  # the order depends only on the seed and the epoch: resumable
        epoch, pos = divmod(micro, n)
        order = list(range(n))
        random.Random(args.seed * 1_000_003 + epoch).shuffle(order)
        return examples[order[pos]]

    model.train()
    started = time.perf_counter() - state["elapsed_s"]
    bar = tqdm(total=total, initial=state["step"], desc="training", unit="step", disable=args.no_progress,
               dynamic_ncols=True)
    while state["step"] < total:
        step = state["step"]
        micro_losses = []
        for k in range(args.grad_accum):
            batch = encoder.encode(example_at(step * args.grad_accum + k))
            if batch is None:
                state["skipped"] += 1
                continue
            loss = model(**to_device(batch, device, dtype)).loss
            (loss / args.grad_accum).backward()
            micro_losses.append(float(loss.detach()))
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        state["lrs"].append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = sum(micro_losses) / len(micro_losses) if micro_losses else float("nan")
        state["losses"].append(round(step_loss, 6))
        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{state['lrs'][-1]:.2e}")
        if args.no_progress:
            log.info("step %d/%d loss %.4f", state["step"], total, step_loss)
        if (args.save_every > 0 and state["step"] % args.save_every == 0) or state["step"] == total:
            save_checkpoint(out, model, optimizer, scheduler, {**state, "args": _args_json(args)},
                            args.keep_checkpoints)
    bar.close()
    save_final(out, model)
    finite = [x for x in state["losses"] if math.isfinite(x)]
    summary = {
        "base": _base_ref(args.base), "examples": n, "steps": state["step"],
        "epochs": round(state["step"] * args.grad_accum / n, 4),
        "final_loss": finite[-1] if finite else None,
        "mean_loss": round(sum(finite) / len(finite), 6) if finite else None,
        "loss_per_step": state["losses"], "lr_per_step": state["lrs"], "skipped_examples": state["skipped"],
        "time_s": round(state["elapsed_s"], 3), "dtype": dtype_name, "device": str(device),
        "trainable_params": sum(p.numel() for p in trainable), "resumed_from": str(checkpoint) if checkpoint else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": _args_json(args),
    }
    _atomic_json(out / "training_summary.json", summary)
    plot_losses(out / "loss_curve.png", state["losses"], f"LoRA on {Path(args.base).name}: {n} examples")
    return summary


def _args_json(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    summary = train(args)
    print(f"trained {summary['steps']} steps ({summary['epochs']} epochs) in {summary['time_s']} s: "
          f"final loss {summary['final_loss']}, mean {summary['mean_loss']}")
    print(f"adapter: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
