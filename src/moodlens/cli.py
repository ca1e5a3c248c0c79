"""The `moodlens` command. Each subcommand lives beside the stage it drives and is registered here.

Subcommand modules import heavy things (TensorFlow, Spark, models) inside their functions, so
`moodlens --help` stays fast.
"""

from __future__ import annotations

import importlib

import click

from moodlens import __version__

# module:attribute of each subcommand (a click.Command)
COMMANDS = {
    "train": "moodlens.train_cli:train_command",
    "evaluate": "moodlens.evaluate:evaluate_command",
    "export": "moodlens.train_cli:export_command",
    "analyze": "moodlens.cli_analyze:analyze_command",
    "serve": "moodlens.web.serve:serve_command",
    "batch": "moodlens.batch:batch_command",
    "spark-batch": "moodlens.spark:spark_batch_command",
    "spark-prepare": "moodlens.spark:spark_prepare_command",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if not exc.name or not exc.name.startswith("moodlens"):
                raise click.ClickException(
                    f"`moodlens {name}` needs {exc.name}, which is not installed "
                    f"(for training: pip install 'moodlens[train]')") from exc
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moodlens")
def main() -> None:
    """moodlens: facial-expression recognition (happy, sad, neutral, angry), offline."""
