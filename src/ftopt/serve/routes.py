"""What each URL answers. `h` is the request handler (server.Handler): `h.app` holds the server's state,
`h.reply`/`h.reply_json` send. Every planning answer comes from jobs.plan_body, which is `ftopt plan`'s code path.
A plan answered in the request (`/api/plan`, `/api/export`) is analytic, a fraction of a second; a traced plan
(seconds to minutes) runs only as a job (`POST /api/jobs`), which can be cancelled and is bounded (jobs.Jobs); once
it has finished, `/api/export?job=ID` exports the run it picked without planning again."""

from __future__ import annotations

import shlex
import time
from http import HTTPStatus
from importlib import resources

from ftopt.serve.jobs import Busy, error_body, plan_body
from ftopt.serve.query import PlanQuery, parse_query
from ftopt.spec.errors import FtoptError

STATIC = {  # file -> content type; nothing else is served from the package
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "chart.umd.min.js": "text/javascript; charset=utf-8",
}
# A report has no script: it may show its inline charts and styles, nothing else.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def static_file(name: str) -> bytes:
    return resources.files("ftopt.serve").joinpath("static", name).read_bytes()


def meta(h) -> dict:
    """What the page's inputs offer, and its words in both languages."""
    from ftopt.planner.plan import PLAN_QUANTS
    from ftopt.serve.text import page_text
    from ftopt.spec import Optim, Quant, hardware_names
    from ftopt.spec.combination import AdapterDtype, Engine, QloraRecipe
    from ftopt.spec.hf_config import preset_names
    from ftopt.spec.training import Batching, Precision

    def values(enum) -> list[str]:
        return [e.value for e in enum]

    return {
        "models": preset_names(),
        "gpus": hardware_names(),
        "quants": values(Quant),
        "optims": values(Optim),
        "engines": values(Engine),
        "quant_default": [q.value for q in (Quant.NONE, *PLAN_QUANTS)],  # what `plan` tries without --quant
        "optim_default": values(Optim),
        "engine_default": values(Engine),
        # one choice each; "" (not given) is the CLI's default
        "choices": {
            "precision": values(Precision),
            "batching": values(Batching),
            "adapter_dtype": values(AdapterDtype),
            "qlora_recipe": values(QloraRecipe),
        },
        "method_default": PlanQuery().method,
        "text": {lang: page_text(lang) for lang in ("en", "ja")},
        "results": h.app.results.names(),
        "allow_local": h.app.allow_local,
    }


def analytic_query(params: dict) -> PlanQuery:
    """The query of a plan answered in the request: analytic when no method is given; traced is refused."""
    q = parse_query(params)
    if not params.get("method", "").strip():
        return q.model_copy(update={"method": "analytic"})
    if q.method == "traced":
        raise FtoptError(
            "--method traced runs as a job (POST /api/jobs) that can be cancelled; "
            "a plan answered at once uses --method analytic."
        )
    return q


def _plan(h, params: dict, config: dict | None, started: float) -> None:
    try:
        q = analytic_query(params)
    except FtoptError as e:
        return h.reply_json(HTTPStatus.BAD_REQUEST, error_body(e), started)
    body = plan_body(q.model_dump(), config, h.app.allow_local)
    body["command"] = shlex.join(["ftopt", "plan", *q.flags()])
    body["server_ms"] = round((time.perf_counter() - started) * 1000, 1)
    h.reply_json(HTTPStatus.BAD_REQUEST if "error" in body else HTTPStatus.OK, body, started)


def _finished_plan(h, params: dict) -> tuple[dict, object, object]:
    """(plan JSON, its run, its model) of a finished job: the plan the page shows once its trace has confirmed it.
    Nothing is planned here; the model is rebuilt from the job's own inputs (a preset or config: no trace)."""
    from ftopt.serve.planning import load_planned_model
    from ftopt.spec import RunSpec

    if set(params) - {"job", "lang"}:
        raise FtoptError("An export of a finished plan (?job=ID) takes no other parameter; its inputs are the job's.")
    done = h.app.jobs.finished(params["job"])
    if done is None:
        raise FtoptError("No finished plan has that id (an answer is kept for 10 minutes); export from the inputs.")
    (query, config, allow_local), result = done
    if "error" in result:
        raise FtoptError(result["error"])
    doc = result["plan"]
    run = RunSpec.model_validate(doc["run"]) if doc["run"] else None
    return doc, run, load_planned_model(PlanQuery(**query), config, allow_local)


def _export(h, params: dict, started: float) -> None:
    """The zip of one plan's launch files: a finished job's plan (`?job=ID`, traced when it was), or the analytic
    plan of the inputs. Its name says which estimate chose the run."""
    from pydantic import ValidationError

    from ftopt.serve.planning import estimated_by, export_zip, make_plan

    try:
        if "job" in params:
            doc, run, model = _finished_plan(h, params)
        else:
            doc, run, model, _ = make_plan(analytic_query(params), None, h.app.allow_local)
        data = export_zip(doc, run, model)
    except (FtoptError, ValidationError) as e:
        return h.reply_json(HTTPStatus.BAD_REQUEST, error_body(e), started)
    name = f"ftopt-plan-export-{estimated_by(doc)}.zip"
    disposition = ("Content-Disposition", f'attachment; filename="{name}"')
    h.reply(HTTPStatus.OK, data, "application/zip", started, extra=[disposition])


def _runs(h, path: str, params: dict, started: float) -> None:
    name = params.get("name", "")
    try:
        if path == "/api/runs/progress":
            return h.reply_json(HTTPStatus.OK, h.app.results.progress(name), started)
        lang = params.get("lang", "en")
        html = h.app.results.report_html(name, lang)
    except FtoptError as e:
        return h.reply_json(HTTPStatus.BAD_REQUEST, error_body(e), started)
    h.reply(HTTPStatus.OK, html.encode(), "text/html; charset=utf-8", started, csp=REPORT_CSP)


def get(h, path: str, params: dict, started: float) -> None:
    name = "index.html" if path == "/" else path.removeprefix("/static/")
    if name in STATIC and (path == "/" or path.startswith("/static/")):
        return h.reply(HTTPStatus.OK, static_file(name), STATIC[name], started)
    if path == "/api/meta":
        return h.reply_json(HTTPStatus.OK, meta(h), started)
    if path == "/api/plan":
        return _plan(h, params, None, started)
    if path == "/api/export":
        return _export(h, params, started)
    if path.startswith("/api/jobs/"):
        status = h.app.jobs.status(path.rsplit("/", 1)[1])
        return h.reply_json(
            HTTPStatus.OK if status else HTTPStatus.NOT_FOUND, status or {"error": "No such job."}, started
        )
    if path == "/api/runs":
        return h.reply_json(HTTPStatus.OK, {"results": h.app.results.names()}, started)
    if path in ("/api/runs/progress", "/api/runs/report"):
        return _runs(h, path, params, started)
    h.reply_json(HTTPStatus.NOT_FOUND, {"error": f"Nothing at {path}."}, started)


BODY_KEYS = ("query", "config")  # a POST body: the plan's inputs, and an uploaded config.json


def post(h, path: str, params: dict, body: dict, started: float) -> None:
    unknown = sorted(k for k in body if k not in BODY_KEYS)
    if unknown:  # e.g. the inputs at the top level: ignored, they planned the defaults with a 200
        named = ", ".join(repr(k[:40]) for k in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        return h.reply_json(
            HTTPStatus.BAD_REQUEST,
            {"error": f"The request body has unknown key(s) {named}; it holds 'query' and 'config'.", "field": None},
            started,
        )
    query, config = body.get("query") or {}, body.get("config")
    if not isinstance(query, dict):
        return h.reply_json(
            HTTPStatus.BAD_REQUEST, {"error": "The query is not a JSON object.", "field": None}, started
        )
    if config is not None and not isinstance(config, dict):
        return h.reply_json(
            HTTPStatus.BAD_REQUEST, {"error": "The uploaded config is not a JSON object.", "field": "model"}, started
        )
    query = {str(k): str(v) for k, v in query.items()}
    if path == "/api/plan":
        return _plan(h, query, config, started)
    if path == "/api/jobs":
        return _start_job(h, query, config, started)
    h.reply_json(HTTPStatus.NOT_FOUND, {"error": f"Nothing at {path}."}, started)


def _start_job(h, query: dict, config: dict | None, started: float) -> None:
    try:
        q = parse_query(query)
        job_id = h.app.jobs.start(q.model_dump(), config, h.app.allow_local)
    except FtoptError as e:
        return h.reply_json(HTTPStatus.BAD_REQUEST, error_body(e), started)
    except Busy as e:
        return h.reply_json(HTTPStatus.TOO_MANY_REQUESTS, {"error": str(e), "field": None}, started)
    h.reply_json(HTTPStatus.OK, {"id": job_id}, started)


def delete(h, path: str, started: float) -> None:
    ok = path.startswith("/api/jobs/") and h.app.jobs.cancel(path.rsplit("/", 1)[1])
    if not ok:
        return h.reply_json(HTTPStatus.NOT_FOUND, {"cancelled": False, "error": "No such job."}, started)
    h.reply_json(HTTPStatus.OK, {"cancelled": True}, started)
