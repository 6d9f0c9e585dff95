"""Trust only from the command line: a plan/run file cannot switch on remote code or a metric module by itself."""

import json

from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.planner import resolve
from ftopt.spec import load_hardware
from ftopt.spec.trust import trusted_file_run

runner = CliRunner()


def _run_file(tmp_path, **changes):
    hw = load_hardware("cpu")
    spec = resolve.new_run(hw, resolve.model_ref("tiny-llama", weights=False), resolve.setup(hw), resolve.combination())
    doc = spec.to_json()
    for dotted, value in changes.items():
        part, field = dotted.split("__")
        doc[part][field] = value
    path = tmp_path / "shared.plan.json"
    path.write_text(json.dumps(doc))
    return path


def test_plan_file_with_trust_remote_code_is_refused_without_the_flag(tmp_path):
    path = _run_file(tmp_path, model__trust_remote_code=True)
    r = runner.invoke(app, ["train", "--plan", str(path), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert r.exit_code == 2
    assert str(path) in r.output and "model.trust_remote_code" in r.output and "--trust-remote-code" in r.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_plan_file_with_a_metric_module_is_refused_without_the_flag(tmp_path):
    path = _run_file(tmp_path, data__metrics=["evil_module:fn"])
    r = runner.invoke(app, ["train", "--plan", str(path), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert r.exit_code == 2
    assert str(path) in r.output and "data.metrics" in r.output and "--allow-metric-module" in r.output


def test_the_command_line_allows_and_decides(tmp_path):
    spec = resolve.read_run_file(_run_file(tmp_path, model__trust_remote_code=True, data__metrics=["m:f"]))
    ok = trusted_file_run(spec, tmp_path, trust_remote_code=True, allow_metric_module=True)
    assert ok.model.trust_remote_code and ok.data.metrics == ("m:f",)
    # a file without the field does not keep trust the command line did not give, nor lose what it gave
    plain = resolve.read_run_file(_run_file(tmp_path))
    assert trusted_file_run(plain, tmp_path, trust_remote_code=True, allow_metric_module=False).model.trust_remote_code
    assert not trusted_file_run(
        plain, tmp_path, trust_remote_code=False, allow_metric_module=False
    ).model.trust_remote_code
