"""Chaos runs: real masters and workers, a seeded fault per episode, every history checked.

    python -m tests.chaos.run --kind kill_leader --seeds 0-49     # one kind, 50 seeds
    python -m tests.chaos.run --kind all --seeds 0-49 --json out.json
    python -m tests.chaos.run --kind isolate_leader --seeds 17    # reproduce one seed

One ``ChaosRun`` is one cluster (3 masters on 127.0.0.1 for process faults; 5 masters, each in
its own network namespace, for network faults) and two workers, used for a series of episodes.
An episode (one seed): lock clients and a workflow submitter start; after the schedule's
lead-in, its fault is injected and held, then healed; the workload runs on healthy a little,
stops; then every check runs: the lock history (linearizability and invariants), the
workflows (all final, nothing lost, each completion once by its current attempt, dependency
order), and Raft (every master on the same applied index and state digest, the logs agreeing
entry for entry, a replay of the committed log reaching the same digest, one leader per term).

Reproducing: an episode's fault and workload follow from (kind, seed) alone
(``faults.schedule``), so ``--seeds N`` on a fresh cluster replays seed N's schedule; timing on a
loaded machine is not reproducible, so a failure may need a few tries. A failing episode
leaves its history in ``DATA_DIR/KIND-SEED.history.jsonl`` and the nodes' logs beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agentflow.cluster import ChildProcess, LocalCluster, wait_until
from runtime.client import Client, ClusterUnavailable
from runtime.future import RemoteError
from tests import netns
from tests.chaos import faults, lockcheck, raftcheck
from tests.chaos.history import History
from tests.chaos.workflowcheck import FINAL, check_workflows, read_runs, runs_after_completion
from tests.chaos.workload import LockClient, WorkflowClient

MASTER_OPTIONS = ["--heartbeat-ms", "50", "--election-timeout-ms", "-".join(map(str, faults.ELECTION_TIMEOUT_MS))]
SETTLE_S = 1.0  # healthy workload after the heal, before the checks
CALL_TIMEOUT_S = 3.0
FIRST_PORT = 12000


@dataclass
class EpisodeResult:
    kind: str
    seed: int
    fault: str
    seconds: float
    lock_ops: int = 0
    lock_ops_unknown: int = 0
    workflows: int = 0
    workflows_unknown: int = 0
    tasks: int = 0
    runs: int = 0
    entries_replayed: int = 0
    leader_terms: int = 0  # distinct terms in which the monitor saw a leader
    retried_tasks: int = 0  # tasks that needed more than one attempt
    runs_after_completion: int = 0  # executions of a task after it completed (at-least-once)
    violations: list[str] = field(default_factory=list)


class NetnsCluster(LocalCluster):
    """A LocalCluster whose masters each live in a network namespace of ``network`` (all on one
    port: each namespace has its own); workers stay in the host namespace, on the bridge."""

    def __init__(self, network: netns.Network, data_dir: Path, masters: int, workers: int, port: int) -> None:
        # No CURVE keys here (the second half of issue 14 tests them): --insecure lets a node listen
        # beyond 127.0.0.1, on the namespaces' addresses.
        super().__init__(data_dir, masters=masters, workers=workers, first_port=port,
                         worker_options=["--host", network.gateway, "--insecure"])
        self.hosts: dict[str, netns.Host] = {}
        first_address = None
        for position, master in enumerate(self.masters):
            host = network.add_host(f"m{position + 1}")
            self.hosts[master.node_id] = host
            first_address = first_address or host.address
            args = ["master", "--host", host.address, "--port", str(port), "--node-id", master.node_id,
                    "--data-dir", str(self.data_dir), "--insecure", *MASTER_OPTIONS]
            args += ["--mode", "leader"] if position == 0 else ["--mode", "master", "--leader-url",
                                                                f"{first_address}:{port}"]
            self.masters[position] = ChildProcess(master.node_id, args, master.log_path, port, host=host.address,
                                                  prefix=network.command(host))


class ChaosRun:
    """One cluster for a series of episodes: with ``namespaces``, 5 masters each in a network
    namespace (every fault kind can run); without, 3 masters on 127.0.0.1 (process faults only)."""

    def __init__(self, data_dir: Path, first_port: int = FIRST_PORT, namespaces: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.network: netns.Network | None = None
        if namespaces:
            reason = netns.unavailable_reason()
            if reason:
                raise NetnsUnavailable(reason)
            self.network = netns.Network()
            try:
                self.cluster = NetnsCluster(self.network, self.data_dir, masters=5, workers=2, port=first_port)
            except BaseException:
                self.network.close()
                raise
        else:
            self.cluster = LocalCluster(self.data_dir, masters=3, workers=2, first_port=first_port,
                                        master_options=MASTER_OPTIONS)
        self.client: Client | None = None
        self.run_log = self.data_dir / "runs.jsonl"
        self.replay = raftcheck.LogReplay({m.node_id: str(self.data_dir / f"{m.node_id}.sqlite")
                                           for m in self.cluster.masters})

    def __enter__(self) -> ChaosRun:
        try:
            self.client = Client(self.cluster.master_url, timeout_s=10.0)
            self.cluster.start(self.client, timeout_s=60.0)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            for child in self.cluster.masters + self.cluster.workers:
                faults.resume(child)
            if self.network is not None:
                self.network.heal()
            if self.client is not None:
                self.client.close()
            self.cluster.stop()
        finally:
            if self.network is not None:
                self.network.close()

    @property
    def endpoints(self) -> list[str]:
        return [master.url for master in self.cluster.masters]

    def leader_id(self) -> str:
        def leader() -> str | None:
            try:
                return self.client.cluster_status(timeout_s=2)["leader"]
            except ClusterUnavailable:
                return None

        return wait_until(leader, 30.0, "a leader to aim the fault at")

    # ------------------------------------------------------------------ one episode

    def episode(self, kind: str, seed: int) -> EpisodeResult:
        started = time.monotonic()
        fault = faults.schedule(kind, seed)
        rng = random.Random(f"workload/{kind}/{seed}")
        history = History()
        url = self.cluster.master_url
        # Names of their own: a lease an earlier episode's client left behind (its last acquire
        # ambiguous, or granted as it stopped) must not show up in this episode's history.
        keys = [f"{kind}-{seed}-k{i}" for i in range(2)]
        clients = [LockClient(f"{kind}-{seed}-o{i}", keys, url, history, random.Random(rng.random()), CALL_TIMEOUT_S)
                   for i in range(3)]
        clients.append(WorkflowClient(f"{kind}-{seed}-wf", str(self.run_log), f"{kind}-{seed}", url, history,
                                      random.Random(rng.random()), CALL_TIMEOUT_S + 2))
        result = EpisodeResult(kind, seed, fault.describe(), 0.0)
        target = faults.Target(self.cluster, self.leader_id, self.network, getattr(self.cluster, "hosts", None))
        monitor_client = Client(url, timeout_s=2.0)
        heal = None
        try:
            with raftcheck.LeaderMonitor(monitor_client, lambda: self.endpoints) as monitor:
                for client in clients:
                    client.start()
                time.sleep(fault.lead_in_s)
                try:
                    heal = faults.inject(fault, target)
                except TimeoutError as exc:  # no leader for 30 s before the fault: unavailable
                    result.violations.append(str(exc))
                else:
                    time.sleep(fault.hold_s)
                    heal()
                time.sleep(SETTLE_S)
                for client in clients:
                    client.stop()
                for client in clients:
                    client.join_within(CALL_TIMEOUT_S * 4)
                    result.violations += client.errors
                result.violations += self._after_heal(history, result)
            result.violations += monitor.problems()
            result.leader_terms = len(monitor.leaders)
        finally:
            if heal is not None:
                heal()
            monitor_client.close()
        result.seconds = round(time.monotonic() - started, 2)
        if result.violations:
            history.dump(self.data_dir / f"{kind}-{seed}.history.jsonl")
        return result

    def _after_heal(self, history: History, result: EpisodeResult) -> list[str]:
        problems: list[str] = []
        try:
            self.cluster.wait_healthy(self.client, len(self.cluster.masters), 30.0)
        except (TimeoutError, RuntimeError) as exc:  # RuntimeError: a node exited
            return [f"the cluster did not recover: {exc}"]
        submits = history.of_kind("submit")
        statuses = self._final_statuses(submits, 60.0)
        views, differs = raftcheck.wait_converged(self.client, self.endpoints, 30.0)
        if views is None:
            return problems + [f"masters did not converge: {differs}"]
        first = next(iter(views.values()))
        problems += self.replay.advance(first["last_applied"], first["state_digest"])
        lock_ops = history.of_kind(*lockcheck.LOCK_KINDS)
        for verdict in lockcheck.check_linearizable(lock_ops):
            if not verdict.ok:
                problems.append(verdict.explain())
        problems += lockcheck.check_invariants(lock_ops)
        runs = read_runs(self.run_log)
        problems += check_workflows(submits, statuses, self.replay.workflow_commands, runs)
        result.lock_ops = len(lock_ops)
        result.lock_ops_unknown = sum(op.pending for op in lock_ops)
        result.workflows = len(submits)
        result.workflows_unknown = sum(op.pending for op in submits)
        result.tasks = sum(len(op.args["tasks"]) for op in submits)
        prefix = f"{result.kind}-{result.seed}-"
        result.runs = sum(len(task_runs) for key, task_runs in runs.items() if key[0].startswith(prefix))
        result.runs_after_completion = runs_after_completion(statuses, runs)
        result.entries_replayed = self.replay.entries_checked
        result.retried_tasks = sum(1 for status in statuses.values() if status
                                   for task in status["tasks"].values() if task.get("attempts", 0) > 1)
        return problems

    def _final_statuses(self, submits, timeout_s: float) -> dict[str, dict | None]:
        """Each submitted workflow's status once final (None: the cluster does not know it)."""
        deadline = time.monotonic() + timeout_s
        out: dict[str, dict | None] = {}
        for op in submits:
            workflow_id = op.args["workflow_id"]
            while True:
                try:
                    status = self.client.workflow_status(workflow_id, timeout_s=5.0)
                except RemoteError as exc:
                    status = None if exc.kind == "unknown_workflow" else {"state": f"unreadable: {exc}",
                                                                           "tasks": {}}
                if status is None or status["state"] in FINAL or time.monotonic() > deadline:
                    out[workflow_id] = status
                    break
                time.sleep(0.1)
        return out


class NetnsUnavailable(Exception):
    pass


def run_kind(kind: str, seeds: list[int], data_dir: Path, first_port: int = FIRST_PORT,
             on_result=None) -> list[EpisodeResult]:
    """``seeds`` episodes of one fault kind on one new cluster (in namespaces for network kinds)."""
    results = []
    remaining = list(seeds)
    attempt = 0
    while remaining:
        # A cluster that lost a node for good (a violation, reported) is replaced for the next seeds.
        attempt += 1
        with ChaosRun(Path(data_dir) / f"cluster-{attempt}", first_port,
                      namespaces=kind in faults.NETWORK_KINDS) as run:
            while remaining:
                result = run.episode(kind, remaining.pop(0))
                results.append(result)
                if on_result is not None:
                    on_result(result)
                if not run.cluster.alive():
                    break
    return results


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="all", help=f"one of {', '.join(faults.KINDS)}, or all")
    parser.add_argument("--seeds", default="0-49")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="write every episode's result here")
    parser.add_argument("--first-port", type=int, default=FIRST_PORT, help="kind N uses ports from here + 200 N")
    args = parser.parse_args(argv)
    # Stopped from outside (SIGTERM, or SIGINT in the background, where it is ignored by
    # default): unwind, so every process, namespace and veth is removed on the way out.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.default_int_handler)
    kinds = faults.KINDS if args.kind == "all" else args.kind.split(",")
    seeds = parse_seeds(args.seeds)
    base = Path(args.data_dir or tempfile.mkdtemp(prefix="agentflow-chaos-"))
    all_results: list[EpisodeResult] = []
    skipped: dict[str, str] = {}

    def show(result: EpisodeResult) -> None:
        verdict = "ok" if not result.violations else f"{len(result.violations)} VIOLATIONS"
        print(f"{result.kind:22} seed {result.seed:3}  {result.seconds:5.1f} s  lock ops {result.lock_ops:4}"
              f" ({result.lock_ops_unknown} unknown)  workflows {result.workflows:2} tasks {result.tasks:3}"
              f" (retried {result.retried_tasks:2}, reran {result.runs_after_completion})  leader terms"
              f" {result.leader_terms}  {verdict}", flush=True)
        for violation in result.violations:
            print("    " + violation.replace("\n", "\n    "), flush=True)

    started = time.monotonic()
    for position, kind in enumerate(kinds):
        try:
            all_results += run_kind(kind, seeds, base / kind, args.first_port + 200 * position, show)
        except NetnsUnavailable as exc:
            skipped[kind] = str(exc)
            print(f"{kind}: skipped: {exc}", flush=True)
    elapsed = time.monotonic() - started
    print(summary(all_results, elapsed, skipped))
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": round(elapsed, 1), "skipped": skipped,
                                               "episodes": [asdict(r) for r in all_results]}, indent=1))
    return 1 if any(r.violations for r in all_results) else 0


def summary(results: list[EpisodeResult], elapsed_s: float, skipped: dict[str, str]) -> str:
    lines = [f"{'kind':22} {'seeds':>5} {'failed':>6} {'lock ops':>8} {'unknown':>7} {'workflows':>9} "
             f"{'tasks':>6} {'seconds':>7}"]
    for kind in dict.fromkeys(r.kind for r in results):
        mine = [r for r in results if r.kind == kind]
        lines.append(f"{kind:22} {len(mine):5} {sum(1 for r in mine if r.violations):6} "
                     f"{sum(r.lock_ops for r in mine):8} {sum(r.lock_ops_unknown for r in mine):7} "
                     f"{sum(r.workflows for r in mine):9} {sum(r.tasks for r in mine):6} "
                     f"{sum(r.seconds for r in mine):7.0f}")
    for kind, reason in skipped.items():
        lines.append(f"{kind:22} skipped: {reason}")
    lines.append(f"total {len(results)} episodes in {elapsed_s:.0f} s, "
                 f"{sum(1 for r in results if r.violations)} with violations")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
