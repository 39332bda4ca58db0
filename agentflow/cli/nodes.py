"""`agentflow master|worker|up|demo`: the commands that start nodes."""

from __future__ import annotations

import gc
import time
from typing import List, Optional

import typer

from agentflow.cli.common import (Advertise, BindHost, CompressMinBytes, MasterUrl, NodeId, app, check_bind, curve_keys,
                                  fail)

def tune_gc_for_serving() -> None:
    """Collect less often in a long-running master or worker: it allocates a few objects per
    message and keeps many alive (log, state, sessions, futures), and with the default
    thresholds the collector runs every 700 allocations and rescans them again and again. What
    start-up loaded is moved out of its sight (``gc.freeze``). ~10% more commits/s on the raft
    benchmark."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


@app.command()
def master(
    mode: str = typer.Option("leader", "--mode", envvar="AGENTFLOW_MODE",
                             help="leader: bootstrap a new cluster; master: join one (or bootstrap it when this "
                                  "master is the first of --leader-url)."),
    port: int = typer.Option(6767, "--port", envvar="AGENTFLOW_PORT"),
    host: str = BindHost,
    advertise: Optional[str] = Advertise,
    leader_url: Optional[str] = typer.Option(None, "--leader-url", envvar="AGENTFLOW_LEADER_URL",
                                             help="Masters of the cluster to join, comma-separated (DNS names "
                                                  "are waited for until they resolve). None: wait for "
                                                  "`agentflow cluster add`."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="AGENTFLOW_DATA_DIR"),
    http_port: Optional[int] = typer.Option(None, "--http-port", envvar="AGENTFLOW_HTTP_PORT",
                                            help="Default: PORT+10."),
    pub_port: Optional[int] = typer.Option(None, "--pub-port", envvar="AGENTFLOW_PUB_PORT", help="Default: PORT+100."),
    node_id: Optional[str] = NodeId,
    heartbeat_ms: int = typer.Option(100, "--heartbeat-ms", envvar="AGENTFLOW_HEARTBEAT_MS",
                                     help="Raft heartbeat interval."),
    election_timeout_ms: str = typer.Option("1000-2000", "--election-timeout-ms", envvar="AGENTFLOW_ELECTION_TIMEOUT_MS",
                                            help="Randomized election timeout range, MIN-MAX (the seed's: 5000-10000)."),
    snapshot_every: int = typer.Option(100_000, "--snapshot-every", envvar="AGENTFLOW_SNAPSHOT_EVERY",
                                       help="Snapshot the state and compact the log every N entries."),
    snapshot_chunk_bytes: int = typer.Option(4 * 1024 * 1024, "--snapshot-chunk-bytes",
                                             envvar="AGENTFLOW_SNAPSHOT_CHUNK_BYTES",
                                             help="A snapshot is sent to a master behind in chunks of this size."),
    retain_workflows: int = typer.Option(1000, "--retain-workflows", envvar="AGENTFLOW_RETAIN_WORKFLOWS",
                                         help="Keep at most the N most recently finished workflows."),
    retain_s: float = typer.Option(86_400.0, "--retain-s", envvar="AGENTFLOW_RETAIN_S",
                                   help="Forget a finished workflow S seconds after it ended."),
    max_result_bytes: int = typer.Option(1024 * 1024, "--max-result-bytes", envvar="AGENTFLOW_MAX_RESULT_BYTES",
                                         help="A task whose result is larger fails (results go through the Raft log)."),
    lock_max_waiters: int = typer.Option(1000, "--lock-max-waiters", envvar="AGENTFLOW_LOCK_MAX_WAITERS",
                                         help="Owners queued for one lock at most; a waiter beyond them is refused "
                                              "(lock_waiters_limit)."),
    max_tasks_per_workflow: int = typer.Option(100_000, "--max-tasks-per-workflow",
                                               envvar="AGENTFLOW_MAX_TASKS_PER_WORKFLOW",
                                               help="A workflow with more tasks is refused (limit_exceeded)."),
    max_pending_workflows: int = typer.Option(10_000, "--max-pending-workflows", envvar="AGENTFLOW_MAX_PENDING_WORKFLOWS",
                                              help="Submissions are refused while this many workflows are unfinished."),
    max_workflow_bytes: int = typer.Option(16 * 1024 * 1024, "--max-workflow-bytes",
                                           envvar="AGENTFLOW_MAX_WORKFLOW_BYTES",
                                           help="A workflow larger than this, as the Raft log holds it, is refused "
                                                "(limit_exceeded)."),
    agent_history_size: int = typer.Option(10_000, "--agent-history-size", envvar="AGENTFLOW_AGENT_HISTORY_SIZE",
                                           help="Agent messages each master keeps for `agentflow history`."),
    max_connections_per_peer: int = typer.Option(1000, "--max-connections-per-peer",
                                                 envvar="AGENTFLOW_MAX_CONNECTIONS_PER_PEER",
                                                 help="TCP connections one IP address may hold open to this master; "
                                                      "past them a new one is closed at once."),
    compress_min_bytes: int = CompressMinBytes,
) -> None:
    """Start a master (a member of the Raft group of the control plane)."""
    from agentflow.master import run_master
    from runtime.storage import StorageError

    keys = curve_keys("master")
    check_bind(host, keys)
    tune_gc_for_serving()

    import zmq

    try:
        low, _, high = election_timeout_ms.partition("-")
        if not (low.strip().isdigit() and (high or low).strip().isdigit()):
            raise ValueError(f"--election-timeout-ms {election_timeout_ms!r}: expected MIN-MAX in ms, e.g. 1000-2000")
        code = run_master(mode=mode, port=port, host=host, leader_url=leader_url, data_dir=data_dir,
                          http_port=http_port, pub_port=pub_port, node_id=node_id, heartbeat_ms=heartbeat_ms,
                          election_timeout_ms=(int(low), int(high or low)), snapshot_every_entries=snapshot_every,
                          snapshot_chunk_bytes=snapshot_chunk_bytes,
                          advertise=advertise, retain_workflows=retain_workflows, retain_s=retain_s,
                          max_result_bytes=max_result_bytes, curve=keys, lock_max_waiters=lock_max_waiters,
                          max_tasks_per_workflow=max_tasks_per_workflow, max_pending_workflows=max_pending_workflows,
                          max_workflow_bytes=max_workflow_bytes,
                          agent_history_size=agent_history_size, max_connections_per_peer=max_connections_per_peer,
                          compress_min_bytes=compress_min_bytes)
    except ValueError as exc:
        fail(str(exc))
    except StorageError as exc:
        fail(f"{exc}: this data is not this master's (another cluster's, or not AgentFlow's); "
             "pass another --data-dir or --node-id, or move the file away", code=1)
    except zmq.ZMQError as exc:
        fail(f"master cannot listen on {host}:{port}: {exc}; choose another --port (or --pub-port), "
             "or stop what uses it", code=1)
    except OSError as exc:
        fail(f"master cannot serve HTTP on {host}:{http_port or port + 10}: {exc}; choose another --http-port "
             "(0 for none), or stop what uses it", code=1)
    raise typer.Exit(code)


@app.command()
def worker(
    master_url: Optional[str] = MasterUrl,
    cpu_cores: Optional[float] = typer.Option(None, "--cpu-cores", envvar="WORKER_CPU_CORES",
                                              help="Default: detected."),
    memory_mb: Optional[int] = typer.Option(None, "--memory-mb", envvar="WORKER_MEMORY_MB", help="Default: detected."),
    gpu_count: Optional[int] = typer.Option(None, "--gpu-count", envvar="WORKER_GPU_COUNT",
                                            help="Default: detected with nvidia-smi."),
    group: str = typer.Option("default", "--group", envvar="WORKER_GROUP"),
    capability: List[str] = typer.Option([], "--capability", envvar="WORKER_CAPABILITIES",
                                         help="Repeatable; the variable is a space-separated list."),
    max_concurrent_tasks: Optional[int] = typer.Option(None, "--max-concurrent-tasks", envvar="WORKER_MAX_CONCURRENT_TASKS"),
    worker_id: Optional[str] = typer.Option(None, "--worker-id", envvar=["AGENTFLOW_WORKER_ID", "AGENTFLOW_NODE_ID"]),
    host: str = BindHost,
    advertise: Optional[str] = Advertise,
    port: int = typer.Option(0, "--port", envvar="AGENTFLOW_PORT",
                             help="Where to listen for the masters' assignments. Default: any free port."),
    memory_pressure_mb: Optional[int] = typer.Option(
        None, "--memory-pressure-mb", envvar="WORKER_MEMORY_PRESSURE_MB",
        help="Under this much available memory take no new tasks and retire idle task processes "
             "(default: 10% of --memory-mb, at most 512)."),
    result_cache_mb: int = typer.Option(256, "--result-cache-mb", envvar="WORKER_RESULT_CACHE_MB",
                                        help="Results kept here for later tasks placed here (data locality)."),
    http_port: Optional[int] = typer.Option(None, "--http-port", envvar="AGENTFLOW_HTTP_PORT",
                                            help="/metrics, /health, /stats. Default: PORT+10 with --port, else none; 0: none."),
    compress_min_bytes: int = CompressMinBytes,
) -> None:
    """Start a worker that runs tasks for the cluster."""
    from agentflow.worker import run_worker

    keys = curve_keys("worker")
    check_bind(host, keys)
    tune_gc_for_serving()

    raise typer.Exit(run_worker(master_url or "127.0.0.1:6767", cpu_cores=cpu_cores, memory_mb=memory_mb,
                                gpu_count=gpu_count, group=group, capabilities=capability,
                                max_concurrent_tasks=max_concurrent_tasks, worker_id=worker_id,
                                host=host, port=port, advertise=advertise, memory_pressure_mb=memory_pressure_mb,
                                result_cache_mb=result_cache_mb, curve=keys, http_port=http_port,
                                compress_min_bytes=compress_min_bytes))


@app.command()
def up(
    masters: int = typer.Option(3, "--masters"),
    workers: int = typer.Option(2, "--workers"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    port: int = typer.Option(6767, "--port", help="The first master's port (the next free ones follow)."),
    lock_max_waiters: Optional[int] = typer.Option(None, "--lock-max-waiters", envvar="AGENTFLOW_LOCK_MAX_WAITERS",
                                                   help="The masters' --lock-max-waiters (default 1000)."),
) -> None:
    """Run a local cluster in the foreground; Ctrl-C stops it."""
    import signal
    import tempfile
    import threading

    from agentflow.cluster import LocalCluster

    directory = data_dir or tempfile.mkdtemp(prefix="agentflow-up-")
    try:
        if lock_max_waiters is not None and lock_max_waiters < 1:
            raise ValueError(f"--lock-max-waiters must be at least 1, not {lock_max_waiters}")
        master_options = [] if lock_max_waiters is None else ["--lock-max-waiters", str(lock_max_waiters)]
        local = LocalCluster(directory, masters=masters, workers=workers, first_port=port,
                             master_options=master_options)
    except ValueError as exc:
        fail(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        local.start()
        typer.echo(f"AgentFlow is up: {masters} masters, {workers} workers; data and logs in {directory}")
        typer.echo(f"  export AGENTFLOW_MASTER_URL={local.master_url}")
        typer.echo("  agentflow submit examples/diamond.yaml --wait")
        typer.echo("  agentflow top                                     (Ctrl-C stops the cluster)")
        typer.echo("  metrics: " + " ".join(f"http://{target}/metrics" for _, _, target in local.http_targets()))
        reported: set[str] = set()
        while not stop.wait(0.5):
            for child in local.masters + local.workers:
                if not child.alive() and child.name not in reported:
                    reported.add(child.name)
                    typer.echo(f"{child.name} exited (code {child.proc.returncode}); the others go on "
                               f"(log: {child.log_path})", err=True)
            if not any(master.alive() for master in local.masters):
                typer.echo("agentflow: every master has exited; stopping", err=True)
                raise typer.Exit(1)
    except (RuntimeError, TimeoutError) as exc:
        typer.echo(f"agentflow: {exc}", err=True)
        raise typer.Exit(1)
    finally:
        local.stop()
        typer.echo("AgentFlow stopped")


NEXT_COMMANDS = (
    ("agentflow up", "3 masters and 2 workers, until Ctrl-C"),
    ("agentflow top", "the live view (another terminal; q quits)"),
    ("agentflow agent run examples.agents.pipeline:Solver --agent-id solver-1 --group solvers",
     "an agent on it (the rest of the example: examples/agents/pipeline.py)"),
)


def demo_agents(master_url: str) -> str:
    """examples/agents/pipeline.py on a node of the demo's own: a planner splits a job among a
    group of two solvers and tells a reviewer; what happened, in one line."""
    import importlib.util
    from pathlib import Path

    from runtime.agents import AgentCommunication
    from runtime.node import Node

    # The example is a file of the repository, not part of the installed package.
    path = Path(__file__).resolve().parents[2] / "examples" / "agents" / "pipeline.py"
    spec = importlib.util.spec_from_file_location("agentflow_demo_pipeline", path)
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    Planner, Reviewer, Solver = pipeline.Planner, pipeline.Reviewer, pipeline.Solver

    started = time.perf_counter()
    with Node("demo-agents", master_urls=master_url) as node:
        for agent_id in ("solver-1", "solver-2"):
            node.spawn(Solver, agent_id=agent_id, group="solvers")
        node.spawn(Reviewer, agent_id="reviewer")
        node.spawn(Planner, agent_id="planner")
        comm = AgentCommunication(node, "demo")
        answer = comm.request("planner", {"numbers": list(range(1, 9)), "parts": 4}, timeout_ms=10_000).content
        review = comm.request("reviewer", {}, timeout_ms=10_000).content
    return (f"the planner split 1..8 into {answer['parts']} parts for the group 'solvers' "
            f"({' and '.join(review['solvers'])} answered), the reviewer saw {review['parts_reviewed']} "
            f"parts, total {answer['total']}, in {(time.perf_counter() - started) * 1000:.0f} ms.")


@app.command()
def demo() -> None:
    """Bring up a local cluster, run the example workflows, print a summary, stop it."""
    import collections
    import tempfile
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from protocols.workflow import parse_workflow
    from runtime.client import Client
    from agentflow.cluster import LocalCluster

    examples = Path(__file__).resolve().parents[2] / "examples"
    files = ["seed.yaml", "diamond.yaml", "failing_branch.yaml"]
    console = Console()
    with tempfile.TemporaryDirectory(prefix="agentflow-demo-") as directory:
        local = LocalCluster(directory, masters=3, workers=2, first_port=16767)
        try:
            started = time.perf_counter()
            local.start()
            console.print(f"cluster up in {time.perf_counter() - started:.1f} s: 3 masters "
                          f"({local.master_url}), 2 workers")
            table = Table(title="AgentFlow demo")
            for column in ("workflow", "tasks", "state", "wall time", "ran on", "what happened"):
                table.add_column(column)
            by_worker: collections.Counter[str] = collections.Counter()
            failures: list[str] = []
            with Client(local.master_url, timeout_s=10) as client:
                for name in files:
                    workflow = parse_workflow((examples / name).read_text(), filename=name)
                    started = time.perf_counter()
                    client.submit_workflow(workflow)
                    status_doc = client.wait_workflow(workflow.workflow_id, timeout_s=60)
                    tasks = status_doc["tasks"]
                    workers = collections.Counter(task["worker"] for task in tasks.values() if task["worker"])
                    by_worker.update(workers)
                    states = collections.Counter(task["state"] for task in tasks.values())
                    table.add_row(workflow.workflow_id, str(len(workflow.tasks)), status_doc["state"],
                                  f"{(time.perf_counter() - started) * 1000:.0f} ms",
                                  ", ".join(f"{w} ({n})" for w, n in sorted(workers.items())) or "no-op tasks",
                                  ", ".join(f"{n} {state}" for state, n in states.most_common()))
                    failures += [f"{workflow.workflow_id}/{task_id} {task['state']} after {task['attempts']} "
                                 f"attempt(s), exit code {task['exit_code']}"
                                 for task_id, task in tasks.items() if task["state"] == "failed"]
                view = client.cluster_status()
            agents_line = demo_agents(local.master_url)
            console.print(table)
            console.print(f"[b]Where it ran:[/b] {len(files)} workflows, "
                          f"{sum(by_worker.values())} task runs on {len(by_worker)} workers "
                          f"({', '.join(f'{w}: {n}' for w, n in sorted(by_worker.items()))}); "
                          f"the 3 masters agreed through Raft, leader {view['leader']} at term {view['term']}.")
            console.print(f"[b]Agents:[/b] {agents_line}")
            if failures:
                console.print(f"[b]What failed, by design:[/b] {'; '.join(failures)}. The flaky task exits 3 "
                              "on purpose: it was retried once (retries: 1), then marked failed, so its "
                              "dependent 'publish' was skipped and the workflow ended failed, while the "
                              "independent 'docs' branch still completed.")
            console.print("[b]Next, try:[/b]")
            for command, what in NEXT_COMMANDS:
                console.print(f"  [cyan]{command}[/cyan]  [dim]# {what}[/dim]")
        except (RuntimeError, TimeoutError) as exc:
            console.print(f"[red]demo failed: {exc}[/red]")
            raise typer.Exit(1)
        finally:
            local.stop()
