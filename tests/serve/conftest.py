import contextlib
import threading

import pytest

from ftopt.serve.server import make_server


@contextlib.contextmanager
def serving(host: str, results, jobs=None):
    """`ftopt serve` on a free port of `host` in a thread; yields (base URL, the server)."""
    srv = make_server(host, 0, results, jobs) if jobs is not None else make_server(host, 0, results)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    addr, port = srv.server_address[:2]
    try:
        yield f"http://{'[' + addr + ']' if ':' in addr else addr}:{port}", srv
    finally:
        srv.shutdown()
        srv.server_close()
        srv.RequestHandlerClass.app.close()


@pytest.fixture
def server(tmp_path):
    """`ftopt serve` on a free loopback port, its results root a temp folder; yields the base URL."""
    results = tmp_path / "results"
    results.mkdir()
    with serving("127.0.0.1", results) as (url, _):
        yield url, results
