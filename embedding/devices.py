"""Devices the pool can run on, and how much memory each has free for a batch.

The parsers are pure (they take the text of /proc and cgroup files); the probes read the files or ask torch.
A probe is a plain callable, so the pool's budget arithmetic is tested with an injected one and no GPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CPU_BATCH_TOKENS = 2048
"""Default padded tokens per CPU batch (8 to 64 chunks): batch size hardly matters on CPU (8 to 128 chunks
within ~10%, shared/ENVIRONMENT.md) but padding does, since CPU time follows padded tokens: on the bench
corpus, batches of 8192 padded tokens carried 12% padding, of 2048 3% (bench/embed.py). Smaller batches
also bound the wait of the low-latency lane."""
CUDA_BATCH_TOKENS = 65536
"""Default cap per GPU batch (not measured here: no GPU); free memory lowers it where it must."""


@dataclass(frozen=True)
class Device:
    """One worker's device. ``key`` is unique per worker (``cpu``, ``cpu#1`` for a second CPU worker,
    ``cuda:0``); ``label`` describes the hardware and keys cached calibration results."""

    key: str
    torch_device: str
    kind: Literal["cpu", "cuda"]
    label: str
    threads: int | None = None


def batch_token_cap(configured: int | None, device: Device) -> int:
    """Padded tokens per batch at most on ``device``: ``embedding.pool.max_batch_tokens``, else the default
    of the device's kind. Free memory may lower it further, never raise it."""
    return configured or (CPU_BATCH_TOKENS if device.kind == "cpu" else CUDA_BATCH_TOKENS)


MemoryProbe = Callable[[Device], int]
"""Bytes free for activations on a device now (weights already loaded)."""


def parse_meminfo(text: str) -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes: what can be allocated without swapping (the kernel's own
    estimate, counting reclaimable page cache, unlike ``MemFree``)."""
    match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def cgroup_available(limit_text: str, usage_text: str) -> int | None:
    """Bytes left under a cgroup v2 memory limit (``memory.max`` minus ``memory.current``); None without a
    limit. A container's limit is often far below the host's MemAvailable, and crossing it kills the process
    instead of raising MemoryError."""
    limit = limit_text.strip()
    if not limit or limit == "max":
        return None
    return max(0, int(limit) - int(usage_text.strip()))


def cpu_quota(cpu_max_text: str) -> int | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` (``quota period`` or ``max period``), rounded up."""
    parts = cpu_max_text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return max(1, math.ceil(int(parts[0]) / int(parts[1])))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_available_bytes() -> int:
    """RAM a CPU batch may take: MemAvailable (psutil where installed, else /proc/meminfo), bounded by the
    cgroup limit."""
    available: int | None = None
    try:
        import psutil  # type: ignore[import-untyped]

        available = int(psutil.virtual_memory().available)
    except ImportError:
        text = _read("/proc/meminfo")
        available = parse_meminfo(text) if text else None
    if available is None:
        raise RuntimeError("cannot tell the free RAM: no psutil and no MemAvailable in /proc/meminfo")
    limit, usage = _read("/sys/fs/cgroup/memory.max"), _read("/sys/fs/cgroup/memory.current")
    if limit is not None and usage is not None:
        left = cgroup_available(limit, usage)
        if left is not None:
            available = min(available, left)
    return available


def omp_threads(environ: Mapping[str, str]) -> int | None:
    """The thread count ``OMP_NUM_THREADS`` asks for (its first level where it lists nested ones, "4,2"),
    or None where it is unset or not a positive number. Operators set it to share a machine; torch reads it
    only at import, so the pool applies it itself."""
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def usable_cpus(environ: Mapping[str, str] | None = None) -> int:
    """CPUs this process may use: its affinity mask, bounded by the cgroup CPU quota and by
    ``OMP_NUM_THREADS`` where that is set (the convention for "use this many threads")."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota_text = _read("/sys/fs/cgroup/cpu.max")
    quota = cpu_quota(quota_text) if quota_text else None
    limits = [count, *(n for n in (quota, omp_threads(os.environ if environ is None else environ)) if n)]
    return max(1, min(limits))


def cuda_free_bytes(torch_device: str) -> int:
    """Free VRAM: what the driver reports free plus what torch's caching allocator holds but does not use
    (the pool's own earlier batches). Falls back to NVML when torch cannot ask the driver."""
    import torch

    try:
        free, _total = torch.cuda.mem_get_info(torch_device)
        idle_cache = torch.cuda.memory_reserved(torch_device) - torch.cuda.memory_allocated(torch_device)
        return int(free + idle_cache)
    except RuntimeError as err:
        try:
            import pynvml
        except ImportError:
            raise RuntimeError(f"cannot read the free memory of {torch_device}: {err}") from err
        pynvml.nvmlInit()
        index = torch.device(torch_device).index or 0
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)


def default_probe(device: Device) -> int:
    return cuda_free_bytes(device.torch_device) if device.kind == "cuda" else cpu_available_bytes()


def cpu_label(cpuinfo: str | None = None) -> str:
    """The CPU model and the flags that change which precision is fastest (AMX, AVX512-BF16/FP16)."""
    if cpuinfo is None:
        cpuinfo = _read("/proc/cpuinfo") or ""
    name = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    wanted = sorted(f for f in flags if f.startswith("amx") or f in {"avx512_bf16", "avx512_fp16", "avx512f"})
    return f"{name.group(1).strip() if name else 'cpu'} [{' '.join(wanted)}]"


def discover_devices(
    devices: Sequence[str] | None,
    *,
    explicit_device: str | None = None,
    cpu_threads: int | None = None,
    cuda_count: Callable[[], int] | None = None,
    cuda_label: Callable[[str], str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Device]:
    """The workers' devices: ``devices`` as configured; else ``explicit_device``; else every CUDA GPU, or
    the CPU when there is none. CPU workers share the usable CPUs (``usable_cpus``: affinity, cgroup quota,
    ``OMP_NUM_THREADS`` from ``environ``, default the process's) unless ``cpu_threads`` is given."""
    names = list(devices) if devices else [explicit_device] if explicit_device else None
    count = 0
    if names is None:
        count = cuda_count() if cuda_count else _cuda_device_count()
    elif any(n != "cpu" for n in names):  # configured GPUs: torch answers, whatever driver files there are
        count = cuda_count() if cuda_count else _cuda_device_count(ask_torch=True)
    if names is None:
        names = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    names = ["cuda:0" if n == "cuda" else n for n in names]
    cpu_workers = sum(1 for n in names if n == "cpu")
    threads = cpu_threads or max(1, usable_cpus(environ) // max(1, cpu_workers))
    result: list[Device] = []
    for name in names:
        if name == "cpu":
            n = sum(1 for d in result if d.kind == "cpu")
            key = "cpu" if n == 0 else f"cpu#{n}"
            result.append(Device(key=key, torch_device="cpu", kind="cpu", label=cpu_label(), threads=threads))
            continue
        index = int(name.split(":")[1])
        if index >= count:
            raise ValueError(f"embedding.pool.devices: {name} does not exist ({count} CUDA device(s) visible)")
        label = (cuda_label or _cuda_label)(name)
        result.append(Device(key=name, torch_device=name, kind="cuda", label=label))
    return result


GPU_DRIVER_FILES = (
    "/proc/driver/nvidia/version",
    "/dev/nvidiactl",
    "/dev/nvhost-ctrl-gpu",  # Jetson (Tegra)
    "/dev/kfd",
    "/dev/dxg",
)
"""What a CUDA (NVIDIA, Jetson), ROCm (AMD) or WSL GPU driver leaves on a Linux machine. With none of them, the
discovery of devices does not import torch (1-2 s, most of it holding the GIL the rest of the process needs)
just to learn that it sees no GPU: the int8 worker never imports torch at all. Devices configured as GPUs are
always counted by torch."""


def gpu_driver_present(files: Sequence[str] = GPU_DRIVER_FILES) -> bool:
    return any(os.path.exists(f) for f in files)


def _cuda_device_count(ask_torch: bool = False) -> int:
    import sys

    if not ask_torch and "torch" not in sys.modules and sys.platform == "linux" and not gpu_driver_present():
        return 0
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _cuda_label(torch_device: str) -> str:
    import torch

    props = torch.cuda.get_device_properties(torch_device)
    return f"{props.name} sm_{props.major}{props.minor} {props.total_memory >> 20} MiB"


def label_digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:12]


_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for the errors that mean "this batch did not fit": torch's OutOfMemoryError (CUDA), MemoryError,
    and the RuntimeErrors torch raises for a failed allocation (on CPU: "DefaultCPUAllocator: can't allocate
    memory"). Checked by name and message so that no torch import is needed here."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)
_RSS = re.compile(r"^VmRSS:\s+(\d+)\s+kB", re.MULTILINE)


def measure_cpu_peak(run: Callable[[], object]) -> int | None:
    """Bytes the resident set grew at its peak while ``run()`` ran: the high-water mark is reset through
    /proc/self/clear_refs (Linux >= 4.0), then compared with the resident size before. None where /proc does
    not allow it. A lower bound: memory the allocator already held from earlier work is reused unseen."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _RSS.search(Path("/proc/self/status").read_text())
    except OSError:
        return None
    run()
    after = _HWM.search(Path("/proc/self/status").read_text())
    if before is None or after is None:
        return None
    return max(0, int(after.group(1)) - int(before.group(1))) * 1024
