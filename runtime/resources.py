"""What this machine offers a worker: cpu cores, memory and GPUs, and its load right now.

Rules: detection never fails a worker's start. psutil gives cores and memory; GPUs come from
``nvidia-smi --query-gpu=index,memory.total --format=csv,noheader`` when that tool is on the
PATH (bounded by a timeout; no tool or any error means no GPUs). Every value given by a flag
overrides what was detected.
"""

from __future__ import annotations

import shutil
import subprocess

import psutil

from protocols.registry import WorkerResources
from runtime.log import get_logger

log = get_logger("worker")

NVIDIA_SMI_TIMEOUT_S = 5.0


def parse_nvidia_smi(text: str) -> list[tuple[int, int]]:
    """``[(index, memory_mb), ...]`` from nvidia-smi's ``index,memory.total`` csv lines
    (e.g. ``0, 16384 MiB``); lines that do not parse are skipped."""
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        memory = parts[1].split()[0] if parts[1] else ""
        gpus.append((int(parts[0]), int(memory) if memory.isdigit() else 0))
    return gpus


def detect_gpus() -> list[tuple[int, int]]:
    """The GPUs nvidia-smi reports, as ``[(index, memory_mb), ...]``; [] without nvidia-smi."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        completed = subprocess.run(
            [tool, "--query-gpu=index,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s); assuming no GPUs", exc)
        return []
    if completed.returncode != 0:
        log.warning("nvidia-smi exited with %d; assuming no GPUs", completed.returncode)
        return []
    return parse_nvidia_smi(completed.stdout)


def detect_resources(
    cpu_cores: float | None = None,
    memory_mb: int | None = None,
    gpu_count: int | None = None,
) -> WorkerResources:
    """This machine's resources; any argument that is not None overrides the detected value."""
    detected_cores = psutil.cpu_count(logical=True) or 1
    memory = psutil.virtual_memory()
    detected_memory_mb = memory.total // (1024 * 1024)
    available_mb = memory.available // (1024 * 1024)
    custom: dict = {}
    if gpu_count is None:
        gpus = detect_gpus()
        gpu_count = len(gpus)
        if gpus:
            custom["gpu_memory_mb"] = [memory_mb_of_gpu for _, memory_mb_of_gpu in gpus]
    total_mb = int(memory_mb) if memory_mb is not None else int(detected_memory_mb)
    return WorkerResources(
        cpu_cores=float(cpu_cores) if cpu_cores is not None else float(detected_cores),
        memory_mb=total_mb,
        memory_available_mb=int(min(available_mb, total_mb)),
        gpu_count=int(gpu_count),
        custom=custom,
    )


class MemoryWatch:
    """Whether a worker is under memory pressure, with hysteresis.

    Its available memory is the machine's, or what its declared budget (``memory_mb``) leaves
    after the resident memory of its task processes (every descendant of this process),
    whichever is less. Under ``threshold_mb`` it is under pressure; it recovers once that is
    back above ``threshold_mb * RECOVERY_FACTOR``, so it does not flap at the line."""

    RECOVERY_FACTOR = 1.25

    def __init__(self, budget_mb: int, threshold_mb: int) -> None:
        self.budget_mb = budget_mb
        self.threshold_mb = threshold_mb
        self.under_pressure = False
        self._me = psutil.Process()

    def tasks_rss_mb(self) -> int:
        total = 0
        for child in self._me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total // (1024 * 1024)

    def sample(self) -> int:
        """The available memory in MB now; updates ``under_pressure``."""
        machine_mb = psutil.virtual_memory().available // (1024 * 1024)
        available_mb = int(min(machine_mb, self.budget_mb - self.tasks_rss_mb()))
        if self.under_pressure:
            self.under_pressure = available_mb < self.threshold_mb * self.RECOVERY_FACTOR
        else:
            self.under_pressure = available_mb < self.threshold_mb
        return available_mb


def default_pressure_threshold_mb(memory_mb: int) -> int:
    """10% of the worker's memory, at most 512 MB."""
    return min(512, memory_mb // 10)


def current_load(running: int, memory: MemoryWatch) -> dict:
    """The load a heartbeat carries: cpu use since the last call (non-blocking), available
    memory and whether it is under pressure (``memory`` samples it), and how many task processes run."""
    available_mb = memory.sample()
    return {"cpu_percent": float(psutil.cpu_percent(interval=None)), "running": int(running),
            "memory_available_mb": available_mb, "memory_pressure": memory.under_pressure}
