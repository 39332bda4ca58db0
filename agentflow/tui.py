"""`agentflow top`: the live view of a cluster (rich.live), and its one-frame form for scripts.

    poller = ClusterPoller("127.0.0.1:6767,127.0.0.1:6768")
    console.print(render(poller.poll(), ViewState()))     # `agentflow top --once`
    run_live(poller, interval_s=0.5)                      # `agentflow top`

Role: composition of what the masters already say, never a new source of truth. Each refresh
asks every known master's observer (actors/observer.py) for its snapshot, all at once, with a
deadline shorter than the interval: the leader answers with the queue, workers and workflows, a
follower with its Raft part, a dead master not at all (its row says so). Events come from every
master's PUB socket (topics ``event.``) as they happen, and from the snapshots' recent events
when the view starts. The leader is whoever says so with the highest term, so the view follows a
leader change, and a master killed mid-way only turns its row red.

Keys, as in htop and k9s: q or Ctrl-C quits, ? help, w/m/a focus the workflows, masters or
agents panel (again: back to all), / filters workflows (Enter keeps, Esc clears), p pauses.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from protocols.names import OBSERVER_ACTOR
from protocols.overview import OverviewRequest
from protocols.wire import Event
from runtime.actor import Actor
from runtime.client import parse_master_urls
from runtime.future import AskTimeout, RemoteError
from runtime.node import Node
from runtime.security import CurveKeys

EVENTS_KEPT = 200
RATE_WINDOW_S = 5.0
FINISHED_STATES = ("completed", "failed", "skipped", "cancelled")
HELP = ("q quit  ? help  w workflows  m masters  a agents  / filter workflows  p pause  "
        "(w, m, a again: every panel)")


class _EventSink(Actor):
    """Keeps the events the masters publish (a bounded deque; appends are thread-safe)."""

    def __init__(self, events: collections.deque) -> None:
        super().__init__()
        self.events = events

    def receive(self, message: Any) -> None:
        if isinstance(message, Event) and isinstance(message.body, dict):
            self.events.append(message.body)


@dataclass
class Frame:
    """What one refresh saw: each master's snapshot (None: no answer) and the derived figures."""

    taken_s: float
    masters: dict[str, dict | None]  # node id -> snapshot (None: a master known from an earlier answer is silent)
    addresses: dict[str, str]
    leader: dict | None
    events: list[dict]
    tasks_per_s: float | None
    last_leader_s: float | None  # when a leader was last seen, for the header


class ClusterPoller:
    """Asks the masters for their snapshots, keeps the event stream; see the module docstring."""

    def __init__(self, master_urls: str | list[str], timeout_s: float = 0.4, workflow_limit: int = 50,
                 curve: CurveKeys | None = None) -> None:
        self.seeds = parse_master_urls(master_urls)
        self.timeout_s = timeout_s
        self.workflow_limit = workflow_limit
        self.node = Node(f"top-{os.getpid()}", curve=curve).start()  # a client's keys, as every command's
        self._live_events: collections.deque[dict] = collections.deque(maxlen=EVENTS_KEPT)
        self._sink = self.node.spawn(_EventSink, self._live_events, name="events", pinned=True)
        self._subscribed: set[str] = set()
        self._events: dict[str, dict] = {}  # id -> event, every one seen (bounded below)
        self.addresses: dict[str, str] = {}  # node id -> endpoint, learned from the answers
        self._finished: collections.deque[tuple[float, int]] = collections.deque()
        self._agent_messages: dict[str, tuple[float, int, float | None]] = {}  # id -> (since, count, rate)
        self._last_leader_s: float | None = None

    def close(self) -> None:
        self.node.stop()

    def __enter__(self) -> ClusterPoller:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def poll(self) -> Frame:
        endpoints = list(dict.fromkeys(self.seeds + [self.addresses[k] for k in sorted(self.addresses)]))
        asks = [(endpoint, self.node.ref(endpoint, OBSERVER_ACTOR).ask(OverviewRequest(self.workflow_limit),
                                                                        timeout_s=self.timeout_s))
                for endpoint in endpoints]
        masters: dict[str, dict | None] = {}
        for endpoint, ask in asks:
            try:
                snapshot = ask.get()
            except (AskTimeout, RemoteError):
                continue
            if not isinstance(snapshot, dict) or "node_id" not in snapshot:
                continue
            masters[snapshot["node_id"]] = snapshot
            self.addresses[snapshot["node_id"]] = snapshot.get("endpoint") or endpoint
            for node_id, address in (snapshot.get("raft") or {}).get("members", {}).items():
                self.addresses.setdefault(node_id, address)
            self._learn_events(snapshot.get("events") or ())
            pub = snapshot.get("pub_endpoint")
            if pub and pub not in self._subscribed:
                self._subscribed.add(pub)
                self.node.subscribe(pub, "event.", self._sink)
        for node_id in self.addresses:
            masters.setdefault(node_id, None)  # known but silent: killed, or cut off from us
        while self._live_events:
            self._learn_events([self._live_events.popleft()])
        now = time.monotonic()
        leaders = [s for s in masters.values() if s is not None and s.get("role") == "leader"]
        leader = max(leaders, key=lambda s: s.get("term", 0)) if leaders else None
        if leader is not None:
            self._last_leader_s = now
            self._agent_rates(leader.get("agents") or [], now)
        return Frame(time.time(), dict(sorted(masters.items())), dict(self.addresses), leader,
                     sorted(self._events.values(), key=lambda e: e.get("time_s", 0), reverse=True)[:EVENTS_KEPT],
                     self._rate(masters, now), self._last_leader_s)

    def _learn_events(self, events) -> None:
        for event in events:
            if isinstance(event, dict) and "id" in event:
                self._events.setdefault(str(event["id"]), event)
        if len(self._events) > 2 * EVENTS_KEPT:
            newest = sorted(self._events.values(), key=lambda e: e.get("time_s", 0))[-EVENTS_KEPT:]
            self._events = {str(e["id"]): e for e in newest}

    def _agent_rates(self, rows: list[dict], now: float) -> None:
        """Each agent row gets ``messages_per_s``: its handled count (from its host's heartbeats,
        about once a second) against the one seen at least half a rate window earlier."""
        kept: dict[str, tuple[float, int, float | None]] = {}
        for row in rows:
            total = row.get("messages_total")
            if total is None:
                continue
            since, base, rate = self._agent_messages.get(row["agent_id"], (now, total, None))
            if now - since >= RATE_WINDOW_S / 2 or total < base:
                rate = max(0, total - base) / (now - since) if now > since else None
                since, base = now, total
            kept[row["agent_id"]] = (since, base, rate)
            row["messages_per_s"] = rate
        self._agent_messages = kept  # agents that left are forgotten

    def _rate(self, masters: dict[str, dict | None], now: float) -> float | None:
        """Finished tasks per second over the last few seconds, from the replicated counts (the
        same on every master, so a leader change does not reset it)."""
        counts = [sum((s.get("tasks") or {}).get(state, 0) for state in FINISHED_STATES)
                  for s in masters.values() if s is not None]
        if not counts:
            return None
        self._finished.append((now, max(counts)))
        while len(self._finished) > 2 and now - self._finished[0][0] > RATE_WINDOW_S:
            self._finished.popleft()
        (first_s, first), (last_s, last) = self._finished[0], self._finished[-1]
        return max(0, last - first) / (last_s - first_s) if last_s > first_s else None


# ---------------------------------------------------------------------------------- the view


@dataclass
class ViewState:
    """What the person chose: the focused panel, the workflow filter, pause, help."""

    focus: str | None = None  # "workflows", "masters", "agents"
    filter: str = ""
    typing_filter: bool = False
    paused: bool = False
    help: bool = False
    quit: bool = False

    def press(self, key: str) -> None:
        if self.typing_filter:
            if key in ("\r", "\n"):
                self.typing_filter = False
            elif key == "\x1b":
                self.typing_filter, self.filter = False, ""
            elif key in ("\x7f", "\b"):
                self.filter = self.filter[:-1]
            elif key.isprintable():
                self.filter += key
            return
        panels = {"w": "workflows", "m": "masters", "a": "agents"}
        if key in ("q", "Q", "\x03"):
            self.quit = True
        elif key == "?":
            self.help = not self.help
        elif key in panels:
            self.focus = None if self.focus == panels[key] else panels[key]
        elif key == "/":
            self.typing_filter, self.filter = True, ""
        elif key == "p":
            self.paused = not self.paused
        elif key == "\x1b":
            self.help, self.focus = False, None


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _bar(fraction: float, width: int = 10, style: str = "green") -> Text:
    """A bar that reads the same in colour and as plain text (a pane capture, --once)."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"))


def _meter(fraction: float) -> Text:
    """A short bar and its percentage, red from 90%."""
    fraction = min(1.0, max(0.0, fraction))
    return Text.assemble(_bar(fraction, style="red" if fraction >= 0.9 else "green"), f" {100 * fraction:3.0f}%")


def header(frame: Frame, view: ViewState) -> RenderableType:
    leader = frame.leader
    alive = [s for s in frame.masters.values() if s is not None]
    text = Text()
    text.append(" AgentFlow ", style="bold white on blue")
    if leader is None:
        seen = f" (a leader was last seen {_ago(time.monotonic() - frame.last_leader_s)})" if frame.last_leader_s else ""
        reason = ("no master answers" if not alive else
                  f"{len(alive)} of {len(frame.masters)} masters answer, none leads: an election is under way "
                  "or a majority is gone")
        text.append(f"  NO LEADER: cannot reach a leader — {reason}{seen}", style="bold red")
    else:
        raft = leader.get("raft") or {}
        workers = leader.get("workers") or {}
        by_status = workers.get("by_status") or {}
        alive_workers = sum(n for status, n in by_status.items() if status != "offline")
        rate = "-" if frame.tasks_per_s is None else f"{frame.tasks_per_s:.1f}"
        text.append(f"  leader {leader['node_id']}  term {raft.get('term')}  commit {raft.get('commit_index')}"
                    f"  {rate} tasks/s  workers {alive_workers}/{sum(by_status.values())}"
                    f"  agents {(leader.get('agents_summary') or {}).get('total', 0)}  masters {len(alive)}/{len(frame.masters)}")
    text.append("   ")
    if view.paused:
        text.append(" PAUSED ", style="bold black on yellow")
    else:
        text.append(time.strftime("%H:%M:%S", time.localtime(frame.taken_s)), style="dim")
    return text


def masters_panel(frame: Frame) -> RenderableType:
    table = Table(expand=True, box=None, header_style="bold")
    for column in ("master", "address", "role", "term", "commit", "applied", "lag", "health", "last election"):
        table.add_column(column, justify="right" if column in ("term", "commit", "applied", "lag") else "left")
    commit = ((frame.leader or {}).get("raft") or {}).get("commit_index")
    elections = {e.get("term"): e for e in reversed(frame.events) if e.get("kind") == "election"
                 and "became leader" in e.get("text", "")}
    for node_id, snapshot in frame.masters.items():
        address = frame.addresses.get(node_id, "").replace("tcp://", "")
        if snapshot is None:
            table.add_row(node_id, address, Text("unreachable", style="bold red"), "-", "-", "-", "-",
                          Text("no answer", style="red"), "-")
            continue
        raft = snapshot.get("raft") or {}
        role = raft.get("role", "?")
        lag = "-" if commit is None else str(max(0, commit - raft.get("last_applied", 0)))
        election = elections.get(raft.get("term"))
        table.add_row(node_id, address, Text(role, style="bold green" if role == "leader" else ""),
                      str(raft.get("term")), str(raft.get("commit_index")), str(raft.get("last_applied")), lag,
                      Text("serving", style="green") if snapshot.get("serving") else Text("not serving", style="red"),
                      _ago(frame.taken_s - election["time_s"]) if election else "-")
    return Panel(table, title="[b]m[/b]asters", title_align="left")


def workers_panel(leader: dict | None) -> RenderableType:
    table = Table(expand=True, box=None, header_style="bold")
    for column in ("worker", "status", "running", "cpu", "memory", "gpus", "group"):
        table.add_column(column)
    for row in (leader or {}).get("worker_rows") or []:
        load, resources = row.get("load") or {}, row.get("resources") or {}
        cpu = float(load.get("cpu_percent") or 0) / 100
        total_mb = resources.get("memory_mb") or 0
        available_mb = load.get("memory_available_mb", resources.get("memory_available_mb", total_mb))
        memory = 1 - available_mb / total_mb if total_mb else 0.0
        status = row.get("status", "?")
        style = {"offline": "bold red", "draining": "yellow", "busy": "cyan"}.get(status, "green")
        gpus = resources.get("gpu_count") or 0
        table.add_row(row["worker_id"], Text(status, style=style), f"{row.get('running', 0)}/{row.get('max_concurrent_tasks')}",
                      _meter(cpu) if status != "offline" else "-", _meter(memory) if status != "offline" else "-",
                      f"{gpus - len(resources.get('free_gpus') or [])}/{gpus}" if gpus else "-", row.get("group", ""))
    if not table.rows:
        table.add_row(Text("no workers registered" if leader else "(needs a leader)", style="dim"), "", "", "", "", "", "")
    return Panel(table, title="workers", title_align="left")


def queue_panel(leader: dict | None) -> RenderableType:
    queue = (leader or {}).get("queue")
    if queue is None:
        return Panel(Text("(needs a leader)", style="dim"), title="queue", title_align="left")
    table = Table(box=None, show_header=False)
    table.add_column("priority")
    table.add_column("ready", justify="right")
    for priority, count in queue["by_priority"].items():  # the queue's order: urgent first (QueueStats)
        table.add_row(priority, str(count))
    table.add_row(Text("total", style="bold"), Text(str(queue["total"]), style="bold"))
    table.add_row("oldest wait", _duration(queue["oldest_wait_s"]) if queue["total"] else "-")
    return Panel(table, title="queue", title_align="left")


def workflows_panel(leader: dict | None, view: ViewState, limit: int) -> RenderableType:
    rows = [row for row in (leader or {}).get("workflow_rows") or []
            if not view.filter or view.filter.lower() in f"{row['workflow_id']} {row.get('name', '')}".lower()]
    table = Table(expand=True, box=None, header_style="bold")
    for column in ("workflow", "state", "progress", "done", "running", "failed", "elapsed", "eta"):
        table.add_column(column, justify="right" if column in ("done", "running", "failed") else "left")
    for row in rows[:limit]:
        counts = row.get("counts") or {}
        state = row["state"]
        style = {"completed": "green", "failed": "red", "running": "cyan", "cancelled": "yellow"}.get(state, "")
        table.add_row(row["workflow_id"], Text(state, style=style),
                      _bar(row["finished"] / row["total"] if row["total"] else 1.0, 20, style),
                      f"{row['finished']}/{row['total']}", str(counts.get("running", 0)),
                      str(counts.get("failed", 0)), _duration(row.get("elapsed_s")),
                      "-" if state != "running" and state != "pending" else _duration(row.get("eta_s")))
    if not rows:
        table.add_row(Text("no workflows" + (f" matching {view.filter!r}" if view.filter else ""), style="dim"),
                      "", "", "", "", "", "", "")
    title = "[b]w[/b]orkflows" + (f"  filter: {view.filter}{'_' if view.typing_filter else ''}" if view.filter
                                  or view.typing_filter else "")
    return Panel(table, title=title, title_align="left")


def agents_panel(leader: dict | None, limit: int) -> RenderableType:
    agents = (leader or {}).get("agents") or []
    if not agents:
        return Panel(Text("no agents registered", style="dim"), title="[b]a[/b]gents", title_align="left")
    table = Table(expand=True, box=None, header_style="bold")
    for column in ("agent", "host", "group", "mailbox", "msgs/s"):
        table.add_column(column)
    for agent in agents[:limit]:
        rate = agent.get("messages_per_s")
        table.add_row(str(agent.get("agent_id")), str(agent.get("host", "")), str(agent.get("group", "")),
                      "-" if agent.get("mailbox_depth") is None else str(agent["mailbox_depth"]),
                      "-" if rate is None else f"{rate:.1f}")
    return Panel(table, title="[b]a[/b]gents", title_align="left")


def events_panel(frame: Frame, limit: int) -> RenderableType:
    table = Table(expand=True, box=None, show_header=False)
    table.add_column("time", style="dim", no_wrap=True)
    table.add_column("event")
    styles = {"election": "bold magenta", "worker": "yellow", "task": "red", "lock": "blue", "workflow": "cyan"}
    for event in frame.events[:limit]:
        table.add_row(time.strftime("%H:%M:%S", time.localtime(event.get("time_s", 0))),
                      Text(str(event.get("text", "")), style=styles.get(event.get("kind"), "")))
    if not frame.events:
        table.add_row("", Text("no events yet", style="dim"))
    return Panel(table, title="events (newest first)", title_align="left")


def render(frame: Frame, view: ViewState, height: int | None = None) -> RenderableType:
    """One screen of the view. ``height`` (the terminal's) sizes the lists; None: a frame for print."""
    rows = 8 if height is None else max(3, (height - 24) // 2)
    parts: list[RenderableType] = [header(frame, view)]
    if view.help:
        parts.append(Panel(Text(HELP + "\n\n" + __doc__.split("Keys, as in htop and k9s: ", 1)[1].strip()),
                           title="help", title_align="left"))
    focus = view.focus
    if focus in (None, "masters"):
        top = Table.grid(expand=True)
        top.add_column(ratio=1)
        top.add_column(width=26)
        top.add_row(masters_panel(frame), queue_panel(frame.leader))
        parts.append(top)
    if focus is None:
        parts.append(workers_panel(frame.leader))
    if focus in (None, "workflows"):
        parts.append(workflows_panel(frame.leader, view, rows if focus is None else 4 * rows))
    if focus in (None, "agents"):
        parts.append(agents_panel(frame.leader, rows if focus is None else 4 * rows))
    if focus is None:
        parts.append(events_panel(frame, rows))
    footer = Text("/" + view.filter + "_  (Enter keeps, Esc clears)" if view.typing_filter else HELP, style="dim")
    parts.append(footer)
    return Group(*parts)


# ---------------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def keyboard() -> Iterator[Any]:
    """Keys one at a time without Enter (cbreak; Ctrl-C still interrupts), restored on the way
    out. Yields ``read(timeout_s) -> str | None``; without a terminal, no key ever comes."""
    if not sys.stdin.isatty():
        yield lambda timeout_s: (time.sleep(max(0.0, timeout_s)), None)[1]  # late already: no wait
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout_s: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_live(poller: ClusterPoller, interval_s: float) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    view = ViewState()
    frame = poller.poll()
    with keyboard() as read_key, Live(render(frame, view, console.height), console=console, screen=True,
                                      auto_refresh=False) as live:
        next_poll = time.monotonic() + interval_s
        while not view.quit:
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + interval_s
                if not view.paused:
                    frame = poller.poll()
            live.update(render(frame, view, console.height), refresh=True)
            key = read_key(next_poll - time.monotonic())
            while key is not None:
                view.press(key)
                key = read_key(0)


def frame_text(frame: Frame, width: int = 120) -> str:
    """The frame as plain text (``--once``, tests)."""
    from rich.console import Console

    console = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    console.print(render(frame, ViewState()))
    console.file.close()
    return console.export_text()
