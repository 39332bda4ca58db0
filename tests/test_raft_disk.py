"""Disk faults: a master whose data directory fills up or turns read-only stops acknowledging
(it never acknowledges what it could not persist), says why in /health and its log, and goes on
when the disk does. First in one process with a storage that raises, then on real masters whose
data directory is a small ext4 loop filesystem that is filled (ENOSPC) or whose files are made
immutable (every write fails, as on a disk remounted read-only); those need root and loop
devices and are skipped with the reason otherwise."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agentflow.master import Master
from protocols.control import ClientCommand, Noop, TransferLeadership
from protocols.names import RAFT_ACTOR
from protocols.raft import ENTRY_NORMAL, AppendEntries, InstallSnapshot, SnapshotMeta
from protocols.wire import decode
from runtime.client import Client, ClusterUnavailable
from runtime.storage import RaftStorage, StorageError
from tests.procs import running_cluster, wait_for


def health(http_port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def noops(storage: RaftStorage) -> list:
    """The payloads of the clients' Noop commands in a store, in log order."""
    commands = [decode(e.data) for e in storage.load().entries if e.kind == ENTRY_NORMAL]
    return [c.body.payload for c in commands if isinstance(c, ClientCommand) and isinstance(c.body, Noop)]


class BreakableDisk:
    """Makes a RaftStorage's writes fail while ``broken``, as a full disk does."""

    def __init__(self, storage: RaftStorage) -> None:
        self.broken = threading.Event()
        save = storage.save

        def failing_save(*args, **kwargs):
            if self.broken.is_set():
                raise StorageError(f"{storage.path}: cannot write the Raft store (database or disk is full)")
            return save(*args, **kwargs)

        storage.save = failing_save


def test_a_master_whose_writes_fail_acknowledges_nothing_says_why_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agentflow.raft")
    master = Master(mode="leader", port=16400, data_dir=str(tmp_path), node_id="m1")
    client = Client(["127.0.0.1:16400"], timeout_s=10)
    try:
        raft = master.node.actor(RAFT_ACTOR)
        disk = BreakableDisk(raft.storage)
        assert client.propose(Noop("before")) == "before"
        disk.broken.set()
        with pytest.raises(ClusterUnavailable):
            client.propose(Noop("while broken"), timeout_s=2)  # never acknowledged
        status, body = health(16410)
        assert status == 503 and body["status"] == "not serving"
        assert "cannot write its Raft log" in body["reason"] and "disk is full" in body["reason"]
        assert client.status_of("tcp://127.0.0.1:16400")["disk_error"]
        assert any("cannot write its Raft log" in r.getMessage() for r in caplog.records)
        with RaftStorage(raft.storage.path) as stored:
            assert "while broken" not in noops(stored)

        disk.broken.clear()
        wait_for(lambda: health(16410)[0] == 200, 10, what="the master to serve again")
        assert client.propose(Noop("after")) == "after"
        assert client.status_of("tcp://127.0.0.1:16400")["disk_error"] is None
        assert any("writes its Raft log again" in r.getMessage() for r in caplog.records)
    finally:
        client.close()
        master.stop()


def test_a_raft_actor_stopped_mid_round_writes_nothing_more(tmp_path):
    """Messages and ticks of the round in which a master stops still reach the core; the round's
    end must not write them to the storage on_stop closed (a shutdown logged
    "Cannot operate on a closed database" from the Ready loop once)."""
    master = Master(mode="leader", port=16460, data_dir=str(tmp_path), node_id="m1")
    try:
        raft = master.node.actor(RAFT_ACTOR)
        outcome: list = []
        finished = threading.Event()

        def stop_then_round() -> None:
            try:
                raft.on_stop()
                raft.core.campaign()  # a new term: a Ready that must be written
                raft._process_ready()
                outcome.append(raft.receive(Noop("late")))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome.append(exc)
            finally:
                finished.set()

        master.node.transport.call(stop_then_round)
        assert finished.wait(10)
        assert raft.disk_failure is None and len(outcome) == 1 and not isinstance(outcome[0], BaseException)
    finally:
        master.stop()


def test_a_snapshot_the_master_cannot_load_stops_it_once_and_loudly_writing_nothing(tmp_path, caplog):
    """A leader's snapshot that is not a state this master can load (damaged bytes, another
    version's format) used to fail the Ready loop on every transport round, a traceback each."""
    caplog.set_level(logging.INFO, logger="agentflow.raft")
    # Not the first of its leader URL: it waits to be added and takes a leader's messages.
    master = Master(mode="master", port=16480, leader_url="127.0.0.1:16495", data_dir=str(tmp_path), node_id="m2")
    try:
        raft = master.node.actor(RAFT_ACTOR)
        meta = SnapshotMeta(index=50, term=3, voters=["m1", "m2", "m3"], learners=[])
        damaged = b"\x93not a control snapshot"
        finished = threading.Event()

        def leader_sends() -> None:
            try:
                raft.receive(InstallSnapshot("m1", "m2", 3, meta, 0, len(damaged), damaged, True))
                raft._process_ready()
                for _ in range(3):  # later appends are dropped, not stepped
                    raft.receive(AppendEntries("m1", "m2", 3, 50, 3, [], 50))
                    raft._process_ready()
            finally:
                finished.set()

        master.node.transport.call(leader_sends)
        assert finished.wait(10)
        status = raft.status()
        assert status["snapshot_error"].startswith("snapshot at index 50") and status["disk_error"] is None
        assert status["last_applied"] == 0
        code, body = health(16490)
        assert code == 503 and "cannot load the leader's snapshot at index 50" in body["reason"]
        counters = master.node.stats()
        assert counters["raft_snapshot_load_failures"] == 1 and counters["raft_dropped_disk_failed"] == 3
        errors = [r for r in caplog.records if "cannot load the leader's snapshot" in r.getMessage()]
        assert len(errors) == 1 and not any(r.exc_info for r in caplog.records)
        with RaftStorage(raft.storage.path) as stored:
            assert stored.load().snapshot is None  # nothing of it written, so a restart asks again
    finally:
        master.stop()


def test_a_write_that_hangs_is_named_by_health_and_metrics_while_the_node_cannot_answer(tmp_path):
    """A disk that hangs (rather than fails) holds the thread that writes, and with it the node:
    /health cannot ask the node, but it can say that its Raft log write has not returned."""
    master = Master(mode="leader", port=16500, data_dir=str(tmp_path), node_id="m1")
    client = Client(["127.0.0.1:16500"], timeout_s=10)
    release = threading.Event()
    try:
        assert client.propose(Noop("before")) == "before"
        storage = master.node.actor(RAFT_ACTOR).storage
        observe = storage.on_commit_s
        storage.on_commit_s = lambda seconds: (release.wait(30), observe(seconds))  # inside the write
        answers: list = []
        proposer = threading.Thread(target=lambda: answers.append(client.propose(Noop("held"), timeout_s=30)))
        proposer.start()
        code, body = wait_for(lambda: (answer := health(16510))[0] == 503 and "has not returned" in answer[1]["reason"]
                              and answer, 15, what="/health to name the hung write")
        assert "did not answer" in body["reason"] and "Raft log write" in body["reason"]
        with urllib.request.urlopen("http://127.0.0.1:16510/metrics", timeout=10) as response:
            metrics = response.read().decode()
        running = [line for line in metrics.splitlines() if line.startswith("agentflow_raft_write_running_seconds ")]
        assert running and float(running[0].split()[1]) >= 1.0
        release.set()
        proposer.join(30)
        assert answers == ["held"]
        assert wait_for(lambda: health(16510)[0] == 200, 10, what="the master to serve again")
        assert storage.write_running_s() == 0.0
    finally:
        release.set()
        client.close()
        master.stop()


# --------------------------------------------------------------------------- real masters, real disks

def _loop_disk_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "mounting a loop filesystem needs root"
    for tool in ("mkfs.ext4", "mount", "umount", "chattr"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture
def loop_disk(tmp_path):
    """A 32 MB ext4 filesystem mounted at tmp_path/disk (no blocks reserved for root)."""
    why = _loop_disk_unavailable()
    if why:
        pytest.skip(why)
    image, mount_point = tmp_path / "disk.img", tmp_path / "disk"
    mount_point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True, timeout=60)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True,
                             text=True, timeout=60)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop filesystem here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["chattr", "-R", "-i", str(mount_point)], capture_output=True, timeout=60)
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=60)


def _on_the_loop_disk(loop_disk: Path, node_id: str):
    def prepare(cluster):
        master = cluster.by_id(node_id)
        master.args[master.args.index("--data-dir") + 1] = str(loop_disk)
    return prepare


def _view(client, master) -> dict:
    return client.status_of(master.url, timeout_s=2) or {}


def _acknowledged_then_frozen(client, cluster, victim, break_disk) -> list[int]:
    """Break ``victim``'s disk while commands commit; returns those acknowledged. Checks that the
    victim stops serving, says why, and stops taking entries while the others go on."""
    acknowledged = []

    def propose() -> None:
        value = len(acknowledged)
        assert client.propose(Noop(value)) == value
        acknowledged.append(value)

    propose()
    break_disk()

    def victim_stopped() -> bool:
        propose()
        return health(victim.http_port)[0] == 503

    wait_for(victim_stopped, 60, interval_s=0.01, what=f"{victim.node_id} to stop serving")
    status, body = health(victim.http_port)
    assert status == 503 and "cannot write its Raft log" in body["reason"], body
    frozen = _view(client, victim)
    assert frozen["disk_error"]
    for _ in range(20):
        propose()  # the others commit without it
    assert (_view(client, victim)["last_index"], _view(client, victim)["commit_index"]) == (
        frozen["last_index"], frozen["commit_index"])
    assert "cannot write its Raft log" in victim.log_path.read_text()
    return acknowledged


def _recovered(client, cluster, victim, acknowledged: list[int]) -> None:
    wait_for(lambda: health(victim.http_port)[0] == 200, 30, what=f"{victim.node_id} to serve again")
    value = len(acknowledged)
    assert client.propose(Noop(value)) == value
    acknowledged.append(value)

    def converged() -> bool:
        views = [client.status_of(m.url, timeout_s=2) for m in cluster.masters]
        return all(views) and len({(v["last_applied"], v["commit_index"]) for v in views}) == 1

    wait_for(converged, 30, what="every master to apply the same log")
    assert "writes its Raft log again" in victim.log_path.read_text()
    cluster.stop()
    # Everything acknowledged is in the victim's own file, in order: it lost nothing it wrote. (A
    # command retried on another leader may be logged twice; the client's session applies it once.)
    data_dir = Path(victim.args[victim.args.index("--data-dir") + 1])
    with RaftStorage(str(data_dir / f"{victim.node_id}.sqlite")) as stored:
        values = noops(stored)
    assert list(dict.fromkeys(v for v in values if v in set(acknowledged))) == acknowledged


@pytest.mark.integration
def test_a_leader_whose_disk_fills_up_stops_acknowledging_and_recovers_when_space_is_freed(tmp_path, loop_disk):
    with running_cluster(tmp_path / "cluster", masters=3, first_port=16600,
                         prepare=_on_the_loop_disk(loop_disk, "master-1")) as (cluster, client):
        victim = cluster.by_id("master-1")
        if client.cluster_status()["leader"] != victim.node_id:
            client.call(RAFT_ACTOR, TransferLeadership(victim.node_id))
            wait_for(lambda: client.cluster_status()["leader"] == victim.node_id, 10, what="master-1 to lead")
        filler = loop_disk / "filler"

        def fill() -> None:
            with open(filler, "wb") as handle:
                for chunk in (1 << 20, 4096):
                    try:
                        while True:
                            handle.write(b"\0" * chunk)
                            handle.flush()
                            os.fsync(handle.fileno())
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc

        acknowledged = _acknowledged_then_frozen(client, cluster, victim, fill)
        assert client.cluster_status()["leader"] != victim.node_id  # the others elected another
        assert "disk is full" in health(victim.http_port)[1]["reason"]
        filler.unlink()
        _recovered(client, cluster, victim, acknowledged)


@pytest.mark.integration
def test_a_follower_whose_files_turn_read_only_stops_acknowledging_and_recovers(tmp_path, loop_disk):
    with running_cluster(tmp_path / "cluster", masters=3, first_port=16700,
                         prepare=_on_the_loop_disk(loop_disk, "master-3")) as (cluster, client):
        victim = cluster.by_id("master-3")
        if client.cluster_status()["leader"] == victim.node_id:
            client.call(RAFT_ACTOR, TransferLeadership("master-1"))
            wait_for(lambda: client.cluster_status()["leader"] == "master-1", 10, what="master-1 to lead")
        files = [str(loop_disk / f"{victim.node_id}.sqlite"), str(loop_disk / f"{victim.node_id}.sqlite-wal")]

        def make_immutable() -> None:  # the -shm file is memory-mapped: SQLite must keep writing it
            subprocess.run(["chattr", "+i", *files], check=True, capture_output=True, timeout=30)

        acknowledged = _acknowledged_then_frozen(client, cluster, victim, make_immutable)
        subprocess.run(["chattr", "-i", *files], check=True, capture_output=True, timeout=30)
        _recovered(client, cluster, victim, acknowledged)
