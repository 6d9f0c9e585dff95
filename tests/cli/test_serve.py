"""`ftopt serve` as a user starts it: it says where it listens, serves the page, refuses bad flags in one line."""

import re
import subprocess
import sys
import urllib.request

from typer.testing import CliRunner

from ftopt.cli.app import app
from ftopt.serve.server import is_loopback


def test_serve_says_where_it_listens_and_serves_the_page(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftopt", "serve", "--port", "0", "--results", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not (m := re.search(r"listening on (http://127\.0\.0\.1:\d+/)", lines[-1] if lines else "")):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)  # EOF: it exited without listening
        page = urllib.request.urlopen(m.group(1), timeout=30).read().decode()
        assert '<label for="seq_len"' in page and "chart.umd.min.js" in page
        assert not any(line.startswith("warning") for line in lines)
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_flags_are_one_line():
    r = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert r.exit_code == 2 and r.output.strip() == "error: --port must be between 0 and 65535, got 70000."
    r = CliRunner().invoke(app, ["serve", "--results", "/no/such/folder"])
    assert r.exit_code == 2 and "--results /no/such/folder is not a folder" in r.output


def test_loopback_is_recognised():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")


def test_local_model_folders_only_on_loopback(tmp_path):
    from importlib import resources

    import pytest

    from ftopt.serve.planning import load_planned_model
    from ftopt.serve.query import PlanQuery
    from ftopt.spec.errors import FtoptError

    (tmp_path / "config.json").write_text(
        resources.files("ftopt.presets.models").joinpath("tiny-llama.json").read_text()
    )
    q = PlanQuery(model=str(tmp_path))
    assert load_planned_model(q, None, allow_local=True).name == tmp_path.name
    with pytest.raises(FtoptError, match="only when the server listens on loopback"):
        load_planned_model(q, None, allow_local=False)
    assert load_planned_model(PlanQuery(model="tiny-llama"), None, allow_local=False).name == "tiny-llama"


def test_the_page_defaults_are_the_cli_defaults():
    """A link without a parameter must render what `ftopt plan` prints without that flag."""
    import typer

    from ftopt.serve.query import PlanQuery

    defaults = {p.name: p.default for p in typer.main.get_command(app).commands["plan"].params}
    for name in ("model", "method", "lora_r", "currency", "full_only"):
        assert getattr(PlanQuery(), name) == defaults[name], name


def test_serve_listens_on_ipv6_loopback(tmp_path):
    import socket

    import pytest

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError as e:
        pytest.skip(f"no IPv6 here: {e}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftopt", "serve", "--host", "::1", "--port", "0"], stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        while not (m := re.search(r"listening on (http://\[::1\]:\d+/)", lines[-1] if lines else "")):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)  # EOF: it exited without listening
        assert not any(line.startswith("warning") for line in lines)  # ::1 is loopback
        assert '<label for="seq_len"' in urllib.request.urlopen(m.group(1), timeout=30).read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
