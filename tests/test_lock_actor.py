"""Distributed locks end to end: real master processes, clients in other processes and threads.

What must hold (issue 5, ARCHITECTURE §5 rule 2): contending clients never overlap and no stale
fencing token is ever accepted, also across a kill -9 of the leader; waiters are granted FIFO;
an abandoned lease expires by the leader's clock; AutoRenewLock keeps a lock past its TTL and
reports the loss when the cluster is gone; `agentflow lock run` passes the token and the status.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from protocols.locks import Acquire, ExpireLocks, ExtendAllLeases, LockCall, LockShow
from protocols.names import LOCK_ACTOR
from protocols.wire import Redirect
from runtime.client import Client
from runtime.future import RemoteError
from runtime.locks import AutoRenewLock, DistributedLock, LockTimeout
from tests.procs import REPO, running_cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("locks"), masters=3) as (cluster, client):
        yield cluster, client


def start_contender(urls: str, key: str, owner: str, counter_path, iterations: int, ttl_s: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_LOG="warning")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lockcontender", urls, key, owner, str(counter_path), str(iterations), str(ttl_s)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def test_contending_processes_never_overlap_nor_accept_stale_tokens_across_leader_kill(tmp_path):
    contenders: list[subprocess.Popen] = []
    counter_path = tmp_path / "counter.json"
    counter_path.write_text(json.dumps({"count": 0, "last_token": 0, "inside": None}))
    clients, iterations = 4, 12
    with running_cluster(tmp_path, masters=3) as (cluster, client):
        try:
            view = cluster.wait_healthy(client, voters=3)
            contenders = [start_contender(cluster.master_url, "counter", f"client{i}", counter_path, iterations, 5.0)
                          for i in range(clients)]
            total = clients * iterations
            wait_for(lambda: json.loads(counter_path.read_text())["count"] >= total // 3, 30,
                     what="a third of the increments")
            cluster.by_id(view["leader"]).kill()  # kill -9 while clients hold and wait
            outputs = [proc.communicate(timeout=60) for proc in contenders]
            for proc, (out, err) in zip(contenders, outputs):
                assert proc.returncode == 0, err
            summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
            assert [s["overlaps"] for s in summaries] == [0] * clients
            assert [s["stale"] for s in summaries] == [0] * clients
            counter = json.loads(counter_path.read_text())
            assert counter["count"] == total and counter["inside"] is None
            tokens = [json.loads(line)["token"] for out, _ in outputs for line in out.strip().splitlines()[:-1]]
            assert len(tokens) == total and len(set(tokens)) == total  # every turn its own grant
            assert counter["last_token"] == max(tokens)
            assert client.cluster_status()["leader"] != view["leader"]
        finally:
            for proc in contenders:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=10)


def test_a_waiter_that_died_leaves_the_queue(cluster):
    the_cluster, client = cluster
    holder = DistributedLock(client, "holder", ttl_s=30)
    assert holder.acquire("orphaned")
    script = ("import sys; from runtime.client import Client; from runtime.locks import DistributedLock; "
              "DistributedLock(Client(sys.argv[1]), 'doomed-waiter').acquire_blocking('orphaned', max_duration_s=60)")
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_LOG="warning")
    waiter = subprocess.Popen([sys.executable, "-c", script, the_cluster.master_url], cwd=REPO, env=env)
    try:
        wait_for(lambda: holder.check_lock("orphaned").waiters == ["doomed-waiter"], 10, what="the waiter queued")
        waiter.kill()
        waiter.wait(10)
        # It stops asking; the leader takes it out of the line so it is never granted the lock.
        wait_for(lambda: holder.check_lock("orphaned").waiters == [], 10, what="the dead waiter to leave")
        assert holder.release("orphaned")
        assert holder.check_lock("orphaned") is None
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(10)


def test_followers_redirect_and_clients_cannot_expire_leases(cluster):
    the_cluster, client = cluster
    view = the_cluster.wait_healthy(client, voters=3)
    leader = next(m for m in view["members"] if m["id"] == view["leader"])
    follower = next(m for m in view["members"] if m["id"] != view["leader"])
    answer = client.node.ref(follower["address"], "lock").ask(LockShow("any"), timeout_s=5).get()
    assert isinstance(answer, Redirect) and answer.leader_endpoint == leader["address"]
    # Only the leader's clock ends leases: a client cannot propose expiry or extension.
    for body in (ExpireLocks(10**12), ExtendAllLeases(10**12)):
        with pytest.raises(RemoteError) as refused:
            client.call("lock", LockCall(body, 0))
        assert refused.value.kind == "bad_request"


def test_blocking_acquires_are_granted_fifo_on_release(cluster):
    _, client = cluster
    holder = DistributedLock(client, "holder", ttl_s=30)
    assert holder.acquire("fifo")
    granted: list[tuple[str, int]] = []
    threads = []
    for owner in ("first", "second", "third"):
        lock = DistributedLock(client, owner, ttl_s=30)

        def wait_then_release(lock=lock):
            lock.acquire_blocking("fifo", max_duration_s=20)
            granted.append((lock.owner, lock.tokens["fifo"]))
            lock.release("fifo")

        threads.append(threading.Thread(target=wait_then_release))
        threads[-1].start()
        # Join the queue in this order before the next one starts.
        wait_for(lambda owner=owner: owner in (holder.check_lock("fifo").waiters), 10, what=f"{owner} queued")
    assert holder.check_lock("fifo").waiters == ["first", "second", "third"]
    assert granted == []
    assert holder.release("fifo")
    for thread in threads:
        thread.join(20)
    assert [owner for owner, _ in granted] == ["first", "second", "third"]
    tokens = [token for _, token in granted]
    assert tokens == sorted(tokens) and tokens[0] > holder.token
    assert holder.check_lock("fifo") is None


def test_blocking_acquire_times_out_and_leaves_the_queue(cluster):
    _, client = cluster
    holder = DistributedLock(client, "holder", ttl_s=30)
    waiter = DistributedLock(client, "impatient", ttl_s=30)
    assert holder.acquire("busy")
    started = time.monotonic()
    with pytest.raises(LockTimeout, match="busy"):
        waiter.acquire_blocking("busy", max_duration_s=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert holder.check_lock("busy").waiters == []
    assert holder.release("busy")
    assert waiter.acquire("busy") and waiter.release("busy")


def test_abandoned_lease_expires_and_its_owner_is_refused(cluster):
    _, client = cluster
    abandoned = DistributedLock(client, "crashed-worker", ttl_s=0.5)
    assert abandoned.acquire("abandoned", {"job": 7})
    info = abandoned.check_lock("abandoned")
    assert info.holder == "crashed-worker" and info.metadata == {"job": 7}
    successor = DistributedLock(client, "successor", ttl_s=30)
    assert not successor.acquire("abandoned")
    # Nobody renews: the leader expires the lease by a committed command.
    wait_for(lambda: successor.check_lock("abandoned") is None, 10, what="the lease to expire")
    assert successor.acquire("abandoned")
    assert successor.token > abandoned.token
    assert not abandoned.renew("abandoned")  # the old holder's lease is gone for good
    assert not abandoned.release("abandoned")
    assert successor.check_lock("abandoned").holder == "successor"
    assert successor.release("abandoned")


def test_auto_renew_holds_past_the_ttl_then_caps_renewals(cluster):
    _, client = cluster
    observer = DistributedLock(client, "observer")
    with AutoRenewLock(client, "renewed", owner="long-job", ttl_s=0.6, max_renewals=3) as held:
        token = held.token
        wait_for(lambda: held.renewals >= 3, 10, what="three renewals")
        # More than one TTL after the grant: still ours, same token.
        info = observer.check_lock("renewed")
        assert info.holder == "long-job" and info.token == token
        assert not held.lost
        # No more renewals: the lease runs out and the lock frees itself.
        wait_for(lambda: observer.check_lock("renewed") is None, 10, what="the capped lease to expire")
        assert held.renewals == 3
    assert observer.check_lock("renewed") is None


def test_lock_run_passes_the_token_and_the_exit_status(cluster):
    the_cluster, client = cluster
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_MASTER_URL=the_cluster.master_url, AGENTFLOW_LOG="warning")
    script = "import os, sys; print(os.environ['AGENTFLOW_LOCK_TOKEN']); sys.exit(3)"
    run = subprocess.run([sys.executable, "-m", "agentflow.cli", "lock", "run", "cli-run", "--ttl", "5", "--",
                          sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 3, run.stderr
    token = int(run.stdout.strip())
    assert token > 0
    assert DistributedLock(client, "observer").check_lock("cli-run") is None  # released on exit

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agentflow.cli", "lock", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=30)

    acquired = cli("acquire", "cli-lock", "--owner", "node1", "--ttl", "20", "--json")
    assert acquired.returncode == 0, acquired.stderr
    document = json.loads(acquired.stdout)
    assert document["acquired"] and document["token"] > token
    assert cli("acquire", "cli-lock", "--owner", "node2").returncode == 1
    shown = json.loads(cli("show", "cli-lock", "--json").stdout)
    assert shown["holder"] == "node1" and shown["token"] == document["token"] and shown["ttl_ms"] == 20_000
    assert cli("release", "cli-lock", "--owner", "node1").returncode == 0
    assert DistributedLock(client, "observer").check_lock("cli-lock") is None

    holder = DistributedLock(client, "holder", ttl_s=30)
    assert holder.acquire("cli-run") and holder.token > token
    blocked = subprocess.run([sys.executable, "-m", "agentflow.cli", "lock", "run", "cli-run", "--wait", "0.3", "--",
                              sys.executable, "-c", "print('ran')"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=30)
    assert blocked.returncode == 1 and "ran" not in blocked.stdout and "cli-run" in blocked.stderr
    assert holder.release("cli-run")


def test_a_release_that_does_not_wait_is_applied_before_the_next_call(cluster):
    the_cluster, client = cluster
    lock = DistributedLock(client, "hasty", ttl_s=30)
    assert lock.acquire("no-wait")
    first = lock.token
    assert lock.release("no-wait", wait=False) and "no-wait" not in lock.tokens
    # Proposed before the next call, in order: a new grant (a new token), not the holder's renewal.
    assert lock.acquire("no-wait") and lock.token > first
    # With no call after it, it goes out on its own (reads do not carry it).
    assert lock.release("no-wait", wait=False)
    wait_for(lambda: lock.check_lock("no-wait") is None, 10, what="the lock released without waiting to be free")
    # A waiter is granted through it.
    other = DistributedLock(client, "patient", ttl_s=30)
    assert lock.acquire("no-wait")
    waiter = threading.Thread(target=other.acquire_blocking, args=("no-wait",), kwargs={"max_duration_s": 20})
    waiter.start()
    wait_for(lambda: lock.check_lock("no-wait").waiters == ["patient"], 10, what="the waiter queued")
    assert lock.release("no-wait", wait=False)
    waiter.join(20)
    assert other.tokens["no-wait"] > lock.token
    # A client that knows no leader yet waits after all: it is told the lock is not its own.
    with Client(the_cluster.master_url, timeout_s=15) as fresh:
        assert DistributedLock(fresh, "hasty").release("no-wait", wait=False) is False
    assert other.check_lock("no-wait").holder == "patient" and other.release("no-wait")


def test_a_new_leader_extends_live_leases_before_expiring_any(cluster):
    # Last of the tests on the shared cluster: it kills its leader (two masters remain).
    the_cluster, client = cluster
    view = the_cluster.wait_healthy(client, voters=3)
    ttl_s = 3.0
    lock = DistributedLock(client, "survivor", ttl_s=ttl_s)
    assert lock.acquire("lease")
    original_end_ms = lock.check_lock("lease").expires_ms
    the_cluster.by_id(view["leader"]).kill()

    # Without ExtendAllLeases the lease would end ttl_s after the grant and nothing would move its
    # end (all masters share this host's monotonic clock). The new leader gives it one more TTL
    # from its own clock first: the end moves later, however fast the failover was (a follower
    # that sees the leader's connection drop takes over within milliseconds).
    def extended_and_still_held():
        info = lock.check_lock("lease")
        assert info is not None and info.holder == "survivor" and info.token == lock.token, info
        return info.expires_ms > original_end_ms

    wait_for(extended_and_still_held, 15, interval_s=0.05, what="the new leader to extend the lease")
    assert lock.renew("lease") and lock.release("lease")
    assert client.cluster_status()["leader"] != view["leader"]


def test_auto_renew_reports_the_loss_when_the_cluster_is_gone(tmp_path):
    losses = []
    with running_cluster(tmp_path, client_timeout_s=5, masters=1) as (cluster, client):
        with AutoRenewLock(client, "doomed", owner="job", ttl_s=0.9, on_lost=lambda key, error: losses.append(key)) as held:
            wait_for(lambda: held.renewals >= 1, 10, what="a renewal")
            cluster.masters[0].kill()
            wait_for(lambda: held.lost, 10, what="the loss to be noticed")
        assert losses == ["doomed"]


def rejected_count(target: str, reason: str) -> float:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^agentflow_requests_rejected_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_waiters_beyond_the_masters_limit_are_refused_naming_it_and_counted(tmp_path):
    options = {"masters": 3, "first_port": 17000, "master_options": ["--lock-max-waiters", "2"]}
    with running_cluster(tmp_path, **options) as (cluster, client):
        view = cluster.wait_healthy(client, voters=3)
        leader_http = next(target for name, _, target in cluster.http_targets() if name == view["leader"])
        holder = DistributedLock(client, "holder", ttl_s=30)
        assert holder.acquire("crowded")
        granted: list[str] = []

        def wait_in_line(owner: str) -> None:
            lock = DistributedLock(client, owner, ttl_s=30)
            lock.acquire_blocking("crowded", max_duration_s=30)
            granted.append(owner)
            lock.release("crowded")

        waiters = [threading.Thread(target=wait_in_line, args=(owner,)) for owner in ("w1", "w2")]
        for thread in waiters:
            thread.start()
        wait_for(lambda: len(holder.check_lock("crowded").waiters) == 2, 10, what="two waiters")
        with pytest.raises(RemoteError) as refused:
            DistributedLock(client, "w3").acquire_blocking("crowded", max_duration_s=5)
        assert refused.value.kind == "lock_waiters_limit"
        assert "'crowded' already has 2 waiters" in refused.value.message
        assert "--lock-max-waiters" in refused.value.message
        env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFLOW_MASTER_URL=cluster.master_url, AGENTFLOW_LOG="warning")
        cli = subprocess.run([sys.executable, "-m", "agentflow.cli", "lock", "acquire", "crowded", "--wait", "5",
                              "--owner", "w4"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
        assert cli.returncode == 1 and cli.stderr.strip().splitlines() == [f"agentflow: {refused.value.message}"]
        assert rejected_count(leader_http, "lock_waiters_limit") >= 2
        assert holder.release("crowded")
        for thread in waiters:
            thread.join(30)
        assert granted == ["w1", "w2"]

        # Asks in one burst may all pass the leader's look at the table as applied: the table
        # itself keeps the bound, and its refusals are counted too.
        assert holder.acquire("crowded")
        before = rejected_count(leader_http, "lock_waiters_limit")
        for owner in ("w5", "w6", "w7"):
            assert client.tell_leader(LOCK_ACTOR, LockCall(client.next_command(Acquire("crowded", owner, 30_000, {}, 0, True))))
        wait_for(lambda: rejected_count(leader_http, "lock_waiters_limit") == before + 1, 10, what="one refusal")
        assert holder.check_lock("crowded").waiters == ["w5", "w6"]


def test_a_master_refuses_a_waiters_limit_below_one(tmp_path):
    run = subprocess.run([sys.executable, "-m", "agentflow.cli", "master", "--port", "17090", "--data-dir",
                          str(tmp_path), "--lock-max-waiters", "0"], cwd=REPO, capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert run.returncode == 2 and "--lock-max-waiters must be at least 1, not 0" in run.stderr
