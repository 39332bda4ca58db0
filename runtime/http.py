"""HTTP on each master: ``/metrics`` (Prometheus text), ``/health`` and ``/stats`` (JSON).

Role: a read-only window for operators and scrapers. It runs its own small server thread and
never touches actors' state directly: it calls ``stats_provider()``, which asks the actors
with a deadline. ``/health`` answers 200 when the node is serving (it answered in time and
knows a leader), 503 otherwise, with the same JSON body either way.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from runtime.log import get_logger

log = get_logger("http")


class _StatsCollector:
    """Turns the stats document into Prometheus gauges at scrape time."""

    def __init__(self, stats_provider: Callable[[], dict]) -> None:
        self.stats_provider = stats_provider

    def collect(self):
        stats = self.stats_provider()
        node = stats.get("node_id", "")
        raft = stats.get("raft") or {}
        for key in ("term", "commit_index", "last_applied", "last_index"):
            if key in raft:
                gauge = GaugeMetricFamily(f"agentflow_raft_{key}", f"Raft {key} of this master", labels=["node"])
                gauge.add_metric([node], raft[key])
                yield gauge
        leader = GaugeMetricFamily("agentflow_raft_is_leader", "1 when this master leads", labels=["node"])
        leader.add_metric([node], 1 if raft.get("role") == "leader" else 0)
        yield leader
        counters = GaugeMetricFamily("agentflow_node_counter", "Transport and actor counters",
                                     labels=["node", "counter"])
        for name, value in sorted((stats.get("counters") or {}).items()):
            counters.add_metric([node, name], value)
        yield counters
        for section, values in sorted(stats.items()):
            if section in ("raft", "counters") or not isinstance(values, dict):
                continue
            family = GaugeMetricFamily(f"agentflow_{section}", f"{section} figures", labels=["node", "name"])
            for name, value in sorted(values.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    family.add_metric([node, name], value)
            yield family


class HttpServer:
    def __init__(self, host: str, port: int, stats_provider: Callable[[], dict]) -> None:
        registry = CollectorRegistry()
        registry.register(_StatsCollector(stats_provider))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                try:
                    path = self.path.split("?", 1)[0]
                    if path == "/metrics":
                        self._send(200, "text/plain; version=0.0.4", generate_latest(registry))
                    elif path in ("/health", "/stats"):
                        stats = stats_provider()
                        serving = bool(stats.get("serving"))
                        raft = stats.get("raft") or {}
                        body: Any = stats if path == "/stats" else {
                            "status": "serving" if serving else "not serving",
                            "node_id": stats.get("node_id"),
                            "role": raft.get("role"),
                            "leader": raft.get("leader"),
                        }
                        code = 200 if path == "/stats" or serving else 503
                        self._send(code, "application/json", json.dumps(body, default=str).encode())
                    else:
                        self._send(404, "application/json", b'{"error": "not found"}')
                except Exception as exc:  # a scrape must never take the node down
                    log.debug("http %s failed: %r", self.path, exc)
                    self._send(500, "application/json", json.dumps({"error": repr(exc)}).encode())

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
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
