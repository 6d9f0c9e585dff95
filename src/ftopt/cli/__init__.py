"""The `ftopt` command: thin Typer commands over the layers below, and the terminal display."""
