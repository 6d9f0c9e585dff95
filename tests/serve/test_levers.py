"""The page expresses every lever `ftopt plan` takes, with the CLI's answer; and its export is the run the page
shows: a finished job's (traced) plan when there is one, named by the estimate that chose it."""

import functools
import io
import json
import shlex
import time
import zipfile

import pytest

from ftopt.serve.query import PlanQuery, parse_query
from tests.serve.test_server import LOADED_MACHINE_BOUND, cli_json, get, get_json, send

BASE = {"model": "llama-2-7b", "gpu": "rtx4090", "method": "analytic"}
# one setting per lever the CLI has beyond the page's first inputs; each changes the plan of BASE
LEVERS = [
    {"adapter_dtype": "base"},
    {"dora": "true"},
    {"rslora": "true"},
    {"lora_dropout": "0.1"},
    {"lora_targets": "all-linear"},
    {"precision": "bf16-true"},
    {"qlora_recipe": "torchtune", "precision": "bf16-true"},
    {"qlora_recipe": "litgpt", "precision": "bf16-true"},
    {"batching": "padded-max"},
    {"engine": "zero"},
]


def flags(query: dict) -> list[str]:
    out = []
    for k, v in query.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v == "true" else [flag, v]
    return out


@functools.cache
def base_plan() -> dict:
    return cli_json(*flags(BASE))


@pytest.mark.parametrize("lever", LEVERS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_each_lever_gives_the_cli_plan(server, lever):
    """The page's answer is what `ftopt plan --json` prints for the same flags; the command the page shows for
    copying holds each lever's flag."""
    url, _ = server
    query = "&".join(f"{k}={v}" for k, v in {**BASE, **lever}.items())
    status, body = get_json(url + "/api/plan?" + query)
    assert status == 200, body
    cli = cli_json(*flags({**BASE, **lever}))
    assert body["plan"] == cli
    assert cli != base_plan(), "the lever must change the plan, else this test shows nothing"
    command = shlex.split(body["command"])
    assert all(f in command for f in flags(lever))


@pytest.mark.parametrize(
    ("query", "field"),
    [("adapter_dtype=fp16", "adapter_dtype"), ("dora=maybe", "dora"), ("rslora=2", "rslora"),
     ("lora_dropout=1.5", "lora_dropout"), ("lora_dropout=-0.1", "lora_dropout"), ("lora_dropout=x", "lora_dropout"),
     ("lora_targets=,", "lora_targets"), ("lora_targets=nope_proj", "lora_targets"), ("qlora_recipe=qlora", "qlora_recipe"), ("batching=ragged", "batching"),
     ("engine=megatron", "engine"), ("precision=fp8", "precision"), ("lora_r=99999999999", "lora_r"),
     ("qlora_recipe=torchtune", "qlora_recipe")],
)  # fmt: skip
def test_a_bad_lever_is_one_sentence_beside_its_field(server, query, field):
    url, _ = server
    status, body = get_json(url + "/api/plan?" + query)
    assert status == 400 and body["field"] == field, body
    assert body["error"].strip() and "\n" not in body["error"] and "Traceback" not in body["error"]


def test_the_page_and_the_cli_share_the_levers_and_their_defaults():
    from ftopt.planner.request import PlanLevers

    assert issubclass(PlanQuery, PlanLevers)
    assert parse_query({}).model_dump(include=set(PlanLevers.model_fields)) == PlanLevers().model_dump()


def finished(url: str, query: dict) -> tuple[str, dict]:
    job = send(url + "/api/jobs", "POST", {"query": query})
    deadline = time.monotonic() + LOADED_MACHINE_BOUND
    while (s := send(url + f"/api/jobs/{job['id']}", "GET"))["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert s["state"] == "done" and "plan" in s["result"], s
    return job["id"], s["result"]["plan"]


@pytest.mark.slow
def test_the_export_is_the_confirmed_plan_the_page_shows(server):
    """The page shows a finished traced job's plan; its export holds that plan and run, named "traced", and the
    export of the inputs alone (a GET: analytic) is named "analytic"."""
    url, _ = server
    query = {"model": "tiny-llama", "gpu": "a100-80g", "method": "traced"}
    job_id, shown = finished(url, query)
    assert shown["answered_by"]["recommended"] == "traced"
    status, data, headers = get(url + f"/api/export?job={job_id}")
    assert status == 200, data[:300]
    assert headers["Content-Disposition"].endswith('filename="ftopt-plan-export-traced.zip"')
    z = zipfile.ZipFile(io.BytesIO(data))
    assert json.loads(z.read("plan.json")) == shown
    assert b"traced" in z.comment
    _, data, headers = get(url + "/api/export?model=tiny-llama&gpu=a100-80g")
    assert headers["Content-Disposition"].endswith('filename="ftopt-plan-export-analytic.zip"')
    assert json.loads(zipfile.ZipFile(io.BytesIO(data)).read("plan.json"))["answered_by"]["recommended"] == "analytic"


def test_an_unknown_or_mixed_job_export_is_one_sentence(server):
    url, _ = server
    for path in ("/api/export?job=nope", "/api/export?job=nope&model=tiny-llama"):
        status, body = get_json(url + path)
        assert status == 400 and "\n" not in body["error"] and "nope" not in body["error"]


def test_the_lora_technique_compares_a_dropout_pick_with_full_fine_tuning():
    """The page's technique table: a LoRA pick with adapter dropout is "on"; its "off" is full fine-tuning, which
    has no dropout (the LoRA settings are reset with the rank)."""
    from ftopt.serve.views import techniques

    doc = cli_json(*flags({**BASE, "lora_dropout": "0.1"}))
    assert doc["recommended"]["lora_r"] and doc["recommended"]["lora_dropout"] == 0.1
    (row,) = [t for t in techniques(doc) if t["technique"] == "lora"]
    on, off = doc["candidates"][row["on"]], doc["candidates"][row["off"]]
    assert row["recommended_uses"] and on["lora_dropout"] == 0.1
    assert off["lora_r"] == 0 and off["lora_dropout"] == 0.0 and off["quant"] == "none"
