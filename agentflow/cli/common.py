"""What every `agentflow` command shares: the typer apps, the common options, output and errors.

Rules: the commands and options are the contract of docs/ARCHITECTURE.md, which other tools
drive; `--json` on a read command prints one JSON document and nothing else. Bad input gets one
line naming the problem and a non-zero exit. Logging follows AGENTFLOW_LOG (runtime/log.py).
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from protocols.wire import DEFAULT_COMPRESS_MIN_BYTES
from runtime.client import ClusterUnavailable
from runtime.future import RemoteError
from runtime.log import configure_logging

app = typer.Typer(help="AgentFlow: distributed parallel execution of agents and tasks.",
                  pretty_exceptions_enable=False,  # an unexpected error is one line (agentflow.cli.main)
                  no_args_is_help=True, add_completion=False)
lock_app = typer.Typer(help="Distributed locks with fencing tokens.", no_args_is_help=True)
app.add_typer(lock_app, name="lock")

MasterUrl = typer.Option(None, "--master-url", envvar="AGENTFLOW_MASTER_URL",
                         help="Masters to talk to: a comma-separated list; any member will do.")
JsonFlag = typer.Option(False, "--json", help="Print one JSON document and nothing else.")
# Every node (master, worker, agent host) binds and advertises the same way (agentflow/addresses.py).
BindHost = typer.Option("127.0.0.1", "--host", envvar="AGENTFLOW_HOST",
                        help="The address to bind (0.0.0.0: every interface).")
Advertise = typer.Option(None, "--advertise", envvar="AGENTFLOW_ADVERTISE",
                         help="HOST[:PORT] the other nodes should use to reach this one (a DNS name, a NAT's "
                              "address). Default: the bound address; for 0.0.0.0, this host name's address.")
NodeId = typer.Option(None, "--node-id", envvar="AGENTFLOW_NODE_ID", help="This node's id in the cluster.")
CompressMinBytes = typer.Option(DEFAULT_COMPRESS_MIN_BYTES, "--compress-min-bytes", envvar="AGENTFLOW_COMPRESS_MIN_BYTES",
                                help="Frames of this many bytes and more travel compressed (lz4) when that "
                                     "saves an eighth; 0: never (e.g. every node on one fast LAN).")


UNREACHABLE_FIX = ("is the cluster up? Start one with `agentflow up`, or point --master-url / "
                   "AGENTFLOW_MASTER_URL at one of its masters")


def unreachable(exc: Exception) -> str:
    """The one line for a cluster that does not answer: what was tried, and the fix."""
    return f"{exc}: {UNREACHABLE_FIX}"


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"agentflow: {message}", err=True)
    raise typer.Exit(code)


def print_table(title: str, columns: tuple[str, ...], rows) -> None:
    """A rich table on the terminal (the human form of a read command)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console().print(table)


def print_json(document) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=False, default=str))


# The security options of this invocation (set by the main callback; see hoist_security_options).
SECURITY: dict = {"curve_secret_key": None, "curve_server_key": None, "authorized_keys": None, "insecure": False}
_SECURITY_OPTIONS = ("--curve-secret-key", "--curve-server-key", "--authorized-keys")


def hoist_security_options(argv: list[str]) -> list[str]:
    """The security options are the app's own (they apply to every command), so typer wants them
    before the command; users write them anywhere. Move them to the front, stopping at ``--``."""
    front, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if name in _SECURITY_OPTIONS:
            takes_next = "=" not in arg and i + 1 < len(argv)
            front.extend(argv[i:i + 2] if takes_next else [arg])
            i += 2 if takes_next else 1
            continue
        (front if arg == "--insecure" else rest).append(arg)
        i += 1
    return front + rest


def curve_keys(role: str):
    """This process's CurveKeys (None without --curve-secret-key). ``role`` "master": its key is
    the masters' key; any other node or client needs the masters' public key too."""
    from runtime.security import CurveKeys, KeyFileError

    secret = SECURITY["curve_secret_key"]
    if secret is None:
        if SECURITY["curve_server_key"] or SECURITY["authorized_keys"]:
            fail("--curve-server-key and --authorized-keys need --curve-secret-key (this node's own key)")
        return None
    server = None if role == "master" else SECURITY["curve_server_key"]
    if role != "master" and server is None:
        fail("--curve-secret-key needs --curve-server-key too: the masters' public key (NAME.key)")
    try:
        return CurveKeys.load(secret, server, SECURITY["authorized_keys"])
    except KeyFileError as exc:
        fail(str(exc))


def check_bind(host: str, keys) -> None:
    """Without keys a node listens on loopback only, unless --insecure (exit 2 otherwise)."""
    from runtime.security import check_bind as check

    try:
        check(host, keys, SECURITY["insecure"])
    except ValueError as exc:
        fail(str(exc))


def connect(master_url: Optional[str]):
    """A Client for the masters named by --master-url / AGENTFLOW_MASTER_URL (bad input: exit 2)."""
    from runtime.client import Client

    try:
        return Client(master_url or "127.0.0.1:6767", curve=curve_keys("client"))
    except ValueError as exc:
        fail(str(exc))


def ask_cluster(master_url: Optional[str], request, also: tuple[type[Exception], ...] = ()):
    """``request(client)`` against the cluster; an unreachable cluster, a refusal or one of the
    errors in ``also`` is one line on stderr and exit 1."""
    with connect(master_url) as client:
        try:
            return request(client)
        except RemoteError as exc:
            fail(exc.message, code=1)
        except ClusterUnavailable as exc:
            fail(unreachable(exc), code=1)
        except also as exc:
            fail(str(exc), code=1)


@app.callback()
def main_callback(
    curve_secret_key: Optional[str] = typer.Option(
        None, "--curve-secret-key", envvar="AGENTFLOW_CURVE_SECRET_KEY",
        help="This node's (or client's) CURVE secret key file, NAME.key_secret: encrypt and authenticate."),
    curve_server_key: Optional[str] = typer.Option(
        None, "--curve-server-key", envvar="AGENTFLOW_CURVE_SERVER_KEY",
        help="The masters' public key file (NAME.key); not needed on masters."),
    authorized_keys: Optional[str] = typer.Option(
        None, "--authorized-keys", envvar="AGENTFLOW_AUTHORIZED_KEYS",
        help="Masters and agent hosts: admit only the public keys (*.key) in this directory, those in DIR/TENANT/ "
             "as tenant TENANT's (README \"Tenants\"); SIGHUP re-reads it."),
    insecure: bool = typer.Option(False, "--insecure", envvar="AGENTFLOW_INSECURE",
                                  help="Allow listening beyond 127.0.0.1 without CURVE keys (anyone can connect)."),
) -> None:
    SECURITY.update(curve_secret_key=curve_secret_key, curve_server_key=curve_server_key,
                    authorized_keys=authorized_keys, insecure=insecure)
    try:
        configure_logging()
    except ValueError as exc:
        typer.echo(f"agentflow: {exc}", err=True)
        raise typer.Exit(2)
