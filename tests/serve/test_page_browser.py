"""The planner page in a real browser (headless Chromium over the DevTools protocol): a shared link renders the
plan `ftopt plan --json` gives for the same inputs; typing a new sequence length changes the recommendation and the
chart; the page switches to Japanese with the report's terms; a bad input shows the CLI's message beside the field.
In CI (FTOPT_REQUIRE_CHROMIUM) a missing browser fails the test; on a user's machine it skips."""

import json
import subprocess
import sys

import pytest

from ftopt.report.text import TEXT
from ftopt.serve.text import PAGE
from tests.report.test_browser import chromium  # noqa: F401  (the fixture: skip or fail without Chromium)

pytestmark = pytest.mark.slow
LINK = "?model=llama-2-7b&gpu=rtx4090&gpus=1&seq_len=2048&method=analytic"
REC = "document.getElementById('rec-label').textContent"
MEMORY_DATA = "JSON.stringify(Chart.getChart('chart-memory').data.datasets.map(d => [d.label, d.data]))"


def cli_plan(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftopt", "plan", *flags], capture_output=True, text=True, timeout=600)


def recommended_label(*flags: str) -> tuple[dict, str]:
    doc = json.loads(cli_plan("--json", *flags).stdout)
    rec = doc["recommended"]
    (label,) = {c["label"] for c in doc["candidates"] if all(c[k] == v for k, v in rec.items())}
    return rec, label


def wait_for_plan(b, previous: str = "") -> str:
    """The recommendation once a plan for the current inputs has arrived (and differs from `previous`)."""
    return b.wait_for(
        f"document.getElementById('status').textContent.includes('ms') && {REC} !== {json.dumps(previous)} && {REC}"
    )


@pytest.fixture
def browser(chromium, tmp_path):  # noqa: F811
    from tests.serve.cdp import Browser

    b = Browser(chromium, str(tmp_path / "profile"))
    yield b
    b.close()


def test_page_link_typing_language_and_errors(server, browser):
    url, results = server
    (results / "sweep1" / "runs").mkdir(parents=True)
    (results / "sweep1" / "results.jsonl").write_text("")
    (results / "sweep1" / "runs" / "r0-gc0.run.json").write_text("{}")  # a sweep with its first run going
    b = browser
    b.send("Page.navigate", url=url + "/" + LINK)
    rec_key, rec_label = recommended_label(
        "--model", "llama-2-7b", "--gpu", "rtx4090", "--gpus", "1", "--seq-len", "2048"
    )
    shown = wait_for_plan(b)
    assert shown == rec_label
    assert json.loads(b.js("document.getElementById('rec-label').dataset.key")) == rec_key
    chart_before = b.wait_for(MEMORY_DATA)

    # a longer sequence, typed into the page's input: the link, the recommendation and the chart follow
    b.type_into("seq_len", "8192")
    _, rec_8k = recommended_label(
        "--model", "llama-2-7b", "--gpu", "rtx4090", "--gpus", "1", "--seq-len", "8192", "--method", "analytic"
    )
    assert rec_8k != rec_label, "the test needs inputs whose recommendation differs"
    assert wait_for_plan(b, previous=shown) == rec_8k
    assert b.js(MEMORY_DATA) != chart_before
    assert "seq_len=8192" in b.js("location.search")

    # Japanese: the page's own words and the report's terms (memory categories in the chart legend)
    b.js("document.getElementById('lang').click()")
    b.wait_for("document.documentElement.lang === 'ja'")
    assert b.js("document.querySelector('[data-t=rec_h]').textContent") == PAGE["ja"]["rec_h"]
    b.wait_for(f"{MEMORY_DATA}.includes({json.dumps(TEXT['ja']['cat_weights'])})")
    assert "lang=ja" in b.js("location.search")

    # the results folder under --results, and its sweep's progress
    assert b.js("[...document.getElementById('results').options].map(o => o.value)") == ["sweep1"]
    assert "r0-gc0" in b.wait_for("document.getElementById('progress').textContent")

    # a bad input: the CLI's one-line message, beside the field it is about
    b.type_into("seq_len", "-5")
    cli = cli_plan(
        "--model", "llama-2-7b", "--gpu", "rtx4090", "--gpus", "1", "--seq-len", "-5", "--method", "analytic"
    )
    assert cli.returncode == 2
    message = cli.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert b.wait_for("document.getElementById('err-seq_len').textContent") == message
    assert b.js("document.getElementById('seq_len').getAttribute('aria-invalid')") == "true"

    # a traced plan runs as a job: the page shows its progress and cancels it
    b.type_into("seq_len", "2048")
    b.js(
        "const m = document.getElementById('method'); m.value = 'traced'; m.dispatchEvent(new Event('input', {bubbles: true}))"
    )
    tracing = PAGE["ja"]["tracing"].split("{")[0]
    b.wait_for(f"document.getElementById('status').textContent.startsWith({json.dumps(tracing)})")
    assert b.js("document.getElementById('cancel').hidden") is False
    b.js("document.getElementById('cancel').click()")
    b.wait_for(f"document.getElementById('status').textContent === {json.dumps(PAGE['ja']['cancelled'])}")
    assert "method=" not in b.js("location.search")  # traced is `ftopt plan`'s default: the link leaves it out


def test_technique_view_marks_an_fsdp2_pick(server, browser):
    """An FSDP2 recommendation uses sharding: its row has the ✓ and its "on" column is the recommendation itself."""
    url, _ = server
    b = browser
    b.send("Page.navigate", url=url + "/?model=llama-2-13b&gpus=8&full_only=true&method=analytic")
    rec_key, rec_label = recommended_label(
        "--model", "llama-2-13b", "--gpus", "8", "--full-only", "--method", "analytic"
    )
    assert rec_key["fsdp"] != "none", "the test needs inputs whose recommendation is an FSDP2 one"
    assert wait_for_plan(b) == rec_label
    row = json.loads(
        b.js(
            "JSON.stringify([...document.querySelectorAll('#techniques tbody tr')].map(tr => "
            "[...tr.children].map(c => c.textContent)).find(r => r[0].startsWith("
            + json.dumps(PAGE["en"]["t_sharding"])
            + ")))"
        )
    )
    assert row[0] == PAGE["en"]["t_sharding"] + " ✓"
    assert row[1].startswith(rec_label + ":")


LEVERS_LINK = (
    "?model=llama-2-7b&gpu=rtx4090&precision=bf16-true&qlora_recipe=torchtune&lora_targets=all-linear"
    "&adapter_dtype=base&dora=true&rslora=true&lora_dropout=0.05&batching=padded-max&engine=ddp,zero&method=analytic"
)


def test_the_cli_levers_are_page_controls(server, browser):
    """A link with every LoRA lever sets the page's controls and renders the CLI's plan for those flags; a value
    with markup in it is shown as text, beside its field."""
    url, _ = server
    b = browser
    b.send("Page.navigate", url=url + "/" + LEVERS_LINK)
    _, rec_label = recommended_label(
        "--model", "llama-2-7b", "--gpu", "rtx4090", "--precision", "bf16-true", "--qlora-recipe", "torchtune",
        "--lora-targets", "all-linear", "--adapter-dtype", "base", "--dora", "--rslora", "--lora-dropout", "0.05",
        "--batching", "padded-max",
        "--engine", "ddp,zero", "--method", "analytic",
    )  # fmt: skip
    assert wait_for_plan(b) == rec_label
    fields = "['precision', 'qlora_recipe', 'lora_targets', 'adapter_dtype', 'lora_dropout', 'batching']"
    controls = f"JSON.stringify({fields}.map(f => "
    assert json.loads(b.js(controls + "document.getElementById(f).value))")) == [
        "bf16-true", "torchtune", "all-linear", "base", "0.05", "padded-max",
    ]  # fmt: skip
    assert b.js("document.getElementById('dora').checked && document.getElementById('rslora').checked") is True
    assert b.js("[...document.querySelectorAll('#engine input:checked')].map(e => e.value).join()") == "ddp,zero"
    assert "--engine ddp,zero" in b.js("document.getElementById('command').textContent")

    b.type_into("lora_targets", "<img src=x onerror=window.pwned=1>")
    shown = b.wait_for("document.getElementById('err-lora_targets').textContent")
    assert "<img src=x onerror=window.pwned=1>" in shown
    assert b.js("document.querySelector('#out img, #inputs img') === null && window.pwned === undefined") is True


def test_the_export_link_follows_the_confirmed_plan(server, browser):
    """Once the trace has confirmed the plan, the export link downloads that job's run and says so."""
    url, _ = server
    b = browser
    b.send("Page.navigate", url=url + "/?model=tiny-llama&gpu=a100-80g")
    b.wait_for("document.getElementById('dl-export')?.getAttribute('href')?.includes('job=')", timeout=600)
    label = b.js("document.getElementById('dl-export').textContent")
    assert label == PAGE["en"]["download_export"] + " (" + PAGE["en"]["est_traced"] + ")"
    disposition = b.js(
        "fetch(document.getElementById('dl-export').href).then(r => r.headers.get('Content-Disposition'))"
    )
    assert disposition.endswith('filename="ftopt-plan-export-traced.zip"')
