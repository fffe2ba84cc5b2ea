"""Training examples: decisions logged by the UI, proposals judged inside Optimise, and synthetic pairs.

Layout of a dataset folder (default `<data_dir>/dataset`):
    examples.jsonl          one JSON object per example, appended with a single os.write on an O_APPEND fd
    images/<sha256>.png     the images the model saw, content-addressed (the same render is stored once)

A line holds what the model saw (system + user prompt, images with their role "render" or "reference", the
parameter `values` it was shown), what it said (`answer`), what happened (`outcome`) and the training `target`:
`{"summary", "changes": [{"parameter", "value", "reason"}]}` or null.

Outcomes and what they teach:
    applied     the user applied changes, maybe after correcting values or adding parameters: the target is what
                was applied (relative to the values the model saw), so even a wrong answer becomes a right example
    no_change   the user said nothing should change: the target is an explicit empty change list
    rejected    a rejected answer, kept for preference training (`answer` is the rejected side); target null.
                A reject is never read as "no change" by itself.
    optimise    a proposal judged inside Optimise: `raised_iou` says whether it moved the design toward the target;
                the target is its changes when it did, null otherwise
    synthetic   a generated pair (`vlm.synth`): the target is the change from `values` to `target_values`

One label per request: `request_key` hashes what the model saw (model, prompt, images); when a request was decided
more than once the latest decision wins and earlier ones are kept in the file but not trained on. Lines of schema 1
(where a reject carried the target `{"changes": []}`) are read with a reject's target dropped.

CLI: `python -m vlm.dataset export --data DIR --out OUT` writes a clean, self-contained copy and prints counts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlm.units import tidy_number

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
EXAMPLES_FILE = "examples.jsonl"
IMAGES_DIR = "images"
ROLES = ("render", "reference")
OUTCOMES = ("applied", "no_change", "rejected", "optimise", "synthetic")
SPLITS = ("train", "val", "test")
MAX_REASON_CHARS = 1000
_SHA = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg"}


class DatasetError(ValueError):
    """A dataset folder or an example cannot be used; the message says why."""


def _image_ext(data: bytes) -> str:
    for magic, ext in _EXTENSIONS.items():
        if data.startswith(magic):
            return ext
    raise DatasetError("only PNG and JPEG images are stored in a dataset")


def atomic_write(path: Path, data: bytes) -> None:
    """The file is the old content or the new, never part of either (a temporary, fsynced, then renamed)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _append_lines(path: Path, objs: list[dict]) -> None:
    """Whole lines in one write: concurrent writers (threads or processes) never interleave inside a line."""
    data = "".join(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n" for o in objs).encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a crash left a torn line: do not glue this example onto it
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):  # disk full: the reader skips the partial line
        raise OSError(f"only {written} of {len(data)} bytes of an example reached {path}")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(cad_model: str | None, system: str, user: str, image_shas: list[str]) -> str:
    """What the model saw, hashed: two decisions with the same key are two labels of one request."""
    return hashlib.sha256(canonical_json([cad_model, system, user, image_shas]).encode()).hexdigest()


def state_key(cad_model: str | None, values: dict) -> str:
    return hashlib.sha256(canonical_json([cad_model, values]).encode()).hexdigest()


def changes_between(values: dict, target_values: dict, reasons: dict[str, str] | None = None) -> list[dict]:
    """The target's change list: every parameter whose value differs, in the order of target_values."""
    reasons = reasons or {}
    return [{"parameter": name, "value": tidy_number(value), "reason": reasons.get(name, "")}
            for name, value in target_values.items() if name in values and not _same(values[name], value)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))
    return a == b


def make_target(summary: str, changes: list[dict]) -> dict:
    """What the model should answer, in the shape vlm.prompts asks for (a summary even for "no change")."""
    return {"summary": summary or "", "changes": list(changes)}


class DatasetLog:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def examples_path(self) -> Path:
        return self.root / EXAMPLES_FILE

    def store_image(self, data: bytes) -> dict:
        """Write the image once under its sha256; returns `{"sha256", "file"}` (file relative to the root)."""
        ext = _image_ext(data)
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{IMAGES_DIR}/{digest}{ext}"
        path = self.root / rel
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        return {"sha256": digest, "file": rel}

    def make_example(self, *, outcome: str, system: str, user: str, images: list[tuple[str, bytes]] = (),
                     answer: str = "", target: dict | None = None, values: dict | None = None,
                     target_values: dict | None = None, cad_model: str | None = None, **extra: Any) -> dict:
        """An example line (images stored). `images` are (role, bytes) pairs in the order the model saw them;
        `extra` adds fields such as request, backend, model, adapter, proposal_id, split, style, raised_iou."""
        if outcome not in OUTCOMES:
            raise DatasetError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if not isinstance(system, str) or not isinstance(user, str) or not user:
            raise DatasetError("an example needs the system and user prompt the model saw")
        if target is not None and not (isinstance(target, dict) and isinstance(target.get("changes"), list)):
            raise DatasetError("a target is {\"summary\", \"changes\": [...]} or null")
        if extra.get("split") not in (None, *SPLITS):
            raise DatasetError(f"split must be one of {', '.join(SPLITS)}")
        self.root.mkdir(parents=True, exist_ok=True)
        stored = []
        for role, data in images:
            if role not in ROLES:
                raise DatasetError(f"image role must be one of {ROLES}, not {role!r}")
            stored.append({"role": role, **self.store_image(bytes(data))})
        now = time.time()
        reason = extra.pop("reject_reason", None)
        return {
            "schema": SCHEMA_VERSION, "id": uuid.uuid4().hex,
            "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"), "time": now,
            "outcome": outcome, "cad_model": cad_model,
            "request_key": request_key(cad_model, system, user, [s["sha256"] for s in stored]),
            "system": system, "user": user, "images": stored, "answer": answer or "",
            "values": dict(values) if values is not None else None,
            "target_values": dict(target_values) if target_values is not None else None,
            "target": target, "reject_reason": reason[:MAX_REASON_CHARS] if isinstance(reason, str) else None,
            **extra,
        }

    def append(self, examples: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _append_lines(self.examples_path, examples)

    def record(self, **fields: Any) -> dict:
        """Build (see make_example), append and return one example."""
        example = self.make_example(**fields)
        self.append([example])
        log.info("dataset: recorded %s example %s (%s changes in the target)", example["outcome"], example["id"],
                 len(example["target"]["changes"]) if example["target"] else "no")
        return example

    def record_decision(self, ps, outcome: str, *, applied: dict[str, Any] | None = None,
                        reject_reason: str | None = None, extra: dict | None = None) -> dict | None:
        """Log a decision on a `vlm.proposals.ProposalSet` whose meta holds what the model saw (the web layer
        stores `system`, `user`, `images`, `image_roles`, `text`, `values`, `backend`, `model`, `adapter`).

        applied: the values the user applied (proposed, corrected or added). Applying twice accumulates; the
        target is every applied value that differs from what the model saw. Returns None for a set without the
        prompt (nothing to learn from)."""
        meta = ps.meta
        if not meta.get("user"):
            return None
        values = meta.get("values") or {}
        proposed = {p.parameter: p.value for p in ps.proposals if p.valid}
        reasons = {p.parameter: p.reason for p in ps.proposals}
        target = target_values = None
        if outcome == "applied":
            applied = {**meta.get("applied_so_far", {}), **(applied or {})}
            meta["applied_so_far"] = dict(applied)
            target_values = {**values, **applied}
            target = make_target(ps.summary, changes_between(values, target_values, reasons))
        elif outcome == "no_change":
            target_values = dict(values)
            target = make_target("Nothing needs to change.", [])
        elif outcome == "optimise":
            applied = dict(applied or {})
            if (extra or {}).get("raised_iou"):
                target_values = {**values, **applied}
                target = make_target(ps.summary, changes_between(values, target_values, reasons))
        else:
            applied = {}
            meta.pop("applied_so_far", None)
        applied = applied or {}
        corrected = {n: {"proposed": proposed[n], "applied": v} for n, v in applied.items()
                     if n in proposed and not _same(proposed[n], v)}
        return self.record(
            outcome=outcome, system=meta.get("system") or "", user=meta["user"],
            images=list(zip(meta.get("image_roles") or [], meta.get("images") or [])), answer=meta.get("text") or "",
            target=target, values=values or None, target_values=target_values, cad_model=ps.model_name,
            source="optimise" if outcome == "optimise" else "ui", proposal_id=ps.id, request=meta.get("prompt"),
            summary=ps.summary or "", applied=applied, corrected=corrected,
            added=sorted(n for n in applied if n not in {p.parameter for p in ps.proposals}),
            invalid=[p.parameter for p in ps.proposals if not p.valid], reject_reason=reject_reason,
            backend=meta.get("backend"), model=meta.get("model"), adapter=meta.get("adapter"), **(extra or {}))

    def export(self, out_dir: Path | str) -> dict:
        return export(self.root, out_dir)


# ---------------------------------------------------------------- reading
def resolve_dataset_dir(path: Path | str) -> Path:
    """A dataset folder, or a server data dir holding `dataset/`."""
    path = Path(path)
    if (path / EXAMPLES_FILE).is_file():
        return path
    if (path / "dataset" / EXAMPLES_FILE).is_file():
        return path / "dataset"
    raise DatasetError(f"{path} holds no {EXAMPLES_FILE} (nor dataset/{EXAMPLES_FILE})")


def image_path(root: Path, image: dict) -> Path:
    """The file of an image entry; refuses anything but images/<sha256>.<png|jpg> (a dataset file is input)."""
    rel = str(image.get("file") or "")
    name = rel.removeprefix(f"{IMAGES_DIR}/")
    stem, _, ext = name.partition(".")
    if rel != f"{IMAGES_DIR}/{name}" or not _SHA.match(stem) or f".{ext}" not in _EXTENSIONS.values():
        raise DatasetError(f"bad image reference {rel!r}")
    return root / IMAGES_DIR / name


def _upgrade(example: Any) -> dict | None:
    """A well-formed example in the current schema, or None."""
    if not (isinstance(example, dict) and isinstance(example.get("user"), str) and example["user"]
            and isinstance(example.get("system"), str) and isinstance(example.get("images", []), list)):
        return None
    target = example.get("target")
    if target is not None and not (isinstance(target, dict) and isinstance(target.get("changes"), list)):
        return None
    if example.get("schema", 1) < 2:
        if example.get("outcome") == "rejected":
            example["target"] = None  # schema 1 taught "no change" from every reject
        example.setdefault("request_key", request_key(example.get("cad_model"), example["system"], example["user"],
                                                      [str(i.get("sha256")) for i in example.get("images") or []]))
        example.setdefault("values", None)
        example.setdefault("target_values", None)
    return example


def read_examples(root: Path) -> tuple[list[dict], dict]:
    """Every well-formed example with its images present, the latest decision per request; and counts."""
    counts = {"lines": 0, "malformed": 0, "missing_images": 0, "superseded": 0}
    by_key: dict[str, dict] = {}
    with open(root / EXAMPLES_FILE, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            counts["lines"] += 1
            try:
                example = _upgrade(json.loads(raw))
            except ValueError:
                example = None
            if example is None:
                counts["malformed"] += 1
                continue
            try:
                ok = all(image_path(root, img).is_file() for img in example.get("images") or [])
            except DatasetError:
                ok = False
            if not ok:
                counts["missing_images"] += 1
                continue
            key = example.get("request_key") or example.get("proposal_id") or example.get("id") or str(counts["lines"])
            if key in by_key:
                counts["superseded"] += 1
                del by_key[key]  # keep file order of the latest decision
            by_key[key] = example
    return list(by_key.values()), counts


def group_key(example: dict) -> str:
    """Examples that share a target state share a split (so no target is seen in training and in testing)."""
    if isinstance(example.get("target_values"), dict):
        return state_key(example.get("cad_model"), example["target_values"])
    return str(example.get("request_key") or example.get("id"))


def hashed_split(key: str, seed: int = 0, val: float = 0.1, test: float = 0.1) -> str:
    """The split of a group key (a target state, see group_key): a fixed function of the key and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if share < test else "val" if share < test + val else "train"


def split_of(example: dict, seed: int = 0) -> str:
    return example.get("split") or hashed_split(group_key(example), seed)


def load_examples(path: Path | str, *, split: str | None = None, trainable: bool = True,
                  seed: int = 0) -> list[dict]:
    """Examples for training or evaluation (see read_examples), each with `image_paths` (absolute, model order)
    and `split`. trainable: only examples with a target. split: only that split (see split_of)."""
    root = resolve_dataset_dir(path)
    examples, counts = read_examples(root)
    skipped = counts["malformed"] + counts["missing_images"]
    if skipped:
        log.warning("dataset %s: skipped %d malformed lines and %d examples with missing images", root,
                    counts["malformed"], counts["missing_images"])
    chosen = []
    for example in examples:
        if trainable and example.get("target") is None:
            continue
        example["split"] = split_of(example, seed)
        if split is not None and example["split"] != split:
            continue
        example["image_paths"] = [str(image_path(root, img)) for img in example.get("images") or []]
        chosen.append(example)
    return chosen


def summarise(examples: list[dict]) -> dict:
    outcomes = {o: sum(1 for e in examples if e.get("outcome") == o) for o in OUTCOMES}
    return {"examples": len(examples), **outcomes,
            "trainable": sum(1 for e in examples if e.get("target") is not None),
            "corrected": sum(1 for e in examples if e.get("corrected")),
            "with_images": sum(1 for e in examples if e.get("images")),
            **{f"split_{s}": sum(1 for e in examples if split_of(e) == s) for s in SPLITS}}


def export(src: Path | str, out_dir: Path | str) -> dict:
    """Copy the usable examples (latest decision per request) and only their images to out_dir."""
    root = resolve_dataset_dir(src)
    out = Path(out_dir)
    if out.resolve() == root.resolve():
        raise DatasetError("export needs an output folder other than the dataset itself")
    examples, counts = read_examples(root)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images = set()
    for example in examples:
        for img in example.get("images") or []:
            dest = image_path(out, img)
            if not dest.is_file():
                shutil.copyfile(image_path(root, img), dest)
            images.add(dest.name)
    lines = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in examples)
    atomic_write(out / EXAMPLES_FILE, lines.encode("utf-8"))
    return {**summarise(examples), "images": len(images),
            **{f"skipped_{k}": v for k, v in counts.items() if k != "lines"}, "lines": counts["lines"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm.dataset", description="Training examples.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a clean, self-contained copy of a dataset and print counts")
    exp.add_argument("--data", required=True, type=Path, help="dataset folder, or the server's data dir")
    exp.add_argument("--out", required=True, type=Path, help="output folder")
    stats = sub.add_parser("stats", help="print counts by outcome and split")
    stats.add_argument("--data", required=True, type=Path, help="dataset folder, or the server's data dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "export":
            counts = export(args.data, args.out)
        else:
            root = resolve_dataset_dir(args.data)
            examples, read_counts = read_examples(root)
            counts = {**summarise(examples), **{f"skipped_{k}": v for k, v in read_counts.items() if k != "lines"}}
    except (DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(k) for k in counts)
    for key, value in counts.items():
        print(f"{key:<{width}}  {value}")
    if args.command == "export":
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
