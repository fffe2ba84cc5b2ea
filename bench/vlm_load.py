"""Model load, memory and generate-overhead benchmark on a synthetic ~0.5B LLaVA-OneVision (fp16, random weights).

    .venv/bin/python bench/vlm_load.py [--rounds 5] [--tokens 32] [--dtype float16]

Measures, in one run and side by side:
  1. raw read of the weight files vs the worker's load (pre-read + from_pretrained + first forward), and the first
     request's load with and without VLM_PREWARM (a worker that imported torch & co and dry-ran the build before
     the request), split into the load (request -> ready) and the first 1-token forward, next to a steady-state
     forward of the same request (its compute, which no load can save);
  2. memory: this process (the web-process stand-in, no torch imported yet), the worker, and the system,
     before load / loaded / after unload;
  3. generate through the server path (ModelManager + FinetunedBackend + worker) vs a direct in-process
     `model.generate` on the same model and prompt, alternating rounds.
The model is cached under bench/out/ (git-ignored).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import psutil
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlm.backend import GenerateRequest  # noqa: E402
from vlm.finetuned import FinetunedBackend  # noqa: E402
from vlm.lifecycle import ModelManager  # noqa: E402

OUT = REPO / "bench" / "out"
SYSTEM = "You are a CAD optimisation assistant. Answer with JSON proposals."
PROMPT = "The rover tips over on slopes. Propose parameter changes for the chassis and wheels."


def build(dtype: str) -> Path:
    folder = OUT / f"synthetic_{dtype}"
    if not (folder / "base" / "config.json").is_file():
        import subprocess

        print(f"building the synthetic model in {folder} (once) ...", flush=True)
        # a child process, so this process stays torch-free for the memory baseline
        subprocess.run([sys.executable, "-c", f"from vlm.tiny import build_synthetic_model as b; "
                        f"b(__import__('pathlib').Path({str(folder)!r}), dtype={dtype!r})"], cwd=REPO, check=True)
    return folder / "base"


def raw_read(files: list[Path]) -> float:
    buf = bytearray(16 * 1024 * 1024)
    started = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - started


def rss() -> int:
    return psutil.Process().memory_info().rss


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    args = parser.parse_args()
    base = build(args.dtype)
    files = sorted(base.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in files)
    print(f"model: {base} ({size / 1e9:.2f} GB of {args.dtype} weights)")

    cold = raw_read(files)
    warm = min(raw_read(files) for _ in range(3))
    print(f"raw read: first {cold:.3f} s, warm {warm:.3f} s ({size / warm / 1e9:.1f} GB/s)")

    gc.collect()
    parent_before, avail_before = rss(), psutil.virtual_memory().available
    backend = FinetunedBackend(None, str(base), dtype=args.dtype, device_map="cpu")
    manager = ModelManager(backend, keep_alive_s=-1)
    started = time.perf_counter()
    manager.ensure_ready()
    spawn_to_ready = time.perf_counter() - started
    info = backend.info
    t = info["timings"]
    first = manager.generate(GenerateRequest(system=SYSTEM, prompt=PROMPT, max_new_tokens=1))
    first_forward = first.timings["generate"]
    weights_load = t["read_s"] + t["build_s"] + t["adapter_s"]
    worker_loaded, avail_loaded = backend.status()["rss_bytes"], psutil.virtual_memory().available
    print(f"worker: {info['param_count'] / 1e6:.0f}M parameters, dtype {info['dtype']}, timings {t}, "
          f"first forward {first_forward:.3f} s, spawn->ready {spawn_to_ready:.2f} s (includes torch import)")
    manager.unload()
    time.sleep(0.5)
    parent_after, avail_after = rss(), psutil.virtual_memory().available
    first_request_cold = spawn_to_ready + first_forward

    # the same first request from a pre-warmed worker (VLM_PREWARM=1): torch & co imported before it came
    warm_backend = FinetunedBackend(None, str(base), dtype=args.dtype, device_map="cpu")
    warm_backend.prewarm()
    if not warm_backend.wait_prewarmed(300):
        raise SystemExit("the pre-warm did not finish within 300 s")
    warm_manager = ModelManager(warm_backend, keep_alive_s=-1)
    started = time.perf_counter()
    warm_manager.ensure_ready()
    warm_ready = time.perf_counter() - started
    warm_forward = warm_manager.generate(GenerateRequest(system=SYSTEM, prompt=PROMPT, max_new_tokens=1)
                                         ).timings["generate"]
    # the same 1-token request again: the forward's own compute, which no load can save (the rest is load cost)
    steady_forward = min(warm_manager.generate(GenerateRequest(system=SYSTEM, prompt=PROMPT, max_new_tokens=1)
                                               ).timings["generate"] for _ in range(2))
    first_request_warm = warm_ready + warm_forward
    prewarm_info = warm_backend.prewarm_info
    warm_info = warm_backend.info
    print(f"pre-warmed worker: prewarm {prewarm_info}, load timings {warm_info['timings']}, cached "
          f"{warm_info.get('cached_bytes')} / read {warm_info.get('read_bytes')} bytes, "
          f"load->ready {warm_ready:.3f} s, first forward {warm_forward:.3f} s, steady forward {steady_forward:.3f} s")
    warm_manager.shutdown()

    manager.ensure_ready()  # loaded again for the generate comparison

    # generate overhead: the server path vs a direct in-process generate (torch enters this process only now)
    import torch
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    direct_model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        str(base), dtype=getattr(torch, args.dtype), device_map="cpu", use_safetensors=True).eval()
    processor = AutoProcessor.from_pretrained(str(base))

    def direct() -> tuple[float, str]:
        t0 = time.perf_counter()
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                    {"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, return_tensors="pt")
        with torch.inference_mode():
            out = direct_model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        ids = out[0, inputs["input_ids"].shape[1]:]
        return time.perf_counter() - t0, processor.tokenizer.decode(ids, skip_special_tokens=True)

    def served() -> tuple[float, str, int, float]:
        t0 = time.perf_counter()
        result = manager.generate(GenerateRequest(system=SYSTEM, prompt=PROMPT, max_new_tokens=args.tokens),
                                  on_token=lambda _t: None)
        wall = time.perf_counter() - t0
        return wall, result.text, result.completion_tokens, wall - result.timings["generate"]

    direct(), served()  # warm both paths
    direct_times, served_times, ratios, ipc, same_text, tokens = [], [], [], [], True, set()
    for i in tqdm(range(args.rounds), desc="generate rounds", file=sys.stderr):
        # alternate the order so a slow spell on this shared machine does not always hit the same path
        if i % 2:
            s, s_text, n, outside = served()
            d, d_text = direct()
        else:
            d, d_text = direct()
            s, s_text, n, outside = served()
        direct_times.append(d), served_times.append(s), ratios.append(s / d), ipc.append(outside), tokens.add(n)
        same_text &= d_text == s_text
    manager.shutdown()

    d_med, s_med = statistics.median(direct_times), statistics.median(served_times)
    rows = [
        ("raw read, warm (s)", f"{warm:.3f}", ""),
        ("worker load: pre-read+build (s)", f"{weights_load:.3f}", f"{weights_load / warm:.2f}x raw (goal <= 1.5x)"),
        ("  + first forward (s)", f"{weights_load + first_forward:.3f}",
         f"{(weights_load + first_forward) / warm:.2f}x raw"),
        ("  worker import torch/transformers (s)", f"{t['import_s']:.2f}", "process start cost, not weight I/O"),
        ("first request, no pre-warm: load+1st forward (s)", f"{first_request_cold:.3f}",
         f"{first_request_cold / warm:.1f}x raw read"),
        ("first request, VLM_PREWARM=1 (s)", f"{first_request_warm:.3f}",
         f"{first_request_warm / warm:.1f}x raw read (goal <= 1.5x); pre-warm {prewarm_info} paid at start"),
        ("  of which load: request -> ready (s)", f"{warm_ready:.3f}", f"{warm_ready / warm:.2f}x raw read"),
        ("  of which 1st forward (s)", f"{warm_forward:.3f}",
         f"steady-state forward {steady_forward:.3f} s: compute no load can save"),
        ("  first request - steady forward (s)", f"{first_request_warm - steady_forward:.3f}",
         f"{(first_request_warm - steady_forward) / warm:.2f}x raw read: what loading costs the first request"),
        ("parent RSS before load", mib(parent_before), "web-process stand-in (no torch)"),
        ("worker RSS loaded", mib(worker_loaded), ""),
        ("parent RSS after unload", mib(parent_after),
         f"{abs(parent_after - parent_before) / parent_before:.1%} from before (goal <= 5%)"),
        ("system available: before", mib(avail_before), ""),
        ("system available: loaded", mib(avail_loaded), f"model costs {mib(avail_before - avail_loaded)}"),
        ("system available: after unload", mib(avail_after),
         f"{abs(avail_after - avail_before) / avail_before:.1%} from before (goal <= 5%)"),
        (f"direct generate, {args.tokens} tok (s, median)", f"{d_med:.3f}", ""),
        (f"server generate, {args.tokens} tok (s, median)", f"{s_med:.3f}",
         f"{statistics.median(ratios) - 1:+.1%} overhead, median of paired rounds (goal <= 5%)"),
        ("  of which outside the worker's generate (s)", f"{statistics.median(ipc):.4f}",
         f"{statistics.median(ipc) / d_med:.2%} of a direct generate: manager + IPC + spawn-free path"),
        ("same text both paths", str(same_text), f"completion tokens {sorted(tokens)}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'value':>14}  ratio / note")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>14}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
