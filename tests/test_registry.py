"""The worker table: membership, health, placement, per-GPU reservations, could-ever-fit,
snapshots and the records on the wire."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.registry import (
    HealthCheckConfig,
    PlacementError,
    TaskRequirements,
    WorkerInfo,
    WorkerRegistry,
    WorkerResources,
    WorkerStatus,
)


def worker(worker_id: str, *, cpu: float = 4, memory_mb: int = 4096, gpus: int = 0, slots: int = 4,
           group: str = "default", capabilities: list[str] | None = None) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        name=worker_id,
        group=group,
        platform="linux",
        capabilities=capabilities if capabilities is not None else ["bash"],
        max_concurrent_tasks=slots,
        resources=WorkerResources(cpu_cores=cpu, memory_mb=memory_mb, memory_available_mb=memory_mb, gpu_count=gpus),
        address="tcp://127.0.0.1:7000",
    )


def needs(cpu: float = 1, memory_mb: int = 0, gpu: int = 0, capabilities: list[str] | None = None,
          group: str | None = None) -> TaskRequirements:
    return TaskRequirements(cpu=cpu, memory_mb=memory_mb, gpu=gpu, capabilities=capabilities or [], group=group)


def test_register_unregister_and_healthy_workers():
    registry = WorkerRegistry()
    registry.register(worker("w1"), now_ms=0)
    registry.register(worker("w2"), now_ms=0)
    assert len(registry) == 2 and "w1" in registry
    assert [info.worker_id for info in registry.get_healthy_workers()] == ["w1", "w2"]
    assert registry.get_worker("w1").status is WorkerStatus.ACTIVE
    registry.reserve("w2", "wf/a", needs())
    assert registry.unregister("w2") == ["wf/a"]  # what needs a new home
    assert registry.unregister("w2") == []
    assert [info.worker_id for info in registry.get_healthy_workers()] == ["w1"]


def test_missed_heartbeats_mark_a_worker_offline_once(caplog):
    registry = WorkerRegistry(HealthCheckConfig(heartbeat_interval_ms=1000, max_missed_heartbeats=3))
    registry.register(worker("worker1"), now_ms=0)
    registry.register(worker("worker2"), now_ms=0)
    assert registry.update_heartbeat("worker2", 2500, {"cpu_percent": 10.0})
    assert not registry.update_heartbeat("nobody", 2500)
    assert registry.check_health(2999) == []
    with caplog.at_level(logging.INFO, logger="agentflow.worker"):
        assert registry.check_health(3000) == ["worker1"]
    assert "Worker worker1 marked as unhealthy after 3 failures" in [r.getMessage() for r in caplog.records]
    assert registry.check_health(4000) == []  # only newly offline ones are reported
    assert registry.get_worker("worker1").status is WorkerStatus.OFFLINE
    assert [info.worker_id for info in registry.get_healthy_workers()] == ["worker2"]
    assert registry.select(needs()) == "worker2"
    # A heartbeat brings it back.
    registry.update_heartbeat("worker1", 4100)
    assert registry.get_worker("worker1").status is WorkerStatus.ACTIVE
    assert registry.check_health(5600) == ["worker2"]


def test_select_prefers_least_loaded_then_worker_id(caplog):
    registry = WorkerRegistry()
    for worker_id in ("worker3", "worker1", "worker2"):
        registry.register(worker(worker_id, slots=10), 0)
    assert registry.select(needs()) == "worker1"  # all idle: smallest id
    registry.reserve("worker1", "t1", needs())
    registry.reserve("worker3", "t2", needs())
    with caplog.at_level(logging.DEBUG, logger="agentflow.registry"):
        assert registry.select(needs()) == "worker2"
    registry.reserve("worker2", "t3", needs())
    # Equal slot usage: the lower reported cpu usage wins.
    registry.update_heartbeat("worker1", 1, {"cpu_percent": 80})
    registry.update_heartbeat("worker2", 1, {"cpu_percent": 10})
    registry.update_heartbeat("worker3", 1, {"cpu_percent": 50})
    with caplog.at_level(logging.DEBUG, logger="agentflow.registry"):
        assert registry.select(needs()) == "worker2"
    assert "Worker worker2 selected (least loaded: 10% of slots, 10% cpu)" in [r.getMessage() for r in caplog.records]
    assert registry.get_least_loaded_worker().worker_id == "worker2"


def test_least_loaded_counts_cpu_load_as_well_as_slots():
    registry = WorkerRegistry()
    for worker_id in ("busy-but-cool", "idle-but-hot"):
        registry.register(worker(worker_id, slots=4), 0)
    registry.reserve("busy-but-cool", "t1", needs())  # 25% of its slots
    registry.update_heartbeat("busy-but-cool", 1, {"cpu_percent": 10})
    registry.update_heartbeat("idle-but-hot", 1, {"cpu_percent": 90})  # something else loads its machine
    assert registry.select(needs()) == "busy-but-cool"  # 0.25 + 0.10 < 0.0 + 0.90


def test_preferred_workers_win_when_they_have_room_then_their_group(caplog):
    registry = WorkerRegistry()
    registry.register(worker("a", slots=1, group="g"), 0)
    registry.register(worker("b", slots=4, group="h"), 0)
    registry.register(worker("c", slots=4, group="g"), 0)
    registry.reserve("c", "t0", needs())
    with caplog.at_level(logging.DEBUG, logger="agentflow.registry"):
        assert registry.select(needs(), prefer=("c", "a")) == "c"  # more loaded than a and b, but preferred
    assert "Worker c selected (where its inputs are)" in [r.getMessage() for r in caplog.records]
    registry.reserve("a", "t1", needs())
    assert registry.select(needs(), prefer=("a",)) == "c"  # a is full: its group before b, the least loaded
    assert registry.select(needs(), prefer=("gone",)) == "b"


def test_a_worker_under_memory_pressure_takes_no_new_tasks_until_it_recovers(caplog):
    registry = WorkerRegistry()
    registry.register(worker("w", slots=4), 0)
    with caplog.at_level(logging.INFO, logger="agentflow.worker"):
        registry.update_heartbeat("w", 1, {"memory_pressure": True, "memory_available_mb": 90})
        assert registry.select(needs()) is None and registry.free_slot_count() == 0
        registry.update_heartbeat("w", 2, {"memory_pressure": False, "memory_available_mb": 900})
    assert registry.select(needs()) == "w"
    messages = [r.getMessage() for r in caplog.records]
    assert "Worker w under memory pressure (90 MB available): no new tasks until it recovers" in messages
    assert "Worker w recovered from memory pressure" in messages


def test_select_checks_capabilities_group_and_free_resources():
    registry = WorkerRegistry()
    registry.register(worker("cpu-box", cpu=8, memory_mb=8000, capabilities=["bash", "python"]), 0)
    registry.register(worker("gpu-box", cpu=4, memory_mb=16000, gpus=2, group="gpu", capabilities=["bash", "cuda"]), 0)
    assert registry.select(needs(capabilities=["cuda"])) == "gpu-box"
    assert registry.select(needs(capabilities=["cuda", "python"])) is None
    assert registry.select(needs(gpu=1)) == "gpu-box"
    assert registry.select(needs(gpu=3)) is None
    assert registry.select(needs(memory_mb=12000)) == "gpu-box"
    assert registry.select(needs(cpu=6)) == "cpu-box"
    assert registry.select(needs(), group="gpu") == "gpu-box"
    assert registry.select(needs(group="gpu")) == "gpu-box"
    assert registry.select(needs(group="nowhere")) is None
    assert registry.get_least_loaded_worker("gpu").worker_id == "gpu-box"
    assert registry.get_least_loaded_worker("nowhere") is None
    # Free, not total: once cpu-box's cores are reserved, a 6-cpu task has nowhere to go.
    registry.reserve("cpu-box", "big", needs(cpu=5))
    assert registry.select(needs(cpu=6)) is None
    assert registry.select(needs(cpu=3)) == "gpu-box"  # both fit; the one running nothing wins
    registry.release("cpu-box", "big")
    assert registry.select(needs(cpu=6)) == "cpu-box"


def test_slots_busy_and_draining():
    registry = WorkerRegistry()
    registry.register(worker("w1", slots=2), 0)
    registry.reserve("w1", "a", needs(cpu=0.5))
    assert registry.get_worker("w1").status is WorkerStatus.ACTIVE
    registry.reserve("w1", "b", needs(cpu=0.5))
    assert registry.get_worker("w1").status is WorkerStatus.BUSY
    assert registry.select(needs(cpu=0.5)) is None  # no free slot
    assert registry.get_least_loaded_worker() is None
    registry.release("w1", "a")
    assert registry.get_worker("w1").status is WorkerStatus.ACTIVE
    assert registry.select(needs(cpu=0.5)) == "w1"
    assert registry.set_worker_status("w1", "draining")
    assert registry.select(needs(cpu=0.5)) is None
    assert registry.get_healthy_workers() == []
    registry.release("w1", "b")
    assert registry.get_worker("w1").status is WorkerStatus.DRAINING  # releases do not undrain
    assert registry.set_worker_status("w1", WorkerStatus.ACTIVE)
    assert not registry.set_worker_status("ghost", "active")
    with pytest.raises(ValueError):
        registry.set_worker_status("w1", "sleepy")


def test_gpus_are_tracked_by_index():
    registry = WorkerRegistry()
    registry.register(worker("g", gpus=4, slots=8), 0)
    assert registry.reserve("g", "a", needs(gpu=2)) == [0, 1]
    assert registry.reserve("g", "b", needs(gpu=1)) == [2]
    assert registry.reserve("g", "a", needs(gpu=2)) == [0, 1]  # idempotent
    registry.release("g", "a")
    assert registry.reserve("g", "c", needs(gpu=3)) == [0, 1, 3]
    assert registry.select(needs(gpu=1)) is None
    with pytest.raises(PlacementError, match="GPUs"):
        registry.reserve("g", "d", needs(gpu=1))
    with pytest.raises(PlacementError, match="unknown worker"):
        registry.reserve("nobody", "d", needs())
    assert registry.reserve("g", "cpu-only", needs()) == []
    assert not registry.release("g", "never-reserved")
    assert not registry.release("nobody", "a")


def test_reregistration_keeps_reservations():
    registry = WorkerRegistry()
    registry.register(worker("g", gpus=2), 0)
    registry.reserve("g", "a", needs(gpu=1))
    registry.set_worker_status("g", "offline")
    registry.register(worker("g", gpus=2), 10)
    entry = registry.get_worker("g")
    assert entry.status is WorkerStatus.ACTIVE
    assert list(entry.reservations) == ["a"] and entry.free_gpus == [1]


def test_could_ever_fit_explains_why_not():
    registry = WorkerRegistry()
    assert registry.could_ever_fit(needs()) == "no worker is registered"
    registry.register(worker("small", cpu=2, memory_mb=1000), 0)
    registry.register(worker("gpu", cpu=4, memory_mb=2000, gpus=1, group="gpu", capabilities=["cuda"]), 0)
    assert registry.could_ever_fit(needs(cpu=2)) is None
    # Busy or offline does not matter: the question is whether it could ever run.
    registry.reserve("small", "x", needs(cpu=2))
    registry.set_worker_status("gpu", "offline")
    assert registry.could_ever_fit(needs(cpu=2)) is None
    reason = registry.could_ever_fit(needs(gpu=2))
    assert "small: needs 2 GPUs, has 0 in all" in reason and "gpu: needs 2 GPUs, has 1 in all" in reason
    assert "lacks capabilities tpu" in registry.could_ever_fit(needs(capabilities=["tpu"]))
    assert "not 'edge'" in registry.could_ever_fit(needs(group="edge"))
    assert "MB" in registry.could_ever_fit(needs(memory_mb=5000))
    assert registry.could_ever_fit(needs(gpu=1, capabilities=["cuda"], group="gpu")) is None


def test_worker_records_travel():
    info = worker("w1", gpus=1)
    assert wire.decode(wire.encode(info)) == info
    assert WorkerInfo.from_dict(info.to_dict()) == info


def test_snapshot_round_trip():
    registry = WorkerRegistry(HealthCheckConfig(heartbeat_interval_ms=500, max_missed_heartbeats=2))
    registry.register(worker("w1", gpus=2), 0)
    registry.register(worker("w2"), 0)
    registry.reserve("w1", "wf/a", needs(cpu=1.5, memory_mb=100, gpu=1))
    registry.update_heartbeat("w2", 300, {"cpu_percent": 33.0})
    registry.set_worker_status("w2", "draining")
    snapshot = registry.snapshot()
    decoded = wire.decode(wire.encode(snapshot))  # msgpack-native
    assert decoded == snapshot
    restored = WorkerRegistry.from_snapshot(decoded)
    assert restored.to_snapshot() == snapshot
    in_place = WorkerRegistry()
    in_place.restore(decoded)
    assert in_place.to_snapshot() == snapshot
    for each in (registry, restored):
        assert each.reserve("w1", "wf/b", needs(gpu=1)) == [1]
        assert each.check_health(1300) == ["w1", "w2"]
    assert restored.to_snapshot() == registry.to_snapshot()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.booleans()), max_size=60))
def test_reservations_never_oversubscribe(steps):
    registry = WorkerRegistry()
    for index in range(3):
        registry.register(worker(f"w{index}", cpu=2, memory_mb=1000, gpus=2, slots=3), 0)
    live: list[tuple[str, str]] = []
    for number, (cpu, gpu, release) in enumerate(steps):
        if release and live:
            worker_id, key = live.pop(0)
            assert registry.release(worker_id, key)
            continue
        requirements = needs(cpu=cpu, memory_mb=100, gpu=gpu)
        chosen = registry.select(requirements)
        if chosen is not None:
            gpus = registry.reserve(chosen, f"t{number}", requirements)
            assert len(gpus) == gpu
            live.append((chosen, f"t{number}"))
        for entry in registry.workers.values():
            assert entry.free_cpu >= -1e-9 and entry.free_memory_mb >= 0 and entry.free_slots >= 0
            in_use = [i for r in entry.reservations.values() for i in r.gpu_indices]
            assert sorted(in_use + entry.free_gpus) == [0, 1]  # each GPU exactly once
            # The kept sums are the reservations' sums (placement reads the sums, not the list).
            assert entry.reserved_cpu == pytest.approx(sum(r.cpu for r in entry.reservations.values()), abs=1e-9)
            assert entry.reserved_memory_mb == sum(r.memory_mb for r in entry.reservations.values())
