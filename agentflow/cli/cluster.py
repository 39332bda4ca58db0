"""`agentflow cluster [add|remove]`: the masters' table, and changing who the masters are.

    agentflow cluster [--json]                        leader, term, roles, commit and applied index
    agentflow cluster add NODE_ID HOST:PORT           a master started with `--mode master` (and no
                                                      --leader-url) joins: as a learner, then voter
    agentflow cluster remove NODE_ID                  it leaves the Raft group

Rules: one single-server membership change at a time, through the Raft log; a busy leader is
asked again until the deadline. `add` waits until the new master is a voter (it must be running
at the address given to catch up); removing the leader hands its leadership over first, so the
group always has a leader. A removed master that still runs is no member: stop it (scale the
StatefulSet down) and delete its data, or it asks to join again when restarted.
"""

from __future__ import annotations

import time
from typing import Optional

import typer

from agentflow.cli.common import JsonFlag, MasterUrl, app, ask_cluster, fail, print_json, print_table
from protocols.tasks import parse_master_urls

cluster_app = typer.Typer(help="Show the masters; add or remove one (`agentflow cluster --help`).",
                          invoke_without_command=True)
app.add_typer(cluster_app, name="cluster")

Timeout = typer.Option(60.0, "--timeout", help="Seconds to wait for the change (add: for the new voter).")


@cluster_app.callback()
def cluster(ctx: typer.Context, json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """Show the masters: leader, term, roles, commit and applied index."""
    if ctx.invoked_subcommand is not None:
        return
    view = ask_cluster(master_url, lambda client: client.cluster_status())
    if json_output:
        print_json(view)
        return
    print_table(f"cluster: leader {view['leader'] or '(none)'}, term {view['term']}",
                ("id", "address", "role", "term", "commit", "applied"),
                ((m["id"], m["address"], m["role"] or "unreachable", m["term"], m["commit_index"], m["last_applied"])
                 for m in view["members"]))


@cluster_app.command("add")
def add(
    node_id: str = typer.Argument(..., help="The new master's --node-id."),
    address: str = typer.Argument(..., help="Where it listens, as it advertises itself: HOST:PORT."),
    http_port: Optional[int] = typer.Option(None, "--http-port", help="Its HTTP port. Default: PORT+10."),
    timeout_s: float = Timeout,
    json_output: bool = JsonFlag,
    master_url: Optional[str] = MasterUrl,
) -> None:
    """Add a master to the cluster: a learner first, a voter once it has caught up."""
    from agentflow.master import default_http_port

    try:
        [endpoint] = parse_master_urls(address)
    except ValueError as exc:
        fail(f"{exc} (one address)")
    port = int(endpoint.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s

    def change(client):
        client.add_master(node_id, endpoint, default_http_port(port, http_port), timeout_s)
        while True:  # the leader promotes it once it has caught up
            view = client.cluster_status()
            member = next((m for m in view["members"] if m["id"] == node_id), None)
            if member and member["role"] in ("follower", "leader"):
                return view
            if time.monotonic() >= deadline:
                fail(f"{node_id} was added as a learner but is not a voter after {timeout_s:g} s: "
                     f"is it running at {endpoint}?", code=1)
            time.sleep(0.2)

    view = ask_cluster(master_url, change)
    voters = sorted(m["id"] for m in view["members"] if m["role"] in ("follower", "leader"))
    if json_output:
        print_json({"added": node_id, "voters": voters})
    else:
        typer.echo(f"{node_id} ({endpoint}) is a voter; voters: {', '.join(voters)}")


@cluster_app.command("remove")
def remove(
    node_id: str = typer.Argument(..., help="The master to take out of the cluster."),
    timeout_s: float = Timeout,
    json_output: bool = JsonFlag,
    master_url: Optional[str] = MasterUrl,
) -> None:
    """Remove a master from the cluster (the leader hands over first if it is the one removed)."""
    result = ask_cluster(master_url, lambda client: client.remove_master(node_id, timeout_s))
    if json_output:
        print_json({"removed": node_id, **result})
    else:
        typer.echo(f"{node_id} removed; voters: {', '.join(result['voters'])}")
