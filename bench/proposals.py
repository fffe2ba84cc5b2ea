"""Proposal benchmark, end to end: synthetic data -> LoRA training of the tiny LLaVA-OneVision -> evaluation on the
held-out test split, side by side with the "no change" and "mean" baselines.

1. `vlm.synth` for the rover and the bracket: text requests in three styles (absolute values, relative amounts,
   directions only) and photo requests with photo-like reference renders; no-change pairs among them. Training
   text requests skip the CAD build (thousands of them in a minute); validation, test and every example with an
   image are built.
2. `vlm.train` on the train split, validated on the val split (the adapter of the best validation is kept). The
   base model is the one the tests build (`vlm.tiny`: random weights apart from one hand-set recency head per layer), so
   any task skill comes from this training.
3. `vlm.eval` on the test split through the real serving path (the fine-tuned backend's worker process), with the
   exact CAD IoU to the target state before and after applying each answer; answered greedily and by a vote of
   --votes seeded samples (`vlm.voting`), side by side.

Run: .venv/bin/python bench/proposals.py [--text 1500 --photo 150 --steps 12000 --votes 9] [--work DIR] [--out FILE]
Prints the eval table and a one-line verdict; writes everything as JSON (default bench-results/proposals.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = ["rover", "bracket"]
# A random-init model has no attention pattern to start from: these settings (LoRA on every projection and the
# output layer, a high learning rate, one example per step, a share of the loss on the prompt's text) are what
# lets it learn anything on 2 cores.
TINY_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|.*lm_head"


def phase(name: str, started: float) -> float:
    now = time.perf_counter()
    logging.getLogger("bench").info("%s done in %.0f s", name, now - started)
    return now


def merge_into(dest: Path, *sources: Path) -> None:
    """One dataset folder from several (examples appended, images copied once)."""
    import shutil

    (dest / "images").mkdir(parents=True, exist_ok=True)
    with open(dest / "examples.jsonl", "a", encoding="utf-8") as out:
        for src in sources:
            out.write((src / "examples.jsonl").read_text(encoding="utf-8"))
            for image in (src / "images").glob("*"):
                if not (dest / "images" / image.name).exists():
                    shutil.copyfile(image, dest / "images" / image.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", type=int, default=1200, help="text-request examples per model")
    p.add_argument("--photo", type=int, default=60, help="photo-request examples per model (rendered)")
    p.add_argument("--steps", type=int, default=12000, help="optimizer steps (one example each)")
    p.add_argument("--votes", type=int, default=9, help="sampled answers merged by vote (vlm.voting), beside greedy")
    p.add_argument("--vote-temperature", type=float, default=0.7)
    p.add_argument("--vote-share", type=float, default=0.7,
                   help="a change is kept when more than this share of the samples make it (with temperature 0.7: the "
                        "best of 0.5/0.7/1.0 x 0.5..0.8 on the validation split)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="task-agnostic recall pre-training of the tiny base first (vlm.tiny_pretrain); 0: none")
    p.add_argument("--pretrain-length", type=int, default=96, help="tokens per pre-training sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=80, help="test examples evaluated")
    p.add_argument("--work", type=Path, help="keep the data, model and adapter here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=Path("bench-results/proposals.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="optim-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return run(args, work)


def run(args, work: Path) -> int:
    from vlm.eval import main as eval_main
    from vlm.synth import SynthConfig, synthesise
    from vlm.tiny import build_tiny_model
    from vlm.train import main as train_main

    started = t0 = time.perf_counter()
    base, _ = build_tiny_model(work / "tiny", seed=args.seed)
    pretrained = None
    if args.pretrain_steps:
        from vlm.tiny_pretrain import pretrain

        pretrained = pretrain(base, steps=args.pretrain_steps, length=args.pretrain_length, seed=args.seed)
        logging.getLogger("bench").info("pre-trained base: repeat %.1f%%, recall %.1f%%",
                                        100 * pretrained["final"]["repeat"], 100 * pretrained["final"]["recall"])
    t0 = phase("tiny model", t0)
    common = dict(models=MODELS, seed=args.seed, size=96, views=("iso",), workers=0, val=0.02, test=0.04,
                  no_change=0.05)
    text = SynthConfig(**common, count=args.text, styles={"absolute": 2, "relative": 1, "direction": 1},
                       render_share=0.0, check_text_builds=False)
    photo = SynthConfig(**{**common, "seed": args.seed + 1, "val": 0.05, "test": 0.2}, count=args.photo,
                        styles={"photo": 1}, photo_like=0.6)
    synthesise(text, work / "synth-text", progress=True)
    synthesise(photo, work / "synth-photo", progress=True)
    data = work / "data"
    merge_into(data, work / "synth-text", work / "synth-photo")
    t0 = phase("synthetic data", t0)
    adapter = work / "runs" / "bench"
    train_main(["--data", str(data), "--base", str(base), "--out", str(adapter), "--max-steps", str(args.steps),
                "--grad-accum", "1", "--lr", str(args.lr), "--r", "16", "--alpha", "32", "--dropout", "0",
                "--target-modules", TINY_TARGETS, "--prompt-loss-weight", "0.2",
                "--eval-every", str(max(1, args.steps // 4)), "--eval-examples", "16", "--eval-max-new-tokens",
                "160", "--save-every", "0", "--seed", str(args.seed),
                "--no-progress"])
    t0 = phase("training", t0)
    eval_main(["--data", str(data), "--split", "test", "--limit", str(args.test_limit), "--backend", "finetuned",
               "--adapter", str(adapter), "--max-new-tokens", "200", "--out", str(args.out), "--no-progress",
               "--votes", "1", *([str(args.votes)] if args.votes > 1 else []),
               "--vote-temperature", str(args.vote_temperature), "--vote-share", str(args.vote_share)])
    phase("evaluation", t0)
    report = json.loads(args.out.read_text())
    summary = json.loads((adapter / "training_summary.json").read_text())
    greedy = report["systems"][f"adapter:{adapter.name}"]
    trained = report["systems"].get(f"adapter:{adapter.name} vote{args.votes}", greedy)
    none, mean = report["systems"]["no change"], report["systems"]["mean"]
    report["bench"] = {"seconds": round(time.perf_counter() - started, 1), "train_examples": summary["examples"],
                       "steps": summary["steps"], "adapter_step": summary["adapter_step"],
                       "pretrain": pretrained and {k: v for k, v in pretrained.items() if k != "history"}, "args": {
                           k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\ntrained on {summary['examples']} examples, {summary['steps']} steps (adapter of step "
          f"{summary['adapter_step']}), whole run {report['bench']['seconds']:.0f} s")
    print(f"answers that parse: {trained['parse_rate']:.1%} (goal >= 95%); greedy {greedy['parse_rate']:.1%}")
    if trained is not greedy:
        print(f"param error after, greedy (one answer): {greedy['error_after']:.4f} -> trained/no change = "
              f"{greedy['error_after'] / none['error_after']:.3f}; below: a vote of {args.votes} samples")
    print(f"param error after: trained {trained['error_after']:.4f} | no change {none['error_after']:.4f} | "
          f"mean {mean['error_after']:.4f}  ->  trained/no change = {trained['error_after'] / none['error_after']:.3f}"
          f", trained/mean = {trained['error_after'] / mean['error_after']:.3f}")
    print(f"IoU to target after (mean): trained {trained['iou_after']:.4f} | no change {none['iou_after']:.4f} | "
          f"mean {mean['iou_after']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
