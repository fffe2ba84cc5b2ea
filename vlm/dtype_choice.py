"""Which dtype the fine-tuned model runs in, and why (`VLM_DTYPE`). No torch here: the worker passes in what it
found (CUDA or not), so the choice can be tested on any machine.

`auto` means float16 where float16 is fast: on CUDA always, on a CPU only with native fp16 arithmetic
(AVX512-FP16 or AMX-FP16). Elsewhere float16 is emulated and was measured 2.8x slower than float32 (a 138M model,
20 tokens: 73 s vs 26 s on an EPYC without AVX512-FP16), so float32 is the sane choice there.
"""
from __future__ import annotations

from pathlib import Path

DTYPES = ("auto", "float16", "bfloat16", "float32")
FAST_FP16_CPU_FLAGS = ("avx512_fp16", "amx_fp16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:  # x86 and ARM spell it differently
            return set(value.split())
    return set()


def choose_dtype(requested: str, *, cuda: bool, flags: set[str]) -> tuple[str, str]:
    """(dtype name, the reason in words) for VLM_DTYPE=requested."""
    if requested != "auto":
        return requested, f"VLM_DTYPE={requested} was set"
    if cuda:
        return "float16", "auto: a CUDA device runs float16 natively"
    fast = [flag for flag in FAST_FP16_CPU_FLAGS if flag in flags]
    if fast:
        return "float16", f"auto: this CPU has {fast[0]}, so float16 runs fast on it"
    return "float32", ("auto: this CPU lacks avx512_fp16 and amx_fp16, so float16 would be emulated (slower than "
                       "float32)")
