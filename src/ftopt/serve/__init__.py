"""`ftopt serve`: the planner as a local web page (see docs/serve.md).

query.py reads the page's URL query into one typed `PlanQuery`; planning.py runs the same `ftopt.plan` the CLI runs
and derives the page's views from its JSON; jobs.py runs slow (traced) plans in a child process that can be
cancelled; runs.py opens bench result folders under the one root given on the command line; server.py is the
stdlib HTTP server; text.py holds the page's words in English and Japanese (the report's terms reused).
"""
