"""`ftopt serve`: the planner as a local web page (see docs/serve.md).

The command is ftopt.cli.serve; query.py reads the page's URL query into one typed `PlanQuery`; planning.py runs the
same `ftopt.planner.plan` the CLI runs; views.py derives what the page draws from the plan JSON alone; jobs.py runs slow
(traced) plans in a child process that can be cancelled; runs.py opens bench result folders under the one root
given on the command line; server.py is the stdlib HTTP server and routes.py what each URL answers; text.py holds
the page's words in English and Japanese (the report's terms reused). static/ is the page, with Chart.js vendored.
"""
