"""Snapshot transfer benchmark: a fresh master joins a cluster whose log is compacted into a
snapshot of about --mb MB, and catches up from it, sent in chunks of --chunk-kib.

    .venv/bin/python bench/snapshot.py [--mb 300] [--chunk-kib 4096] [--runs 3] [--port 19900] [--json FILE]

Each run starts a fresh leader (one master, ``--snapshot-every 20``), fills its state with
workflows of 1 MiB task commands of random base64 (no worker runs them: they stay in the
state; lz4 cannot shrink them, as it would a repeated string), commits no-ops
until the leader has just compacted (the snapshot covers it all, and the next compaction is
not due during the measure), then starts a second master and adds it
(``add_master``, as `agentflow cluster add` does). Timed from the add: the first chunk received,
the last one, and the new master applied up to the leader's commit index (the whole snapshot
decoded into its state and written to its SQLite file). The peer is the same snapshot sent as one
message (a chunk larger than it), what an InstallSnapshot was before chunking: only possible
while the snapshot fits a receiver's 64 MiB frame, so only measured below that.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow.cluster import ChildProcess, LocalCluster, wait_until  # noqa: E402
from bench.common import Result, report  # noqa: E402
from bench.retention import snapshot_bytes  # noqa: E402
from protocols.control import Noop  # noqa: E402
from protocols.workflow_spec import TaskNode, TaskResources, Workflow  # noqa: E402
from runtime.client import Client  # noqa: E402

MIB = 1024 * 1024
TASKS_PER_WORKFLOW = 12  # 12 MiB workflows, under the 16 MiB --max-workflow-bytes
SNAPSHOT_EVERY = 20
FRAME_LIMIT_BYTES = 64 * MIB


def big_workflow(number: int) -> Workflow:
    """TASKS_PER_WORKFLOW tasks, each a 1 MiB command of random base64: the transport compresses
    a frame of 64 KiB or more (lz4), and a state that compressed 100x would hide the transfer."""
    tasks = [TaskNode(f"t{i}", command="true " + base64.b64encode(os.urandom(MIB * 3 // 4)).decode(),
                      resources=TaskResources(cpu=0.0))
             for i in range(TASKS_PER_WORKFLOW)]
    return Workflow(f"snap-{number}-{uuid.uuid4().hex[:6]}", "snapshot", tasks)


def compacted_after_the_state(client: Client, database: Path) -> None:
    """Commit no-ops until the leader has just compacted: the snapshot then holds the whole state,
    and the next compaction (which encodes and writes all of it on the leader's thread) is
    SNAPSHOT_EVERY entries away, not in the middle of the measure."""
    first_index, _ = snapshot_bytes(database)
    for i in range(2 * SNAPSHOT_EVERY + 2):
        client.propose(Noop(i), timeout_s=120)
        index, _ = snapshot_bytes(database)
        if index != first_index:
            return
    raise SystemExit(f"the leader did not compact within {2 * SNAPSHOT_EVERY + 2} entries")


def one_run(args, chunk_bytes: int) -> dict:
    """Fill a leader's state, add a master, and time its catching up; the figures as a dict."""
    options = ["--snapshot-every", str(SNAPSHOT_EVERY), "--snapshot-chunk-bytes", str(chunk_bytes)]
    with tempfile.TemporaryDirectory(prefix="agentflow-snapshot-") as directory:
        local = LocalCluster(directory, masters=1, first_port=args.port, master_options=options)
        for master in local.masters:  # PUB at PORT+50, so that every port stays within --port..+99
            master.args += ["--pub-port", str(master.port + 50)]
        try:
            local.start()
            with Client(local.master_url, timeout_s=120) as client:
                for number in range(math.ceil(args.mb / TASKS_PER_WORKFLOW)):
                    client.submit_workflow(big_workflow(number), timeout_s=300)
                leader = local.masters[0]
                database = Path(directory) / f"{leader.node_id}.sqlite"
                compacted_after_the_state(client, database)
                _, size = snapshot_bytes(database)
                port = args.port + 20
                joiner = ChildProcess("joiner", ["master", "--mode", "master", "--port", str(port), "--node-id",
                                                 "joiner", "--data-dir", directory, "--pub-port", str(port + 50),
                                                 *options], Path(directory) / "joiner.log", port, http_port=port + 10)
                local.masters.append(joiner.start())  # stopped with the leader
                wait_until(lambda: client.status_of(joiner.url, timeout_s=5), 60, "the new master to answer")
                target = client.status_of(leader.url, timeout_s=30)["commit_index"]
                expected_chunks = max(1, math.ceil(size / chunk_bytes))
                started = time.perf_counter()
                client.add_master("joiner", joiner.url, port + 10, timeout_s=120)
                first = last = None
                deadline = started + args.timeout_s
                while time.perf_counter() < deadline:
                    view = client.status_of(joiner.url, timeout_s=5) or {}
                    chunks = view.get("stats", {}).get("snapshot_chunks_received", 0)
                    now = time.perf_counter() - started
                    if chunks and first is None:
                        first = now
                    if chunks >= expected_chunks and last is None:
                        last = now
                    if view.get("last_applied", 0) >= target:
                        return {"snapshot_mb": size / 1e6, "chunks": chunks, "first_chunk_s": first,
                                "last_chunk_s": last, "caught_up_s": now}
                    time.sleep(0.02)
                tail = joiner.log_path.read_text(errors="replace").splitlines()[-20:]
                raise SystemExit(f"the joiner did not catch up within {args.timeout_s:.0f} s; its log ends:\n"
                                 + "\n".join(tail))
        finally:
            local.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="state to build, in MB (about the snapshot's size)")
    parser.add_argument("--chunk-kib", type=int, default=4096, help="--snapshot-chunk-bytes, in KiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=19900, help="the ports used are PORT..PORT+99")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    os.environ.setdefault("AGENTFLOW_LOG", "warn")

    chunked, whole = [], []
    one_message = args.mb * 1e6 < FRAME_LIMIT_BYTES - 4 * MIB  # a frame holds its envelope too
    for run in range(args.runs):  # alternating, so that the machine's load falls on both alike
        chunked.append(one_run(args, args.chunk_kib * 1024))
        print(f"run {run + 1}, chunks of {args.chunk_kib} KiB: {chunked[-1]}", file=sys.stderr)
        if one_message:
            whole.append(one_run(args, FRAME_LIMIT_BYTES))
            print(f"run {run + 1}, one message: {whole[-1]}", file=sys.stderr)
    peer = "one message" if one_message else "one message (impossible: over the frame limit)"
    results = [Result(f"join_to_caught_up_{args.mb}mb", "s", False, [r["caught_up_s"] for r in chunked], peer,
                      [r["caught_up_s"] for r in whole]),
               Result(f"add_to_last_chunk_{args.mb}mb", "s", False, [r["last_chunk_s"] for r in chunked], peer,
                      [r["last_chunk_s"] for r in whole])]
    report("snapshot", results, args.json_path, chunked=chunked, one_message=whole,
           chunk_kib=args.chunk_kib)


if __name__ == "__main__":
    main()
