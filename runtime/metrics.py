"""Prometheus metrics of a master or a worker, through prometheus_client.

    metrics = MasterMetrics(snapshot_provider)     # or WorkerMetrics(...)
    metrics.fsync.observe(0.0004)                  # live counters and histograms, any thread
    render(metrics.registry)                       # the text a scrape of /metrics gets

Role: the names, units, labels and buckets of everything a node exports, in one place. Two kinds:

* live counters and histograms, observed where the thing happens (a storage commit, an applied
  command on the leader, a finished task); prometheus_client makes them safe from any thread;
* gauges (and the transport's counters), read at scrape time from the node's snapshot document,
  the one ``/stats`` serves, which its actors build on their own thread: a scrape never reads
  actors' state from the HTTP thread.

Naming follows Prometheus' conventions: an ``agentflow_`` prefix, base units (``_seconds``,
``_bytes``), ``_total`` on counters only, ``_ratio`` for 0..1, and no label whose values grow
without bound (no task, workflow or lock ids). Each registry is its own (never the global one),
so several nodes can live in one process (tests).

Where a figure is counted on the leader only (task and lock events), each master counts what
committed while it led: summed over masters it is the cluster's total, across leader changes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The *_created series double what a scrape carries and nothing here reads them.
disable_created_metrics()

# etcd's WAL fsync buckets start at 1 ms; an SSD commits in 0.1-0.2 ms here, so start lower.
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COMMIT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096)
DISPATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RUN_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)

# The node's counters (runtime/node.py, runtime/transport.py) that have a family of their own;
# any other counter goes to agentflow_node_events_total{event}.
_TRANSPORT_COUNTERS = {
    "msgs_in": ("messages", "in"), "msgs_out": ("messages", "out"),
    "frames_in": ("frames", "in"), "frames_out": ("frames", "out"),
    "bytes_in": ("bytes", "in"), "bytes_out": ("bytes", "out"),
    "frames_compressed_in": ("compressed_frames", "in"), "frames_compressed_out": ("compressed_frames", "out"),
    "compression_saved_bytes_in": ("compression_saved_bytes", "in"),
    "compression_saved_bytes_out": ("compression_saved_bytes", "out"),
}
_TRANSPORT_FAMILIES = {  # agentflow_transport_<kind>_total{direction}
    "messages": "Transport messages sent and received",
    "frames": "Transport frames sent and received",
    "bytes": "Transport bytes sent and received (as on the wire)",
    "compressed_frames": "Frames (and events) sent and received compressed",
    "compression_saved_bytes": "Bytes compression kept off the wire: raw size less wire size",
}
_DECODE_ERROR_PREFIX = "bad_frames_"
_REJECTED_PREFIX = "rejected_"  # an actor's refusal (ErrorRecord kind), runtime/actor.py counts them
_CONNECTIONS_REFUSED_PREFIX = "connections_refused_"  # runtime/connections.py


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _gauge(name: str, documentation: str, value: float | None, **labels: str) -> Iterator[Metric]:
    if value is None:
        return
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), float(value))
    yield family


def _labelled_gauge(name: str, documentation: str, label: str, values: dict) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key in sorted(values):
        family.add_metric([str(key)], float(values[key]))
    return family


def transport_families(counters: dict[str, int]) -> Iterator[Metric]:
    """The transport's messages, frames and bytes by direction (and what compression did),
    decode errors by reason, the requests actors refused by reason (a limit, a bad request), the
    connections refused by reason (a peer over its limit), and the node's other event counters,
    from ``node.stats()``."""
    traffic = {(kind, direction): 0 for kind in _TRANSPORT_FAMILIES for direction in ("in", "out")}
    decode = CounterMetricFamily("agentflow_transport_decode_errors", "Inbound frames dropped undecoded, by reason",
                                 labels=["reason"])
    rejected = CounterMetricFamily("agentflow_requests_rejected", "Requests an actor refused, by reason",
                                   labels=["reason"])
    refused = CounterMetricFamily("agentflow_transport_connections_refused",
                                  "Inbound connections closed at once, by reason", labels=["reason"])
    other = CounterMetricFamily("agentflow_node_events", "Other events the node counts (errors, drops, gaps)",
                                labels=["event"])
    for name in sorted(counters):
        if name in _TRANSPORT_COUNTERS:
            traffic[_TRANSPORT_COUNTERS[name]] = counters[name]
        elif name.startswith(_DECODE_ERROR_PREFIX):
            decode.add_metric([name[len(_DECODE_ERROR_PREFIX):]], counters[name])
        elif name.startswith(_REJECTED_PREFIX):
            rejected.add_metric([name[len(_REJECTED_PREFIX):]], counters[name])
        elif name.startswith(_CONNECTIONS_REFUSED_PREFIX):
            refused.add_metric([name[len(_CONNECTIONS_REFUSED_PREFIX):]], counters[name])
        else:
            other.add_metric([name], counters[name])
    for kind, documentation in _TRANSPORT_FAMILIES.items():
        family = CounterMetricFamily(f"agentflow_transport_{kind}", documentation, labels=["direction"])
        for direction in ("in", "out"):
            family.add_metric([direction], traffic[(kind, direction)])
        yield family
    yield decode
    yield rejected
    yield refused
    yield other


class _SnapshotCollector:
    """Calls ``families(snapshot)`` at scrape time with a fresh snapshot (None if the node did
    not answer in time: then only ``agentflow_scrape_snapshot_ok`` 0 is exported)."""

    def __init__(self, snapshot_provider: Callable[[], dict | None], families: Callable[[dict], Iterator[Metric]]):
        self.snapshot_provider = snapshot_provider
        self.families = families

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot_provider()
        yield from _gauge("agentflow_scrape_snapshot_ok", "1 when the node's actors answered this scrape in time",
                          1 if snapshot is not None else 0)
        if snapshot is None:
            return
        yield from _gauge("agentflow_node_info", "Always 1: who this node is", 1,
                          node_id=str(snapshot.get("node_id", "")), kind=str(snapshot.get("kind", "")))
        yield from transport_families(snapshot.get("counters") or {})
        yield from self.families(snapshot)


class _Metrics:
    def __init__(self, snapshot_provider: Callable[[], dict | None], families: Callable[[dict], Iterator[Metric]]):
        self.snapshot_provider = snapshot_provider
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.registry.register(_SnapshotCollector(snapshot_provider, families))

    def _counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, buckets=buckets, registry=self.registry)


class MasterMetrics(_Metrics):
    """What a master exports. The live ones are attributes; the rest come from the snapshot
    document of ``actors/observer.py`` (``master_families``)."""

    def __init__(self, snapshot_provider: Callable[[], dict | None]) -> None:
        super().__init__(snapshot_provider, master_families)
        c, h = self._counter, self._histogram
        self.leader_changes = c("agentflow_raft_leader_changes_seen", "Leader changes this master has seen")
        self.proposals_committed = c("agentflow_raft_proposals_committed", "Log entries this master saw committed")
        self.proposals_failed = c("agentflow_raft_proposals_failed",
                                  "Entries this master appended as leader and lost the leadership before they committed")
        self.snapshots = c("agentflow_raft_snapshots", "Snapshots this master took or installed")
        self.commit = h("agentflow_raft_commit_duration_seconds",
                        "From a batch of proposals entering the leader's log to its commit", COMMIT_BUCKETS_S)
        self.fsync = h("agentflow_raft_fsync_duration_seconds", "Raft log commit (fsync) to SQLite", FSYNC_BUCKETS_S)
        # Read at scrape time on the HTTP thread: it still moves while a hung disk holds the node's.
        self.write_running = Gauge("agentflow_raft_write_running_seconds",
                                   "How long the Raft log write under way has run (0 between writes)",
                                   registry=self.registry)
        self.workflows_submitted = c("agentflow_workflows_submitted", "Workflows committed while this master led")
        self.workflows_finished = c("agentflow_workflows_finished", "Workflows that ended while this master led",
                                    ("state",))
        self.tasks_dispatched = c("agentflow_tasks_dispatched", "Task attempts assigned to workers while this master led")
        self.tasks_finished = c("agentflow_tasks_finished", "Tasks that ended while this master led", ("state",))
        self.tasks_retried = c("agentflow_tasks_retried", "Failed attempts that were retried while this master led")
        self.tasks_requeued = c("agentflow_tasks_requeued",
                                "Running attempts sent back to the queue (worker lost or draining)")
        self.dispatch_latency = h("agentflow_task_dispatch_latency_seconds",
                                  "From a task becoming ready to its assignment to a worker", DISPATCH_BUCKETS_S)
        self.run_duration = h("agentflow_task_run_duration_seconds",
                              "From a task's assignment to its completion committing", RUN_BUCKETS_S)
        self.workers_lost = c("agentflow_workers_lost", "Workers that went offline while this master led")
        self.lock_grants = c("agentflow_lock_grants", "Locks granted while this master led")
        self.lock_acquire = h("agentflow_lock_acquire_duration_seconds",
                              "From an acquire's proposal to its grant applying on the leader", COMMIT_BUCKETS_S)
        for state in ("completed", "failed"):
            self.tasks_finished.labels(state)  # exported as 0 before the first task
        for state in ("completed", "failed", "cancelled"):
            self.workflows_finished.labels(state)


def master_families(snapshot: dict) -> Iterator[Metric]:
    raft = snapshot.get("raft") or {}
    is_leader = raft.get("role") == "leader"
    yield from _gauge("agentflow_raft_has_leader", "1 when this master knows a leader of its current term",
                      1 if raft.get("leader") else 0)
    yield from _gauge("agentflow_raft_is_leader", "1 when this master leads", 1 if is_leader else 0)
    for key, name, documentation in (
            ("term", "term", "Current Raft term"),
            ("commit_index", "commit_index", "Highest log index known committed"),
            ("last_applied", "applied_index", "Highest log index applied to the state machine"),
            ("last_index", "last_index", "Last index in this master's log"),
            ("snapshot_index", "snapshot_index", "Index of the latest snapshot (0: none)"),
            ("proposals_pending", "proposals_pending", "Entries in the leader's log not yet committed")):
        yield from _gauge(f"agentflow_raft_{name}", documentation, raft.get(key))
    if "voters" in raft:
        yield from _gauge("agentflow_raft_voters", "Voting members of the Raft group", len(raft["voters"]))
        yield from _gauge("agentflow_raft_learners", "Learners of the Raft group", len(raft.get("learners", ())))
    connections = snapshot.get("connections")
    if connections is not None:
        yield from _gauge("agentflow_transport_connections_open", "Inbound connections open now", connections["open"])
        yield from _gauge("agentflow_transport_connections_peer_max",
                          "The most inbound connections one peer address holds now (--max-connections-per-peer)",
                          connections["busiest_peer"])
    if snapshot.get("tasks") is not None:
        yield _labelled_gauge("agentflow_tasks", "Tasks of the workflows kept, by state", "state", snapshot["tasks"])
    if snapshot.get("workflows") is not None:
        yield _labelled_gauge("agentflow_workflows", "Workflows kept, by state", "state", snapshot["workflows"])
    queue = snapshot.get("queue")
    if queue is not None:  # the leader only: the queue is its soft state
        yield _labelled_gauge("agentflow_queue_depth", "Ready tasks waiting for a worker, by priority", "priority",
                              queue["by_priority"])
        yield from _gauge("agentflow_queue_oldest_wait_seconds", "How long the longest-waiting ready task has waited",
                          queue["oldest_wait_s"])
    workers = snapshot.get("workers")
    if workers is not None:
        yield _labelled_gauge("agentflow_workers", "Registered workers, by status", "status", workers["by_status"])
        yield from _gauge("agentflow_worker_slots_capacity", "Task slots of the workers that accept work",
                          workers["slots_total"])
        yield from _gauge("agentflow_worker_slots_used", "Task slots in use", workers["slots_used"])
        yield from _gauge("agentflow_worker_slot_utilisation_ratio", "Slots in use over slots offered",
                          workers["slots_used"] / workers["slots_total"] if workers["slots_total"] else 0)
    locks = snapshot.get("locks")
    if locks is not None:
        yield from _gauge("agentflow_locks_held", "Live lock leases", locks["held"])
        yield from _gauge("agentflow_lock_waiters", "Owners queued for a held lock", locks["waiting"])
    agents = snapshot.get("agents_summary")
    if agents is not None:
        yield _labelled_gauge("agentflow_agents", "Agents in the directory, by group", "group", agents["by_group"])
        yield from _gauge("agentflow_agent_mailbox_depth", "Messages waiting in agents' mailboxes (hosts' last heartbeats)",
                          agents["mailbox_depth"])
        # A gauge: the sum over the agents now in the directory falls when one of them leaves.
        yield from _gauge("agentflow_agent_messages_handled", "Messages the agents in the directory have handled",
                          agents["messages_total"])


class WorkerMetrics(_Metrics):
    """What a worker exports: its slots and tasks (``worker_families``), and the attempts it ran."""

    def __init__(self, snapshot_provider: Callable[[], dict | None]) -> None:
        super().__init__(snapshot_provider, worker_families)
        self.attempts = self._counter("agentflow_worker_attempts", "Task attempts this worker ran, by outcome",
                                      ("outcome",))
        self.attempt_duration = self._histogram("agentflow_worker_attempt_duration_seconds",
                                                "How long this worker's task attempts ran", RUN_BUCKETS_S)
        for outcome in ("succeeded", "failed"):
            self.attempts.labels(outcome)

    def observe_reports(self, reports: list[Any]) -> None:
        """``reports`` are TaskFinished records (protocols/tasks.py)."""
        for report in reports:
            self.attempts.labels("succeeded" if report.ok else "failed").inc()
            self.attempt_duration.observe(max(0, report.duration_ms) / 1000)


def worker_families(snapshot: dict) -> Iterator[Metric]:
    yield from _gauge("agentflow_worker_registered", "1 when a leader has welcomed this worker",
                      1 if snapshot.get("registered") else 0)
    yield from _gauge("agentflow_worker_draining", "1 while the worker drains", 1 if snapshot.get("draining") else 0)
    yield from _gauge("agentflow_worker_slots", "Task slots (max concurrent tasks)", snapshot.get("slots"))
    yield from _gauge("agentflow_worker_tasks_running", "Task processes running now", snapshot.get("running"))
    yield from _gauge("agentflow_worker_tasks_waiting", "Assigned attempts waiting for a slot", snapshot.get("waiting"))
    yield from _gauge("agentflow_worker_reports_unacknowledged", "Finished attempts not yet accepted by a master",
                      snapshot.get("unacked"))
    yield from _gauge("agentflow_worker_memory_available_bytes", "Memory available on the worker's machine",
                      snapshot.get("memory_available_bytes"))
