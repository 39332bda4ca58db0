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
