"""Proposal benchmark: do a backend's answers move a design toward what was asked?

    python -m vlm.eval --data data/synth --split test --backend finetuned --adapter runs/my-lora
    python -m vlm.eval --data data/synth --compare runs/lora-a runs/lora-b --out eval.json
    python -m vlm.eval --data data/synth --backend ollama --url http://127.0.0.1:11434 --model llava:13b
    python -m vlm.eval --data data/synth --backend openai --url http://127.0.0.1:8000/v1 --model llava-hf/...
    python -m vlm.eval --data data/synth --backend replay --answers answers.jsonl   # answers collected elsewhere

Every example needs the values the model saw and the target values (`vlm.synth` writes both; the UI logs both for
applied examples). Each system answers the example's own prompt and images, exactly as the server sends them
(with the same structured-output schema); the answer is read by the server's parser, its valid proposals are
applied and the result is measured (`vlm.metrics`), plus the exact CAD IoU to the target state before and after
(`cad.target.state_iou`, in a process pool). Two baselines are always printed beside the systems: "no change" and
"mean" (every parameter set to its mean target value over the training split), so learning from the images or the
request shows only where a system beats both. Output: a table on stdout, and everything per example with --out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cad.pool import CadPool, JobFailed
from cad.registry import ModelRegistry
from vlm.backend import Backend, BackendError, GenerateRequest
from vlm.dataset import canonical_json, load_examples
from vlm.metrics import Score, aggregate, score_answer
from vlm.prompts import proposal_json_schema
from vlm.units import tidy_number
from vlm.voting import VoteSettings

log = logging.getLogger("vlm.eval")

NO_CHANGE, MEAN = "no change", "mean"


@dataclass
class Item:
    example: dict
    schema: list[dict]
    script_path: str

    @property
    def values(self) -> dict:
        return self.example["values"]

    @property
    def target_values(self) -> dict:
        return self.example["target_values"]


def evaluation_items(examples: list[dict], registry: ModelRegistry) -> tuple[list[Item], Counter]:
    """Examples that can be scored (known model, values and target values that fit its schema)."""
    items, skipped = [], Counter()
    for example in examples:
        if not isinstance(example.get("values"), dict) or not isinstance(example.get("target_values"), dict):
            skipped["no values or target values"] += 1
            continue
        try:
            model = registry.get(example.get("cad_model"))
        except Exception:  # noqa: BLE001 - unknown or broken script: the example cannot be scored
            skipped[f"model {example.get('cad_model')!r} not available"] += 1
            continue
        try:
            values = model.schema.complete(example["values"])
            target = model.schema.complete(example["target_values"])
        except Exception:  # noqa: BLE001 - the script changed since the example was made
            skipped["values no longer fit the model's schema"] += 1
            continue
        items.append(Item({**example, "values": values, "target_values": target}, model.schema.to_json(),
                          str(model.path)))
    return items, skipped


# ---------------------------------------------------------------- systems
class System:
    """Answers items: `answer(item) -> (text, finish_reason, latency_s or None)`."""
    label = "system"

    def start(self) -> None:
        pass

    def answer(self, item: Item) -> tuple[str, str | None, float | None]:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class NoChange(System):
    label = NO_CHANGE

    def answer(self, item):
        return json.dumps({"summary": "No change.", "changes": []}), "stop", None


def _snap(param: dict, value: float):
    """A mean value on the parameter's grid and within its range."""
    lo, hi, step = param["min"], param["max"], param.get("step")
    if param["type"] == "int":
        return int(min(hi, max(lo, round(value))))
    if step:
        value = lo + round((value - lo) / step) * step
    return float(f"{min(hi, max(lo, value)):.10g}")


class MeanTarget(System):
    """Every parameter set to its mean target value over the training examples of the same model (bools: the
    majority), whatever the request says."""
    label = MEAN

    def __init__(self, train: list[Item]):
        self.means: dict[str, dict] = {}
        for model in {i.example.get("cad_model") for i in train}:
            mine = [i for i in train if i.example.get("cad_model") == model]
            means = {}
            for param in mine[0].schema:
                column = [i.target_values[param["name"]] for i in mine]
                if param["type"] == "bool":
                    means[param["name"]] = sum(map(bool, column)) * 2 >= len(column)
                else:
                    means[param["name"]] = _snap(param, sum(map(float, column)) / len(column))
            self.means[model] = means

    def answer(self, item):
        means = self.means.get(item.example.get("cad_model"))
        if means is None:  # no training example of this model: nothing to predict from
            return NoChange().answer(item)
        changes = [{"parameter": n, "value": tidy_number(v), "reason": "training mean"} for n, v in means.items()]
        return json.dumps({"summary": "Training-set mean.", "changes": changes}), "stop", None


class BackendSystem(System):
    """A real engine through its `vlm.backend.Backend` (fine-tuned worker, Ollama, OpenAI-compatible)."""

    def __init__(self, label: str, backend: Backend, max_new_tokens: int = 512, timeout_s: float = 300,
                 voting: VoteSettings | None = None):
        self.voting = voting or VoteSettings()
        self.label = label if self.voting.votes == 1 else f"{label} vote{self.voting.votes}"
        self.backend = backend
        self.max_new_tokens, self.timeout_s = max_new_tokens, timeout_s

    def start(self):
        self.backend.load(lambda fraction, phase: log.debug("%s: %.0f%% %s", self.label, 100 * fraction, phase))

    def answer(self, item):
        example = item.example
        images = [Path(p).read_bytes() for p in example.get("image_paths") or []]
        request = GenerateRequest(system=example["system"], prompt=example["user"], images=images,
                                  max_new_tokens=self.max_new_tokens, temperature=0.0,
                                  json_schema=proposal_json_schema(item.schema), timeout_s=self.timeout_s)
        started = time.perf_counter()
        try:
            result = self.voting.answer(lambda samples: [self.backend.generate(s) for s in samples], request,
                                        item.schema, item.values)
        except BackendError as exc:  # one failed answer is an answer that does not parse, not a crashed benchmark
            log.warning("%s failed on example %s: %s", self.label, example.get("id"), exc.message)
            return "", f"error: {exc.code}", time.perf_counter() - started
        return result.text, result.finish_reason, time.perf_counter() - started

    def stop(self):
        self.backend.unload()


class Replay(System):
    """Answers collected elsewhere: a JSONL file of {"id": <example id>, "text": ..., "finish_reason"?}."""

    def __init__(self, path: Path, label: str | None = None):
        self.label = label or f"replay:{Path(path).name}"
        self.answers = {}
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                self.answers[str(row["id"])] = row

    def answer(self, item):
        row = self.answers.get(str(item.example.get("id")))
        if row is None:
            return "", "missing", None
        return str(row.get("text") or ""), row.get("finish_reason"), row.get("latency_s")


# ---------------------------------------------------------------- running
def _iou_job(script_path: str, values: dict, target_values: dict) -> float:
    from cad.target import state_iou

    try:
        return state_iou(script_path, values, target_values)["iou"]
    except Exception as exc:  # noqa: BLE001 - a proposal that does not build has no overlap with the target
        log.info("IoU not measurable (%s): counted as 0", exc)
        return 0.0


def measure_ious(items: list[Item], scores: dict[str, list[Score]], workers: int, progress: bool) -> None:
    """Fill iou_before/iou_after of every score; each distinct (state, target) pair is built once."""
    from tqdm import tqdm

    pairs: dict[str, tuple[str, dict, dict]] = {}

    def key(item: Item, values: dict) -> str:
        pair = canonical_json([item.script_path, values, item.target_values])
        pairs.setdefault(pair, (item.script_path, values, item.target_values))
        return pair

    wanted = [(label, i, key(item, item.values), key(item, scores[label][i].after_values))
              for label in scores for i, item in enumerate(items)]
    results: dict[str, float] = {}
    with CadPool(workers) as pool:
        futures = {pool.submit(_iou_job, *args): pair for pair, args in pairs.items()}
        for future in tqdm(futures, desc="IoU", unit="pair", disable=not progress, dynamic_ncols=True):
            try:
                results[futures[future]] = pool.result(future)
            except JobFailed as exc:  # a state that exhausts the limits does not build: no overlap
                log.info("IoU not measurable (%s): counted as 0", exc)
                results[futures[future]] = 0.0
    for label, i, before, after in wanted:
        scores[label][i].iou_before, scores[label][i].iou_after = results[before], results[after]


def run_system(system: System, items: list[Item], progress: bool) -> list[Score]:
    from tqdm import tqdm

    system.start()
    try:
        scores = []
        for item in tqdm(items, desc=system.label[:40], unit="answer", disable=not progress, dynamic_ncols=True):
            text, finish, latency = system.answer(item)
            score = score_answer(text, item.schema, item.values, item.target_values,
                                 truncated=finish == "length", latency_s=latency)
            score.extra = {"text": text, "finish_reason": finish}
            scores.append(score)
        return scores
    finally:
        system.stop()


def evaluate(items: list[Item], systems: list[System], *, train: list[Item], iou: bool = True, workers: int = 0,
             progress: bool = True) -> dict:
    """The report: figures per system (baselines first), per request style, and per example."""
    everyone = [NoChange(), MeanTarget(train), *systems]
    scores = {system.label: run_system(system, items, progress) for system in everyone}
    if iou:
        measure_ious(items, scores, workers, progress)
    styles = sorted({str(i.example.get("style") or i.example.get("outcome")) for i in items})
    by_style = {label: {style: aggregate([s for s, i in zip(rows, items)
                                          if str(i.example.get("style") or i.example.get("outcome")) == style])
                        for style in styles} for label, rows in scores.items()}
    return {
        "systems": {label: aggregate(rows) for label, rows in scores.items()},
        "by_style": by_style,
        "examples": [{"id": item.example.get("id"), "cad_model": item.example.get("cad_model"),
                      "style": item.example.get("style"), "request": item.example.get("request"),
                      "scores": {label: rows[i].to_json() for label, rows in scores.items()}}
                     for i, item in enumerate(items)],
    }


# ---------------------------------------------------------------- reporting
ROWS = [("answers that parse", "parse_rate", "pct"), ("proposals valid", "valid_rate", "pct"),
        ("answers cut off (length)", "truncated", "int"), ("changed-param precision", "precision", "pct"),
        ("changed-param recall", "recall", "pct"), ("no-change kept when right", "no_change_correct", "pct"),
        ("param error before", "error_before", "num"), ("param error after", "error_after", "num"),
        ("examples improved", "improved", "pct"), ("examples worsened", "worsened", "pct"),
        ("IoU before (mean)", "iou_before", "num"), ("IoU after (mean)", "iou_after", "num"),
        ("IoU after (median)", "iou_after_median", "num"), ("latency mean (s)", "latency_mean_s", "sec"),
        ("latency p95 (s)", "latency_p95_s", "sec")]


def _cell(value, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": f"{100 * value:.1f}%", "int": str(value), "num": f"{value:.4f}", "sec": f"{value:.2f}"}[kind]


def format_table(report: dict) -> str:
    labels = list(report["systems"])
    width = min(30, max(12, *(len(label) for label in labels)))
    first = max(len(name) for name, _, _ in ROWS) + 2
    n = next(iter(report["systems"].values()))["examples"]
    lines = [f"{'':<{first}}" + "".join(f"{label[-width:]:>{width + 2}}" for label in labels), f"{n} examples"]
    for name, key, kind in ROWS:
        lines.append(f"{name:<{first}}" + "".join(f"{_cell(report['systems'][l][key], kind):>{width + 2}}"
                                                   for l in labels))
    lines.append("")
    lines.append("param error after, by request style (before -> after, n)")
    for style in next(iter(report["by_style"].values())):
        sample = report["by_style"][labels[0]][style]
        row = f"{style + ' (' + str(sample['examples']) + ')':<{first}}"
        row += "".join(f"{_cell(report['by_style'][l][style]['error_after'], 'num'):>{width + 2}}" for l in labels)
        lines.append(row + f"   (before {_cell(sample['error_before'], 'num')})")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI
def make_systems(args) -> list[System]:
    # --votes 1 9: the same engine answering greedily and by a vote of 9 samples, side by side
    votings = [VoteSettings(votes=n, temperature=args.vote_temperature, min_share=args.vote_share)
               for n in args.votes]
    if args.backend == "finetuned" or args.compare:
        from vlm.finetuned import FinetunedBackend

        adapters = args.compare or [args.adapter]
        if not all(adapters):
            raise SystemExit("--backend finetuned needs --adapter PATH (or --compare A B ...)")
        systems = []
        for a in adapters:
            backend = FinetunedBackend(Path(a), args.base, dtype=args.dtype)
            systems += [BackendSystem(f"adapter:{Path(a).name}", backend, args.max_new_tokens, args.timeout, v)
                        for v in votings]
        return systems
    if args.backend == "ollama":
        from vlm.ollama import OllamaBackend

        backend = OllamaBackend(args.url or "http://127.0.0.1:11434", model=args.model or "llava:latest",
                                read_timeout_s=args.timeout)
        return [BackendSystem(f"ollama:{backend.model}", backend, args.max_new_tokens, args.timeout, v)
                for v in votings]
    if args.backend == "openai":
        from vlm.openai_compat import OpenAICompatBackend

        backend = OpenAICompatBackend(args.url or "http://127.0.0.1:8000/v1", model=args.model or "",
                                      api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                                      read_timeout_s=args.timeout)
        return [BackendSystem(f"openai:{backend.model}", backend, args.max_new_tokens, args.timeout, v)
                for v in votings]
    if args.backend == "replay":
        if not args.answers:
            raise SystemExit("--backend replay needs --answers FILE.jsonl")
        return [Replay(args.answers)]
    return []  # baselines only


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m vlm.eval", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="dataset folder (vlm.synth output or a UI log)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--limit", type=int, default=0, help="at most this many examples, a fixed sample (0: all)")
    p.add_argument("--backend", choices=["none", "finetuned", "ollama", "openai", "replay"], default="none")
    p.add_argument("--adapter", help="LoRA adapter folder (finetuned)")
    p.add_argument("--compare", nargs="+", metavar="ADAPTER", help="several adapters side by side (finetuned)")
    p.add_argument("--base", help="base model (default: the adapter's own)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--url", help="engine URL (ollama, openai)")
    p.add_argument("--model", help="model name on the engine (ollama, openai)")
    p.add_argument("--api-key", help="bearer token (openai; default $OPENAI_API_KEY)")
    p.add_argument("--answers", type=Path, help="JSONL answers to replay")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--votes", type=int, nargs="+", default=[1], metavar="N",
                   help="answers sampled per request and merged by vote (vlm.voting); several: side by side")
    p.add_argument("--vote-temperature", type=float, default=VoteSettings.temperature)
    p.add_argument("--vote-share", type=float, default=VoteSettings.min_share,
                   help="a parameter changes when more than this share of the sampled answers change it")
    p.add_argument("--timeout", type=float, default=300, help="seconds per answer")
    p.add_argument("--no-iou", action="store_true", help="skip the CAD IoU (parameter metrics only)")
    p.add_argument("--workers", type=int, default=0, help="IoU build processes (0: one per CPU)")
    p.add_argument("--models-dir", action="append", type=Path, default=[], help="extra folder of model scripts")
    p.add_argument("--seed", type=int, default=0, help="split seed for examples without a split")
    p.add_argument("--out", type=Path, help="write the whole report as JSON here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    registry = ModelRegistry(extra_dirs=args.models_dir)
    split = None if args.split == "all" else args.split
    items, skipped = evaluation_items(load_examples(args.data, split=split, seed=args.seed), registry)
    if 0 < args.limit < len(items):  # a fixed sample across the whole split, not its first lines
        keep = set(sorted(range(len(items)), key=lambda i: hashlib.sha256(
            f"{args.seed}:{items[i].example.get('id')}".encode()).hexdigest())[:args.limit])
        items = [item for i, item in enumerate(items) if i in keep]
    train, _ = evaluation_items(load_examples(args.data, split="train", seed=args.seed), registry)
    if not items:
        raise SystemExit(f"no example of split {args.split!r} in {args.data} can be scored"
                         + (f" ({dict(skipped)})" if skipped else ""))
    for why, count in skipped.items():
        log.warning("skipped %d examples: %s", count, why)
    report = evaluate(items, make_systems(args), train=train, iou=not args.no_iou, workers=args.workers,
                      progress=not args.no_progress)
    report["data"], report["split"], report["skipped"] = str(args.data), args.split, dict(skipped)
    print(format_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, args.out)
        print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
