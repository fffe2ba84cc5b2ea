"""Adapter switching at run time vs a full unload + load of base + adapter, in the same run.

    .venv/bin/python bench/adapter_switch.py [--rounds 3] [--models tiny,synthetic]

For each model (the tiny test LLaVA-OneVision; the synthetic ~0.5B fp16 one, cached under bench/out/), four
random LoRA adapters (language-model q/k/v/o, r=16; r=4 q/v for tiny) are written next to it. Through the server
path (ModelManager + FinetunedBackend + worker process) it times:
  - switch, new adapter:   cycling 4 adapters through the worker's 3 slots, so each switch reads one from disk;
  - switch, recent adapter: toggling between two adapters already in memory;
  - full reload:            unload (worker exits) + load of base + adapter (a fresh worker);
each followed by a 1-token answer ("ready to answer"), and prints the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlm.backend import GenerateRequest  # noqa: E402
from vlm.finetuned import FinetunedBackend  # noqa: E402
from vlm.lifecycle import ModelManager  # noqa: E402

OUT = REPO / "bench" / "out"
REQUEST = GenerateRequest(system="You are a CAD assistant.", prompt="Bigger wheels, please.", max_new_tokens=1)

# Runs in a child process: this one stays torch-free, like the web process.
_MAKE_ADAPTERS = """
import sys, warnings, torch
from pathlib import Path
from peft import LoraConfig, get_peft_model
from transformers import LlavaOnevisionForConditionalGeneration
base, out, target, r = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
model = LlavaOnevisionForConditionalGeneration.from_pretrained(base, dtype=torch.float16)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=target))
for i in range(4):
    g = torch.Generator().manual_seed(i)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.peft_config["default"].base_model_name_or_path = str(base)
    model.save_pretrained(out / f"adapter{i}")
"""


def prepare(name: str, work: Path) -> tuple[Path, list[Path], str]:
    if name == "tiny":
        subprocess.run([sys.executable, "-m", "vlm.tiny", str(work / "tiny")], cwd=REPO, check=True,
                       capture_output=True)
        base, target, r, dtype = work / "tiny" / "base", r".*language_model.*\.(q_proj|v_proj)", 4, "float32"
    else:
        base = OUT / "synthetic_float16" / "base"
        if not (base / "config.json").is_file():
            print("building the synthetic ~0.5B model (once) ...", flush=True)
            subprocess.run([sys.executable, "-c", "from vlm.tiny import build_synthetic_model as b; "
                            f"b(__import__('pathlib').Path({str(base.parent)!r}))"], cwd=REPO, check=True)
        target, r, dtype = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)", 16, "float16"
    adapters = work / f"{name}-adapters"
    subprocess.run([sys.executable, "-c", _MAKE_ADAPTERS, str(base), str(adapters), target, str(r)], cwd=REPO,
                   check=True, capture_output=True)
    return base, sorted(adapters.glob("adapter*")), dtype


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench(name: str, rounds: int, work: Path) -> dict:
    base, adapters, dtype = prepare(name, work)
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    manager = ModelManager(FinetunedBackend(adapters[0], dtype=dtype), keep_alive_s=-1)
    answer = lambda: manager.generate(REQUEST)  # noqa: E731
    try:
        answer()
        pid = manager.backend.pid
        new_switch, new_ready, recent_switch, recent_ready, reload_load, reload_ready = [], [], [], [], [], []
        for i in range(1, 4 * rounds + 1):  # adapters 1,2,3,0,1,...: never one of the 3 in memory
            t = timed(lambda: manager.switch_adapter(adapters[i % 4]))
            new_switch.append(t)
            new_ready.append(t + timed(answer))
        for i in range(4 * rounds):  # the last two used are in memory
            t = timed(lambda: manager.switch_adapter(adapters[(4 * rounds - 1 + i % 2) % 4]))
            recent_switch.append(t)
            recent_ready.append(t + timed(answer))
        assert manager.backend.pid == pid and manager.load_count == 1, "a switch reloaded the base"
        for i in range(rounds):
            def reload():
                manager.unload()
                manager.switch_adapter(adapters[i % 4])  # remembered for the load
                manager.ensure_ready()
            t = timed(reload)
            reload_load.append(t)
            reload_ready.append(t + timed(answer))
    finally:
        manager.shutdown()
    med = statistics.median
    return {"model": name, "base_gb": size / 1e9, "dtype": dtype, "new_switch": med(new_switch),
            "new_ready": med(new_ready), "recent_switch": med(recent_switch), "recent_ready": med(recent_ready),
            "reload_load": med(reload_load), "reload_ready": med(reload_ready), "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="tiny,synthetic")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adapter-bench-") as tmp:
        for name in args.models.split(","):
            r = bench(name.strip(), args.rounds, Path(tmp))
            print(f"\n{r['model']} ({r['base_gb']:.3f} GB {r['dtype']} base), medians of {r['rounds']}+ rounds, "
                  "seconds until the next answer's first token:")
            print(f"  switch to an adapter read from disk: {r['new_switch']:.4f} s switch, "
                  f"{r['new_ready']:.4f} s ready")
            print(f"  switch to an adapter in memory:      {r['recent_switch']:.4f} s switch, "
                  f"{r['recent_ready']:.4f} s ready")
            print(f"  full unload + load base + adapter:   {r['reload_load']:.3f} s load,   "
                  f"{r['reload_ready']:.3f} s ready")
            print(f"  ratio reload / switch: {r['reload_load'] / r['new_switch']:.0f}x (from disk), "
                  f"{r['reload_load'] / r['recent_switch']:.0f}x (in memory); ready to answer: "
                  f"{r['reload_ready'] / r['new_ready']:.1f}x, {r['reload_ready'] / r['recent_ready']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
