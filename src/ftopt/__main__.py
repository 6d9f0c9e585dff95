"""`python -m ftopt` = the `ftopt` command (used by bench to run each combination in its own process)."""

from ftopt.cli.entry import main

main()
