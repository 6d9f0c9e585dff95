"""`ftopt serve`: the command (registered in ftopt.cli.app)."""

from __future__ import annotations

from typing import Annotated

import typer

from ftopt.cli.common import path_flag, run_body
from ftopt.spec.errors import FtoptError

DEFAULT_HOST = "127.0.0.1"  # loopback: the page reads local model folders and result folders
DEFAULT_PORT = 8080


def serve(
    host: Annotated[
        str,
        typer.Option("--host", help="address to listen on; anything but loopback exposes the planner to the network"),
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port)")] = DEFAULT_PORT,
    results: Annotated[
        str | None,  # a str: typer turns '' into Path(''), the current folder
        typer.Option(
            "--results", metavar="<path>", help="folder whose bench result folders the page may open [default: none]"
        ),
    ] = None,
):
    """The planner as a local web page: inputs, the plan, charts, shareable links, reports."""

    def body():
        from ftopt.serve.server import is_loopback, make_server

        if not host.strip():  # '' binds every interface, the opposite of what a missing address suggests
            raise FtoptError("--host is empty; give an address such as 127.0.0.1, or leave it out for loopback.")
        results_dir = path_flag(results, "--results")
        if not 0 <= port <= 65535:
            raise FtoptError(f"--port must be between 0 and 65535, got {port}.")
        if results_dir is not None and not results_dir.is_dir():
            raise FtoptError(f"--results {results} is not a folder.")
        try:
            server = make_server(host, port, results_dir)
        except OSError as e:
            raise FtoptError(f"Cannot listen on {host}:{port}: {e.strerror}.") from None
        bound_host, bound_port = server.server_address[:2]
        if not is_loopback(host):
            typer.echo(
                f"warning: listening on {host}, not loopback: anyone who can reach this address can use the "
                "planner (it then reads no local file: no model folder, config.json or hardware JSON file).",
                err=True,
            )
        from ftopt.serve.jobs import plan_body
        from ftopt.serve.query import PlanQuery

        # imports the planner now, not in the first page's request
        plan_body(PlanQuery(method="analytic").model_dump(), None, True)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host  # an IPv6 address in a URL (RFC 3986)
        typer.echo(f"ftopt serve: listening on http://{shown}:{bound_port}/ (Ctrl-C stops)", err=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
            server.RequestHandlerClass.app.close()

    run_body(body)
