"""The `rewards` command line (typer).

``app`` (the Typer app: registers every command), ``common`` (errors, options, and the checks
that a command's inputs exist), ``data`` (simulate, features), ``train`` (train, evaluate,
models), ``serve`` (serve, score-batch, keys, demo), ``experiments`` (experiments, uplift).

May import anything in ``training`` and ``serving``, but heavy libraries only inside commands,
so that `rewards --help` stays instant. Command modules import ``common``, never ``app``.
"""

from training.cli.app import app, main

__all__ = ["app", "main"]
