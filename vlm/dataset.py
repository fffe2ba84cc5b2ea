"""Training examples from the UI: every proposal set a user applies (all or some) or rejects.

Layout of a dataset folder (default `<data_dir>/dataset`):
    examples.jsonl          one JSON object per decision, appended with a single os.write on an O_APPEND fd
    images/<sha256>.png     the images the model saw, content-addressed (the same render is stored once)

A line holds what the model saw (system + user prompt, images with their role: "render" or "reference"), what it
said (raw answer, summary), what the user did (accepted parameter -> value, rejected names, reject reason) and the
training `target`: `{"summary", "changes": [accepted changes with reasons]}`, or `{"changes": []}` when the user
rejected everything. The log is append-only: a later decision on the same proposal set supersedes an earlier one
when examples are loaded or exported.

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

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EXAMPLES_FILE = "examples.jsonl"
IMAGES_DIR = "images"
ROLES = ("render", "reference")
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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _append_line(path: Path, obj: dict) -> None:
    """One whole line per write: concurrent writers (threads or processes) never interleave inside a line."""
    data = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
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


def make_target(summary: str, changes: list[dict]) -> dict:
    """What the model should have answered: the accepted changes, or an explicit "no change"."""
    if not changes:
        return {"changes": []}
    return {"summary": summary or "", "changes": changes}


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
            _atomic_write(path, data)
        return {"sha256": digest, "file": rel}

    def record(self, *, outcome: str, system: str, user: str, answer: str, summary: str,
               accepted: dict[str, Any], reasons: dict[str, str], rejected: list[str],
               images: list[tuple[str, bytes]] = (), invalid: list[str] = (), reject_reason: str | None = None,
               request: str | None = None, cad_model: str | None = None, backend: str | None = None,
               model: str | None = None, adapter: str | None = None, proposal_id: str | None = None) -> dict:
        """Append one example and return it. `images` are (role, bytes) pairs in the order the model saw them."""
        if outcome not in ("applied", "rejected"):
            raise DatasetError(f"outcome must be 'applied' or 'rejected', not {outcome!r}")
        if not isinstance(system, str) or not isinstance(user, str) or not user:
            raise DatasetError("an example needs the system and user prompt the model saw")
        self.root.mkdir(parents=True, exist_ok=True)
        stored = []
        for role, data in images:
            if role not in ROLES:
                raise DatasetError(f"image role must be one of {ROLES}, not {role!r}")
            stored.append({"role": role, **self.store_image(bytes(data))})
        changes = [{"parameter": name, "value": value, "reason": reasons.get(name, "")}
                   for name, value in accepted.items()]
        now = time.time()
        example = {
            "schema": SCHEMA_VERSION, "id": uuid.uuid4().hex, "proposal_id": proposal_id,
            "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"), "time": now,
            "outcome": outcome, "cad_model": cad_model, "backend": backend, "model": model, "adapter": adapter,
            "request": request, "system": system, "user": user, "images": stored,
            "answer": answer, "summary": summary, "accepted": dict(accepted), "rejected": list(rejected),
            "invalid": list(invalid), "reject_reason": (reject_reason or None) and reject_reason[:MAX_REASON_CHARS],
            "target": make_target(summary, changes),
        }
        _append_line(self.examples_path, example)
        log.info("dataset: recorded %s example %s (%d accepted, %d rejected)", outcome, example["id"],
                 len(accepted), len(rejected))
        return example

    def record_proposal_set(self, ps, outcome: str, accepted: dict[str, Any] | None = None,
                            reject_reason: str | None = None) -> dict | None:
        """Record a decision on a `vlm.proposals.ProposalSet` whose meta holds what the model saw (the web layer
        stores `system`, `user`, `images`, `image_roles`, `text`, `backend`, `model`, `adapter` there).
        Applying twice accumulates the accepted changes; a reject starts over. Returns None for a set without
        the prompt (nothing to learn from)."""
        meta = ps.meta
        if not meta.get("user"):
            return None
        if outcome == "applied":
            accepted = {**meta.get("accepted_so_far", {}), **(accepted or {})}
        else:
            accepted = {}
        meta["accepted_so_far"] = dict(accepted)
        images = list(zip(meta.get("image_roles") or [], meta.get("images") or []))
        invalid = [p.parameter for p in ps.proposals if not p.valid]
        rejected = [p.parameter for p in ps.proposals if p.parameter not in accepted]
        return self.record(
            outcome=outcome, system=meta.get("system") or "", user=meta["user"], answer=meta.get("text") or "",
            summary=ps.summary or "", accepted=accepted, reasons={p.parameter: p.reason for p in ps.proposals},
            rejected=rejected, invalid=invalid, images=images, reject_reason=reject_reason,
            request=meta.get("prompt"), cad_model=ps.model_name, backend=meta.get("backend"),
            model=meta.get("model"), adapter=meta.get("adapter"), proposal_id=ps.id)

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


def _valid(example: Any) -> bool:
    return (isinstance(example, dict) and isinstance(example.get("user"), str) and example["user"]
            and isinstance(example.get("system"), str) and isinstance(example.get("target"), dict)
            and isinstance(example.get("images", []), list))


def read_examples(root: Path) -> tuple[list[dict], dict]:
    """Every well-formed example line with its images present, the latest decision per proposal set; and counts."""
    counts = {"lines": 0, "malformed": 0, "missing_images": 0, "superseded": 0}
    by_key: dict[str, dict] = {}
    with open(root / EXAMPLES_FILE, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            counts["lines"] += 1
            try:
                example = json.loads(raw)
            except ValueError:
                counts["malformed"] += 1
                continue
            if not _valid(example):
                counts["malformed"] += 1
                continue
            try:
                ok = all(image_path(root, img).is_file() for img in example.get("images") or [])
            except DatasetError:
                ok = False
            if not ok:
                counts["missing_images"] += 1
                continue
            key = example.get("proposal_id") or example.get("id") or str(counts["lines"])
            if key in by_key:
                counts["superseded"] += 1
                del by_key[key]  # keep file order of the latest decision
            by_key[key] = example
    return list(by_key.values()), counts


def load_examples(path: Path | str) -> list[dict]:
    """Examples ready for training (see read_examples); each gains `image_paths` (absolute) in model order."""
    root = resolve_dataset_dir(path)
    examples, counts = read_examples(root)
    skipped = counts["malformed"] + counts["missing_images"]
    if skipped:
        log.warning("dataset %s: skipped %d malformed lines and %d examples with missing images", root,
                    counts["malformed"], counts["missing_images"])
    for example in examples:
        example["image_paths"] = [str(image_path(root, img)) for img in example.get("images") or []]
    return examples


def export(src: Path | str, out_dir: Path | str) -> dict:
    """Copy the usable examples (latest decision per proposal set) and only their images to out_dir."""
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
    _atomic_write(out / EXAMPLES_FILE, lines.encode("utf-8"))
    applied = [e for e in examples if e.get("outcome") == "applied"]
    return {
        "examples": len(examples),
        "applied_all": sum(1 for e in applied if not [n for n in e.get("rejected", [])
                                                      if n not in e.get("invalid", [])]),
        "applied_partial": sum(1 for e in applied if [n for n in e.get("rejected", [])
                                                      if n not in e.get("invalid", [])]),
        "rejected": sum(1 for e in examples if e.get("outcome") == "rejected"),
        "with_images": sum(1 for e in examples if e.get("images")),
        "images": len(images),
        **{f"skipped_{k}": v for k, v in counts.items() if k != "lines"},
        "lines": counts["lines"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm.dataset", description="Training examples logged by the UI.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a clean, self-contained copy of a dataset and print counts")
    exp.add_argument("--data", required=True, type=Path, help="dataset folder, or the server's data dir")
    exp.add_argument("--out", required=True, type=Path, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        counts = export(args.data, args.out)
    except (DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(k) for k in counts)
    for key, value in counts.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
