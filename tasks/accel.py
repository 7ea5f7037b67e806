"""Device and dtype selection shared by every model stage (encode, mine, cross-encoder).

The default is ``fp32`` on every device: it is the precision the published artifacts were
computed in (the published cross-encoder pickle holds fp32 logits; MarginMSE labels and the
denoising margin are differences of those logits), so a run reproduces them wherever it runs.
``bf16`` / ``fp16`` are explicit, per-stage opt-ins (``encode.dtype``, ``cross_encoder.dtype``)
whose drift against fp32 is measured by ``benchmarks/precision_bench.py``; ``auto`` opts in to
the fastest setting: on CUDA bf16 when the GPU supports it, else fp16; on CPU bf16 only when the
CPU has native bf16 instructions (AMX or AVX512-BF16), else fp32, because emulated bf16 is
slower than fp32. A reduced precision casts the weights (``model.to(dtype)``) rather than using
autocast (faster: measured on a 2-core AVX2 machine with all-MiniLM-L6-v2, fp32 64 passages/s,
bf16 autocast 167, bf16 weights 202).

fp32 means IEEE fp32: :func:`resolve` sets ``torch.set_float32_matmul_precision("highest")``
so neither TF32 (CUDA) nor bf16 fast-math (oneDNN on CPU) stands in for it.

The CPU feature detection is injectable (``cpuinfo`` path, ``flags``, ``capability``), so tests
exercise both an AVX512-BF16 and an AVX2-only CPU on any machine.

CPU kernels: fp32 results differ in the last bits between CPU generations, because torch picks
its vectorised kernels (ATen), oneDNN its JIT kernels and Intel MKL (torch's fp32 sgemm behind
``nn.Linear``, and its VML unary ops: tanh, exp, erf) its code branch by the CPU's widest
instruction set (AVX2 vs AVX-512) and, for MKL, by the CPU and its cache sizes.
:func:`pin_cpu_kernels` with ``avx2`` (the default of ``encode.cpu_kernels`` and
``cross_encoder.cpu_kernels``) pins all three: ``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2`` and ``MKL_CBWR=AVX2,STRICT`` (MKL's Conditional Numerical
Reproducibility, AVX2 branch, strict mode). What that guarantees, and what it does not:

- Intel CPUs with AVX2: the same bits on every one (oneMKL documents ``MKL_CBWR=AVX2`` as giving
  identical results on all Intel CPUs with AVX2, at a fixed thread count, and ``STRICT`` as
  dropping the thread-count condition for its gemm family; ATen and oneDNN run the same AVX2
  kernels). Measured on an Intel Xeon with AMX/AVX-512: sgemm and tanh/exp/erf bits change
  with ``MKL_CBWR``, and a 4096x1024 @ 1024x1024 sgemm takes 29 ms default, 42 ms with AVX2.
- Other CPUs with AVX2 (AMD): ATen and oneDNN are pinned as above, but MKL runs Intel's named
  branches on Intel CPUs only (``mkl_serv_intel_cpu_true``); elsewhere it takes ``AUTO`` in their
  place, still in strict mode (``mkl_cbwr_get`` then says ``AUTO,STRICT``, 0x10002).
  Measured on a 2-core AMD EPYC (family 25, model 17, AVX-512 and AVX512-BF16), 2026-12-03: the
  sample profile's embeddings and dense negatives came out byte-identical to an Intel Xeon's, its
  cross-encoder scores did not (the score pickle and all derived from it differed). So the
  bits are those of that CPU model, run to run and for any thread count, not an Intel machine's:
  :func:`kernels_id` names the CPU (``+MKL_AUTO@AuthenticAMD-25-17``) and caches computed there are
  never mixed with another CPU's, and a worker whose CPU would compute other bits than the ones
  its driver's keys name refuses (:func:`pin_cpu_kernels` ``expect``). ``COMPATIBLE``, the one
  branch Intel documents as giving the same results on Intel and other CPUs, is not chosen: 3.7x
  slower than ``AVX2`` on the sgemm above (109 ms; 2.3x on the AMD EPYC).
- A torch without MKL (:func:`mkl_in_use` False) ignores ``MKL_CBWR``; ATen and oneDNN stay pinned.

Caches never mix bits from before and after a change of these settings: keys record
:func:`kernels_id` (``avx2+MKL_CBWR=AVX2,STRICT`` today on Intel, derived from :data:`KERNEL_ENV`,
plus the CPU elsewhere), not the bare name. ``native`` lets each CPU use its widest kernels (its
fp32 bits then agree with others' only within a tolerance).

Threads: torch uses every core this process may run on (``sched_getaffinity``), unless
``OMP_NUM_THREADS`` says otherwise. Why ``STRICT``: without it the thread state changed fp32 bits.
Measured on a 2-core Intel Xeon with ``MKL_CBWR=AVX2``: ``scaled_dot_product_attention`` (every
BERT-style layer's attention) of a 32x12x128x32 input gave other bits after
``torch.set_num_threads(2)`` than in a fresh 2-thread process; all-MiniLM-L6-v2 embeddings of
300 texts then matched in 44 rows of 300, a MiniLM-sized cross-encoder's scores in 143 of 200,
and a batch of one's scores differed between 1 and 2 threads. With ``STRICT`` all of them match
for 1 and 2 threads, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``set_num_threads`` alike
(``tests/test_accel.py`` checks the attention case in fresh processes), so the bits no longer
depend on the worker layout (Dask workers on 1 thread each, or one process on all cores). The
cost was within the noise of 2 shared cores (all-MiniLM-L6-v2: 14.4 and 16.0 texts/s without
``STRICT``, 10.2 and 14.4 with it, alternating runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

DevicePref = Literal["auto", "cpu", "cuda"]
DtypePref = Literal["auto", "fp32", "bf16", "fp16"]
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
PROC_CPUINFO = "/proc/cpuinfo"
CpuKernels = Literal["avx2", "native"]
# what each portable kernel set means for torch's CPU back ends (ATen, oneDNN, MKL), read at first use
KERNEL_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}
}
# what a bare kernel-set name stood for in cache keys written before MKL was pinned (never change it)
KEYED_AS_NAME = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
# mkl_cbwr_get(MKL_CBWR_ALL) codes (mkl_service.h: the branch, | MKL_CBWR_STRICT 0x10000) of the
# MKL_CBWR values KERNEL_ENV uses
MKL_CBWR_ALL = -1  # ~0
MKL_CBWR_STRICT = 0x10000
MKL_CBWR_AUTO = 2  # what MKL runs in place of a named branch on a CPU it does not take for Intel
MKL_CBWR_CODES = {"AVX2": 10, "AVX2,STRICT": MKL_CBWR_STRICT | 10}
INTEL_VENDOR = "GenuineIntel"


@dataclass(frozen=True)
class Accel:
    device: str  # "cpu" or "cuda"
    dtype: str  # "fp32" | "bf16" | "fp16"

    @property
    def torch_dtype(self):  # -> torch.dtype (torch imported lazily)
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    def describe(self) -> str:
        return f"{self.device}/{self.dtype}"


@cache
def _first_cpu(cpuinfo: str | Path = PROC_CPUINFO) -> dict[str, str]:
    """The fields of the first processor in ``/proc/cpuinfo`` (or another file in its format;
    empty if absent)."""
    path = Path(cpuinfo)
    fields: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: str | Path = PROC_CPUINFO) -> frozenset[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (or another file in its format; empty if absent)."""
    return frozenset(_first_cpu(cpuinfo).get("flags", "").split())


def cpu_signature(cpuinfo: str | Path = PROC_CPUINFO) -> str:
    """``vendor-family-model`` of the first CPU in ``/proc/cpuinfo`` (or another file in its format),
    e.g. ``AuthenticAMD-25-17``; the parts it lacks are ``unknown`` (no such file: all three)."""
    fields = _first_cpu(cpuinfo)
    parts = (fields.get("vendor_id"), fields.get("cpu family"), fields.get("model"))
    return "-".join(part or "unknown" for part in parts)


def mkl_takes_named_branches(cpuinfo: str | Path = PROC_CPUINFO) -> bool:
    """Whether MKL runs a named CNR branch (``MKL_CBWR=AVX2``) here: on Intel CPUs only.

    Read from ``/proc/cpuinfo`` (cheap, no torch), and checked against MKL's own answer when the
    kernels are pinned (:func:`pin_cpu_kernels`)."""
    return cpu_signature(cpuinfo).split("-")[0] == INTEL_VENDOR


def expected_mkl_code(value: str, named_branches: bool) -> int:
    """The ``mkl_cbwr_get`` code that ``MKL_CBWR=value`` gives: the named branch where MKL takes
    named branches, else ``AUTO``; the strict bit either way (measured on an AMD EPYC: ``AVX2,STRICT``
    reads 0x10002, ``AVX2`` 2)."""
    code = MKL_CBWR_CODES[value]
    return code if named_branches else (code & MKL_CBWR_STRICT) | MKL_CBWR_AUTO


def torch_cpu_capability() -> str:
    """The ATen CPU capability torch dispatches to (``DEFAULT``, ``AVX2``, ``AVX512``, ...).

    It honours ``ATEN_CPU_CAPABILITY`` (e.g. ``avx2`` to run an AVX2 machine's kernels here).
    """
    import torch

    return str(torch.backends.cpu.get_cpu_capability()).upper()


def cpu_has_bf16(flags: Iterable[str] | None = None, capability: str | None = None) -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX512-BF16).

    ``flags`` (cpuinfo flags) and ``capability`` (torch's CPU capability string) default to
    this machine's; pass them to ask about another CPU. Either one saying bf16 is enough.
    """
    flag_set = cpu_flags() if flags is None else frozenset(flags)
    if any(flag in flag_set for flag in CPU_BF16_FLAGS):
        return True
    cap = torch_cpu_capability() if capability is None else capability.upper()
    return "AMX" in cap or "BF16" in cap


def kernels_id(
    kernels: str | None,
    env: dict[str, dict[str, str]] | None = None,
    cpuinfo: str | Path = PROC_CPUINFO,
) -> str | None:
    """The identity of a kernel set as cache keys and manifests record it.

    ``native`` and ``None`` (CUDA) are themselves; a portable set is its name plus what its
    environment (``env``, default :data:`KERNEL_ENV`) adds to or changes from what the bare name
    meant in earlier keys (:data:`KEYED_AS_NAME`), e.g. ``avx2+MKL_CBWR=AVX2,STRICT``, so any change
    of the settings gives new keys and shards computed before it are never reused. Where the set
    pins ``MKL_CBWR`` and MKL cannot honour a named branch (a CPU that is not Intel's, read from
    ``cpuinfo``), the CPU it runs ``AUTO`` on is added, e.g. ``+MKL_AUTO@AuthenticAMD-25-17``: its
    bits are that CPU model's, not an Intel machine's (module docstring).
    """
    table = KERNEL_ENV if env is None else env
    if kernels is None or kernels not in table:
        return kernels
    now, then = table[kernels], KEYED_AS_NAME.get(kernels, {})
    added = [f"+{k}={v}" for k, v in sorted(now.items()) if then.get(k) != v]
    removed = [f"-{k}" for k in sorted(then) if k not in now]
    cpu = (
        []
        if "MKL_CBWR" not in now or mkl_takes_named_branches(cpuinfo)
        else [f"+MKL_AUTO@{cpu_signature(cpuinfo)}"]
    )
    return kernels + "".join(added + removed + cpu)


def mkl_in_use() -> bool:
    """True when this torch computes fp32 matmuls and unary ops with Intel MKL (x86 builds)."""
    import torch

    return bool(torch.backends.mkl.is_available())


def _mkl_function(name: str, restype: type, argtypes: list[type]):
    """The ``ctypes`` function ``name`` of the MKL that torch links in, or ``None`` where torch
    has no MKL or its MKL does not export it."""
    import ctypes

    import torch

    if not mkl_in_use():
        return None
    for lib in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu*")):
        try:
            fn = getattr(ctypes.CDLL(str(lib)), name)
        except (OSError, AttributeError):
            continue
        fn.restype, fn.argtypes = restype, argtypes
        return fn
    return None


def mkl_cbwr_branch() -> int | None:
    """MKL's CNR setting in force (``mkl_cbwr_get(MKL_CBWR_ALL)``: the code branch, 10 for AVX2 and
    1 unpinned, with 0x10000 added in strict mode), or ``None`` where torch's MKL does not export
    it. Asking fixes the setting, like MKL's first call."""
    import ctypes

    get = _mkl_function("mkl_serv_cbwr_get", ctypes.c_int, [ctypes.c_int])
    return None if get is None else int(get(MKL_CBWR_ALL))


def mkl_intel_cpu() -> bool | None:
    """MKL's own answer to whether this is an Intel CPU (``mkl_serv_intel_cpu_true``: it runs named
    CNR branches only there), or ``None`` where torch's MKL does not export it."""
    import ctypes

    ask = _mkl_function("mkl_serv_intel_cpu_true", ctypes.c_int, [])
    return None if ask is None else bool(ask())


def pin_cpu_kernels(
    kernels: str,
    flags: Iterable[str] | None = None,
    *,
    expect: str | None = None,
    cpuinfo: str | Path = PROC_CPUINFO,
) -> str:
    """Make this process run torch's CPU kernels of ``kernels``; returns the ATen capability in force.

    ``avx2``: the AVX2 kernels of ATen and oneDNN and MKL's AVX2 CNR branch (``AUTO`` on a CPU
    that is not Intel's: the guarantees are in the module docstring), whatever the CPU's
    widest instruction set. The
    settings are environment variables that ATen, oneDNN and MKL read once, at their first use;
    setting them here (before any model runs)
    also hands them to worker processes started afterwards. A process whose kernels were
    already chosen otherwise (a long-lived Dask worker that ran torch before) raises rather
    than compute other bits. ``native``: the CPU's own widest kernels (changes nothing).
    ``flags``: the CPU's cpuinfo flags (default: this machine's); ``cpuinfo``: the file naming
    its vendor and model. ``expect``: the :func:`kernels_id` the caller's cache keys name (a
    worker gets its driver's): a CPU here that would compute other bits raises instead.
    """
    if kernels == "native":
        return torch_cpu_capability()
    if kernels not in KERNEL_ENV:
        raise ValueError(f"cpu_kernels must be avx2 or native, got {kernels!r}")
    flag_set = cpu_flags() if flags is None else frozenset(flags)
    if "avx2" not in flag_set:
        raise ValueError(
            "cpu_kernels: avx2 needs an x86-64 CPU with AVX2, and this CPU reports none; set "
            "encode.cpu_kernels / cross_encoder.cpu_kernels: native (fp32 bits then depend on the CPU)"
        )
    # imported here: benchmarks/gpu_check.py imports this module where tasks.io's
    # dependencies (isal) may be missing, and must name those itself
    from tasks.io import EnvironmentMismatch  # the stage CLIs report it in one line, exit 3

    here = kernels_id(kernels, cpuinfo=cpuinfo)
    if expect is not None and expect != here:
        raise EnvironmentMismatch(
            f"this process's CPU ({cpu_signature(cpuinfo)}) computes the fp32 bits of {here}, and the "
            f"run's cache keys name {expect}: run every worker on CPUs of the driver's kind (any Intel "
            "CPU with AVX2, or one model of another vendor's), or set cpu_kernels: native"
        )
    env = KERNEL_ENV[kernels]
    for var, value in env.items():
        os.environ[var] = value
    capability = torch_cpu_capability()
    branch = mkl_cbwr_branch()  # None: no MKL (MKL_CBWR is then moot) or no way to ask it
    named = mkl_takes_named_branches(cpuinfo)
    intel = mkl_intel_cpu()
    if intel is not None and intel != named:
        raise EnvironmentMismatch(
            f"MKL {'takes' if intel else 'does not take'} this CPU for Intel's, and {cpuinfo} says "
            f"{cpu_signature(cpuinfo)}: cache keys would misname its fp32 bits; set cpu_kernels: native"
        )
    expected = None if branch is None else expected_mkl_code(env["MKL_CBWR"], named)
    if capability != kernels.upper() or branch != expected:
        raise EnvironmentMismatch(
            f"this process already runs torch's {capability} CPU kernels (MKL branch {branch}, "
            f"pinned would read {expected}), so cpu_kernels: {kernels} cannot be honoured here; start "
            "it (e.g. `dask worker`) with "
            + " ".join(f"{k}={v}" for k, v in env.items())
            + ", or set cpu_kernels: native"
        )
    log.debug("cpu kernels %s: ATen %s, MKL branch %s", here, capability, branch)
    return capability


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Device nodes a CUDA (or ROCm) GPU shows in a process that can use it: NVIDIA's driver, its
# WSL2 bridge, AMD's ROCm kernel driver. With none of them, torch.cuda.is_available() is False.
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def cuda_possible(nodes: Iterable[str] = GPU_NODES) -> bool:
    """False when no GPU device node exists, so CUDA cannot be there: a stage that only needs to
    know (exact search on CPU) then skips importing torch (~3 s). True means: ask torch."""
    return any(os.path.exists(node) for node in nodes)


def thread_count() -> int:
    """The threads a CPU stage uses: ``OMP_NUM_THREADS`` when set, else every available core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else cpu_count()


def configure_threads() -> int:
    """Let torch use every available core (or ``OMP_NUM_THREADS`` when set); returns the count.

    On a shared, oversubscribed machine fewer threads can be faster (measured: a tiny model at
    load 6 on 2 cores ran 4x faster with 1 thread than with 2); set ``OMP_NUM_THREADS`` then.
    The count changes speed only, never the fp32 bits, with ``cpu_kernels: avx2`` (MKL's strict
    CNR mode; see the module docstring). With ``native`` it may change them.
    """
    import torch

    n = thread_count()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def resolve(
    device: DevicePref = "auto",
    dtype: DtypePref = "fp32",
    *,
    cpuinfo: str | Path = PROC_CPUINFO,
    capability: str | None = None,
) -> Accel:
    """Turn the ``device``/``dtype`` params into a concrete :class:`Accel`.

    ``cpuinfo`` / ``capability`` describe the CPU (default: this one; see :func:`cpu_has_bf16`).
    Raises ``ValueError`` naming the parameter when ``cuda`` is asked for but absent.
    """
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if dtype not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ValueError("device: 'cuda' requested but torch sees no CUDA device; set device: auto or cpu")
    dev = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
    native_bf16 = dev == "cpu" and cpu_has_bf16(cpu_flags(cpuinfo), capability)
    if dtype != "auto":
        chosen = dtype
        if dev == "cpu" and dtype in ("bf16", "fp16") and not native_bf16:
            log.warning("dtype %s on a CPU without native bf16/fp16 support is emulated and slow", dtype)
    elif dev == "cuda":
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        chosen = "bf16" if native_bf16 else "fp32"
    if chosen == "fp32":
        torch.set_float32_matmul_precision("highest")  # IEEE fp32: no TF32 / bf16 fast-math
    if dev == "cpu":
        configure_threads()
    accel = Accel(dev, chosen)
    log.info("accelerator: %s (requested device=%s dtype=%s)", accel.describe(), device, dtype)
    return accel


def place(model, accel: Accel):
    """Move a torch module (e.g. a SentenceTransformer or CrossEncoder) to the device and dtype."""
    model.to(device=accel.device, dtype=accel.torch_dtype)
    model.eval()
    return model
