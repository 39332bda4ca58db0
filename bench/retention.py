"""Retention benchmark: 1,000,000 no-op tasks in 1,000 workflows, with and without retention.

    .venv/bin/python bench/retention.py [--workflows 1000] [--tasks 1000] [--retain 100] [--call] [--json FILE]

Each workflow is ``--tasks`` no-op marker tasks (a task with no command, call or agent
completes when it is applied, so this is the replicated state's own path: submit, apply,
finish, forget, snapshot), or with ``--call`` tasks that call ``builtins:int`` on two workers.
The same run happens twice, on fresh clusters of 3 masters: with ``--retain-workflows N`` and
without (a retention larger than the run). Every ``--every`` workflows it prints the leader's
resident memory and the size of its latest snapshot (``--snapshot-every 200`` entries, so that
snapshots happen within the run) and of its data file. With retention all three stay flat once
the window is full; without, they grow with every workflow (and a long enough run stops
answering: each snapshot encodes more on the thread that keeps the leader's heartbeats). The
JSON results compare both runs at the last sample both reached (the peer is the run without
retention, so a ratio above 1 is what retention saves).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agentflow.cluster import LocalCluster  # noqa: E402
from bench.common import Result, report  # noqa: E402
from protocols.workflow_spec import TaskNode, TaskResources, Workflow  # noqa: E402
from runtime.client import Client, ClusterUnavailable  # noqa: E402

NO_RESOURCES = TaskResources(cpu=0.0)


def workflow(tasks: int, call: bool) -> Workflow:
    nodes = [TaskNode(f"t{i}", call="builtins:int" if call else None, resources=NO_RESOURCES) for i in range(tasks)]
    return Workflow(f"ret-{uuid.uuid4().hex[:10]}", "retention", nodes)


def snapshot_bytes(database: Path) -> tuple[int, int]:
    """(index, size in bytes) of the snapshot stored in a master's SQLite file; (0, 0) if none."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute("SELECT snapshot_index, length(data) FROM snapshot").fetchone()
    finally:
        connection.close()
    return (row[0], row[1]) if row else (0, 0)


def file_bytes(database: Path) -> int:
    return sum(path.stat().st_size for path in database.parent.glob(database.name + "*"))


def run(args, retain: int, label: str) -> list[dict]:
    samples = []
    with tempfile.TemporaryDirectory(prefix="agentflow-retention-") as directory:
        local = LocalCluster(directory, masters=3, workers=2 if args.call else 0, first_port=args.port,
                             master_options=["--retain-workflows", str(retain), "--snapshot-every", "200"],
                             worker_options=["--max-concurrent-tasks", "4"])
        try:
            local.start()
            with Client(local.master_url, timeout_s=60) as client:
                started = time.perf_counter()
                try:
                    sample_all(args, client, local, Path(directory), label, started, samples)
                except (ClusterUnavailable, TimeoutError) as exc:
                    # Without retention a long run ends like this: every snapshot encodes more,
                    # on the thread that also keeps the leader's heartbeats going.
                    print(f"{label}: the cluster stopped answering after {samples[-1]['workflows'] if samples else 0} "
                          f"workflows ({exc})", file=sys.stderr)
        finally:
            try:
                local.stop()
            except subprocess.TimeoutExpired:
                pass  # a master still writing its last snapshot when killed; the directory goes anyway
    return samples


def sample_all(args, client: Client, local: LocalCluster, directory: Path, label: str, started: float,
               samples: list[dict]) -> None:
    for index in range(1, args.workflows + 1):
        submitted = workflow(args.tasks, args.call)
        client.submit_workflow(submitted, timeout_s=120)
        if args.call:
            client.wait_workflow(submitted.workflow_id, timeout_s=600, poll_s=0.05, tasks=False)
        if index % args.every and index != args.workflows:
            continue
        leader = client.cluster_status()["leader"]
        database = directory / f"{leader}.sqlite"
        snapshot_index, snapshot_size = snapshot_bytes(database)
        sample = {"workflows": index, "tasks": index * args.tasks, "elapsed_s": time.perf_counter() - started,
                  "rss_mb": psutil.Process(local.by_id(leader).proc.pid).memory_info().rss / 2**20,
                  "snapshot_kb": snapshot_size / 1024, "snapshot_index": snapshot_index,
                  "file_mb": file_bytes(database) / 2**20, "kept": len(client.workflow_status(None))}
        samples.append(sample)
        print(f"{label}: {index} workflows, {sample['tasks']:,} tasks, {sample['rss_mb']:.0f} MB resident, "
              f"snapshot {sample['snapshot_kb']:,.0f} KB, kept {sample['kept']}", file=sys.stderr)


def print_samples(title: str, samples: list[dict]) -> None:
    table = Table(title=title)
    for column in ("workflows", "tasks", "elapsed s", "leader RSS MB", "snapshot KB (at index)", "data file MB",
                   "workflows kept"):
        table.add_column(column, justify="right")
    for s in samples:
        table.add_row(f"{s['workflows']:,}", f"{s['tasks']:,}", f"{s['elapsed_s']:.0f}", f"{s['rss_mb']:.0f}",
                      f"{s['snapshot_kb']:,.0f} ({s['snapshot_index']:,})", f"{s['file_mb']:.1f}", f"{s['kept']:,}")
    Console(width=max(Console().width, 120)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per workflow")
    parser.add_argument("--retain", type=int, default=100, help="--retain-workflows of the masters")
    parser.add_argument("--every", type=int, default=50, help="sample every N workflows")
    parser.add_argument("--call", action="store_true", help="tasks call builtins:int on two workers")
    parser.add_argument("--port", type=int, default=27767)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    os.environ.setdefault("AGENTFLOW_LOG", "warn")

    kept = run(args, args.retain, f"retain {args.retain}")
    print_samples(f"with --retain-workflows {args.retain}", kept)
    grown = run(args, args.workflows + 1, "no retention")
    print_samples("without retention", grown)
    # Compared where both runs got to (a run without retention may stop answering first).
    if not kept or not grown:
        raise SystemExit("a run stopped answering before its first sample: nothing to compare (see above)")
    both = min(kept[-1]["workflows"], grown[-1]["workflows"])
    at = {run: next(s for s in samples if s["workflows"] >= both) for run, samples in (("kept", kept), ("grown", grown))}
    peer = f"no retention ({both:,} workflows)"
    results = [Result(f"leader_rss_mb_at_{both}", "MB", False, [at["kept"]["rss_mb"]], peer, [at["grown"]["rss_mb"]]),
               Result(f"snapshot_kb_at_{both}", "KB", False, [at["kept"]["snapshot_kb"]], peer,
                      [at["grown"]["snapshot_kb"]]),
               Result(f"data_file_mb_at_{both}", "MB", False, [at["kept"]["file_mb"]], peer, [at["grown"]["file_mb"]])]
    report("retention", results, args.json_path)


if __name__ == "__main__":
    main()
