"""`agentflow keys generate DIR NAME [--tenant T]`: CURVE keypairs in zmq.auth's certificate format."""

from __future__ import annotations

import typer

from agentflow.cli.common import app, fail

keys_app = typer.Typer(help="CURVE keys: encryption and authentication on every socket.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(directory: str = typer.Argument(..., help="Where to write the key files."),
                  name: str = typer.Argument(..., help="Whose keys: masters, worker-1, alice, ..."),
                  exist_ok: bool = typer.Option(False, "--exist-ok", help="Keep NAME's keys if they exist already."),
                  tenant: str = typer.Option(None, "--tenant", help="A key of this tenant: written in DIR/TENANT/.")) -> None:
    """Write DIR/NAME.key (public: give it to whoever must admit you) and DIR/NAME.key_secret.
    With --tenant T, in DIR/T/: masters given --authorized-keys DIR scope T's names (README "Tenants")."""
    from pathlib import Path

    from protocols.tenants import check_tenant_name
    from runtime.security import generate_keys

    if not name or "/" in name:
        fail(f"bad key name {name!r}: a plain file name, no '/'")
    if tenant is not None:
        try:
            directory = str(Path(directory) / check_tenant_name(tenant))
        except ValueError as exc:
            fail(str(exc))
    if (Path(directory) / f"{name}.key_secret").exists():
        if exist_ok:
            typer.echo(f"keeping the keys of {name} in {directory}")
            return
        fail(f"{directory}/{name}.key_secret exists: keys are not overwritten (remove them, or --exist-ok)")
    try:
        public_file, secret_file = generate_keys(directory, name)
    except OSError as exc:
        fail(f"cannot write keys in {directory}: {exc.strerror}")
    typer.echo(f"public key {public_file}\nsecret key {secret_file} (keep it private)")

