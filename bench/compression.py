"""Compression benchmark: which codec for large frames, and from which size it pays.

    .venv/bin/python bench/compression.py [--runs 5] [--frames 30] [--cluster-runs 5] [--json FILE]

In one run:

* the codecs, on representative frames encoded by protocols/wire.py (a worker's report of a
  1 MiB JSON-ish task result; the AppendEntries a follower gets with that result; AppendEntries
  of 64 entries of 32 task completions each, as the scheduler commits them; a report of 1 MiB of
  random bytes): compression ratio, and MB/s (of the frame's raw size) to compress and to
  decompress, for zlib levels 1 and 6 (the standard library) and whichever of lz4, zstandard
  (levels 1 and 3), cramjam's snappy and isal (zlib's format, faster) are installed;
* end to end: the time to move each frame through a ZeroMQ DEALER -> ROUTER pair in two
  processes and get a small acknowledgement back (compress, send, decompress and decode, one
  frame in flight), raw, with each codec, and as AgentFlow does it (``agentflow``: wire.compress
  at the default threshold, raw when it does not save an eighth; wire.decode_frame); frames of
  4-256 KiB of completions place the threshold;
* two clusters (3 masters, 2 workers each), the nodes' compression on (the default) in one and
  off (``--compress-min-bytes 0``) in the other, given in turn a workflow of ``--tasks`` tasks
  that each return ~300 KB of JSON-ish rows (bench/payloads.py), then ``--noop-tasks`` no-op
  tasks (the hot path);

the last two on 127.0.0.1 and, as root, again on the loopback of a network namespace of its
own shaped by a token bucket to 1 Gbit/s and to 100 Mbit/s (links between machines, which
127.0.0.1 is not: its bandwidth is the memory's). Each figure is the median of the runs; a
ratio above 1 means compressing is ahead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Callable

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow.cluster import LocalCluster  # noqa: E402
from bench.common import Result, report  # noqa: E402
from bench.peers.child import read_line  # noqa: E402
from bench.payloads import json_ish_result  # noqa: E402
from protocols import wire  # noqa: E402
from protocols.control import Batch  # noqa: E402
from protocols.raft import AppendEntries, Entry  # noqa: E402
from protocols.tasks import TaskFinished, TasksFinished  # noqa: E402
from protocols.workflow_spec import TaskNode, TaskResources, Workflow  # noqa: E402
from protocols.workflow_table import FinishTask  # noqa: E402
from runtime.client import Client, ClusterUnavailable  # noqa: E402
from runtime.future import RemoteError  # noqa: E402

RECV_TIMEOUT_S = 20.0  # no acknowledgement for this long: the benchmark fails, naming the wait
MIB = 1024 * 1024
SHAPED_RATES = ("1gbit", "100mbit")


# --------------------------------------------------------------------------- representative frames

def report_frame(result) -> bytes:
    finished = TaskFinished("worker-1", "wf-etl", "extract", 1, True, 0, result, "", "", "", 1234)
    return wire.encode_frame("worker-1", "tcp://10.0.0.21:7000",
                             [(wire.ASK, "worker", "scheduler", 7, TasksFinished("worker-1", [finished]))])


def completions_frame(rng: random.Random, entries: int, per_entry: int = 32) -> bytes:
    """AppendEntries as the leader sends them: each entry one Batch of task completions."""
    log = []
    for e in range(entries):
        commands = [FinishTask(f"wf-{rng.randrange(1000)}", f"t{e * per_entry + k}", 1, True,
                               1_764_000_000_000 + e * 10 + k, 0,
                               {"rows": rng.randrange(10**6), "checksum": rng.randbytes(8).hex()}, "",
                               f"processed {rng.randrange(10**5)} records in {rng.random():.3f}s\n", "")
                    for k in range(per_entry)]
        log.append(Entry(3, 1000 + e, 0, wire.encode(Batch(commands))))
    message = AppendEntries("master-1", "master-2", 3, 999, 3, log, 1000 + entries)
    return wire.encode_frame("master-1", "tcp://10.0.0.11:6767", [(wire.TELL, "raft", "raft", 0, message)])


def result_append_frame(result) -> bytes:
    """The AppendEntries a follower gets for one committed task result."""
    command = Batch([FinishTask("wf-etl", "extract", 1, True, 1_764_000_000_000, 0, result)])
    message = AppendEntries("master-1", "master-2", 3, 999, 3, [Entry(3, 1000, 0, wire.encode(command))], 1000)
    return wire.encode_frame("master-1", "tcp://10.0.0.11:6767", [(wire.TELL, "raft", "raft", 0, message)])


def frames(seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    result = json_ish_result(rng, MIB)
    out = {"result_1mib": report_frame(result), "append_1mib_result": result_append_frame(result),
           "append_64x32_completions": completions_frame(rng, 64),
           "random_1mib": report_frame(rng.randbytes(MIB))}
    for entries in (1, 4, 16, 64):  # 32 completions are ~4 KiB: 4, 16, 64, 256 KiB frames
        out[f"completions_{entries * 4}kib"] = completions_frame(rng, entries)
    return out


CODEC_FRAMES = ("result_1mib", "append_1mib_result", "append_64x32_completions", "random_1mib")
THRESHOLD_FRAMES = ("completions_4kib", "completions_16kib", "completions_64kib", "completions_256kib")


# --------------------------------------------------------------------------- codecs

Codec = tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]


def codecs() -> tuple[dict[str, Codec], dict[str, str]]:
    """(name -> (compress, decompress(blob, raw size))), and the versions (or "not installed")."""
    found: dict[str, Codec] = {
        "zlib-1": (lambda data: zlib.compress(data, 1), lambda blob, size: zlib.decompress(blob, bufsize=size)),
        "zlib-6": (lambda data: zlib.compress(data, 6), lambda blob, size: zlib.decompress(blob, bufsize=size)),
    }
    versions = {"zlib": zlib.ZLIB_RUNTIME_VERSION}
    try:
        import lz4
        import lz4.block
        found["lz4"] = (lambda data: lz4.block.compress(data, store_size=False),
                        lambda blob, size: lz4.block.decompress(blob, uncompressed_size=size))
        versions["lz4"] = lz4.__version__
    except ImportError:
        versions["lz4"] = "not installed"
    try:
        import zstandard
        for level in (1, 3):
            compressor = zstandard.ZstdCompressor(level=level)
            found[f"zstd-{level}"] = (compressor.compress, _zstd_decompress(zstandard.ZstdDecompressor()))
        versions["zstandard"] = zstandard.__version__
    except ImportError:
        versions["zstandard"] = "not installed"
    try:
        import cramjam
        found["snappy"] = (lambda data: bytes(cramjam.snappy.compress_raw(data)),
                           lambda blob, size: bytes(cramjam.snappy.decompress_raw(blob)))
        versions["cramjam"] = cramjam.__version__
    except ImportError:
        versions["cramjam"] = "not installed"
    try:
        from isal import isal_zlib
        found["isal-1"] = (lambda data: isal_zlib.compress(data, 1),
                           lambda blob, size: isal_zlib.decompress(blob, bufsize=size))
        versions["isal"] = getattr(__import__("isal"), "__version__", "?")
    except ImportError:
        versions["isal"] = "not installed"
    return found, versions


def _zstd_decompress(dctx) -> Callable[[bytes, int], bytes]:
    return lambda blob, size: dctx.decompress(blob, max_output_size=size)


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` calls (the least disturbed by the shared machine)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_codecs(data: dict[str, bytes], found: dict[str, Codec], runs: int) -> dict:
    """frame -> codec -> {"ratio", "compress_mb_s", "decompress_mb_s"} (medians over runs)."""
    out: dict = {}
    for frame_name in CODEC_FRAMES:
        raw = data[frame_name]
        out[frame_name] = {"raw_bytes": len(raw)}
        for codec_name, (compress, decompress) in found.items():
            blob = compress(raw)
            assert decompress(blob, len(raw)) == raw, codec_name
            c_runs = [len(raw) / best_of(lambda: compress(raw), 3) / 1e6 for _ in range(runs)]
            d_runs = [len(raw) / best_of(lambda: decompress(blob, len(raw)), 3) / 1e6 for _ in range(runs)]
            out[frame_name][codec_name] = {"ratio": round(len(raw) / len(blob), 2),
                                           "compress_mb_s": round(statistics.median(c_runs), 1),
                                           "decompress_mb_s": round(statistics.median(d_runs), 1)}
    return out


# --------------------------------------------------------------------------- end to end (child processes)

def serve() -> None:
    """The receiving side: a ROUTER that decompresses (the codec named by the frame's first
    part), decodes the frame, and acknowledges it."""
    found, _ = codecs()
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # A parent killed before its "quit" must not leave this process waiting for ever.
    sock.setsockopt(zmq.RCVTIMEO, int(RECV_TIMEOUT_S * 1000))
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"tcp://127.0.0.1:{port}", flush=True)
    while True:
        try:
            route, codec, size, data = sock.recv_multipart()
        except zmq.Again:
            break
        if codec == b"quit":
            break
        if codec in (b"raw", b"agentflow"):  # wire.decode_frame decompresses what is compressed
            wire.decode_frame(data)
        else:
            wire.decode_frame(found[codec.decode()][1](data, int(size)))
        sock.send_multipart([route, b"ok"])
    sock.close()
    context.term()


def end_to_end(frame_names: list[str], codec_names: list[str], frames_per_run: int, runs: int) -> dict:
    """frame -> codec -> median microseconds per frame (compress, send, decompress, decode, ack)."""
    found, _ = codecs()
    data = frames()
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(RECV_TIMEOUT_S * 1000))
    try:
        sock.connect(read_line(server, RECV_TIMEOUT_S, "the compression benchmark's server", "tcp://"))
        out: dict = {}
        for frame_name in frame_names:
            raw = data[frame_name]
            size = str(len(raw)).encode()
            ways = {"raw": lambda: raw}
            ways.update({name: (lambda c=found[name][0]: c(raw)) for name in codec_names if name in found})
            ways["agentflow"] = lambda: wire.compress(raw, wire.DEFAULT_COMPRESS_MIN_BYTES)
            out[frame_name] = {}
            for _ in range(runs):
                for way, prepare in ways.items():  # interleaved, so load moves every row alike
                    tag = way.encode()
                    started = time.perf_counter()
                    for _ in range(frames_per_run):
                        sock.send_multipart([tag, size, prepare()])
                        try:
                            sock.recv()
                        except zmq.Again:
                            raise RuntimeError(f"no acknowledgement of a {frame_name} frame ({way}) "
                                               f"within {RECV_TIMEOUT_S} s") from None
                    elapsed_us = (time.perf_counter() - started) / frames_per_run * 1e6
                    out[frame_name].setdefault(way, []).append(elapsed_us)
        sock.send_multipart([b"quit", b"0", b""])
        server.wait(timeout=RECV_TIMEOUT_S)
    finally:
        sock.close()
        context.term()
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    return {frame: {way: round(statistics.median(samples), 1) for way, samples in ways.items()}
            for frame, ways in out.items()}


def cluster_runs(runs: int, tasks: int, size: int, noop_tasks: int) -> dict[str, dict[str, list]]:
    """Two clusters of 3 masters and 2 workers side by side, compression on in one and off in
    the other, given the same workflows in turn (on, off, off, on, ...: the machine's load moves
    both alike): wall seconds from submit to completion of ``tasks`` tasks returning
    ``size``-byte results, and ``noop_tasks`` no-op tasks per second (the hot path)."""
    figures: dict[str, dict[str, list]] = {mode: {"results_s": [], "noop_tasks_per_s": [], "failed": []}
                                           for mode in ("on", "off")}
    no_resources = TaskResources(cpu=0.0)

    def wall_s(client: Client, nodes: list[TaskNode]) -> float:
        workflow = Workflow(f"compression-{uuid.uuid4().hex[:8]}", "compression", nodes)
        started = time.perf_counter()
        client.submit_workflow(workflow, timeout_s=60)
        status = client.wait_workflow(workflow.workflow_id, timeout_s=600, poll_s=0.02, tasks=False)
        if status["state"] != "completed":
            raise RuntimeError(f"{workflow.workflow_id} ended {status['state']}")
        return time.perf_counter() - started

    def large(count: int) -> list[TaskNode]:
        return [TaskNode(f"t{i}", call="bench.payloads:result_rows", args=[size], resources=no_resources)
                for i in range(count)]

    with tempfile.TemporaryDirectory(prefix="agentflow-compression-") as directory:
        clusters = {mode: LocalCluster(Path(directory) / mode, masters=3, workers=2, master_options=options,
                                       worker_options=options + ["--max-concurrent-tasks", "4"])
                    for mode, options in (("on", []), ("off", ["--compress-min-bytes", "0"]))}
        clients: dict[str, Client] = {}
        try:
            for mode, local in clusters.items():
                local.start()
                clients[mode] = Client(local.master_url, timeout_s=30)
                wall_s(clients[mode], large(8))  # a warm-up: every slot's task process starts
            noop = [TaskNode(f"n{i}", call="builtins:int", resources=no_resources) for i in range(noop_tasks)]
            for run in range(runs):
                for mode in ("on", "off") if run % 2 == 0 else ("off", "on"):
                    try:
                        results_s = wall_s(clients[mode], large(tasks))
                        noop_per_s = noop_tasks / wall_s(clients[mode], noop)
                    except (RuntimeError, TimeoutError, ClusterUnavailable, RemoteError) as exc:
                        # A loaded machine can starve a leader for seconds: that run is reported, not figured.
                        figures[mode]["failed"].append(str(exc)[:200])
                        print(f"cluster run {run + 1}/{runs}, compression {mode}: failed: {exc}", file=sys.stderr,
                              flush=True)
                        continue
                    figures[mode]["results_s"].append(results_s)
                    figures[mode]["noop_tasks_per_s"].append(noop_per_s)
                    print(f"cluster run {run + 1}/{runs}, compression {mode}: {results_s:.2f} s, "
                          f"{noop_per_s:.0f} no-op tasks/s", file=sys.stderr, flush=True)
        finally:
            for client in clients.values():
                client.close()
            for local in clusters.values():
                local.stop()
    return figures


def link_figures(args: argparse.Namespace, names: list[str]) -> dict:
    """What one link measures: the frames end to end and the cluster runs."""
    figures = {"frames": end_to_end([*CODEC_FRAMES, *THRESHOLD_FRAMES], names, args.frames, args.runs)}
    if args.cluster_runs:
        figures["cluster"] = cluster_runs(args.cluster_runs, args.tasks, args.result_bytes, args.noop_tasks)
    return figures


def shaped_link(rate: str, argv: list[str], timeout_s: float) -> tuple[dict | None, str]:
    """``link_figures`` inside a network namespace of its own whose loopback a token bucket
    shapes to ``rate``; (None, why not) where it cannot be made (not root, no ``ip``/``tc``)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        return None, "needs root with ip and tc"
    namespace = f"afbench{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True)
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True, capture_output=True)
        # burst over lo's 64 KiB MTU (and its GSO segments), latency bounding the queue
        subprocess.run(["tc", "-n", namespace, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate,
                        "burst", "256kb", "latency", "100ms"], check=True, capture_output=True)
        done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, __file__, *argv],
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            return None, f"the shaped run exited {done.returncode}: {done.stderr.strip()[-300:]}"
        return json.loads(done.stdout.strip().splitlines()[-1]), ""
    except subprocess.CalledProcessError as exc:
        return None, f"{' '.join(exc.cmd[:4])} failed: {exc.stderr.decode().strip()}"
    except subprocess.TimeoutExpired:
        return None, f"the shaped run took over {timeout_s:.0f} s"
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)


# --------------------------------------------------------------------------- the report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames", type=int, default=30, help="frames per end-to-end run")
    parser.add_argument("--cluster-runs", type=int, default=5, help="workflows of each kind per mode and link (0: none)")
    parser.add_argument("--tasks", type=int, default=48, help="large-result tasks of each cluster run")
    parser.add_argument("--noop-tasks", type=int, default=3000, help="no-op tasks of each cluster run")
    parser.add_argument("--result-bytes", type=int, default=300_000, help="each task's result (as JSON)")
    parser.add_argument("--json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--link-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--codecs", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("AGENTFLOW_LOG", "warn")
    if args.serve:
        serve()
        return
    found, versions = codecs()
    names = args.codecs.split(",") if args.codecs else list(found)
    if args.link_child:
        print(json.dumps(link_figures(args, names)))
        return

    data = frames()
    print("frames: " + ", ".join(f"{name} {len(raw) / 1024:.0f} KiB" for name, raw in data.items()), flush=True)
    codec_figures = measure_codecs(data, found, args.runs)
    print_codecs(codec_figures, list(found))
    links = {"127.0.0.1": link_figures(args, names)}
    missing = {}
    child_argv = ["--link-child", "--runs", str(args.runs), "--frames", str(args.frames), "--codecs", ",".join(names),
                  "--cluster-runs", str(args.cluster_runs), "--tasks", str(args.tasks), "--noop-tasks", str(args.noop_tasks),
                  "--result-bytes", str(args.result_bytes)]
    for rate in SHAPED_RATES:
        figures, why = shaped_link(rate, child_argv, timeout_s=3000)
        if figures is None:
            missing[rate] = why
            print(f"shaped link {rate}: skipped ({why})", flush=True)
        else:
            links[f"lo at {rate}"] = figures
    results = []
    for link, figures in links.items():
        print_end_to_end(link, figures["frames"], [*names, "agentflow"])
        for frame_name, ways in figures["frames"].items():
            results.append(Result(f"{frame_name}_us_{link}", "us/frame", False, [ways["agentflow"]], "raw",
                                  [ways["raw"]]))
        if "cluster" in figures:
            on, off = figures["cluster"]["on"], figures["cluster"]["off"]
            results.append(Result(f"cluster_{args.tasks}x{args.result_bytes // 1000}kb_results_s_{link}", "s", False,
                                  on["results_s"], "compression off", off["results_s"]))
            results.append(Result(f"cluster_noop_tasks_per_s_{link}", "tasks/s", True, on["noop_tasks_per_s"],
                                  "compression off", off["noop_tasks_per_s"]))
    report("compression", results, args.json, codecs=codec_figures, versions=versions, skipped_links=missing,
           end_to_end_us={link: figures["frames"] for link, figures in links.items()})


def print_codecs(figures: dict, names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="codecs: ratio, compress MB/s, decompress MB/s (of the raw frame; medians)")
    table.add_column("frame")
    for name in names:
        table.add_column(name, justify="right")
    for frame_name, row in figures.items():
        table.add_row(f"{frame_name} ({row['raw_bytes'] / 1024:.0f} KiB)",
                      *[f"{row[n]['ratio']:.2f}x {row[n]['compress_mb_s']:.0f} {row[n]['decompress_mb_s']:.0f}"
                        for n in names])
    Console(width=200).print(table)


def print_end_to_end(link: str, figures: dict, names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"end to end on {link}: us per frame (raw / codec: above 1 the codec is ahead)")
    table.add_column("frame")
    table.add_column("raw", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for frame_name, ways in figures.items():
        table.add_row(frame_name, f"{ways['raw']:.0f}",
                      *[f"{ways[n]:.0f} ({ways['raw'] / ways[n]:.2f}x)" if n in ways else "-" for n in names])
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
