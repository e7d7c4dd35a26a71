"""The `rewards` command: the Typer app and where each command comes from.

Commands live in modules by what they work on: ``program`` (import, catalog), ``data``
(simulate, features), ``train`` (train, evaluate, models), ``serve`` (serve, score-batch, keys,
demo), ``experiments`` (experiments, uplift), ``ope`` (off-policy evaluation of any
policy) and ``loop`` (retrain, data join-report). They import ``common`` only, never this
module, so registering them here makes no cycle. Heavy libraries are imported inside commands, so `--help` is instant.
"""

from __future__ import annotations

import typer

from training.cli.data import features_app, simulate
from training.cli.experiments import experiments_app, uplift_app
from training.cli.loop import data_app, retrain
from training.cli.ope import ope
from training.cli.program import catalog_app, import_app
from training.cli.serve import demo, keys_app, score_batch_cmd, serve
from training.cli.train import evaluate, models_app, train_app

app = typer.Typer(
    help="rewards-reco: personalized rewards and challenges for loyalty programs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(simulate)
app.command()(evaluate)
app.command("score-batch")(score_batch_cmd)
app.command()(serve)
app.command()(demo)
app.command()(ope)
app.command()(retrain)
app.add_typer(import_app, name="import")
app.add_typer(catalog_app, name="catalog")
app.add_typer(features_app, name="features")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(experiments_app, name="experiments")
app.add_typer(uplift_app, name="uplift")
app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
