"""One host of the web fleet: serves the release its deploy root's `current`
points at, and its own metrics in the Prometheus text format.

    python webserver.py DEPLOY_ROOT PORT_FILE

Listens on 127.0.0.1 on a port chosen by the OS and writes that port to
PORT_FILE (written to a temporary name, then renamed: a reader never sees a
half-written number). Standalone (stdlib + prometheus_client) so that the demo
can start it too.

GET /           the live release's index.html; `current` is resolved on every
                request, so a flip takes effect at the next request
GET /metrics    app_requests_total, app_errors_total, app_request_latency_seconds
                (a summary), node_load1 (a gauge), process_cpu_seconds_total

A release with an `app.py` at its top is a WSGI application (the demo's shop,
examples/webapp/): GET / calls its `application`, loaded once per release
directory; an answer of 5xx, or an exception, counts as an error.

A release misbehaves on purpose through `behaviour.json` in its tree:
{"error_rate": 0.015, "latency_ms": 30}. Errors are deterministic, not random
(every 1/error_rate-th request of that release fails), so a test's verdict does
not depend on luck.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Summary, generate_latest
from prometheus_client.process_collector import ProcessCollector

# A behaviour.json larger than this is ignored: it is a test fixture, not data.
MAX_BEHAVIOUR_BYTES = 4096
# Never sleep longer than this per request, whatever a release asks for.
MAX_LATENCY_MS = 2000
APP_FILE = "app.py"
SERVER_ERROR = 500


class Host:
    def __init__(self, deploy_root: Path):
        self.deploy_root = deploy_root
        self.registry = CollectorRegistry()
        self.requests = Counter("app_requests", "Requests served", registry=self.registry)
        self.errors = Counter("app_errors", "Requests answered with a 5xx", registry=self.registry)
        self.latency = Summary("app_request_latency_seconds", "Time to answer", registry=self.registry)
        load = Gauge("node_load1", "1-minute load average of the machine", registry=self.registry)
        load.set_function(lambda: os.getloadavg()[0])
        ProcessCollector(registry=self.registry)
        self._lock = threading.Lock()  # guards _served and _apps
        self._served: dict[str, int] = {}
        self._apps: dict[str, ModuleType | None] = {}  # release directory -> its app module, if any

    def live_release(self) -> Path | None:
        try:
            return (self.deploy_root / "current").resolve(strict=True)
        except OSError:
            return None

    @staticmethod
    def behaviour(release: Path) -> dict:
        path = release / "behaviour.json"
        try:
            if path.stat().st_size > MAX_BEHAVIOUR_BYTES:
                return {}
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def app_of(self, release: Path) -> ModuleType | None:
        """The release's WSGI module (loaded once per release directory), or None."""
        key = str(release)
        with self._lock:
            if key in self._apps:
                return self._apps[key]
            module = None
            path = release / APP_FILE
            if path.is_file():
                spec = importlib.util.spec_from_file_location(f"release_app_{len(self._apps)}", path)
                module = importlib.util.module_from_spec(spec)
                try:
                    spec.loader.exec_module(module)
                except Exception as error:  # a release that cannot load serves errors, the host lives on
                    print(f"webserver: {path}: {error!r}", file=sys.stderr)
                    module = None
            self._apps[key] = module
            return module

    def next_request_fails(self, release: Path, error_rate: float) -> bool:
        """Deterministic errors: request n fails when floor(n*rate) steps up."""
        with self._lock:
            number = self._served.get(str(release), 0) + 1
            self._served[str(release)] = number
        return math.floor(number * error_rate) > math.floor((number - 1) * error_rate)


def make_handler(host: Host):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                self._send(200, generate_latest(host.registry), CONTENT_TYPE_LATEST)
            else:
                self._serve_release()

        def _serve_release(self) -> None:
            started = time.monotonic()
            release = host.live_release()
            if release is None:
                host.requests.inc()
                host.errors.inc()
                self._send(503, b"no live release\n")
                return
            behaviour = host.behaviour(release)
            latency_ms = min(float(behaviour.get("latency_ms", 0) or 0), MAX_LATENCY_MS)
            if latency_ms > 0:
                time.sleep(latency_ms / 1000)  # the simulated work of a slow release
            failed = host.next_request_fails(release, float(behaviour.get("error_rate", 0) or 0))
            host.requests.inc()
            app = None if failed else host.app_of(release)
            if app is not None:
                status, body = self._call_app(app)
                if status >= SERVER_ERROR:
                    host.errors.inc()
                self._send(status, body, "text/html; charset=utf-8")
            elif failed:
                host.errors.inc()
                self._send(500, b"release error\n")
            else:
                try:
                    body = (release / "index.html").read_bytes()
                except OSError:
                    body = release.name.encode() + b"\n"
                self._send(200, body)
            host.latency.observe(time.monotonic() - started)

        def _call_app(self, app: ModuleType) -> tuple[int, bytes]:
            environ = {
                "REQUEST_METHOD": "GET", "PATH_INFO": self.path.split("?", 1)[0], "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": str(self.server.server_address[1]), "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
                "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
                "wsgi.run_once": False,
            }  # fmt: skip
            answer = {"status": f"{SERVER_ERROR} app error"}

            def start_response(status: str, headers: list, exc_info=None) -> None:
                answer["status"] = status

            try:
                body = b"".join(app.application(environ, start_response))
            except Exception as error:  # the release's bug: a 500, as any WSGI server answers
                return SERVER_ERROR, f"internal error: {type(error).__name__}\n".encode()
            return int(answer["status"].split()[0]), body

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
            pass  # thousands of requests per test: no access log

    return Handler


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: webserver.py DEPLOY_ROOT PORT_FILE", file=sys.stderr)
        return 2
    root, port_file = Path(argv[0]), Path(argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Host(root)))
    server.daemon_threads = True
    partial = port_file.with_suffix(".partial")
    partial.write_text(str(server.server_address[1]))
    partial.rename(port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
