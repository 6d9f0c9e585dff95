"""Every endpoint, every query and body field, drawn by hypothesis: each answer is a 200 or a 4xx whose JSON error is
one sentence, within REQUEST_BOUND_S per request, and the server still answers afterwards.

The bound is a hang guard for a shared, loaded CI machine, not a speed target: an analytic plan takes well under a
second of CPU (docs/serve.md, "Speed"). Plans run analytically only (a GET never traces; a traced job is cancelled
as soon as it starts). Values come from each field's edge cases (zero, negative, huge, not a number, a path) and
from random text; inputs whose plan searches every GPU count up to 64 because nothing fits anywhere (a device of a
few bytes, headroom near 1, sequences of millions of tokens, a config's dimensions in the millions) are left out
to keep the test short: that search is bounded by its 64 GPU counts."""

import json
import string
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ftopt.serve.query import PlanQuery

REQUEST_BOUND_S = 60
JUNK = st.text(alphabet=string.ascii_letters + string.digits + " .,-_~%:'\"<>&é漢\x00", max_size=12)
INTS = ["-1", "0", "1", "2", "8", "72", "73", "100000", "1" + "0" * 30, "1.5", "abc", "", " 4 "]
FLOATS = ["-1", "0", "0.5", "2.5", "80", "1e308", "nan", "inf", "-inf", "abc", ""]
VALUES = {
    "model": ["tiny-llama", "qwen2.5-0.5b", "llama-2-7b", "nope", "/etc/passwd", "./x.json", "~/m", ".", ""],
    "gpu": ["a100-80g", "rtx4090", "t4", "/etc/hosts.json", "nope", ""],
    "gpu_memory_gib": ["-1", "0", "16", "80", "1e308", "nan", "inf", "abc", ""],
    "gpu_bandwidth_gbs": FLOATS,
    "gpus": INTS,
    "nodes": ["0", "1", "2", "100000", "-3", "x"],
    "seq_len": ["-5", "0", "1", "512", "2048", "abc", ""],
    "micro_batch": ["-1", "0", "1", "4", "x"],
    "batching": ["", "packed", "padded", "padded-max", "full", "ragged", "<b>"],
    "precision": ["", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "fp8", "<i>"],
    "lora_r": ["-1", "0", "16", "1000000000", "q"],
    "lora_targets": ["", "all-linear", "q_proj,v_proj", ",", "nope_proj", "<script>"],
    "adapter_dtype": ["", "fp32", "base", "fp16", "<b>"],
    "dora": ["", "true", "false", "1", "maybe"],
    "rslora": ["", "true", "0", "on", "2"],
    "lora_dropout": ["", "0", "0.05", "0.999", "1", "-0.1", "nan", "x"],
    "qlora_recipe": ["", "peft", "torchtune", "litgpt", "peft,litgpt", "qlora", ","],
    "engine": ["", "ddp", "zero", "fsdp", "zero,fsdp", "megatron", ","],
    "quant": ["", "none", "nf4", "int8", "nf4,int8", "xx", "none,,nf4"],
    "optim": ["", "adamw", "adamw-8bit,paged-adamw", "sgd", ","],
    "full_only": ["", "true", "false", "1", "yes", "maybe"],
    "max_hours": FLOATS,
    "dataset_tokens": ["-1", "0", "1", "1000000", "1" + "0" * 18, "big"],
    "headroom": ["-0.1", "0", "0.1", "0.5", "1", "1.5", "nan", "x"],
    "cost_per_gpu_hour": FLOATS,
    "currency": ["USD", "円", "", "<script>"],
    "method": ["", "analytic", "traced", "bogus"],
}
assert set(VALUES) == set(PlanQuery.model_fields), "every query field is fuzzed"


LANG = st.sampled_from(["en", "ja", "xx"])


def field_value(name: str):
    return st.one_of(st.sampled_from(VALUES[name]), JUNK)


# a few fields at a time, so that many queries are valid plans, not only the first bad value's message
QUERIES = (
    st.lists(st.sampled_from([*VALUES, "lang"]), max_size=4, unique=True)
    .flatmap(lambda names: st.fixed_dictionaries({n: LANG if n == "lang" else field_value(n) for n in names}))
    .flatmap(lambda q: st.one_of(st.just(q), JUNK.map(lambda k: {**q, k or "bogus": "1"})))
)
PRESET = json.loads(resources.files("ftopt.presets.models").joinpath("tiny-llama.json").read_text())
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 4096) | st.floats() | JUNK,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JUNK, inner, max_size=3),
    max_leaves=6,
)
CONFIGS = st.one_of(
    st.none(),
    st.just(PRESET),
    st.tuples(st.sampled_from(sorted(PRESET)), ANY_JSON).map(lambda kv: {**PRESET, kv[0]: kv[1]}),
    ANY_JSON,
)
BODIES = st.one_of(
    st.fixed_dictionaries({"query": QUERIES, "config": CONFIGS}),
    st.fixed_dictionaries({"query": ANY_JSON}),
    ANY_JSON,
)
GETS = st.one_of(
    st.tuples(st.sampled_from(["/api/plan", "/api/export"]), QUERIES),
    st.tuples(st.just("/api/export"), st.fixed_dictionaries({"job": JUNK}, optional={"model": JUNK})),
    st.tuples(st.sampled_from(["/api/runs/progress", "/api/runs/report"]), st.fixed_dictionaries(
        {"name": st.sampled_from(["", ".", "..", "/etc", "sweep"]) | JUNK, "lang": st.sampled_from(["en", "ja", "x"])}
    )),
    st.tuples(st.sampled_from(["/api/meta", "/api/runs", "/", "/static/app.js", "/static/../x", "/nothing"]),
              st.just({})),
    st.tuples(JUNK.map(lambda s: "/api/jobs/" + urllib.parse.quote(s)), st.just({})),
)  # fmt: skip
REQUESTS = st.one_of(
    GETS.map(lambda pq: ("GET", pq[0] + ("?" + urllib.parse.urlencode(pq[1]) if pq[1] else ""), None)),
    st.tuples(st.just("POST"), st.sampled_from(["/api/plan", "/api/jobs", "/api/nothing"]), BODIES),
    st.tuples(st.just("DELETE"), JUNK.map(lambda s: "/api/jobs/" + urllib.parse.quote(s)), st.none()),
)


def call(url: str, method: str, path: str, body) -> tuple[int, bytes, str]:
    data = json.dumps(body).encode() if method == "POST" else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_BOUND_S) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(REQUESTS)
@example(("GET", "/api/plan?gpu_memory_gib=inf", None))
@example(("GET", "/api/plan?gpus=100000", None))
@example(("POST", "/api/plan", {"query": {"model": "x.json"}, "config": {**PRESET, "num_attention_heads": 0}}))
def test_every_answer_is_a_plan_or_one_sentence(server, req):
    url, _ = server
    method, path, body = req
    if method == "POST" and path == "/api/jobs" and isinstance(body, dict) and isinstance(body.get("query"), dict):
        body = {**body, "query": {**body["query"], "method": "analytic"}}
    status, data, ctype = call(url, method, path, body)
    assert status == 200 or 400 <= status < 500, (status, data[:300])
    if ctype.startswith("application/json"):
        doc = json.loads(data)
        if status != 200:
            msg = doc["error"]
            assert isinstance(msg, str) and msg.strip() and "\n" not in msg and "Traceback" not in msg, msg
        elif method == "POST" and path == "/api/jobs":
            call(url, "DELETE", f"/api/jobs/{doc['id']}", None)  # started and stopped: nothing left running
    assert call(url, "GET", "/api/meta", None)[0] == 200  # the server still answers
