import threading

import pytest

from ftopt.serve.server import make_server


@pytest.fixture
def server(tmp_path):
    """`ftopt serve` on a free loopback port, its results root a temp folder; yields the base URL."""
    results = tmp_path / "results"
    results.mkdir()
    srv = make_server("127.0.0.1", 0, results)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    yield f"http://{host}:{port}", results
    srv.shutdown()
    srv.server_close()
    srv.RequestHandlerClass.app.close()
