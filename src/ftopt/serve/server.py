"""The HTTP side: stdlib ThreadingHTTPServer, JSON in and out, static files from the package. Every answer carries
the time the server spent on it (`Server-Timing`, and `server_ms` in plan answers)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ftopt.serve import routes
from ftopt.serve.jobs import Jobs
from ftopt.serve.runs import ResultsRoot

# The page runs only its own scripts and styles; reports come in a frame from this server.
PAGE_CSP = "default-src 'self'; img-src 'self' data:; frame-src 'self'; object-src 'none'"
MAX_BODY = 4 * 2**20  # an uploaded config.json is a few KiB; refuse anything far larger


@dataclass
class App:
    results: ResultsRoot
    allow_local: bool
    jobs: Jobs = field(default_factory=Jobs)

    def close(self) -> None:
        self.jobs.close()


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass serve() makes
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # one line per request would drown the page's own messages; errors reach the page

    def reply(self, status: int, body: bytes, ctype: str, started: float, csp: str = PAGE_CSP, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Server-Timing", f"app;dur={(time.perf_counter() - started) * 1000:.1f}")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, doc: dict, started: float) -> None:
        self.reply(status, json.dumps(doc).encode(), "application/json", started)

    def _params(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError(f"the request body has {n} bytes, more than {MAX_BODY}")
        doc = json.loads(self.rfile.read(n) or b"{}")
        if not isinstance(doc, dict):
            raise ValueError("the request body is not a JSON object")
        return doc

    def do_GET(self):  # noqa: N802 - the stdlib's name
        started = time.perf_counter()
        path, params = self._params()
        routes.get(self, path, params, started)

    def do_POST(self):  # noqa: N802
        started = time.perf_counter()
        path, params = self._params()
        try:
            body = self._body()
        except ValueError as e:
            return self.reply_json(HTTPStatus.BAD_REQUEST, {"error": f"Bad request: {e}.", "field": None}, started)
        routes.post(self, path, params, body, started)

    def do_DELETE(self):  # noqa: N802
        started = time.perf_counter()
        path, _ = self._params()
        ok = path.startswith("/api/jobs/") and self.app.jobs.cancel(path.rsplit("/", 1)[1])
        self.reply_json(HTTPStatus.OK if ok else HTTPStatus.NOT_FOUND, {"cancelled": bool(ok)}, started)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(host: str, port: int, results: Path | None) -> ThreadingHTTPServer:
    app = App(results=ResultsRoot(results), allow_local=is_loopback(host))
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
