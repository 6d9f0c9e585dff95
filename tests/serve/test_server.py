"""The planner server without a browser: the same plan as `ftopt plan --json`, the CLI's messages with the field
they belong to, the export zip, result folders only under --results, traced plans cancellable."""

import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile

import pytest

from ftopt.report.text import TEXT
from ftopt.serve.query import PlanQuery, field_of, parse_query
from ftopt.serve.views import pareto

# Seconds a request or a job may take before the test fails: a bound for a broken server only. A plan answers in
# seconds on a quiet machine and several times slower on a loaded 2-core one.
LOADED_MACHINE_BOUND = 600


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=LOADED_MACHINE_BOUND) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def get_json(url: str) -> tuple[int, dict]:
    status, body, _ = get(url)
    return status, json.loads(body)


def send(url: str, method: str, doc: dict | None = None) -> dict:
    data = json.dumps(doc).encode() if doc is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=LOADED_MACHINE_BOUND) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def cli_json(*flags: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "ftopt", "plan", "--json", *flags], capture_output=True, text=True)
    return json.loads(out.stdout)


def test_plan_is_the_cli_plan(server):
    url, _ = server
    flags = "--model llama-2-70b --gpu h100-80g --gpus 8 --seq-len 4096 --dataset-tokens 1000000 --headroom 0.2"
    query = "&".join(f"{k[2:].replace('-', '_')}={v}" for k, v in zip(*[iter(flags.split())] * 2))
    status, body = get_json(url + "/api/plan?method=analytic&" + query)
    assert status == 200
    assert body["plan"] == cli_json(*flags.split(), "--method", "analytic")
    assert body["plan"]["headroom"] == 0.2
    assert body["command"] == "ftopt plan " + flags + " --method analytic"
    front = body["views"]["pareto"]
    assert front and all(body["plan"]["candidates"][i]["fits"] for i in front)


@pytest.mark.parametrize(
    ("query", "field"),
    [("seq_len=-5", "seq_len"), ("seq_len=abc", "seq_len"), ("gpus=0", "gpus"), ("model=nope", "model"),
     ("gpu=nope", "gpu"), ("quant=xx", "quant"), ("max_hours=-1", "max_hours"), ("lora_r=0", "lora_r"),
     ("headroom=1.5", "headroom")],
)  # fmt: skip
def test_bad_input_has_the_cli_message_and_its_field(server, query, field):
    url, _ = server
    status, body = get_json(url + "/api/plan?" + query)
    assert status == 400 and body["field"] == field
    name, value = query.split("=")
    cli = subprocess.run(
        [sys.executable, "-m", "ftopt", "plan", "--" + name.replace("_", "-"), value], capture_output=True, text=True
    )
    assert cli.returncode == 2
    if value != "abc":  # typer words a non-number itself; the page says it in the CLI's style
        assert body["error"] == cli.stderr.strip().splitlines()[-1].removeprefix("error: ")


def test_custom_gpu_memory_changes_the_plan(server):
    url, _ = server
    _, small = get_json(url + "/api/plan?gpu=a100-80g&gpu_memory_gib=16&method=analytic")
    _, big = get_json(url + "/api/plan?gpu=a100-80g&method=analytic")
    assert small["plan"]["hardware"] == "a100-80g (custom)"
    assert small["views"]["capacity_bytes"] == 16 * 2**30
    assert small["plan"]["recommended"] != big["plan"]["recommended"]
    status, body = get_json(url + "/api/plan?gpu_memory_gib=-1")
    assert status == 400 and body["field"] == "gpu_memory_gib"


def test_uploaded_config(server):
    url, _ = server
    from importlib import resources

    config = json.loads(resources.files("ftopt.presets.models").joinpath("llama-2-7b.json").read_text())
    body = send(
        url + "/api/plan", "POST", {"query": {"model": "my-config.json", "method": "analytic"}, "config": config}
    )
    _, preset = get_json(url + "/api/plan?model=llama-2-7b&method=analytic")
    assert body["plan"]["model"] == "my-config"
    assert body["plan"]["recommended"] == preset["plan"]["recommended"]


def test_export_zip_holds_the_plan_and_the_export_files(server):
    url, _ = server
    status, data, headers = get(url + "/api/export?model=llama-2-7b&gpu=a100-80g&gpus=2&method=analytic")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(data))
    names = set(z.namelist())
    assert {"plan.json", "export/sft_config.yaml", "export/launch.sh"} <= names
    plan = json.loads(z.read("plan.json"))
    assert plan == cli_json("--model", "llama-2-7b", "--gpu", "a100-80g", "--gpus", "2", "--method", "analytic")
    assert "--num_processes 2" in z.read("export/launch.sh").decode()


def test_results_only_under_the_root(server):
    from tests.report.test_report import ROWS

    url, root = server
    sweep = root / "sweep1"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (sweep / "runs" / "next-run.run.json").write_text("{}")  # bench writes this as a run starts
    _, listing = get_json(url + "/api/runs")
    assert listing["results"] == ["sweep1"]
    _, progress = get_json(url + "/api/runs/progress?name=sweep1")
    assert progress["finished"] == len(ROWS) and progress["running"] == ["next-run"]
    for lang in ("en", "ja"):
        status, html, headers = get(url + f"/api/runs/report?name=sweep1&lang={lang}")
        assert status == 200 and TEXT[lang]["summary"] in html.decode()
        assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no script runs
    for name in ("..", "../..", "/etc", "sweep1/../.."):
        status, body = get_json(url + "/api/runs/report?name=" + urllib.request.quote(name))
        assert status == 400 and "not a results folder" in body["error"]


def test_static_files_are_a_fixed_list(server):
    url, _ = server
    assert get(url + "/static/chart.umd.min.js")[0] == 200
    assert get(url + "/static/../server.py")[0] == 404
    assert get(url + "/static/chart.js.LICENSE.md")[0] == 404


def test_traced_plan_runs_as_a_job_that_can_be_cancelled(server):
    url, _ = server
    job = send(url + "/api/jobs", "POST", {"query": {"model": "tiny-llama", "gpu": "a100-80g", "method": "traced"}})
    status = send(url + f"/api/jobs/{job['id']}", "GET")
    assert status["state"] == "running"
    assert send(url + f"/api/jobs/{job['id']}", "DELETE") == {"cancelled": True}
    assert send(url + f"/api/jobs/{job['id']}", "GET") == {"error": "No such job."}


def test_a_job_finishes_with_the_plan(server):
    """The job path end to end (a child process, polled); analytic here, since a traced plan takes a minute on a
    2-core machine: the method is only passed through to the same plan call."""
    url, _ = server
    job = send(url + "/api/jobs", "POST", {"query": {"model": "llama-2-7b", "gpu": "rtx4090", "method": "analytic"}})
    deadline = time.monotonic() + LOADED_MACHINE_BOUND
    while (s := send(url + f"/api/jobs/{job['id']}", "GET"))["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert s["state"] == "done"
    assert s["result"]["plan"] == cli_json("--model", "llama-2-7b", "--gpu", "rtx4090", "--method", "analytic")


def test_query_parsing_and_fields():
    q = parse_query({"model": "llama-2-7b", "seq_len": "4096", "full_only": "true", "currency": "", "lang": "ja"})
    assert q == PlanQuery(seq_len=4096, full_only=True)
    assert q.flags() == ["--seq-len", "4096", "--full-only"]
    assert field_of("gpus_per_node: Input should be greater than 0 (got 0)") == "gpus"
    assert field_of("nodes > 1 needs a hostfile") == "nodes"
    assert field_of("Unknown GPU 'x'.") == "gpu"
    assert field_of("something else") is None
    with pytest.raises(Exception, match="Unknown parameter 'bogus'"):
        parse_query({"bogus": "1"})


def test_pareto_keeps_only_undominated_fitting_points():
    def c(mem, sec, fits=True):
        return {"device_bytes_per_gpu": mem, "total_seconds": sec, "seconds_per_1k_samples": None, "fits": fits}

    cands = [c(10, 100), c(20, 50), c(30, 60), c(5, 500, fits=False), c(40, 10)]
    assert pareto(cands) == [0, 1, 4]


def test_techniques_compare_the_recommendation_with_one_change(server):
    url, _ = server
    _, body = get_json(url + "/api/plan?model=llama-2-70b&gpus=8&seq_len=4096&method=analytic")
    cands, rec = body["plan"]["candidates"], body["plan"]["recommended"]
    rows = {t["technique"]: t for t in body["views"]["techniques"]}
    assert rows["gc"]["recommended_uses"] == rec["gc"]
    on, off = cands[rows["gc"]["on"]], cands[rows["gc"]["off"]]
    assert on["gc"] and not off["gc"]
    assert {k: v for k, v in on.items() if k in rec and k != "gc"} == {
        k: v for k, v in off.items() if k in rec and k != "gc"
    }
    # gradient checkpointing trades memory for time
    assert on["device_bytes_per_gpu"] < off["device_bytes_per_gpu"] and on["step_seconds"] > off["step_seconds"]


def test_an_fsdp2_pick_uses_sharding_and_is_its_own_on_column(server):
    """Sharding is one technique, ZeRO or FSDP2: an FSDP2 recommendation is marked as using it, and the "on" column
    is the recommendation itself, not another engine's candidate."""
    url, _ = server
    _, body = get_json(url + "/api/plan?model=llama-2-13b&gpus=8&full_only=true")
    cands, rec = body["plan"]["candidates"], body["plan"]["recommended"]
    assert rec["fsdp"] != "none", "the test needs inputs whose recommendation is an FSDP2 one"
    (row,) = [t for t in body["views"]["techniques"] if t["technique"] in ("zero", "sharding")]
    assert row["recommended_uses"] is True
    assert {k: cands[row["on"]][k] for k in rec} == rec
    off = cands[row["off"]]
    assert off["sharding"] == "ddp" and {k: off[k] for k in rec if k not in ("zero", "fsdp", "offload")} == {
        k: rec[k] for k in rec if k not in ("zero", "fsdp", "offload")
    }


def test_a_post_body_with_its_inputs_at_the_top_level_is_refused(server):
    """{"gpus": 8} instead of {"query": {"gpus": 8}}: the key was ignored and the defaults planned, with a 200."""
    url, _ = server
    body = send(url + "/api/plan", "POST", {"gpus": "8", "model": "llama-2-70b"})
    assert "plan" not in body and "unknown key(s) 'gpus', 'model'" in body["error"], body


def test_a_client_that_resets_its_connection_leaves_no_traceback(server, capfd):
    """A client gone mid-request (curl | head, a closed tab) printed a ConnectionResetError traceback each time."""
    import socket
    import struct
    from urllib.parse import urlsplit

    url, _ = server
    parts = urlsplit(url)
    for _ in range(3):
        s = socket.create_connection((parts.hostname, parts.port))
        s.sendall(b"GET /api/pl")  # half a request line: the server is reading it when the reset comes
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST, not FIN
        s.close()
    time.sleep(0.5)
    assert get(url + "/api/meta")[0] == 200  # still answering
    assert "Traceback" not in capfd.readouterr().err
