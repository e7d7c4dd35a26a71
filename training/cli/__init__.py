"""The `rewards` command line (typer)."""

from training.cli.app import app, main

__all__ = ["app", "main"]
