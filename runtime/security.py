"""CurveZMQ for every socket: keys, who may connect, and the socket options that apply them.

    agentflow keys generate keys/ masters          # keys/masters.key (public), keys/masters.key_secret
    keys = CurveKeys.load("keys/worker-1.key_secret", server_key_file="keys/masters.key")
    node = Node("worker-1", curve=keys)

Rules of this module:

* A node has one keypair: its ROUTER and PUB sockets are CURVE servers with it, and its DEALER
  and SUB sockets are CURVE clients with it. So the key a node connects with is also the key
  others must use to connect to it. Masters share one keypair (the "masters' key"); every other
  node (worker, agent host, client) has its own and knows the masters' public key.
* Who may connect is decided by a ZAP handler (one thread per node, pyzmq's authenticator):
  the public keys in ``authorized_keys_dir`` (``*.key`` files, zmq.auth's certificate format,
  read again by ``reload`` on SIGHUP) plus the ``admit`` keys. A worker admits only the
  masters' key, so it takes tasks only from its masters.
* Tenants: ``DIR/*.key`` are operators' keys, ``DIR/TENANT/*.key`` the keys of tenant TENANT
  and ``DIR/TENANT/quotas.yaml`` its quotas (protocols/tenants.py), read with the keys. The
  masters' key is an operator's wherever it is. The transport tags each inbound message with
  its sender's tenant (``tenant_of``); a node's events (its PUB socket, ZAP domain ``events``)
  are for operators and for the tenant of the node's own key only.
* Which server key a client socket uses is per endpoint: the masters' key by default; a peer
  that connected to us is known by the key it authenticated with (the transport learns it), and
  an agent host's key comes with its directory entry.
* Keys travel as Z85 text (40 characters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

import yaml

from protocols.tenants import QUOTAS_FILE, Quotas, check_tenant_name, parse_quotas
from runtime.log import get_logger

log = get_logger("security")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
EVENTS_DOMAIN = "events"  # the ZAP domain of PUB sockets


class KeyFileError(ValueError):
    """A key file that is missing or not a CURVE certificate."""


def generate_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``DIRECTORY/NAME.key`` (public) and ``DIRECTORY/NAME.key_secret`` (secret, mode 600)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(path, name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def _load(filename: str | os.PathLike, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(filename)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the CURVE key {filename}: {exc}") from None
    if need_secret and not secret:
        raise KeyFileError(f"{filename} holds no secret key (pass the NAME.key_secret file)")
    return public, secret


@dataclass(frozen=True)
class AuthorizedKeys:
    """What an authorized-keys directory says: every admitted key with its tenant (None for an
    operator's), and each tenant's quotas."""

    tenants: dict  # public key (Z85 bytes) -> tenant name, or None for an operator's key
    quotas: dict  # tenant name -> Quotas

    @classmethod
    def load(cls, directory: str | os.PathLike, operators: frozenset = frozenset()) -> AuthorizedKeys:
        """``DIR/*.key`` (operators), ``DIR/TENANT/*.key`` and ``DIR/TENANT/quotas.yaml``; the
        ``operators`` keys are operators' wherever they appear. KeyFileError on a bad file, a bad
        tenant folder name or a key listed twice."""
        root = Path(directory)
        found: dict[bytes, tuple[str | None, Path]] = {}
        quotas: dict[str, Quotas] = {}
        # Hidden folders are no tenants: a Kubernetes Secret's volume keeps its files in "..data".
        folders = [(None, root)] + [(entry.name, entry) for entry in sorted(root.iterdir())
                                    if entry.is_dir() and not entry.name.startswith(".")]
        for tenant, folder in folders:
            if tenant is not None:
                try:
                    check_tenant_name(tenant)
                except ValueError as exc:
                    raise KeyFileError(f"{folder}: {exc}") from None
                quotas[tenant] = _load_quotas(folder / QUOTAS_FILE)
            for key_file in sorted(folder.glob("*.key")):
                key = _load(key_file, need_secret=False)[0]
                owner = None if key in operators else tenant
                if key in found and found[key][0] != owner:
                    raise KeyFileError(f"{key_file} and {found[key][1]} hold the same key for two owners")
                found[key] = (owner, key_file)
        return cls({key: owner for key, (owner, _) in found.items()}, quotas)


def _load_quotas(path: Path) -> Quotas:
    if not path.exists():
        return Quotas()
    try:
        return parse_quotas(yaml.safe_load(path.read_text()), str(path))
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise KeyFileError(str(exc) if isinstance(exc, ValueError) else f"cannot read {path}: {exc}") from None


@dataclass(frozen=True)
class CurveKeys:
    """A node's keypair, the masters' public key, and who may connect to it."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes  # the masters' public key: the default server key of client sockets
    authorized_keys_dir: str | None = None
    admit: frozenset = field(default_factory=frozenset)

    @classmethod
    def load(cls, secret_key_file: str | os.PathLike, server_key_file: str | os.PathLike | None = None,
             authorized_keys_dir: str | os.PathLike | None = None) -> CurveKeys:
        """Keys from files. Without ``server_key_file`` this node's own public key is the masters'
        key (a master). The masters' key is always admitted: masters connect to each other, to
        workers (assignments) and to agent hosts (relayed broadcasts)."""
        public, secret = _load(secret_key_file, need_secret=True)
        server = _load(server_key_file, need_secret=False)[0] if server_key_file else public
        admit = frozenset({server})
        if authorized_keys_dir is not None:
            if not Path(authorized_keys_dir).is_dir():
                raise KeyFileError(f"--authorized-keys {authorized_keys_dir}: not a directory")
            # A mistake in it stops the node here, naming the file (read as Gatekeeper.reload reads it).
            AuthorizedKeys.load(authorized_keys_dir, admit)
        return cls(public, secret, server, str(authorized_keys_dir) if authorized_keys_dir else None, admit)

    def client_options(self, sock: zmq.Socket, server_key: bytes | None = None) -> None:
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = server_key or self.server_key

    def server_options(self, sock: zmq.Socket, zap_domain: str = "") -> None:
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_server = True
        if zap_domain:
            sock.zap_domain = zap_domain.encode()


class Gatekeeper:
    """The ZAP handler of one node's context: admits the authorized keys, nothing else; knows
    each key's tenant and each tenant's quotas."""

    def __init__(self, context: zmq.Context, keys: CurveKeys) -> None:
        self.keys = keys
        # Each is replaced whole by reload (one assignment), so readers on other threads need no lock.
        self._tenants: dict[bytes, str | None] = {}
        self.quotas: dict[str, Quotas] = {}
        self.tenant_keys: dict[str, frozenset[str]] = {}  # tenant -> its public keys, as Z85 text
        self.denied = 0
        self.reload()
        self._authenticator = ThreadAuthenticator(context)
        self._authenticator.start()
        for domain in ("*", EVENTS_DOMAIN):
            self._authenticator.configure_curve_callback(domain, credentials_provider=self)

    def reload(self) -> int:
        """Read the authorized keys and quotas again (SIGHUP); returns how many keys are admitted.
        A mistake in the directory keeps what was read before (and logs it), except at start."""
        admitted: dict[bytes, str | None] = dict.fromkeys(self.keys.admit)
        quotas: dict[str, Quotas] = {}
        if self.keys.authorized_keys_dir:
            try:
                found = AuthorizedKeys.load(self.keys.authorized_keys_dir, self.keys.admit)
            except (KeyFileError, OSError) as exc:
                if not self._tenants:
                    raise
                log.error("keeping the authorized keys read before: %s", exc)
                return len(self._tenants)
            admitted.update(found.tenants)
            quotas = found.quotas
        tenant_keys: dict[str, set[str]] = {}
        for key, tenant in admitted.items():
            if tenant is not None:
                tenant_keys.setdefault(tenant, set()).add(key.decode())
        self._tenants, self.quotas = admitted, quotas
        self.tenant_keys = {tenant: frozenset(keys) for tenant, keys in tenant_keys.items()}
        return len(admitted)

    def tenant_of(self, key: bytes) -> str | None:
        """The tenant of an admitted key (Z85 bytes); None for an operator's (or an unknown) key."""
        return self._tenants.get(key)

    @property
    def own_tenant(self) -> str | None:
        """The tenant of this node's own key (None for the masters and for operators' nodes)."""
        return self._tenants.get(self.keys.public_key)

    def callback(self, domain: str, client_key: bytes) -> bool:
        tenants = self._tenants
        allowed = client_key in tenants
        if allowed and domain == EVENTS_DOMAIN:  # events: operators and this node's own tenant
            allowed = tenants[client_key] in (None, self.own_tenant)
        if not allowed:
            self.denied += 1
            log.debug("refused a connection: key %s is not authorized", client_key.decode(errors="replace"))
        return allowed

    def stop(self) -> None:
        self._authenticator.stop()


def check_bind(host: str, curve: CurveKeys | None, insecure: bool) -> None:
    """Without keys a node listens on loopback only, unless told ``--insecure`` (then warns)."""
    if curve is not None or host in LOOPBACK_HOSTS:
        return
    if not insecure:
        raise ValueError(f"refusing to listen on {host} without CURVE keys: pass --curve-secret-key "
                         "(see `agentflow keys generate`), or --insecure to accept anyone who can reach it")
    log.warning("INSECURE: listening on %s without encryption or authentication: anyone who can reach "
                "this port can submit work, read state and talk to agents", host)
