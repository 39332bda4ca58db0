"""`agentflow lock acquire|release|renew|show|run`: distributed locks with fencing tokens."""

from __future__ import annotations

import json
from typing import Optional

import typer

from agentflow.cli.common import JsonFlag, MasterUrl, ask_cluster, connect, fail, lock_app, print_json, unreachable
from runtime.client import ClusterUnavailable
from runtime.future import RemoteError

@lock_app.command("acquire")
def lock_acquire(key: str, ttl_s: float = typer.Option(30.0, "--ttl"), wait_s: float = typer.Option(0.0, "--wait"),
                 owner: Optional[str] = typer.Option(None, "--owner"), json_output: bool = JsonFlag,
                 master_url: Optional[str] = MasterUrl) -> None:
    """Acquire a lock; prints its fencing token (exit 1 when it is held by another owner)."""
    from runtime.locks import DistributedLock, LockTimeout, user_owner

    owner = owner or user_owner()
    with connect(master_url) as client:
        lock = DistributedLock(client, owner, ttl_s)
        try:
            acquired = lock.acquire_blocking(key, max_duration_s=wait_s) if wait_s > 0 else lock.acquire(key)
        except LockTimeout as exc:
            acquired, reason = False, str(exc)
        except ClusterUnavailable as exc:
            fail(unreachable(exc), code=1)
        except RemoteError as exc:  # a refusal: lock_waiters_limit, a tenant's quota, a key it may not touch
            fail(exc.message, code=1)
        except ValueError as exc:
            fail(str(exc), code=1)
        else:
            reason = f"lock {key!r} is held by another owner"
    if json_output:
        print_json({"key": key, "owner": owner, "acquired": acquired, "token": lock.tokens.get(key)})
    elif acquired:
        typer.echo(lock.tokens[key])
    if not acquired:
        if not json_output:
            typer.echo(f"agentflow: {reason}", err=True)
        raise typer.Exit(1)


@lock_app.command("release")
def lock_release(key: str, owner: Optional[str] = typer.Option(None, "--owner"),
                 master_url: Optional[str] = MasterUrl) -> None:
    """Release a lock you hold (exit 1 when you do not hold it)."""
    from runtime.locks import DistributedLock, user_owner

    owner = owner or user_owner()
    released = ask_cluster(master_url, lambda client: DistributedLock(client, owner).release(key), also=(ValueError,))
    if not released:
        fail(f"lock {key!r} is not held by {owner}", code=1)


@lock_app.command("renew")
def lock_renew(key: str, ttl_s: float = typer.Option(30.0, "--ttl"), owner: Optional[str] = typer.Option(None, "--owner"),
               master_url: Optional[str] = MasterUrl) -> None:
    """Extend a lock you hold to end TTL seconds from now (exit 1 when you do not hold it)."""
    from runtime.locks import DistributedLock, user_owner

    owner = owner or user_owner()
    renewed = ask_cluster(master_url, lambda client: DistributedLock(client, owner, ttl_s).renew(key), also=(ValueError,))
    if not renewed:
        fail(f"lock {key!r} is not held by {owner}", code=1)


@lock_app.command("show")
def lock_show(key: str, json_output: bool = JsonFlag, master_url: Optional[str] = MasterUrl) -> None:
    """Show who holds a lock: holder, fencing token, metadata, lease, waiters."""
    from runtime.locks import DistributedLock, lock_info_document

    info = ask_cluster(master_url, lambda client: DistributedLock(client, "agentflow-cli").check_lock(key))
    document = lock_info_document(info, key)
    if json_output:
        print_json(document)
    elif not document["held"]:
        typer.echo(f"{key}: free")
    else:
        waiters = ", ".join(document["waiters"]) or "none"
        typer.echo(f"{key}: held by {document['holder']} (token {document['token']}, lease {document['ttl_ms'] / 1000:g} s,"
                   f" metadata {json.dumps(document['metadata'])}, waiters: {waiters})")


@lock_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lock_run(ctx: typer.Context, key: str, ttl_s: float = typer.Option(30.0, "--ttl"),
             wait_s: float = typer.Option(60.0, "--wait"), master_url: Optional[str] = MasterUrl) -> None:
    """Hold a lock while a command runs: agentflow lock run KEY -- CMD ...

    CMD gets the fencing token in AGENTFLOW_LOCK_TOKEN; the exit status is CMD's."""
    from runtime.locks import LockTimeout, process_owner, run_locked

    argv = list(ctx.args[1:] if ctx.args[:1] == ["--"] else ctx.args)
    if not argv:
        fail("no command given: agentflow lock run KEY -- CMD ...")
    status = ask_cluster(master_url, lambda client: run_locked(client, key, argv, process_owner(), ttl_s, wait_s),
                         also=(LockTimeout,))
    raise typer.Exit(status)
