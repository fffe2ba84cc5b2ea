"""VLM_DTYPE=auto: float16 on CUDA and on CPUs with native fp16 arithmetic, float32 elsewhere, with the reason."""
from __future__ import annotations

import pytest

from vlm.dtype_choice import choose_dtype, cpu_flags


@pytest.mark.parametrize("cuda, flags, dtype, says", [
    (True, set(), "float16", "CUDA"),
    (False, {"sse2", "avx512f", "avx512_fp16"}, "float16", "avx512_fp16"),
    (False, {"amx_tile", "amx_fp16"}, "float16", "amx_fp16"),
    (False, {"sse2", "avx2", "avx512f", "avx512_bf16"}, "float32", "emulated"),
    (False, set(), "float32", "lacks avx512_fp16"),
])
def test_auto_picks_float16_only_where_it_is_fast(cuda, flags, dtype, says):
    chosen, reason = choose_dtype("auto", cuda=cuda, flags=flags)
    assert chosen == dtype and says in reason and reason.startswith("auto")


def test_an_explicit_dtype_wins_and_says_it_was_set():
    assert choose_dtype("bfloat16", cuda=True, flags=set()) == ("bfloat16", "VLM_DTYPE=bfloat16 was set")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_fp16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512_fp16"}
    assert cpu_flags(tmp_path / "missing") == set()
