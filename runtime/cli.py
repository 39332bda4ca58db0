"""The `agentflow` command line (typer): start nodes and drive the cluster.

Rules: the commands and options are the contract of DESIGN.md §4, which other tools drive;
`--json` on a read command prints one JSON document and nothing else. Bad input gets a clear
message naming the problem and a non-zero exit. A command whose capability is not built yet
says so and exits 2. Logging follows AGENTFLOW_LOG (see runtime/log.py).

This module is the composition root: the only place in runtime/ that may import actors/,
lazily, inside the commands that start masters and workers.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from typing import List, Optional

import typer

from runtime.client import ClusterUnavailable
from runtime.future import RemoteError
from runtime.log import configure_logging

app = typer.Typer(help="AgentFlow: distributed parallel execution of agents and tasks.",
                  no_args_is_help=True, add_completion=False)
lock_app = typer.Typer(help="Distributed locks with fencing tokens.", no_args_is_help=True)
app.add_typer(lock_app, name="lock")

MasterUrl = typer.Option(None, "--master-url", envvar="AGENTFLOW_MASTER_URL",
                         help="Masters to talk to: a comma-separated list; any member will do.")
JsonFlag = typer.Option(False, "--json", help="Print one JSON document and nothing else.")


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"agentflow: {message}", err=True)
    raise typer.Exit(code)


def print_table(title: str, columns: tuple[str, ...], rows) -> None:
    """A rich table on the terminal (the human form of a read command)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console().print(table)


def print_json(document) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=False, default=str))


def connect(master_url: Optional[str]):
    """A Client for the masters named by --master-url / AGENTFLOW_MASTER_URL (bad input: exit 2)."""
    from runtime.client import Client

    try:
        return Client(master_url or "127.0.0.1:6767")
    except ValueError as exc:
        fail(str(exc))


def ask_cluster(master_url: Optional[str], request, also: tuple[type[Exception], ...] = ()):
    """``request(client)`` against the cluster; an unreachable cluster, a refusal or one of the
    errors in ``also`` is one line on stderr and exit 1."""
    with connect(master_url) as client:
        try:
            return request(client)
        except RemoteError as exc:
            fail(exc.message, code=1)
        except (ClusterUnavailable, *also) as exc:
            fail(str(exc), code=1)


def not_built(capability: str) -> None:
    typer.echo(f"agentflow: {capability} is not built yet (see the open issues).", err=True)
    raise typer.Exit(2)


@app.callback()
def main_callback() -> None:
    try:
        configure_logging()
    except ValueError as exc:
        typer.echo(f"agentflow: {exc}", err=True)
        raise typer.Exit(2)


# --------------------------------------------------------------------------- nodes


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
    mode: str = typer.Option("leader", "--mode", help="leader: bootstrap a new cluster; master: join one."),
    port: int = typer.Option(6767, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    leader_url: Optional[str] = typer.Option(None, "--leader-url", help="A member of the cluster to join."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
    http_port: Optional[int] = typer.Option(None, "--http-port", help="Default: PORT+10."),
    pub_port: Optional[int] = typer.Option(None, "--pub-port", help="Default: PORT+100."),
    node_id: Optional[str] = typer.Option(None, "--node-id"),
    heartbeat_ms: int = typer.Option(100, "--heartbeat-ms", help="Raft heartbeat interval."),
    election_timeout_ms: str = typer.Option("1000-2000", "--election-timeout-ms",
                                            help="Randomized election timeout range, MIN-MAX (the seed's: 5000-10000)."),
    snapshot_every: int = typer.Option(100_000, "--snapshot-every",
                                       help="Snapshot the state and compact the log every N entries."),
) -> None:
    """Start a master (a member of the Raft group of the control plane)."""
    from actors.master import run_master

    tune_gc_for_serving()

    import zmq

    try:
        low, _, high = election_timeout_ms.partition("-")
        if not (low.strip().isdigit() and (high or low).strip().isdigit()):
            raise ValueError(f"--election-timeout-ms {election_timeout_ms!r}: expected MIN-MAX in ms, e.g. 1000-2000")
        code = run_master(mode=mode, port=port, host=host, leader_url=leader_url, data_dir=data_dir,
                          http_port=http_port, pub_port=pub_port, node_id=node_id, heartbeat_ms=heartbeat_ms,
                          election_timeout_ms=(int(low), int(high or low)), snapshot_every_entries=snapshot_every)
    except ValueError as exc:
        fail(str(exc))
    except (zmq.ZMQError, OSError) as exc:
        fail(f"master cannot start on {host}:{port}: {exc}", code=1)
    raise typer.Exit(code)


@app.command()
def worker(
    master_url: Optional[str] = MasterUrl,
    cpu_cores: Optional[float] = typer.Option(None, "--cpu-cores"),
    memory_mb: Optional[int] = typer.Option(None, "--memory-mb"),
    gpu_count: Optional[int] = typer.Option(None, "--gpu-count"),
    group: str = typer.Option("default", "--group"),
    capability: List[str] = typer.Option([], "--capability"),
    max_concurrent_tasks: Optional[int] = typer.Option(None, "--max-concurrent-tasks"),
    worker_id: Optional[str] = typer.Option(None, "--worker-id"),
) -> None:
    """Start a worker that runs tasks for the cluster."""
    from actors.worker import run_worker

    tune_gc_for_serving()

    raise typer.Exit(run_worker(master_url or "127.0.0.1:6767", cpu_cores=cpu_cores, memory_mb=memory_mb,
                                gpu_count=gpu_count, group=group, capabilities=capability,
                                max_concurrent_tasks=max_concurrent_tasks, worker_id=worker_id))


@app.command()
def up(
    masters: int = typer.Option(3, "--masters"),
    workers: int = typer.Option(2, "--workers"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir"),
) -> None:
    """Run a local cluster in the foreground; Ctrl-C stops it."""
    import signal
    import tempfile
    import threading

    from runtime.cluster import LocalCluster

    directory = data_dir or tempfile.mkdtemp(prefix="agentflow-up-")
    try:
        local = LocalCluster(directory, masters=masters, workers=workers, first_port=6767)
    except ValueError as exc:
        fail(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        local.start()
        typer.echo(f"AgentFlow is up: {masters} masters, {workers} workers; data and logs in {directory}")
        typer.echo(f"  export AGENTFLOW_MASTER_URL={local.master_url}")
        typer.echo("  agentflow submit examples/diamond.yaml --wait     (Ctrl-C stops the cluster)")
        while not stop.wait(0.5):
            if not local.alive():
                typer.echo("a process of the cluster exited; stopping (see the logs)", err=True)
                break
    except (RuntimeError, TimeoutError) as exc:
        typer.echo(f"agentflow: {exc}", err=True)
        raise typer.Exit(1)
    finally:
        local.stop()
        typer.echo("AgentFlow stopped")


@app.command()
def demo() -> None:
    """Bring up a local cluster, run the example workflows, print a summary, stop it."""
    import tempfile
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from protocols.workflow import parse_workflow
    from runtime.client import Client
    from runtime.cluster import LocalCluster

    examples = Path(__file__).resolve().parent.parent / "examples"
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
            for column in ("workflow", "tasks", "state", "wall time", "what happened"):
                table.add_column(column)
            with Client(local.master_url, timeout_s=10) as client:
                for name in files:
                    workflow = parse_workflow((examples / name).read_text(), filename=name)
                    started = time.perf_counter()
                    client.submit_workflow(workflow)
                    status_doc = client.wait_workflow(workflow.workflow_id, timeout_s=60)
                    states = [f"{task_id}={task['state']}" for task_id, task in status_doc["tasks"].items()]
                    table.add_row(workflow.workflow_id, str(len(workflow.tasks)), status_doc["state"],
                                  f"{(time.perf_counter() - started) * 1000:.0f} ms", ", ".join(states))
                view = client.cluster_status()
            console.print(table)
            console.print(f"leader {view['leader']} at term {view['term']}; "
                          "failing_branch fails by design (its flaky task exits 3 on both attempts)")
        except (RuntimeError, TimeoutError) as exc:
            console.print(f"[red]demo failed: {exc}[/red]")
            raise typer.Exit(1)
        finally:
            local.stop()


# --------------------------------------------------------------------------- cluster clients


@app.command()
def submit(
    file: str = typer.Argument(..., help="A workflow file (YAML or JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the workflow to finish; exit 0 only if it completed."),
    json_output: bool = JsonFlag,
    master_url: Optional[str] = MasterUrl,
) -> None:
    """Submit a workflow."""
    from protocols.workflow import WorkflowError, parse_workflow

    try:
        with open(file) as handle:
            text = handle.read()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    try:
        workflow = parse_workflow(text, filename=file, default_id=f"wf-{uuid.uuid4().hex[:12]}")
    except WorkflowError as exc:
        fail(str(exc))
    with connect(master_url) as client:
        try:
            workflow_id = client.submit_workflow(workflow)
        except RemoteError as exc:
            fail(f"the cluster refused {file}: {exc.message}", code=1)
        except ClusterUnavailable as exc:
            fail(str(exc), code=1)
        if not wait:
            if json_output:
                print_json({"workflow_id": workflow_id, "state": "submitted"})
            else:
                typer.echo(f"submitted {workflow_id} ({len(workflow.tasks)} tasks)")
            return
        status_doc = wait_with_progress(client, workflow_id, len(workflow.tasks), quiet=json_output)
    if json_output:
        print_json(status_document(status_doc))
    else:
        print_status(status_doc)
    raise typer.Exit(0 if status_doc["state"] == "completed" else 1)


def wait_with_progress(client, workflow_id: str, total: int, quiet: bool) -> dict:
    """Poll the workflow until it ends, with a rich progress bar on the terminal unless quiet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return client.wait_workflow(workflow_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        bar = progress.add_task(workflow_id, total=total)

        def update(status: dict) -> None:
            progress.update(bar, completed=status["progress"]["finished"],
                            description=f"{workflow_id} {status['state']}")

        return client.wait_workflow(workflow_id, on_progress=update)


def status_document(status_doc: dict) -> dict:
    """The `status --json` contract: workflow_id, state, tasks {id: state, attempts, worker, exit_code}."""
    return {"workflow_id": status_doc["workflow_id"], "state": status_doc["state"],
            "tasks": {task_id: {key: task[key] for key in ("state", "attempts", "worker", "exit_code")}
                      for task_id, task in status_doc["tasks"].items()}}


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:60] if lines else ""


def print_status(status_doc: dict) -> None:
    print_table(f"{status_doc['workflow_id']}: {status_doc['state']}",
                ("task", "state", "attempts", "worker", "exit code", "error", "last output line"),
                ((task_id, task["state"], task["attempts"], task["worker"] or "-",
                  "-" if task["exit_code"] is None else task["exit_code"], (task.get("error") or "")[:60],
                  last_line(task.get("stderr_tail")) or last_line(task.get("stdout_tail")))
                 for task_id, task in status_doc["tasks"].items()))


@app.command()
def status(workflow_id: Optional[str] = typer.Argument(None), json_output: bool = JsonFlag,
           master_url: Optional[str] = MasterUrl) -> None:
    """Show one workflow, or all of them."""
    status_doc = ask_cluster(master_url, lambda client: client.workflow_status(workflow_id))
    if workflow_id is None:
        if json_output:
            print_json(status_doc)
            return
        print_table("workflows", ("workflow", "name", "state", "done"),
                    ((row["workflow_id"], row["name"], row["state"],
                      f"{row['progress']['finished']}/{row['progress']['total']}") for row in status_doc))
    elif json_output:
        print_json(status_document(status_doc))
    else:
        print_status(status_doc)


@app.command()
def cancel(workflow_id: str = typer.Argument(...), master_url: Optional[str] = MasterUrl) -> None:
    """Cancel a workflow: what has not finished is cancelled."""
    result = ask_cluster(master_url, lambda client: client.cancel_workflow(workflow_id))
    if not result.get("ok"):
        fail(f"cannot cancel {workflow_id}: {result.get('reason')}", code=1)
    typer.echo(f"cancelled {workflow_id}")


@app.command()
def workers(json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """List the workers with their status and resources."""
    rows = ask_cluster(master_url, lambda client: client.workers())
    if json_output:
        print_json(rows)
        return
    print_table("workers", ("worker", "status", "group", "cpu", "memory MB", "gpu", "running"),
                ((row["worker_id"], row["status"], row["group"], row["resources"]["cpu_cores"],
                  row["resources"]["memory_mb"], row["resources"]["gpu_count"],
                  f"{row['running']}/{row['max_concurrent_tasks']}") for row in rows))


@app.command()
def cluster(json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """Show the masters: leader, term, roles, commit and applied index."""
    view = ask_cluster(master_url, lambda client: client.cluster_status())
    if json_output:
        print_json(view)
        return
    print_table(f"cluster: leader {view['leader'] or '(none)'}, term {view['term']}",
                ("id", "address", "role", "term", "commit", "applied"),
                ((m["id"], m["address"], m["role"] or "unreachable", m["term"], m["commit_index"], m["last_applied"])
                 for m in view["members"]))


@app.command()
def top(master_url: Optional[str] = MasterUrl) -> None:
    """A live view of the cluster."""
    not_built("the live view")


@app.command()
def send(agent: str, message: str, master_url: Optional[str] = MasterUrl) -> None:
    """Send a message to an agent."""
    not_built("agent messaging")


@app.command()
def request(agent: str, message: str, timeout_s: float = typer.Option(5.0, "--timeout"),
            master_url: Optional[str] = MasterUrl) -> None:
    """Send a request to an agent and print its answer."""
    not_built("agent messaging")


@app.command()
def broadcast(message: str, master_url: Optional[str] = MasterUrl) -> None:
    """Send a message to every agent."""
    not_built("agent messaging")


@app.command()
def history(limit: int = typer.Option(50, "--limit"), master_url: Optional[str] = MasterUrl) -> None:
    """Show the latest agent messages."""
    not_built("agent message history")


@lock_app.command("acquire")
def lock_acquire(key: str, ttl_s: float = typer.Option(30.0, "--ttl"), wait_s: float = typer.Option(0.0, "--wait"),
                 owner: Optional[str] = typer.Option(None, "--owner"), json_output: bool = JsonFlag,
                 master_url: Optional[str] = MasterUrl) -> None:
    """Acquire a lock; prints its fencing token (exit 1 when it is held by another owner)."""
    from runtime.locks import DistributedLock, LockTimeout, user_owner

    owner = owner or user_owner()
    with connect(master_url) as client:
        lock = DistributedLock(client, owner, ttl_s)
        try:
            acquired = lock.acquire_blocking(key, max_duration_s=wait_s) if wait_s > 0 else lock.acquire(key)
        except LockTimeout as exc:
            acquired, reason = False, str(exc)
        except (ClusterUnavailable, ValueError) as exc:
            fail(str(exc), code=1)
        else:
            reason = f"lock {key!r} is held by another owner"
    if json_output:
        print_json({"key": key, "owner": owner, "acquired": acquired, "token": lock.tokens.get(key)})
    elif acquired:
        typer.echo(lock.tokens[key])
    if not acquired:
        if not json_output:
            typer.echo(f"agentflow: {reason}", err=True)
        raise typer.Exit(1)


@lock_app.command("release")
def lock_release(key: str, owner: Optional[str] = typer.Option(None, "--owner"),
                 master_url: Optional[str] = MasterUrl) -> None:
    """Release a lock you hold (exit 1 when you do not hold it)."""
    from runtime.locks import DistributedLock, user_owner

    owner = owner or user_owner()
    released = ask_cluster(master_url, lambda client: DistributedLock(client, owner).release(key), also=(ValueError,))
    if not released:
        fail(f"lock {key!r} is not held by {owner}", code=1)


@lock_app.command("renew")
def lock_renew(key: str, ttl_s: float = typer.Option(30.0, "--ttl"), owner: Optional[str] = typer.Option(None, "--owner"),
               master_url: Optional[str] = MasterUrl) -> None:
    """Extend a lock you hold to end TTL seconds from now (exit 1 when you do not hold it)."""
    from runtime.locks import DistributedLock, user_owner

    owner = owner or user_owner()
    renewed = ask_cluster(master_url, lambda client: DistributedLock(client, owner, ttl_s).renew(key), also=(ValueError,))
    if not renewed:
        fail(f"lock {key!r} is not held by {owner}", code=1)


@lock_app.command("show")
def lock_show(key: str, json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """Show who holds a lock: holder, fencing token, metadata, lease, waiters."""
    from runtime.locks import DistributedLock, lock_info_document

    info = ask_cluster(master_url, lambda client: DistributedLock(client, "agentflow-cli").check_lock(key))
    document = lock_info_document(info, key)
    if json_output:
        print_json(document)
    elif not document["held"]:
        typer.echo(f"{key}: free")
    else:
        waiters = ", ".join(document["waiters"]) or "none"
        typer.echo(f"{key}: held by {document['holder']} (token {document['token']}, lease {document['ttl_ms'] / 1000:g} s,"
                   f" metadata {json.dumps(document['metadata'])}, waiters: {waiters})")


@lock_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lock_run(ctx: typer.Context, key: str, ttl_s: float = typer.Option(30.0, "--ttl"),
             wait_s: float = typer.Option(60.0, "--wait"), master_url: Optional[str] = MasterUrl) -> None:
    """Hold a lock while a command runs: agentflow lock run KEY -- CMD ...

    CMD gets the fencing token in AGENTFLOW_LOCK_TOKEN; the exit status is CMD's."""
    from runtime.locks import LockTimeout, process_owner, run_locked

    argv = list(ctx.args[1:] if ctx.args[:1] == ["--"] else ctx.args)
    if not argv:
        fail("no command given: agentflow lock run KEY -- CMD ...")
    status = ask_cluster(master_url, lambda client: run_locked(client, key, argv, process_owner(), ttl_s, wait_s),
                         also=(LockTimeout,))
    raise typer.Exit(status)


# --------------------------------------------------------------------------- entry points


def main() -> None:
    app()


def _run_subcommand(name: str) -> None:
    sys.argv = [sys.argv[0], name, *sys.argv[1:]]
    app()


def master_main() -> None:
    """`agentflow-master`: the same options as `agentflow master`."""
    _run_subcommand("master")


def worker_main() -> None:
    """`agentflow-worker`: the same options as `agentflow worker`."""
    _run_subcommand("worker")


if __name__ == "__main__":
    main()
