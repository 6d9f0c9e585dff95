"""The planner page is safe to leave running: it answers only to its own names (DNS rebinding), takes state-changing
requests only as JSON from its own page (cross-site forms and text/plain POSTs), reads local files only on
loopback and never repeats their values, and bounds the work one request can start."""

import http.client
import json
import multiprocessing
import time
from urllib.parse import urlsplit

import pytest

from ftopt.serve import jobs as serve_jobs
from tests.serve.conftest import serving

SECRET = "AKIA-NOT-A-REAL-KEY-1234"


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, JSON body) of one request whose headers are exactly `headers` plus Host (unless given)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        sized = {"Content-Length": str(len(body))} if body is not None else {}
        headers = {"Host": parts.netloc, **sized, **(headers or {})}
        for k, v in headers.items():
            if v is not None:
                conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def post_json(url: str, path: str, doc: dict, **headers):
    return request(url, "POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json", **headers})


def one_sentence(body: dict) -> bool:
    msg = body["error"]
    return isinstance(msg, str) and msg and "\n" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:{port}", "127.0.0.1.evil.test:{port}"])
def test_a_foreign_host_name_is_refused(server, host):
    url, _ = server
    status, body = request(url, "GET", "/api/meta", headers={"Host": host.format(port=urlsplit(url).port)})
    assert status == 421 and one_sentence(body) and "models" not in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_the_server_s_own_names_are_answered(server, host):
    url, _ = server
    status, body = request(url, "GET", "/api/meta", headers={"Host": host.format(port=urlsplit(url).port)})
    assert status == 200 and "models" in body


def test_a_cross_site_post_starts_nothing(server):
    url, _ = server
    before = len(multiprocessing.active_children())
    query = {"query": {"model": "tiny-llama", "method": "analytic"}}
    data = json.dumps(query).encode()
    forms = [
        {"Content-Type": "text/plain", "Origin": "http://attacker.test"},  # a simple request: no preflight
        {"Content-Type": "application/json", "Origin": "http://attacker.test"},
        {"Content-Type": "application/json", "Origin": "null"},  # a sandboxed frame or a file:// page
        {"Content-Type": "text/plain", "Origin": url},  # same origin, but not JSON
        {"Content-Type": "text/plain"},
    ]
    for headers in forms:
        status, body = request(url, "POST", "/api/jobs", data, headers)
        assert status in (403, 415) and one_sentence(body) and "id" not in body, headers
    assert len(multiprocessing.active_children()) == before
    # the page itself: same origin, JSON
    status, body = post_json(url, "/api/jobs", query, Origin=url)
    assert status == 200 and "id" in body
    assert request(url, "DELETE", f"/api/jobs/{body['id']}", headers={"Origin": url})[0] == 200


def test_a_cross_site_api_get_is_refused_but_a_link_to_the_page_opens(server):
    url, _ = server
    status, body = request(url, "GET", "/api/plan?model=tiny-llama", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and one_sentence(body)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", "/?model=tiny-llama", headers={"Sec-Fetch-Site": "cross-site"})
    assert conn.getresponse().status == 200
    conn.close()


@pytest.mark.parametrize(
    ("length", "status"), [("-1", 400), ("abc", 400), ("1e3", 400), (str(10**40), 413), (str(5 * 2**20), 413)]
)
def test_the_body_size_is_checked_before_reading(server, length, status):
    url, _ = server
    got, body = request(url, "POST", "/api/plan", b"{}", {"Content-Type": "application/json", "Content-Length": length})
    assert got == status and one_sentence(body)
    assert request(url, "GET", "/api/meta")[0] == 200  # still answering


def test_a_get_never_traces(server):
    url, _ = server
    status, body = request(url, "GET", "/api/plan?model=tiny-llama")
    assert status == 200 and body["plan"]["method"] == "analytic"
    assert "--method analytic" in body["command"]
    for path in ("/api/plan?model=tiny-llama&method=traced", "/api/export?model=tiny-llama&method=traced"):
        status, body = request(url, "GET", path)
        assert status == 400 and body["field"] == "method" and "POST /api/jobs" in body["error"]
    status, body = post_json(url, "/api/plan", {"query": {"model": "tiny-llama", "method": "traced"}})
    assert status == 400 and body["field"] == "method"


def test_an_absurd_gpu_count_is_one_sentence(server):
    url, _ = server
    for query in ("gpus=100000", "gpus=73"):
        status, body = request(url, "GET", "/api/plan?model=tiny-llama&" + query)
        assert status == 400 and body["field"] == "gpus" and "72" in body["error"]


def test_the_gpu_count_search_stops_at_its_limit():
    from ftopt.planner.whatif import _gpu_counts

    assert max(_gpu_counts(72, 64)) == 64 and max(_gpu_counts(8, 64)) == 64
    assert list(_gpu_counts(4, 16)) == [1, 2, 3, 4, 8, 12, 16]


@pytest.fixture
def files(tmp_path):
    """A JSON file holding a secret, a folder with such a config.json, and paths that do not exist."""
    secret = tmp_path / "creds.json"
    secret.write_text(json.dumps({"aws_secret_access_key": SECRET, "memory_bytes": SECRET}))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": SECRET, "hidden_size": SECRET}))
    return {
        "gpu": (str(secret), str(tmp_path / "missing.json")),
        "model": (str(folder), str(tmp_path / "missing")),
    }


# ids without "gpu": tests/conftest.py skips items with that keyword on machines without CUDA
@pytest.mark.parametrize("param", ["gpu", "model"], ids=["hardware-file", "model-folder"])
def test_off_loopback_local_files_are_refused_alike_whether_or_not_they_exist(tmp_path, files, param):
    with serving("127.0.0.1", None) as (url, srv):
        srv.RequestHandlerClass.app.allow_local = False  # as when listening on another address
        answers = []
        for path in files[param]:
            status, body = request(url, "GET", f"/api/plan?{param}={path}")
            assert (
                status == 400 and body["field"] == param and "only when the server listens on loopback" in body["error"]
            )
            answers.append(body["error"].replace(path, "PATH"))
        assert answers[0] == answers[1]  # no existence oracle


# ids without "gpu": tests/conftest.py skips items with that keyword on machines without CUDA
@pytest.mark.parametrize("param", ["gpu", "model"], ids=["hardware-file", "model-folder"])
def test_on_loopback_a_file_s_values_are_never_repeated(server, files, param):
    url, _ = server
    status, body = request(url, "GET", f"/api/plan?{param}={files[param][0]}")
    assert status == 400 and one_sentence(body)
    assert SECRET not in body["error"]


def test_a_config_with_zero_heads_names_its_field(server):
    from importlib import resources

    url, _ = server
    config = json.loads(resources.files("ftopt.presets.models").joinpath("tiny-llama.json").read_text())
    doc = {"query": {"model": "c.json"}, "config": {**config, "num_attention_heads": 0}}
    status, body = post_json(url, "/api/plan", doc)
    assert status == 400 and body["field"] == "model"
    assert "num_attention_heads" in body["error"] and "--" not in body["error"]


def test_an_ipv6_loopback_server_answers(tmp_path):
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:  # a machine with IPv6 turned off
        pytest.skip(f"no IPv6 loopback here: {e}")
    with serving("::1", None) as (url, srv):
        assert srv.RequestHandlerClass.app.allow_local
        status, body = request(url, "GET", "/api/meta")
    assert status == 200 and "models" in body


# ---- jobs: bounded in number and time; a finished child never waits on a reader ----------------------------------
def sleep_forever(*_args) -> dict:
    time.sleep(3600)
    return {}


def wait_done(jobs, job_id: str, limit_s: float = 120) -> dict:
    deadline = time.monotonic() + limit_s
    while (s := jobs.status(job_id))["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    return s


def test_jobs_beyond_the_cap_are_refused(server):
    jobs = serve_jobs.Jobs(max_running=1, work=sleep_forever)
    try:
        first = jobs.start({}, None, True)
        with pytest.raises(serve_jobs.Busy, match="already running"):
            jobs.start({}, None, True)
        assert jobs.cancel(first)
        jobs.cancel(jobs.start({}, None, True))  # a cancelled job frees its place
    finally:
        jobs.close()


def test_the_server_answers_429_when_the_jobs_are_full(tmp_path):
    with serving("127.0.0.1", None, serve_jobs.Jobs(max_running=1, work=sleep_forever)) as (url, _):
        assert post_json(url, "/api/jobs", {"query": {"model": "tiny-llama"}})[0] == 200
        status, body = post_json(url, "/api/jobs", {"query": {"model": "tiny-llama"}})
        assert status == 429 and one_sentence(body)


def test_a_job_past_its_time_limit_is_stopped_and_says_so():
    jobs = serve_jobs.Jobs(timeout_s=1, work=sleep_forever)
    try:
        job_id = jobs.start({}, None, True)
        process = jobs._jobs[job_id].process
        s = wait_done(jobs, job_id)
        assert s["state"] == "done" and "stopped after 1 s" in s["result"]["error"]
        assert not process.is_alive()
    finally:
        jobs.close()


def test_a_finished_job_exits_before_anyone_polls():
    """A real plan's answer (a few hundred KiB, more than a pipe holds) must not keep its child waiting for a reader."""
    jobs = serve_jobs.Jobs()
    try:
        job_id = jobs.start({"model": "tiny-llama", "gpu": "a100-80g", "method": "analytic"}, None, True)
        process = jobs._jobs[job_id].process
        process.join(300)  # a hang guard, not a speed bound: the old pipe kept it alive until polled
        assert process.exitcode == 0
        s = jobs.status(job_id)
        assert s["state"] == "done" and s["result"]["plan"]["model"] == "tiny-llama"
        assert len(json.dumps(s["result"])) > 2**16  # more than a Linux pipe's buffer
    finally:
        jobs.close()
