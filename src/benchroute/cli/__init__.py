"""The ``benchroute`` command line (Typer + Rich): a thin shell over data, embed, router and experiments."""

from benchroute.cli.commands import app, main

__all__ = ["app", "main"]
