"""Device/dtype selection: fp32 by default, CPU bf16 detection exercised both ways on any CPU.

``resolve`` takes the CPU description (a ``/proc/cpuinfo``-format file and torch's capability
string) as arguments, so both branches of ``auto`` run here whatever this machine has: an
AMD EPYC with AVX512-BF16 (where ``auto`` picks bf16) and an AVX2-only one (fp32).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from tasks.accel import cpu_flags, cpu_has_bf16, resolve
from tests._model_helpers import cpu_suffix

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


# --------------------------------------------------------------------------- CPU kernels
PIN_PROBE = """
import os, subprocess, sys
if sys.argv[1] == "chosen":
    import torch
    torch.ones(4).add_(1)  # the first op fixes the kernels (here: ATEN_CPU_CAPABILITY=default)
from tasks.accel import pin_cpu_kernels

try:
    print("pinned", pin_cpu_kernels("avx2"), os.environ["ONEDNN_MAX_CPU_ISA"])
except RuntimeError as exc:
    print("refused", exc)
    sys.exit(0)
worker = "from tasks.accel import torch_cpu_capability as c; print(c())"  # a process started now
print("worker", subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True).stdout)
"""


def _probe(mode: str, extra_env: dict[str, str]) -> str:
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    }
    env.update(extra_env)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", PIN_PROBE, mode],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_avx2_kernels_are_pinned_in_the_process_and_its_workers() -> None:
    """Without any variable set, pinning makes this process and the workers it spawns run the
    AVX2 kernels (on an AVX-512 CPU too: the bytes then match an AVX2-only machine's)."""
    out = _probe("fresh", {})
    assert "pinned AVX2 AVX2" in out and "worker AVX2" in out, out


def test_a_process_whose_kernels_were_chosen_otherwise_refuses() -> None:
    """A long-lived process (a Dask worker) that ran torch with other kernels must not compute
    other bits silently: pinning raises and says how to start it."""
    out = _probe("chosen", {"ATEN_CPU_CAPABILITY": "default"})
    pins = "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2,STRICT"
    assert out.startswith("refused") and pins in out, out


def test_avx2_kernels_need_an_avx2_cpu_and_native_changes_nothing(tmp_path: Path) -> None:
    from tasks.accel import pin_cpu_kernels, torch_cpu_capability

    with pytest.raises(ValueError, match=r"cpu_kernels: native"):
        pin_cpu_kernels("avx2", flags=cpu_flags(_cpuinfo(tmp_path, "fpu sse2 sse4_2 avx")))
    with pytest.raises(ValueError, match="avx2 or native"):
        pin_cpu_kernels("avx512")
    assert pin_cpu_kernels("native") == torch_cpu_capability()


def test_kernels_are_part_of_the_cross_encoder_identity() -> None:
    """Shards scored with other kernels are never reused (the cache key holds cpu_kernels)."""
    from tasks.score import ModelSpec, model_identity

    avx2, native = ModelSpec("org/ce", "a" * 40), ModelSpec("org/ce", "a" * 40, cpu_kernels="native")
    assert model_identity(avx2)["cpu_kernels"] == "avx2+MKL_CBWR=AVX2,STRICT" + cpu_suffix()
    assert model_identity(native)["cpu_kernels"] == "native"
    assert model_identity(avx2) != model_identity(native)


def test_kernels_id_follows_kernel_env(tmp_path: Path) -> None:
    """Any change of what a kernel set sets gives a new id (so new cache keys); native stays.
    (On an Intel CPU; what other CPUs add: test_kernel_identity_names_the_cpu_where_mkl_runs_auto.)"""
    from tasks.accel import KERNEL_ENV, KEYED_AS_NAME, kernels_id

    intel = tmp_path / "cpuinfo"
    intel.write_text(INTEL_XEON)
    assert kernels_id("avx2", cpuinfo=intel) == "avx2+MKL_CBWR=AVX2,STRICT"
    assert kernels_id("native") == "native" and kernels_id(None) is None
    assert kernels_id("avx2", KEYED_AS_NAME) == "avx2"  # what keys said before MKL was pinned
    changed = {"avx2": {**KERNEL_ENV["avx2"], "MKL_CBWR": "COMPATIBLE"}}
    assert kernels_id("avx2", changed, cpuinfo=intel) == "avx2+MKL_CBWR=COMPATIBLE"
    dropped = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2"}}
    assert kernels_id("avx2", dropped) == "avx2-ONEDNN_MAX_CPU_ISA"


MKL_PROBE = """
import hashlib, os, sys
import torch
if sys.argv[1] == "pin":
    from tasks.accel import pin_cpu_kernels
    pin_cpu_kernels("avx2")
g = torch.Generator().manual_seed(0)
a, b = torch.randn(256, 512, generator=g), torch.randn(512, 256, generator=g)
print(os.environ.get("MKL_CBWR"), hashlib.sha256(torch.tanh(a @ b).numpy().tobytes()).hexdigest())
"""


def _mkl_probe(mode: str, env_extra: dict[str, str]) -> str:
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    }
    env.update(env_extra)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", MKL_PROBE, mode], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_pinning_sets_mkl_cbwr_and_gives_mkl_avx2_bits() -> None:
    """pin("avx2") computes the bits of a process started with MKL_CBWR=AVX2,STRICT; where MKL's own
    branch is wider (AVX-512), those differ from an unpinned MKL's."""
    from tasks.accel import mkl_in_use, mkl_takes_named_branches

    if not mkl_in_use():
        pytest.skip("this torch has no MKL")
    aten = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    pinned = _mkl_probe("pin", {})
    assert pinned.startswith("AVX2,STRICT ")
    assert pinned == _mkl_probe("plain", {**aten, "MKL_CBWR": "AVX2,STRICT"})
    if not mkl_takes_named_branches():
        pytest.skip("MKL runs AUTO here (not an Intel CPU): pinned and unpinned MKL are the same branch")
    if "avx512f" not in cpu_flags():
        pytest.skip("MKL's default branch here is AVX2 at most: no difference to show")
    assert pinned.split()[1] != _mkl_probe("plain", aten).split()[1]


def test_mkl_cbwr_reaches_workers_and_a_late_pin_refuses(tmp_path: Path) -> None:
    out = _probe("fresh", {})
    assert "pinned AVX2 AVX2" in out, out
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    code = ("import os,subprocess,sys; from tasks.accel import pin_cpu_kernels, cpu_flags; "
            "pin_cpu_kernels('avx2', flags=cpu_flags(sys.argv[1])); "
            "print(subprocess.run([sys.executable,'-c','import os;print(os.environ[\"MKL_CBWR\"])'],"
            "capture_output=True,text=True).stdout.strip())")  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    for flags in (AVX512_BF16, AVX2_ONLY):  # detection both ways: the same pin on either CPU
        proc = subprocess.run([sys.executable, "-c", code, str(_cpuinfo(tmp_path, flags))], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0 and proc.stdout.strip() == "AVX2,STRICT", proc.stderr


THREADS_PROBE = """
import hashlib, sys
from tasks.accel import mkl_cbwr_branch, pin_cpu_kernels
if sys.argv[1] == "pin":
    pin_cpu_kernels("avx2")
import torch
if sys.argv[2] != "fresh":
    torch.set_num_threads(int(sys.argv[2]))  # what a worker's thread setup does
g = torch.Generator().manual_seed(0)
q = torch.randn(32, 12, 128, 32, generator=g)  # a BERT-style layer's attention: batch, heads, tokens
with torch.no_grad():
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
print(mkl_cbwr_branch(), hashlib.sha256(out.numpy().tobytes()).hexdigest())
"""


def _threads_probe(pin: str, threads: str, omp: str) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                            "MKL_CBWR", "MKL_NUM_THREADS")}  # fmt: skip
    env["OMP_NUM_THREADS"] = omp
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", THREADS_PROBE, pin, threads], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_pinned_kernels_give_the_same_bits_whatever_the_thread_setup() -> None:
    """The worker layout (one process on every core, or workers on one thread each, set by
    OMP_NUM_THREADS or torch.set_num_threads) must not change fp32 bits. It did under
    MKL_CBWR=AVX2: attention after set_num_threads(2) differed from a fresh 2-thread process's
    (a 2-core Intel Xeon); MKL's strict CNR mode is what makes them agree."""
    from tasks.accel import expected_mkl_code, mkl_in_use, mkl_takes_named_branches

    if not mkl_in_use():
        pytest.skip("this torch has no MKL")
    setups = [("fresh", "2"), ("2", "2"), ("1", "2"), ("fresh", "1"), ("2", "1")]
    got = {setup: _threads_probe("pin", *setup) for setup in setups}
    assert len(set(got.values())) == 1, got
    # the named AVX2 branch on an Intel CPU, AUTO elsewhere: strict either way
    code = expected_mkl_code("AVX2,STRICT", mkl_takes_named_branches())
    assert next(iter(got.values())).split()[0] == str(code) and code & 0x10000


def test_a_stage_whose_kernels_were_chosen_otherwise_exits_3_in_one_line() -> None:
    """Through the stage frame (tasks.cli.report_errors): exit 3 (environment), one log line
    saying how to start the process, no traceback."""
    import os
    import subprocess
    import sys

    code = ("import logging, sys, torch; logging.basicConfig(level=logging.INFO)\n"
            "torch.ones(4).add_(1)\n"  # the first op fixes the kernels (here: the CPU's default)
            "from tasks.accel import pin_cpu_kernels; from tasks.cli import report_errors\n"
            "sys.exit(report_errors(lambda: pin_cpu_kernels('avx2')))")  # fmt: skip
    pins = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    env = {k: v for k, v in os.environ.items() if k not in pins} | {"ATEN_CPU_CAPABILITY": "default"}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "cannot be honoured here" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


INTEL_XEON = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n\nprocessor\t: 1\n"
AMD_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\nprocessor\t: 1\n"


def test_kernel_identity_names_the_cpu_where_mkl_runs_auto(tmp_path: Path) -> None:
    """Detection both ways, whatever this machine is: an Intel CPU keeps the key of before (MKL's
    named AVX2 branch, the same bits on every Intel AVX2 CPU); another vendor's runs MKL's AUTO
    branch, whose bits are that CPU model's, so its key names the CPU."""
    from tasks.accel import (
        MKL_CBWR_CODES,
        cpu_signature,
        expected_mkl_code,
        kernels_id,
        mkl_takes_named_branches,
    )

    intel, amd = tmp_path / "intel", tmp_path / "amd"
    intel.write_text(INTEL_XEON)
    amd.write_text(AMD_EPYC)
    (tmp_path / "bare").write_text("processor\t: 0\nflags\t\t: avx2\n")
    assert cpu_signature(intel) == "GenuineIntel-6-143" and cpu_signature(amd) == "AuthenticAMD-25-17"
    assert cpu_signature(tmp_path / "bare") == "unknown-unknown-unknown"
    assert cpu_signature(tmp_path / "absent") == "unknown-unknown-unknown"
    assert mkl_takes_named_branches(intel) and not mkl_takes_named_branches(amd)
    assert not mkl_takes_named_branches(tmp_path / "bare")  # unknown: not taken for Intel
    assert kernels_id("avx2", cpuinfo=intel) == "avx2+MKL_CBWR=AVX2,STRICT"
    assert kernels_id("avx2", cpuinfo=amd) == "avx2+MKL_CBWR=AVX2,STRICT+MKL_AUTO@AuthenticAMD-25-17"
    assert kernels_id("native", cpuinfo=amd) == "native" and kernels_id(None, cpuinfo=amd) is None
    no_mkl = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
    assert kernels_id("avx2", no_mkl, cpuinfo=amd) == "avx2"  # MKL not pinned: its branch is moot
    # measured on an AMD EPYC: AVX2,STRICT reads 0x10002 (AUTO, strict), AVX2 reads 2
    assert expected_mkl_code("AVX2,STRICT", True) == MKL_CBWR_CODES["AVX2,STRICT"] == 0x1000A
    assert expected_mkl_code("AVX2,STRICT", False) == 0x10002
    assert expected_mkl_code("AVX2", True) == 10 and expected_mkl_code("AVX2", False) == 2


VENDOR_PROBE = """
import sys
from tasks.accel import mkl_cbwr_branch, pin_cpu_kernels
from tasks.cli import report_errors
expect = sys.argv[2] or None
sys.exit(report_errors(lambda: print("pinned", pin_cpu_kernels("avx2", cpuinfo=sys.argv[1], expect=expect),
                                     mkl_cbwr_branch())))
"""


def _pin_probe(cpuinfo: Path, expect: str = "") -> subprocess.CompletedProcess:
    import os
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    }
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", VENDOR_PROBE, str(cpuinfo), expect], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_pinning_checks_mkl_agrees_with_cpuinfo_and_the_drivers_keys(tmp_path: Path) -> None:
    """In fresh processes, both ways: this machine's own cpuinfo pins (Intel or not); a cpuinfo of
    the other vendor than MKL sees is refused (its keys would misname the bits); a worker whose
    CPU would compute other bits than its driver's keys name refuses, exit 3, in one line."""
    from tasks.accel import PROC_CPUINFO, expected_mkl_code, kernels_id, mkl_in_use, mkl_intel_cpu

    if not mkl_in_use() or mkl_intel_cpu() is None:
        pytest.skip("this torch has no MKL to ask")
    intel = mkl_intel_cpu()
    ours = _pin_probe(Path(PROC_CPUINFO), kernels_id("avx2"))
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split() == ["pinned", "AVX2", str(expected_mkl_code("AVX2,STRICT", bool(intel)))]
    other = tmp_path / "other"
    other.write_text(AMD_EPYC if intel else INTEL_XEON)
    lied = _pin_probe(other)
    assert lied.returncode == 3 and "cache keys would misname its fp32 bits" in lied.stderr, lied.stderr
    assert "Traceback" not in lied.stderr
    foreign = kernels_id("avx2", cpuinfo=other)  # what a driver on the other vendor's CPU records
    refused = _pin_probe(Path(PROC_CPUINFO), foreign)
    assert refused.returncode == 3 and f"the run's cache keys name {foreign}" in refused.stderr, (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr
