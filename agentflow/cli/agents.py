"""`agentflow agent run|agents|send|request|broadcast|history`: agents and their messages.

Content is JSON on the command line (``--content '{"part": 3}'``); a reply's content is printed
as JSON. A request that fails exits 1 with the error's name (AgentNotFound, AgentUnavailable,
AgentError, MailboxFull, RequestTimeout) and what happened.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Iterator, List, Optional

import typer

from agentflow.cli.common import (
    Advertise,
    BindHost,
    JsonFlag,
    MasterUrl,
    NodeId,
    app,
    check_bind,
    curve_keys,
    fail,
    print_json,
    print_table,
    unreachable,
)

agent_app = typer.Typer(help="Host agents.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")

ContentOption = typer.Option("null", "--content", help="The message's content, as JSON.")
TypeOption = typer.Option("notification", "--type", help="The message type, e.g. task_request, notification.")


def parse_content(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--content is not valid JSON: {exc.msg} at column {exc.colno}")


def parse_type(text: str) -> str:
    from protocols.agents import message_type

    try:
        return message_type(text)
    except ValueError as exc:
        fail(str(exc))


@contextlib.contextmanager
def communication(master_url: Optional[str]) -> Iterator:
    """An AgentCommunication on a node of this process's own; errors are one line, exit 1."""
    from runtime.agents import AgentCommunication, AgentCommunicationError, AgentNotFound
    from runtime.client import ClusterUnavailable
    from runtime.future import RemoteError
    from runtime.node import Node

    try:
        node = Node(master_urls=master_url or "127.0.0.1:6767", curve=curve_keys("client")).start()
    except ValueError as exc:
        fail(str(exc))
    try:
        yield AgentCommunication(node, "cli")
    except AgentNotFound as exc:
        fail(f"{exc} (`agentflow agents` lists the agents there are)", code=1)
    except AgentCommunicationError as exc:
        fail(str(exc), code=1)
    except RemoteError as exc:
        fail(exc.message, code=1)
    except ClusterUnavailable as exc:
        fail(unreachable(exc), code=1)
    finally:
        node.stop()


@agent_app.command("run")
def agent_run(
    spec: str = typer.Argument(..., help="MODULE:CLASS of an AgentActor subclass."),
    agent_id: str = typer.Option(..., "--agent-id"),
    group: str = typer.Option("", "--group", help="Agents of one group share its requests."),
    subscribe: List[str] = typer.Option([], "--subscribe", help="A message type to receive broadcasts of."),
    mailbox_limit: Optional[int] = typer.Option(None, "--mailbox-limit", help="Default: 10,000 messages."),
    pinned: bool = typer.Option(False, "--pinned", help="Run the handler on the node's network thread: "
                                "no thread hand-off per message, for handlers that never block."),
    host: str = BindHost,
    advertise: Optional[str] = Advertise,
    port: int = typer.Option(0, "--port", envvar="AGENTFLOW_PORT", help="Default: any free port."),
    node_id: Optional[str] = NodeId,
    master_url: Optional[str] = MasterUrl,
) -> None:
    """Host an agent in the foreground until Ctrl-C (it registers on start, leaves on stop)."""
    from agentflow.agent_host import run_agent

    types = [parse_type(t) for t in subscribe]
    keys = curve_keys("agent host")
    check_bind(host, keys)
    raise typer.Exit(run_agent(spec, agent_id, master_url or "127.0.0.1:6767", group=group, subscriptions=types,
                               host=host, port=port, node_id=node_id, mailbox_limit=mailbox_limit, pinned=pinned,
                               advertise=advertise, curve=keys))


@app.command()
def agents(json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """List the agents: id, host, group, subscriptions, mailbox depth."""
    with communication(master_url) as comm:
        view = comm.agents()
    rows = [{"agent_id": e.agent_id, "host": e.host_id, "endpoint": e.endpoint, "group": e.group or None,
             "subscriptions": list(e.subscriptions),
             "mailbox_depth": view.stats.get(e.agent_id, {}).get("mailbox_depth"),
             "messages_handled": view.stats.get(e.agent_id, {}).get("messages_handled")} for e in view.entries]
    if json_output:
        print_json(rows)
        return
    print_table(f"agents (directory version {view.version})", ("agent", "host", "group", "subscriptions", "mailbox"),
                ((r["agent_id"], r["host"], r["group"] or "-", ", ".join(r["subscriptions"]) or "-",
                  "-" if r["mailbox_depth"] is None else r["mailbox_depth"]) for r in rows))


@app.command()
def send(agent_id: str = typer.Argument(..., help="The agent to send to."), msg_type: str = TypeOption,
         content: str = ContentOption, master_url: Optional[str] = MasterUrl) -> None:
    """Put a message in an agent's mailbox (exit 1 if it is not there or its mailbox is full)."""
    body, kind = parse_content(content), parse_type(msg_type)
    with communication(master_url) as comm:
        comm.deliver(comm.message(agent_id, body, kind))
    typer.echo(f"delivered to {agent_id}")


@app.command()
def request(
    agent_id: Optional[str] = typer.Argument(None, help="The agent to ask (or --group)."),
    group: Optional[str] = typer.Option(None, "--group", help="Ask one live member of this group."),
    content: str = ContentOption,
    msg_type: str = typer.Option("task_request", "--type"),
    timeout_ms: int = typer.Option(5000, "--timeout-ms"),
    master_url: Optional[str] = MasterUrl,
) -> None:
    """Ask an agent and print the reply's content as JSON (exit 1 with the error's name on failure)."""
    if (agent_id is None) == (group is None):
        fail("name an agent or --group, not both")
    body, kind = parse_content(content), parse_type(msg_type)
    with communication(master_url) as comm:
        reply = comm.request(agent_id, body, timeout_ms=timeout_ms, msg_type=kind, group=group)
    print_json(reply.content)


@app.command()
def broadcast(msg_type: str = TypeOption, content: str = ContentOption, master_url: Optional[str] = MasterUrl) -> None:
    """Send a message to every agent that subscribes to its type."""
    from protocols.agents import BroadcastRequest
    from protocols.names import AGENTS_ACTOR

    body, kind = parse_content(content), parse_type(msg_type)
    with communication(master_url) as comm:
        result = comm.directory.client.call(AGENTS_ACTOR, BroadcastRequest(comm.message("", body, kind)))
    typer.echo(f"broadcast to {result['hosts']} host(s) with a subscriber")


@app.command()
def history(limit: int = typer.Option(50, "--limit"), agent: Optional[str] = typer.Option(None, "--agent"),
            msg_type: Optional[str] = typer.Option(None, "--type"), json_output: bool = JsonFlag,
            master_url: Optional[str] = MasterUrl) -> None:
    """Show the latest agent messages, newest last."""
    kind = parse_type(msg_type) if msg_type else None
    with communication(master_url) as comm:
        entries = comm.get_history(limit, agent, kind)
    rows = [{"message_id": e.message_id, "from_agent": e.from_agent, "to_agent": e.to_agent, "msg_type": e.msg_type,
             "timestamp_ms": e.timestamp_ms, "correlation_id": e.correlation_id, "content": e.content,
             "content_bytes": e.content_bytes, "host": e.host} for e in entries]
    if json_output:
        print_json(rows)
        return
    print_table("agent messages", ("time", "from", "to", "type", "content"),
                ((time.strftime("%H:%M:%S", time.localtime(r["timestamp_ms"] / 1000)), r["from_agent"],
                  r["to_agent"] or "*", r["msg_type"],
                  json.dumps(r["content"], default=str)[:60] if r["content"] is not None
                  else f"({r['content_bytes']} bytes)") for r in rows))
