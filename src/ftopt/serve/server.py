"""The HTTP side: stdlib ThreadingHTTPServer, JSON in and out, static files from the package. Every answer carries
the time the server spent on it (`Server-Timing`, and `server_ms` in plan answers)."""

from __future__ import annotations

import json
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ftopt.serve import guard, routes
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
    app: App  # set on the subclass make_server makes
    names: guard.Names  # the Host names answered (make_server)
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may sit idle or trickle its request: a thread is not held forever

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
        n = guard.body_length(self.headers, MAX_BODY)
        try:
            doc = json.loads(self.rfile.read(n) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise guard.Refused(HTTPStatus.BAD_REQUEST, "The request body is not valid JSON.") from None
        if not isinstance(doc, dict):
            raise guard.Refused(HTTPStatus.BAD_REQUEST, "The request body is not a JSON object.")
        return doc

    def _handle(self, method: str) -> None:
        """Checks first (guard: Host, Origin, body size), then the route; nothing unexpected escapes as a traceback
        to the client: it gets one sentence, the server's stderr gets the traceback."""
        started = time.perf_counter()
        path, params = self._params()
        try:
            host = guard.check_host(self.headers, self.names)
            guard.check_origin(method, path, self.headers, host)
            if method == "GET":
                return routes.get(self, path, params, started)
            if method == "DELETE":
                return routes.delete(self, path, started)
            return routes.post(self, path, params, self._body(), started)
        except guard.Refused as e:
            self.close_connection = True  # an unread body must not be taken for the next request
            return self.reply_json(e.status, {"error": str(e), "field": None}, started)
        except Exception:  # noqa: BLE001 - the server's last line: it keeps answering the next request
            traceback.print_exc()
            self.close_connection = True
            msg = "The server failed on this request (its traceback is in the server's output)."
            return self.reply_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": msg, "field": None}, started)

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a client that goes away mid-request (a closed tab, a script stopped with Ctrl-C) is no failure of the
        # server; the stdlib printed each as a traceback on the console
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def make_server(host: str, port: int, results: Path | None, jobs: Jobs | None = None) -> ThreadingHTTPServer:
    """The server for `ftopt serve --host HOST --port PORT --results DIR`, not yet serving; an IPv6 address (`::1`,
    with or without brackets) listens on IPv6."""
    bare = host.strip("[]")
    app = App(results=ResultsRoot(results), allow_local=is_loopback(bare), jobs=jobs or Jobs())
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    server_cls = type("Server", (_Server,), {"address_family": family})
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = server_cls((bare, port), handler)
    handler.names = guard.Names.of(bare, server.server_address[0])
    return server
