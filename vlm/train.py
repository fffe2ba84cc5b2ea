"""Train a LoRA adapter for LLaVA-OneVision on a dataset of examples (`vlm.dataset`: UI decisions, `vlm.synth`).

    python -m vlm.train --data data/synth --base llava-hf/llava-onevision-qwen2-7b-ov-hf --out runs/my-lora
    python -m vlm.train ... --resume                      # continue from the latest out/checkpoints/step-N
    python -m vlm.train ... --init-adapter runs/old-lora  # start from an existing adapter (a new run)

Trains on the dataset's train split and validates on its val split (or --val-data): the validation loss and the
proposal benchmark's task metrics (`vlm.metrics`: answers that parse, valid proposals, precision/recall of the
changed parameters, parameter error before/after) every --eval-every steps and at the end. The adapter of the
best validation (lowest parameter error after applying, else lowest loss) is kept in out/best and published as the
run's adapter in out/ (adapter_config.json + adapter_model.safetensors, what the server loads), with
training_summary.json (loss curve, validation history, best step, example counts; the UI's adapter picker shows
it) and loss_curve.png. Without --epochs/--grad-accum the schedule is sized from the dataset (see
`plan_schedule`). Checkpoints go to out/checkpoints/step-N; the example order is a function of --seed and the
epoch, so a resumed run sees the examples it would have seen without the stop. Runs in its own process (torch is
imported here, never by the web server).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

from vlm.train_io import BEST, CHECKPOINTS, atomic_json, latest_checkpoint, plot_losses, publish_adapter, restore, \
    save_best, save_checkpoint

log = logging.getLogger("vlm.train")

DEFAULT_BASE = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
# The language model's attention projections only: SigLIP's layers also have q_proj/k_proj/v_proj.
DEFAULT_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
MIN_STEPS = 200  # the automatic schedule aims for at least this many optimizer steps ...
MIN_EPOCHS, MAX_EPOCHS = 3, 30  # ... within these bounds on the epochs
EVALS_PER_RUN = 8  # automatic --eval-every
MAX_LOSS_EXAMPLES = 64  # validation loss over at most this many examples (it runs at every evaluation)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vlm.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="dataset folder (or server data dir) or an export")
    p.add_argument("--val-data", type=Path, help="validation dataset (default: the val split of --data)")
    p.add_argument("--split-seed", type=int, default=0, help="split of examples that carry none (UI logs)")
    p.add_argument("--base", default=DEFAULT_BASE, help="base model: local folder or Hugging Face name")
    p.add_argument("--out", required=True, type=Path, help="run folder, e.g. runs/NAME")
    p.add_argument("--epochs", type=float, default=0, help="0: sized from the dataset")
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps; overrides --epochs when > 0")
    p.add_argument("--grad-accum", type=int, default=0, help="examples per optimizer step (0: sized from the data)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=-1, help="-1: 5%% of the steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default=DEFAULT_TARGET, help="regex over module names")
    p.add_argument("--prompt-loss-weight", type=float, default=0.0,
                   help="also learn to predict the prompt's text, at this weight (0: the answer only)")
    p.add_argument("--init-adapter", type=Path, help="start from this adapter's weights instead of a new LoRA")
    p.add_argument("--max-length", type=int, default=8192, help="longer examples are skipped")
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: about 8 times, -1: only "
                                                               "at the end)")
    p.add_argument("--eval-examples", type=int, default=16, help="validation answers generated for the task "
                                                                  "metrics (0: loss only)")
    p.add_argument("--eval-max-new-tokens", type=int, default=256)
    p.add_argument("--select-by", choices=["auto", "error_after", "eval_loss"], default="auto",
                   help="what makes a checkpoint the best (auto: error_after when task metrics run)")
    p.add_argument("--models-dir", action="append", type=Path, default=[], help="extra folder of model scripts")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N optimizer steps (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out/checkpoints")
    p.add_argument("--overwrite", action="store_true", help="start again even if out/ has checkpoints")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 (or float16) on CUDA, float32 on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs about 50 lines instead)")
    p.add_argument("--progress-file", type=Path, help="keep this JSON file up to date (phase, step, loss, ETA): the "
                                                      "server's training jobs read it")
    args = p.parse_args(argv)
    for name in ("r", "alpha", "max_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.epochs < 0 or args.grad_accum < 0 or args.max_steps < 0:
        p.error("--epochs, --grad-accum and --max-steps cannot be negative")
    return args


def plan_schedule(n: int, args) -> tuple[int, float, int]:
    """(grad_accum, epochs, optimizer steps). Without explicit values: up to 8 examples per step (fewer on a small
    dataset, so it still takes many steps), and enough epochs for about MIN_STEPS steps within 3..30 epochs."""
    grad_accum = args.grad_accum or min(8, max(1, n // 32))
    epochs = args.epochs or float(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS * grad_accum / n))))
    total = args.max_steps if args.max_steps > 0 else max(1, math.ceil(n * epochs / grad_accum))
    return grad_accum, epochs, total


class ProgressFile:
    """`--progress-file`: phase, step, loss and ETA written atomically at most every PROGRESS_EVERY_S."""

    PROGRESS_EVERY_S = 0.5

    def __init__(self, path: Path | None, total: int):
        self.path, self.total, self.written = path, total, 0.0
        self.first_step: tuple[int, float] | None = None  # (step, time) when this process began training

    def update(self, phase: str, step: int, loss: float | None = None, best: dict | None = None,
               force: bool = False) -> None:
        now = time.perf_counter()
        if self.path is None or (not force and now - self.written < self.PROGRESS_EVERY_S):
            return
        if self.first_step is None:
            self.first_step = (step, now)
        done, since = step - self.first_step[0], now - self.first_step[1]
        eta = since / done * (self.total - step) if done > 0 else None
        atomic_json(self.path, {"phase": phase, "step": step, "total_steps": self.total,
                                "loss": loss if loss is None or math.isfinite(loss) else None,
                                "eta_s": None if eta is None else round(eta, 1),
                                "best": {k: best.get(k) for k in ("step", "error_after", "eval_loss")}
                                if best else None})
        self.written = now


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


def build_model(args, start_from: Path | None, device, dtype):
    """The base model with a trainable LoRA: a new one, or the weights of `start_from` (checkpoint or adapter)."""
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
        if start_from is not None:
            model = PeftModel.from_pretrained(model, str(start_from), is_trainable=True)
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


def load_splits(args) -> tuple[list[dict], list[dict]]:
    from vlm.dataset import load_examples

    train = load_examples(args.data, split="train", seed=args.split_seed)
    if args.val_data:
        val = load_examples(args.val_data, split="val", seed=args.split_seed) or load_examples(args.val_data)
    else:
        val = load_examples(args.data, split="val", seed=args.split_seed)
    if not train:
        raise SystemExit(f"no usable training examples in {args.data} (examples need a target; rejected answers "
                         "have none)")
    if not val:
        log.warning("no validation examples: the adapter of the last step is kept, without validation figures")
    return train, val


class Validator:
    """Validation loss and task metrics at a step; tracks the best record and saves its adapter."""

    def __init__(self, args, model, processor, encoder, val: list[dict], device, dtype, state: dict):
        from cad.registry import ModelRegistry
        from vlm.eval import evaluation_items

        self.args, self.model, self.processor, self.encoder = args, model, processor, encoder
        self.val, self.device, self.dtype, self.state = val, device, dtype, state
        items, _ = evaluation_items(val, ModelRegistry(extra_dirs=args.models_dir)) if val else ([], None)
        self.items = items[:max(0, args.eval_examples)]
        self.metric = ("error_after" if self.items and args.select_by != "eval_loss" else "eval_loss")

    def _rank(self, record: dict) -> tuple:
        """Lower is better: the metric, then (on a tie, e.g. two checkpoints that change nothing) more answers
        that parse, then the validation loss."""
        value = record.get(self.metric)
        loss = record.get("eval_loss")
        return (math.inf if value is None else round(value, 9), -(record.get("parse_rate") or 0.0),
                math.inf if loss is None else loss)

    def run(self, step: int) -> dict | None:
        from vlm.train_eval import task_metrics, validation_loss

        if not self.val:
            return None
        started = time.perf_counter()
        record = {"step": step, "eval_loss": validation_loss(self.model, self.encoder, self.val[:MAX_LOSS_EXAMPLES],
                                                             self.device, self.dtype)}
        if self.items:
            record.update(task_metrics(self.model, self.processor, self.items, self.args.eval_max_new_tokens,
                                       self.device, self.dtype))
        record["eval_s"] = round(time.perf_counter() - started, 3)
        self.state["evals"].append(record)
        best = self.state.get("best")
        if record.get(self.metric) is not None and (best is None or self._rank(record) < self._rank(best)):
            self.state["best"] = {**record, "metric": self.metric}
            save_best(self.args.out, self.model, self.state["best"])
        log.info("validation at step %d: %s", step, {k: (round(v, 4) if isinstance(v, float) else v)
                                                     for k, v in record.items()})
        return record


def train(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from vlm.train_data import ExampleEncoder, to_device, training_loss

    out: Path = args.out
    if args.resume and args.init_adapter:
        raise SystemExit("--resume continues a checkpoint; --init-adapter starts a new run: give one of them")
    checkpoint = latest_checkpoint(out) if args.resume else None
    if args.resume and checkpoint is None:
        raise SystemExit(f"--resume: no checkpoint under {out / CHECKPOINTS} to continue from")
    if not args.resume and latest_checkpoint(out) is not None and not args.overwrite:
        raise SystemExit(f"{out} already has checkpoints: pass --resume to continue or --overwrite to start again")
    if args.overwrite and not args.resume:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        shutil.rmtree(out / BEST, ignore_errors=True)
    examples, val = load_splits(args)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device, dtype, dtype_name = _pick_device_dtype(args)
    model, processor, trainable = build_model(args, checkpoint or args.init_adapter, device, dtype)
    encoder = ExampleEncoder(processor, max_length=args.max_length)
    image_token = getattr(model.config, "image_token_index", None) or getattr(model.config, "image_token_id", None)
    n = len(examples)
    grad_accum, epochs, total = plan_schedule(n, args)
    eval_every = args.eval_every if args.eval_every else max(1, total // EVALS_PER_RUN)
    warmup = args.warmup_steps if args.warmup_steps >= 0 else max(1, round(total * 0.05))
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))
    state = {"step": 0, "losses": [], "lrs": [], "elapsed_s": 0.0, "skipped": 0, "base": _base_ref(args.base),
             "evals": [], "best": None}
    if checkpoint is not None:
        state = {"evals": [], "best": None, **restore(checkpoint, optimizer, scheduler)}
        if state.get("base") != _base_ref(args.base):
            raise SystemExit(f"checkpoint {checkpoint} was trained on {state.get('base')}, not {args.base}")
        log.info("resuming from %s (step %d of %d)", checkpoint, state["step"], total)
    out.mkdir(parents=True, exist_ok=True)
    log.info("%d training and %d validation examples; %d optimizer steps of %d examples (%g epochs); %d trainable "
             "parameters, %s on %s", n, len(val), total, grad_accum, epochs, sum(p.numel() for p in trainable),
             dtype_name, device)
    validator = Validator(args, model, processor, encoder, val, device, dtype, state)
    progress = ProgressFile(args.progress_file, total)
    progress.update("training", state["step"], force=True)

    def example_at(micro: int) -> dict:  # the order depends only on the seed and the epoch: resumable
        epoch, pos = divmod(micro, n)
        order = list(range(n))
        random.Random(args.seed * 1_000_003 + epoch).shuffle(order)
        return examples[order[pos]]

    model.train()
    started = time.perf_counter() - state["elapsed_s"]
    log_every = max(1, total // 50)  # without a bar: about 50 log lines per run, not one per step
    bar = tqdm(total=total, initial=state["step"], desc="training", unit="step", disable=args.no_progress,
               dynamic_ncols=True)
    while state["step"] < total:
        step = state["step"]
        micro_losses = []
        for k in range(grad_accum):
            batch = encoder.encode(example_at(step * grad_accum + k))
            if batch is None:
                state["skipped"] += 1
                continue
            loss = training_loss(model, to_device(batch, device, dtype), args.prompt_loss_weight, image_token)
            (loss / grad_accum).backward()
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
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{state['lrs'][-1]:.2e}")
        if args.no_progress and (state["step"] % log_every == 0 or state["step"] == total):
            recent = state["losses"][-log_every:]
            log.info("step %d/%d loss %.4f (mean of the last %d)", state["step"], total,
                     sum(recent) / len(recent), len(recent))
        progress.update("training", state["step"], step_loss)
        if state["step"] == total or (eval_every > 0 and state["step"] % eval_every == 0):
            progress.update("validating", state["step"], step_loss, state.get("best"), force=True)
            validator.run(state["step"])
        state["elapsed_s"] = time.perf_counter() - started
        if (args.save_every > 0 and state["step"] % args.save_every == 0) or state["step"] == total:
            save_checkpoint(out, model, optimizer, scheduler, {**state, "args": _args_json(args)},
                            args.keep_checkpoints)
    bar.close()
    best = state.get("best")
    publish_adapter(out, out / BEST if best and (out / BEST).is_dir() else None, model)
    summary = _summary(args, state, checkpoint, n, len(val), grad_accum, epochs, dtype_name, device, trainable,
                       validator.metric)
    atomic_json(out / "training_summary.json", summary)
    progress.update("done", state["step"], summary["final_loss"], state.get("best"), force=True)
    plot_losses(out / "loss_curve.png", state["losses"], state["evals"],
                f"LoRA on {Path(args.base).name}: {n} examples")
    return summary


def _summary(args, state, checkpoint, n, n_val, grad_accum, epochs, dtype_name, device, trainable, metric) -> dict:
    finite = [x for x in state["losses"] if math.isfinite(x)]
    evals = state["evals"]
    return {
        "base": _base_ref(args.base), "examples": n, "val_examples": n_val, "steps": state["step"],
        "grad_accum": grad_accum, "epochs_planned": epochs, "epochs": round(state["step"] * grad_accum / n, 4),
        "final_loss": finite[-1] if finite else None,
        "mean_loss": round(sum(finite) / len(finite), 6) if finite else None,
        "loss_per_step": state["losses"], "lr_per_step": state["lrs"], "skipped_examples": state["skipped"],
        "evals": evals, "final_eval": evals[-1] if evals and evals[-1]["step"] == state["step"] else None,
        "best": state.get("best"), "selected_by": metric,
        "adapter_step": (state.get("best") or {}).get("step", state["step"]),
        "time_s": round(state["elapsed_s"], 3), "dtype": dtype_name, "device": str(device),
        "trainable_params": sum(p.numel() for p in trainable), "resumed_from": str(checkpoint) if checkpoint else None,
        "init_adapter": str(args.init_adapter) if args.init_adapter else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": _args_json(args),
    }


def _args_json(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
            for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    summary = train(args)
    best = summary.get("best")
    print(f"trained {summary['steps']} steps ({summary['epochs']} epochs) on {summary['examples']} examples in "
          f"{summary['time_s']} s: final loss {summary['final_loss']}")
    if best:
        shown = {k: round(v, 4) for k, v in best.items() if isinstance(v, float)}
        print(f"best validation at step {best['step']} (by {summary['selected_by']}): {shown}")
    print(f"adapter: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
