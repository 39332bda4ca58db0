"""A worker process: a node, its WorkerActor, and the foreground loop that drains on SIGTERM.

    run_worker(["tcp://127.0.0.1:6767"], max_concurrent_tasks=4)   # until SIGTERM
    agentflow worker --master-url tcp://127.0.0.1:6767             # the same from a shell

Role: composition only. The first SIGTERM or SIGINT drains the worker (no new work, running
tasks finish and are reported); a second one stops it at once. Exit 0 after a clean drain, 1
otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import platform
import signal
import threading
import uuid
from typing import Any, Callable

import psutil

from agentflow.addresses import advertised_address, parse_advertise
from actors.worker import Begin, Drain, WorkerActor, WorkerConfig
from protocols.assignments import DEFAULT_RESULT_CACHE_BYTES
from protocols.names import WORKER_ACTOR
from protocols.registry import WorkerInfo
from protocols.tasks import parse_master_urls
from protocols.wire import DEFAULT_COMPRESS_MIN_BYTES
from runtime.http import HttpServer, on_node_thread
from runtime.log import configure_logging, get_logger
from runtime.metrics import WorkerMetrics
from runtime.node import Node, Ref
from runtime.security import CurveKeys
from runtime.resources import detect_resources

log = get_logger("worker")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def start_worker(node: Node, config: WorkerConfig, on_drained: Callable[[bool], None] | None = None) -> Ref:
    """Spawn the WorkerActor named "worker" on ``node`` and start it (hello, heartbeats).
    ``on_drained(clean)`` is called on the actor's thread once a drain has finished."""
    ref = node.spawn(WorkerActor, config, name=WORKER_ACTOR, pinned=True)
    ref.tell(Begin(on_drained))
    return ref


def worker_snapshot(node: Node) -> dict:
    """The worker's document for /stats, /health and /metrics (on the node's thread)."""
    if WORKER_ACTOR not in node.targets:  # HTTP is up a moment before the actor
        return {"node_id": node.node_id, "kind": "worker", "role": "worker", "serving": False,
                "reason": "starting", "counters": node.stats()}
    actor = node.actor(WORKER_ACTOR)
    serving = actor.registered and not actor.draining
    reason = ("draining" if actor.draining else f"registered with {actor.master_endpoint}" if actor.registered
              else f"not welcomed by a leader yet (trying {actor.master_endpoint})")
    return {"node_id": node.node_id, "kind": "worker", "role": "worker", "serving": serving, "reason": reason,
            "registered": actor.registered, "draining": actor.draining, "master": actor.master_endpoint,
            "slots": actor.max_concurrent_tasks, "running": len(actor.running), "waiting": len(actor.waiting),
            "unacked": len(actor.unacked), "counters": node.stats(),
            "memory_available_bytes": psutil.virtual_memory().available}


def default_worker_id() -> str:
    return f"worker-{uuid.uuid4().hex[:8]}"


def run_worker(
    master_urls: list[str] | str,
    *,
    cpu_cores: float | None = None,
    memory_mb: int | None = None,
    gpu_count: int | None = None,
    group: str = "default",
    capabilities: tuple[str, ...] | list[str] = (),
    max_concurrent_tasks: int | None = None,
    worker_id: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    advertise: str | None = None,
    memory_pressure_mb: int | None = None,
    result_cache_mb: int = DEFAULT_RESULT_CACHE_BYTES // (1024 * 1024),
    curve: CurveKeys | None = None,
    http_port: int | None = None,
    compress_min_bytes: int = DEFAULT_COMPRESS_MIN_BYTES,
) -> int:
    """Run a worker in the foreground until it has drained after SIGTERM/SIGINT (exit 0), or a
    second signal stops it at once (exit 1). Exit 2 for bad arguments.

    ``http_port`` serves /metrics, /health and /stats; None means PORT+10 when ``port`` is fixed
    and no HTTP when the port is chosen at random; 0 means no HTTP."""
    configure_logging()
    try:
        endpoints = parse_master_urls(master_urls)
        advertise_host, advertise_port = advertised_address(host, parse_advertise(advertise))
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if max_concurrent_tasks is not None and max_concurrent_tasks < 1:
        log.error("--max-concurrent-tasks must be at least 1")
        return EXIT_USAGE
    if (memory_pressure_mb is not None and memory_pressure_mb < 0) or result_cache_mb < 0 or compress_min_bytes < 0:
        log.error("--memory-pressure-mb, --result-cache-mb and --compress-min-bytes must not be negative")
        return EXIT_USAGE
    resources = detect_resources(cpu_cores, memory_mb, gpu_count)
    worker_id = worker_id or default_worker_id()
    try:
        node = Node(worker_id, host=host, port=port, master_urls=endpoints, advertise_host=advertise_host,
                    advertise_port=advertise_port, curve=curve, compress_min_bytes=compress_min_bytes).start()
    except Exception as exc:  # a taken port, a bad host: say so and exit
        log.error("Worker %s cannot listen on %s:%s: %s (choose another --port, or stop what uses it)",
                  worker_id, host, port, exc)
        return EXIT_FAILED
    if http_port is None:
        http_port = port + 10 if port else 0
    info = WorkerInfo(
        worker_id=worker_id,
        name=worker_id,
        group=group,
        platform=platform.platform(terse=True),
        capabilities=list(capabilities),
        max_concurrent_tasks=max_concurrent_tasks or max(1, int(resources.cpu_cores)),
        resources=resources,
        address=node.endpoint,  # the advertised one
    )
    wake = threading.Event()
    outcome: dict[str, Any] = {"signals": 0, "drained": False, "clean": False}

    def on_drained(clean: bool) -> None:
        outcome["drained"], outcome["clean"] = True, clean
        wake.set()

    def on_signal(signum: int, frame: Any) -> None:
        outcome["signals"] += 1
        wake.set()

    metrics = WorkerMetrics(lambda: on_node_thread(node, lambda: worker_snapshot(node)))
    try:
        http = HttpServer(host, http_port, metrics.snapshot_provider, metrics.registry).start() if http_port else None
    except OSError as exc:
        node.stop()
        log.error("Worker %s cannot serve HTTP on %s:%s: %s (choose another --http-port, or 0 for none)",
                  worker_id, host, http_port, exc)
        return EXIT_FAILED
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        config = WorkerConfig(info=info, master_endpoints=endpoints, memory_pressure_mb=memory_pressure_mb,
                              result_cache_bytes=result_cache_mb * 1024 * 1024, on_reports=metrics.observe_reports)
        ref = start_worker(node, config, on_drained)
        log.info("Worker %s at %s: %g cpu, %d MB, %d GPUs, %d slots; masters %s", worker_id, node.endpoint,
                 resources.cpu_cores, resources.memory_mb, resources.gpu_count, info.max_concurrent_tasks,
                 ", ".join(endpoints))
        drain_sent = False
        while True:
            wake.wait(1.0)
            wake.clear()
            if outcome["drained"] or outcome["signals"] >= 2:
                break
            if outcome["signals"] == 1 and not drain_sent:
                drain_sent = True
                ref.tell(Drain())
    finally:
        if http is not None:
            http.stop()
        node.stop()  # stops the actor, whose executor kills whatever still runs
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not outcome["drained"]:
        log.warning("Worker %s stopped without draining", worker_id)
        return EXIT_FAILED
    return EXIT_OK if outcome["clean"] else EXIT_FAILED
