"""The priority property of dispatch, under random workloads (hypothesis): no round ever
dispatches a task while a higher-ranked ready task that fits somewhere is left waiting (a task
of a tenant at its cap on running tasks does not fit), every ready task is in the queue with its
declared priority and its failures, no tenant ever runs more tasks than its cap, and once
everything that runs finishes, every workflow of a tenant allowed to run finishes too."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.queue import RETRY_PENALTY
from protocols.registry import WorkerRegistry
from tests.dispatchsim import DispatchSim, task

PRIORITIES = st.sampled_from(["urgent", "high", "medium", "low", 600, 100])

workers = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 4), st.sampled_from([512, 2048]),
                             st.integers(0, 2), st.sampled_from(["g1", "g2"]),
                             st.sampled_from([(), ("a",), ("a", "b")])), min_size=1, max_size=4)


@st.composite
def workflows(draw):
    count = draw(st.integers(1, 6))
    tasks = []
    for index in range(count):
        deps = draw(st.lists(st.sampled_from([f"t{i}" for i in range(index)]), unique=True, max_size=2)) \
            if index else []
        tasks.append(task(f"t{index}", deps, draw(PRIORITIES), cpu=draw(st.sampled_from([0.0, 1.0, 2.0])),
                          memory_mb=draw(st.sampled_from([0, 1024])), gpu=draw(st.sampled_from([0, 0, 1])),
                          capabilities=draw(st.sampled_from([(), ("a",), ("b",)])),
                          group=draw(st.sampled_from([None, None, "g1"])), retries=draw(st.integers(0, 1))))
    return tasks


TENANTS = ("acme", "globex")
caps = st.dictionaries(st.sampled_from(TENANTS), st.integers(0, 3))

operations = st.lists(st.one_of(
    st.tuples(st.just("submit"), workflows(), st.sampled_from(["", "acme:", "globex:"])),
    st.tuples(st.just("raise"), st.sampled_from(TENANTS), st.one_of(st.none(), st.integers(1, 2))),
    st.tuples(st.just("finish"), st.integers(0, 100), st.booleans()),
    st.tuples(st.just("finish_all"), st.integers(0, 3)),
    st.tuples(st.just("advance"), st.integers(0, 30_000)),
    st.tuples(st.just("pressure"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("leader_change"),),
), min_size=1, max_size=25)


def occupied(sim: DispatchSim, tenant: str) -> set[str]:
    """The tenant's tasks that hold a slot, as the log and the dispatch in flight say: running
    and not reported yet, or dispatched."""
    held = {key for key in sim.dispatch.dispatching if key.startswith(tenant + ":")}
    for graph in sim.control.workflows.graphs.values():
        if graph.workflow_id.startswith(tenant + ":"):
            held.update(key for task_id, run in graph.runs.items() if run.state.value == "running"
                        and (key := f"{graph.workflow_id}/{task_id}") not in sim.dispatch.released)
    return held


def check_round(sim: DispatchSim, limits: dict):
    def check(request, reply):
        service = sim.queue
        aging = service.queue.aging_ms_per_point
        current = sim.dispatch.round
        room = {tenant: cap - len(occupied(sim, tenant)) for tenant, cap in limits.items()}
        if current.direct:  # the queue was empty: the round's transient candidates are the whole order
            assert len(service.queue) + len(service.capped) == 0
            ranked_items = [(item.candidate.key, item.priority, item.now_ms, item.retries, index, item.candidate)
                            for index, item in enumerate(current.transient.values())]
        else:
            capped = [entry for queue in service.capped.queues.values() for entry in queue._entries.values()]
            entries = [*service.queue._entries.values(), *capped, *service._loans.values()]
            ranked_items = [(e.key, e.base_priority, e.enqueued_ms, e.retries, e.seq, e.item) for e in entries]

        def score(item):  # the queue's rule, as its docstring states it
            _, priority, enqueued_ms, retries, _, _ = item
            return priority + (sim.now_ms - enqueued_ms) / aging - RETRY_PENALTY * retries

        ranked = sorted(ranked_items, key=lambda item: (-score(item), item[4]))
        placed = {placement.key for placement in reply.placed}
        rank = {item[0]: index for index, item in enumerate(ranked)}
        for tenant in room:
            assert sum(1 for key in placed if key.startswith(tenant + ":")) <= max(0, room[tenant]), tenant
        last_placed = max((rank[key] for key in placed), default=0)
        for key, _, _, _, _, candidate in ranked[:last_placed]:
            if key in placed:
                continue
            tenant = key.split(":", 1)[0] if ":" in key else None
            if tenant in room and sum(1 for other in placed if other.startswith(tenant + ":")
                                      and rank[other] < rank[key]) >= room[tenant]:
                continue  # its tenant was at its cap when its turn came
            # When its turn came, only the tasks ranked above it had been placed: it fit nowhere.
            then = WorkerRegistry.from_snapshot(sim.registry.registry.to_snapshot())
            for placement in reply.placed:
                if rank[placement.key] > rank[key]:
                    then.release(placement.worker_id, placement.key)
            worker = then.select(candidate.requirements)
            assert worker is None, f"{key} was passed over but fit on {worker}"
    return check


def check_queue_holds_every_ready_task(sim: DispatchSim) -> None:
    for graph in sim.control.workflows.graphs.values():
        for task_id in graph.get_ready_tasks():
            key = f"{graph.workflow_id}/{task_id}"
            if key in sim.dispatch.dispatching:
                continue
            entry = sim.queue.capped.of(key).get(key)
            assert entry is not None, f"{key} is ready but not queued"
            assert entry.base_priority == graph.tasks[task_id].priority
            assert entry.retries == graph.runs[task_id].failures


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workers, caps, operations)
def test_no_dispatch_skips_a_higher_ranked_ready_task_that_fits(worker_specs, limits, steps):
    sim = DispatchSim()
    sim.on_place = check_round(sim, limits)
    sim.caps(limits)
    names = []
    for index, (slots, cpu, memory_mb, gpus, group, capabilities) in enumerate(worker_specs):
        names.append(f"w{index}")
        sim.worker(names[-1], slots, cpu, memory_mb, gpus, group, capabilities)
    submitted = 0
    for step in steps:
        kind = step[0]
        if kind == "submit":
            submitted += 1
            sim.submit(f"{step[2]}wf{submitted}", step[1])
        elif kind == "raise":  # a reload that raises a cap, or lifts it
            tenant, more = step[1], step[2]
            if tenant in limits and more is None:
                del limits[tenant]
            elif tenant in limits:
                limits[tenant] += more
            sim.caps(dict(limits))
        elif kind == "finish":
            held = [(name, a) for name in names for a in sim.holding(name)]
            if held:
                name, assignment = held[step[1] % len(held)]
                sim.finish(name, assignment.workflow_id, assignment.task_id, ok=step[2], error="" if step[2] else "x")
        elif kind == "finish_all":
            sim.finish_all(names[step[1] % len(names)])
        elif kind == "advance":
            sim.now_ms += step[1]
            for name in names:
                sim.heartbeat(name)
            sim.advance(0)
        elif kind == "pressure":
            sim.heartbeat(names[step[1] % len(names)], load={"memory_pressure": step[2]})
        else:
            sim.new_leader()
            for index, (slots, cpu, memory_mb, gpus, group, capabilities) in enumerate(worker_specs):
                sim.worker(names[index], slots, cpu, memory_mb, gpus, group, capabilities)
                sim.heartbeat(names[index])
        check_queue_holds_every_ready_task(sim)
        check_caps(sim, limits)
    # Everything that runs finishes: every workflow finishes, but those of a tenant capped at 0.
    for name in names:
        sim.heartbeat(name, load={"memory_pressure": False})
    for _ in range(200):
        if not any(sim.holding(name) for name in names):
            break
        for name in names:
            sim.finish_all(name)
            check_caps(sim, limits)
    for graph in sim.control.workflows.graphs.values():
        tenant = graph.workflow_id.split(":", 1)[0] if ":" in graph.workflow_id else None
        assert graph.is_workflow_completed() or limits.get(tenant) == 0, (graph.workflow_id, limits)


def check_caps(sim: DispatchSim, limits: dict) -> None:
    counted = sim.dispatch.caps
    for tenant, cap in limits.items():
        held = occupied(sim, tenant)
        assert len(held) <= cap, (tenant, sorted(held))
        assert counted.holding[tenant] == held, tenant
