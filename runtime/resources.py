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


def current_load(running: int) -> dict:
    """The load a heartbeat carries: cpu use since the last call (non-blocking), free memory,
    and how many task processes run now."""
    return {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_available_mb": int(psutil.virtual_memory().available // (1024 * 1024)),
        "running": int(running),
    }
