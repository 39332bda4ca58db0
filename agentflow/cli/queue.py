"""`agentflow queue|reprioritize`: the leader's queue of ready tasks."""

from __future__ import annotations

from typing import Optional

import typer

from agentflow.cli.common import JsonFlag, MasterUrl, app, ask_cluster, fail, print_json, print_table


@app.command()
def queue(json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """Show the queue of ready tasks: how many wait at each priority, and the oldest wait."""
    stats = ask_cluster(master_url, lambda client: client.queue_stats())
    if json_output:
        print_json(stats)
        return
    oldest = f", the oldest ({stats['oldest_task']}) for {stats['oldest_wait_ms'] / 1000:.1f} s" if stats["total"] else ""
    print_table(f"queue: {stats['total']:,} ready tasks waiting{oldest}", ("priority", "tasks"),
                ((name, f"{count:,}") for name, count in stats["by_priority"].items()))


@app.command()
def reprioritize(workflow_id: str = typer.Argument(...), task_id: str = typer.Argument(...),
                 priority: str = typer.Argument(..., help="urgent, high, medium, low or an integer."),
                 master_url: Optional[str] = MasterUrl) -> None:
    """Change the priority of a task that has not finished (it keeps its place in time)."""
    from protocols.workflow_spec import priority_name, priority_value

    try:
        value = priority_value(int(priority) if priority.lstrip("-").isdigit() else priority)
    except ValueError as exc:
        fail(str(exc))
    result = ask_cluster(master_url, lambda client: client.reprioritize(workflow_id, task_id, value))
    if not result.get("ok"):
        fail(f"cannot reprioritize {workflow_id}/{task_id}: {result.get('reason')}", code=1)
    typer.echo(f"{workflow_id}/{task_id}: priority {priority_name(value)} ({value})")
