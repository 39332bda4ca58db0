"""HTTP on each master and worker: ``/metrics``, ``/health``, ``/health/live`` and ``/stats``.

    server = HttpServer("127.0.0.1", 6777, snapshot, metrics.registry).start()   # ... server.stop()

Role: a read-only window for operators, probes and scrapers, on a small server thread of its own.
It never reads actors' state itself: ``snapshot()`` builds the node's document on the node's own
thread (``on_node_thread``) and answers within a deadline, or None.

* ``/metrics``: the Prometheus text of ``registry`` (runtime/metrics.py; none: empty).
* ``/health``: readiness. 200 when the node serves, 503 otherwise, with a JSON body
  ``{"status": "serving"|"not serving", "reason", "node_id", "role", ...}`` either way. What
  "serves" means is the snapshot's ``serving`` (on a master: it knows a leader of its own term);
  it reads ``probe()`` where the node has a cheaper document than the whole snapshot.
* ``/health/live``: liveness, 200 while the process and this thread run.
* ``/stats``: the snapshot document itself (JSON), 503 when the node did not answer in time.

When the node's thread does not answer, ``stalled()`` (if given) may say why from outside it
(a Raft log write that has not returned: a disk that hangs), and the 503's reason says so.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from runtime.future import AskTimeout, Future
from runtime.log import get_logger
from runtime.metrics import CONTENT_TYPE, render

log = get_logger("http")

SNAPSHOT_TIMEOUT_S = 1.0
HEALTH_KEYS = ("node_id", "role", "leader", "term")


def on_node_thread(node: Any, build: Callable[[], Any], timeout_s: float = SNAPSHOT_TIMEOUT_S) -> Any:
    """``build()`` run on ``node``'s transport thread (where its pinned actors live), its result
    returned here; None if that thread did not get to it within ``timeout_s``, or it failed."""
    future = Future(time.monotonic() + timeout_s)

    def run() -> None:
        try:
            future.set_result(build())
        except Exception as exc:  # reported to the caller, never fatal to the node's thread
            future.set_exception(exc)

    node.transport.call(run)
    try:
        return future.get(timeout_s)
    except AskTimeout:
        return None
    except Exception as exc:
        log.debug("building the snapshot failed: %r", exc)
        return None


def health_document(snapshot: dict | None, stalled: str | None = None) -> tuple[int, dict]:
    if snapshot is None:
        reason = f"the node did not answer within {SNAPSHOT_TIMEOUT_S} s"
        return 503, {"status": "not serving", "reason": f"{reason}: {stalled}" if stalled else reason}
    body = {"status": "serving" if snapshot.get("serving") else "not serving", "reason": snapshot.get("reason", "")}
    body.update({key: snapshot[key] for key in HEALTH_KEYS if key in snapshot})
    return (200 if snapshot.get("serving") else 503), body


class HttpServer:
    def __init__(self, host: str, port: int, snapshot: Callable[[], dict | None],
                 registry: CollectorRegistry | None = None, probe: Callable[[], dict | None] | None = None,
                 stalled: Callable[[], str | None] = lambda: None) -> None:
        registry = registry if registry is not None else CollectorRegistry()  # (an empty /metrics)
        probe = probe or snapshot
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                try:
                    path = self.path.split("?", 1)[0].rstrip("/") or "/"
                    if path == "/metrics":
                        self._send(200, CONTENT_TYPE, render(registry))
                    elif path == "/health":
                        document = probe()
                        self._json(*health_document(document, stalled() if document is None else None))
                    elif path == "/health/live":
                        self._json(200, {"status": "alive"})
                    elif path == "/stats":
                        document = snapshot()
                        self._json(200, document) if document is not None else self._json(*health_document(None, stalled()))
                    else:
                        self._json(404, {"error": "not found", "paths": ["/metrics", "/health", "/health/live", "/stats"]})
                except Exception as exc:  # a request must never take the node down
                    log.debug("http %s failed: %r", self.path, exc)
                    self._json(500, {"error": repr(exc)})

            def _json(self, code: int, body: Any) -> None:
                self._send(code, "application/json", json.dumps(body, default=str).encode())

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not worth a log line each

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agentflow-http", daemon=True)

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which must have started
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
