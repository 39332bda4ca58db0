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
* Which server key a client socket uses is per endpoint: the masters' key by default; a peer
  that connected to us is known by the key it authenticated with (the transport learns it), and
  an agent host's key comes with its directory entry.
* Keys travel as Z85 text (40 characters).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from runtime.log import get_logger

log = get_logger("security")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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


def load_authorized_keys(directory: str | os.PathLike) -> set[bytes]:
    """The public keys of every ``*.key`` file in ``directory`` (and its tenant subfolders)."""
    keys = set()
    for key_file in sorted(Path(directory).rglob("*.key")):
        keys.add(_load(key_file, need_secret=False)[0])
    return keys


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
        if authorized_keys_dir is not None and not Path(authorized_keys_dir).is_dir():
            raise KeyFileError(f"--authorized-keys {authorized_keys_dir}: not a directory")
        return cls(public, secret, server, str(authorized_keys_dir) if authorized_keys_dir else None,
                   frozenset({server}))

    def client_options(self, sock: zmq.Socket, server_key: bytes | None = None) -> None:
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = server_key or self.server_key

    def server_options(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_server = True


class Gatekeeper:
    """The ZAP handler of one node's context: admits the authorized keys, nothing else."""

    def __init__(self, context: zmq.Context, keys: CurveKeys) -> None:
        self.keys = keys
        self._lock = threading.Lock()
        self._allowed: frozenset[bytes] = frozenset()
        self.denied = 0
        self.reload()
        self._authenticator = ThreadAuthenticator(context)
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", credentials_provider=self)

    def reload(self) -> int:
        """Read the authorized keys again (SIGHUP); returns how many keys are admitted."""
        allowed = set(self.keys.admit)
        if self.keys.authorized_keys_dir:
            allowed |= load_authorized_keys(self.keys.authorized_keys_dir)
        with self._lock:
            self._allowed = frozenset(allowed)
        return len(allowed)

    def callback(self, domain: str, client_key: bytes) -> bool:
        with self._lock:
            allowed = client_key in self._allowed
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
