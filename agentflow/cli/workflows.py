"""`agentflow submit|status|cancel|workers`: workflows and the workers' table."""

from __future__ import annotations

import uuid
from typing import Optional

import typer

from agentflow.cli.common import (
    JsonFlag,
    MasterUrl,
    app,
    ask_cluster,
    connect,
    fail,
    print_json,
    print_table,
    unreachable,
)
from runtime.client import ClusterUnavailable
from runtime.future import RemoteError

SMALL_WORKFLOW_TASKS = 50  # up to this many tasks, `status` and `submit --wait` print every one


@app.command()
def submit(
    file: str = typer.Argument(..., help="A workflow file (YAML or JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the workflow to finish; exit 0 only if it completed."),
    all_tasks: bool = typer.Option(False, "--all", help="With --wait: print every task, however many."),
    json_output: bool = JsonFlag,
    master_url: Optional[str] = MasterUrl,
) -> None:
    """Submit a workflow."""
    import os

    from protocols.wire import DEFAULT_MAX_FRAME_BYTES
    from protocols.workflow import WorkflowError, parse_workflow

    try:
        size = os.stat(file).st_size
        if size > DEFAULT_MAX_FRAME_BYTES:  # not read: no master would take it (they refuse far less)
            fail(f"{file} is {size / (1 << 20):.1f} MiB: over the {DEFAULT_MAX_FRAME_BYTES >> 20} MiB a master takes "
                 "in one message (and a workflow may be at most --max-workflow-bytes, 16 MiB by default)")
        with open(file) as handle:
            text = handle.read()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        fail(f"{file} is not UTF-8 text (byte {exc.start})")
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
            fail(unreachable(exc), code=1)
        if not wait:
            if json_output:
                print_json({"workflow_id": workflow_id, "state": "submitted"})
            else:
                typer.echo(f"submitted {workflow_id} ({len(workflow.tasks)} tasks)")
            return
        table = json_output or all_tasks or len(workflow.tasks) <= SMALL_WORKFLOW_TASKS
        status_doc = wait_with_progress(client, workflow_id, len(workflow.tasks), quiet=json_output,
                                        tasks=table, summary=not json_output)
    if json_output:
        print_json(status_document(status_doc))
    else:
        print_status(status_doc)
    raise typer.Exit(0 if status_doc["state"] == "completed" else 1)


def wait_with_progress(client, workflow_id: str, total: int, quiet: bool, tasks: bool = True,
                       summary: bool = False) -> dict:
    """Poll the workflow until it ends, with a rich progress bar on the terminal unless quiet;
    returns its final document (with its tasks and its summary as asked)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return client.wait_workflow(workflow_id, tasks=tasks, summary=summary)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        bar = progress.add_task(workflow_id, total=total)

        def update(status: dict) -> None:
            progress.update(bar, completed=status["progress"]["finished"],
                            description=f"{workflow_id} {status['state']}")

        return client.wait_workflow(workflow_id, on_progress=update, tasks=tasks, summary=summary)


def status_document(status_doc: dict) -> dict:
    """The `status --json` contract: workflow_id, state, tasks {id: state, attempts, worker, exit_code}."""
    return {"workflow_id": status_doc["workflow_id"], "state": status_doc["state"],
            "tasks": {task_id: {key: task[key] for key in ("state", "attempts", "worker", "exit_code")}
                      for task_id, task in status_doc["tasks"].items()}}


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:60] if lines else ""


def print_status(status_doc: dict) -> None:
    """The summary (when the document has one), then the task table (when it has the tasks)."""
    if status_doc.get("forgotten"):
        typer.echo(f"{status_doc['workflow_id']}: {status_doc['state']}, then forgotten "
                   f"({status_doc['progress']['total']:,} tasks; the masters keep the most recently finished "
                   "workflows: --retain-workflows, --retain-s)")
        return
    if "summary" in status_doc:
        print_summary(status_doc)
    if "tasks" in status_doc:
        print_table(f"{status_doc['workflow_id']}: {status_doc['state']}",
                    ("task", "state", "attempts", "worker", "exit code", "error", "last output line"),
                    ((task_id, task["state"], task["attempts"], task["worker"] or "-",
                      "-" if task["exit_code"] is None else task["exit_code"], (task.get("error") or "")[:60],
                      last_line(task.get("stderr_tail")) or last_line(task.get("stdout_tail")))
                     for task_id, task in status_doc["tasks"].items()))
    else:
        typer.echo(f"  (every task: agentflow status {status_doc['workflow_id']} --all, or --json)")


SUMMARY_COLUMNS = {"failed": ("task_id", "attempts", "worker", "exit_code", "error"),
                   "running": ("task_id", "attempts", "worker")}


def print_summary(status_doc: dict) -> None:
    progress, summary = status_doc["progress"], status_doc["summary"]
    typer.echo(f"{status_doc['workflow_id']}: {status_doc['state']}, {progress['finished']:,}/{progress['total']:,} "
               f"tasks finished ({progress['fraction_done']:.1%})")
    typer.echo("  " + "  ".join(f"{state} {count:,}" for state, count in progress["counts"].items() if count))
    remaining = summary["critical_path_remaining"]
    if remaining:
        shown = " -> ".join(summary["critical_path"][:6]) + (" -> ..." if remaining > 6 else "")
        typer.echo(f"  critical path: {remaining:,} tasks to go ({shown})")
    for kind, keys in SUMMARY_COLUMNS.items():
        rows, count = summary[kind], summary[f"{kind}_count"]
        if rows:
            title = f"{kind}: {count:,}" + (f" (the first {len(rows)})" if count > len(rows) else "")
            print_table(title, tuple(key.replace("_id", "").replace("_", " ") for key in keys),
                        ([("-" if row.get(key) is None else row[key]) for key in keys] for row in rows))


@app.command()
def status(workflow_id: Optional[str] = typer.Argument(None),
           all_tasks: bool = typer.Option(False, "--all", help="Print every task, however many."),
           json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """Show one workflow (a summary when it is big, every task with --all), or all of them."""
    if workflow_id is None:
        rows = ask_cluster(master_url, lambda client: client.workflow_status(None))
        if json_output:
            print_json(rows)
            return
        print_table("workflows", ("workflow", "name", "state", "done"),
                    ((row["workflow_id"], row["name"], row["state"],
                      f"{row['progress']['finished']}/{row['progress']['total']}") for row in rows))
        return
    if json_output:
        print_json(status_document(ask_cluster(master_url, lambda client: client.workflow_status(workflow_id))))
        return

    def summary_and_table(client) -> dict:
        status_doc = client.workflow_status(workflow_id, tasks=all_tasks, summary=True)
        if not all_tasks and not status_doc.get("forgotten") and status_doc["progress"]["total"] <= SMALL_WORKFLOW_TASKS:
            status_doc["tasks"] = client.workflow_status(workflow_id)["tasks"]
        return status_doc

    print_status(ask_cluster(master_url, summary_and_table))


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
