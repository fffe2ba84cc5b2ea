"""LoRA training on logged examples (vlm.train) with the tiny LLaVA-OneVision on CPU: loss goes down, checkpoints
resume exactly, and the adapter it writes is served by the real worker path and changes the answers."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from safetensors import safe_open

from tests.training_data import make_dataset
from vlm.backend import GenerateRequest
from vlm.dataset import load_examples
from vlm.lifecycle import ModelManager
from vlm.train import DEFAULT_TARGET, main as train_main

# A random tiny model's logits are nearly flat and its lm_head is random: LoRA on attention alone barely moves
# the loss, so the tests also adapt lm_head (the 7B default stays attention-only).
LEARNABLE = DEFAULT_TARGET + "|lm_head"


def train_args(data: Path, base: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--base", str(base), "--out", str(out), "--max-steps", "16", "--grad-accum", "1",
            "--lr", "2e-2", "--r", "8", "--target-modules", LEARNABLE, "--save-every", "4", "--seed", "3",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def run(tiny_vlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = root / "dataset"
    make_dataset(data, count=12)
    out = root / "runs" / "trained"
    assert train_main(train_args(data, tiny_vlm.base_dir, out)) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    return SimpleNamespace(root=root, data=data, out=out, summary=summary, base=tiny_vlm.base_dir)


def test_training_lowers_the_loss_and_writes_an_adapter(run):
    s = run.summary
    # 12 logged decisions: 3 rejected (no target), 1 of the rest in the validation split
    assert s["steps"] == 16 and len(s["loss_per_step"]) == 16 and s["examples"] == 8 and s["val_examples"] == 1
    losses = s["loss_per_step"]
    assert sum(losses[-4:]) / 4 < losses[0] - 1.0, losses
    assert s["final_loss"] == losses[-1] and s["time_s"] > 0 and s["args"]["lr"] == 2e-2
    config = json.loads((run.out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run.base.resolve()) and config["r"] == 8
    with safe_open(run.out / "adapter_model.safetensors", "np") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)
    assert not [k for k in keys if "vision_tower" in k]
    assert {k for k in keys if "language_model" in k} and {k for k in keys if "lm_head" in k}
    with Image.open(run.out / "loss_curve.png") as img:
        assert img.format == "PNG" and img.size == (700, 400)
    steps = sorted(p.name for p in (run.out / "checkpoints").iterdir())
    assert steps == ["step-12", "step-16", "step-8"]  # the 3 latest are kept


def test_validation_keeps_the_best_checkpoint_as_the_adapter(run):
    s = run.summary
    evals = s["evals"]
    assert [e["step"] for e in evals] == [2, 4, 6, 8, 10, 12, 14, 16]  # about 8 validations, and the last step
    assert all(e["eval_loss"] > 0 for e in evals) and s["selected_by"] == "eval_loss"
    best = min(evals, key=lambda e: e["eval_loss"])
    assert s["best"]["step"] == best["step"] == s["adapter_step"]
    assert (run.out / "best" / "adapter_model.safetensors").read_bytes() == \
        (run.out / "adapter_model.safetensors").read_bytes()


def test_the_schedule_is_sized_from_the_dataset():
    from vlm.train import parse_args, plan_schedule

    args = parse_args(["--data", "d", "--out", "o"])
    assert plan_schedule(6, args) == (1, 30.0, 180)  # a handful of examples: many epochs, one per step
    assert plan_schedule(100, args) == (3, 6.0, 200)
    assert plan_schedule(5000, args) == (8, 3.0, 1875)  # a large set: 3 epochs of 8 examples per step
    explicit = parse_args(["--data", "d", "--out", "o", "--epochs", "2", "--grad-accum", "4"])
    assert plan_schedule(100, explicit) == (4, 2.0, 50)


def test_default_targets_are_the_language_model_attention_only(tiny_vlm):
    from transformers import LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_vlm.base_dir)
    names = [n for n, _ in model.named_modules()]
    hits = [n for n in names if re.fullmatch(DEFAULT_TARGET, n)]
    assert len(hits) == 2 * 4 and all(".language_model." in n for n in hits)
    assert [n for n in names if "vision_tower" in n and n.endswith("q_proj")]  # SigLIP has them: left alone


def test_resume_continues_exactly_where_the_run_stopped(run, tmp_path):
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(run.out / "checkpoints" / "step-8", out / "checkpoints" / "step-8")
    assert train_main(train_args(run.data, run.base, out, "--resume")) == 0
    resumed = json.loads((out / "training_summary.json").read_text())
    assert resumed["resumed_from"].endswith("step-8") and resumed["steps"] == 16
    assert resumed["loss_per_step"][:8] == run.summary["loss_per_step"][:8]
    assert resumed["loss_per_step"][8:] == pytest.approx(run.summary["loss_per_step"][8:], abs=1e-4)


def test_training_can_start_from_an_existing_adapter(run, tmp_path):
    out = tmp_path / "continued"
    assert train_main(train_args(run.data, run.base, out, "--init-adapter", str(run.out), "--max-steps", "2")) == 0
    continued = json.loads((out / "training_summary.json").read_text())
    assert continued["init_adapter"] == str(run.out)
    # it starts where the first run ended, not from a fresh adapter's loss
    assert continued["loss_per_step"][0] < run.summary["loss_per_step"][0] - 1.0


def test_task_metrics_are_measured_on_generated_validation_answers(tmp_path, tiny_vlm):
    from vlm.synth import SynthConfig, synthesise

    data = tmp_path / "synth"
    synthesise(SynthConfig(models=["bracket"], count=30, seed=1, size=64, styles={"absolute": 1}, render_share=0,
                           check_text_builds=False, val=0.2, test=0.0, no_change=0), data, progress=False)
    out = tmp_path / "run"
    assert train_main(train_args(data, tiny_vlm.base_dir, out, "--max-steps", "4", "--eval-every", "2",
                                 "--eval-examples", "3", "--eval-max-new-tokens", "24")) == 0
    s = json.loads((out / "training_summary.json").read_text())
    assert [e["step"] for e in s["evals"]] == [2, 4] and s["selected_by"] == "error_after"
    for e in s["evals"]:
        assert e["examples"] == 3 and 0 <= e["parse_rate"] <= 1 and e["error_before"] > 0
        assert e["error_after"] is not None
    assert s["best"]["metric"] == "error_after"


def test_resume_and_restart_mistakes_fail_clearly(run, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        train_main(train_args(run.data, run.base, tmp_path / "fresh", "--resume"))
    with pytest.raises(SystemExit, match="--resume to continue or --overwrite"):
        train_main(train_args(run.data, run.base, run.out))
    with pytest.raises(SystemExit, match="--resume continues a checkpoint"):
        train_main(train_args(run.data, run.base, tmp_path / "x", "--resume", "--init-adapter", str(run.out)))
    with pytest.raises(SystemExit, match="no usable training examples"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "examples.jsonl").write_text("")
        train_main(train_args(tmp_path / "empty", run.base, tmp_path / "o"))


def test_trained_adapter_changes_answers_through_the_server_path(run, tiny_vlm, finetuned_backend_factory):
    example = load_examples(run.data)[1]
    request = GenerateRequest(system=example["system"], prompt=example["user"], max_new_tokens=24,
                              images=[Path(p).read_bytes() for p in example["image_paths"]])
    manager = ModelManager(finetuned_backend_factory(tiny_vlm.adapter_dir, dtype="float32"), keep_alive_s=-1)
    original = manager.generate(request).text
    pid = manager.backend.pid
    info = manager.switch_adapter(run.out)
    assert info["applied"] == "now"
    trained = manager.generate(request).text
    assert trained != original
    assert '": "' in trained and '"' not in original  # it speaks the JSON of the targets now
    assert manager.backend.pid == pid and manager.load_count == 1
    assert manager.status()["adapter"] == str(run.out)
    # the hot switch serves exactly what a cold load of the trained adapter serves
    cold = finetuned_backend_factory(run.out, dtype="float32")
    cold.load(lambda *_: None)
    assert cold.generate(request).text == trained
    manager.shutdown()
