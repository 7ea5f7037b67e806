"""Device/dtype selection: fp32 by default, CPU bf16 detection exercised both ways on any CPU.

``resolve`` takes the CPU description (a ``/proc/cpuinfo``-format file and torch's capability
string) as arguments, so both branches of ``auto`` run here whatever this machine has: an
AMD EPYC with AVX512-BF16 (where ``auto`` picks bf16) and an AVX2-only one (fp32).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks.accel import cpu_flags, cpu_has_bf16, resolve

AVX512_BF16 = "fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16"
AVX2_ONLY = "fpu sse2 avx avx2 fma bmi2"


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / f"cpuinfo-{len(flags)}"
    path.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return path


def test_cpu_flags_and_bf16_detection(tmp_path: Path) -> None:
    bf16, avx2 = _cpuinfo(tmp_path, AVX512_BF16), _cpuinfo(tmp_path, AVX2_ONLY)
    assert "avx512_bf16" in cpu_flags(bf16) and "avx2" in cpu_flags(avx2)
    assert cpu_flags(tmp_path / "absent") == frozenset()
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "noflags") == frozenset()
    assert cpu_has_bf16(cpu_flags(bf16), "AVX512") is True
    assert cpu_has_bf16(cpu_flags(avx2), "AVX2") is False
    assert cpu_has_bf16({"amx_bf16", "avx2"}, "AVX2") is True
    assert cpu_has_bf16(cpu_flags(avx2), "AMX") is True  # torch says so even where cpuinfo does not
    assert cpu_has_bf16(frozenset(), "DEFAULT") is False


def test_default_is_fp32_on_every_cpu(tmp_path: Path) -> None:
    import torch

    for flags, cap in ((AVX512_BF16, "AVX512"), (AVX2_ONLY, "AVX2")):
        accel = resolve("cpu", cpuinfo=_cpuinfo(tmp_path, flags), capability=cap)
        assert (accel.device, accel.dtype, accel.torch_dtype) == ("cpu", "fp32", torch.float32)
    assert resolve("cpu").dtype == "fp32"  # this machine, whatever it has
    assert torch.get_float32_matmul_precision() == "highest"  # IEEE fp32, no TF32 / bf16 fast-math


def test_auto_opts_in_to_bf16_only_with_native_support(tmp_path: Path) -> None:
    bf16, avx2 = _cpuinfo(tmp_path, AVX512_BF16), _cpuinfo(tmp_path, AVX2_ONLY)
    assert resolve("cpu", "auto", cpuinfo=bf16, capability="AVX512").dtype == "bf16"
    assert resolve("cpu", "auto", cpuinfo=avx2, capability="AVX2").dtype == "fp32"
    # this machine: the same rule, with its own flags
    assert resolve("cpu", "auto").dtype == ("bf16" if cpu_has_bf16() else "fp32")


def test_explicit_reduced_precision_is_kept_and_warns_when_emulated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    bf16, avx2 = _cpuinfo(tmp_path, AVX512_BF16), _cpuinfo(tmp_path, AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="tasks.accel"):
        assert resolve("cpu", "bf16", cpuinfo=bf16, capability="AVX512").torch_dtype == torch.bfloat16
        assert not caplog.records
        assert resolve("cpu", "fp16", cpuinfo=avx2, capability="AVX2").torch_dtype == torch.float16
    assert "emulated and slow" in caplog.text


def test_bad_or_unavailable_settings_raise() -> None:
    import torch

    with pytest.raises(ValueError, match="dtype"):
        resolve("cpu", "int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        resolve("tpu")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        assert resolve("auto").device == "cpu"
        with pytest.raises(ValueError, match="device: 'cuda'"):
            resolve("cuda")
    else:  # a GPU: fp32 unless asked otherwise, bf16/fp16 only for auto
        assert resolve("cuda").dtype == "fp32"
        assert resolve("cuda", "auto").dtype in ("bf16", "fp16")
