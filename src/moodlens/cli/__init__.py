"""The `moodlens` command. Each subcommand lives beside the stage it drives and is registered here.

Subcommand modules import heavy things (TensorFlow, Spark, models) inside their functions, so
`moodlens --help` stays fast.
"""

from __future__ import annotations

import functools
import importlib

import click

from moodlens import __version__

# module:attribute of each subcommand (a click.Command), and the install extra it needs beyond serving
COMMANDS = {
    "train": "moodlens.cli.train:train_command",
    "evaluate": "moodlens.cli.train:evaluate_command",
    "export": "moodlens.cli.train:export_command",
    "analyze": "moodlens.cli.analyze:analyze_command",
    "serve": "moodlens.cli.serve:serve_command",
    "batch": "moodlens.cli.jobs:batch_command",
    "spark-batch": "moodlens.cli.jobs:spark_batch_command",
    "spark-prepare": "moodlens.cli.jobs:spark_prepare_command",
}
EXTRAS = {"train": "train", "export": "train", "evaluate": "eval", "batch": "batch", "spark-batch": "batch",
          "spark-prepare": "batch"}


def missing_extra(command: str, exc: ModuleNotFoundError) -> click.ClickException:
    """The one-line error for a command whose extra is not installed."""
    extra = EXTRAS.get(command)
    how = f"pip install 'moodlens[{extra}]'" if extra else "reinstall moodlens"
    return click.ClickException(f"`moodlens {command}` needs {exc.name}, which is not installed: {how}")


def _third_party(exc: ModuleNotFoundError) -> bool:
    return bool(exc.name) and not exc.name.startswith("moodlens")


def with_extra_check(command: click.Command, name: str) -> click.Command:
    """Turn a missing third-party module inside `command` (imports are lazy) into `missing_extra`'s error."""
    callback = command.callback
    if callback is None or getattr(callback, "_checks_extra", False):
        return command

    @functools.wraps(callback)
    def run(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if not _third_party(exc):
                raise
            raise missing_extra(name, exc) from exc

    run._checks_extra = True
    command.callback = run
    return command


class ModelParam(click.ParamType):
    """`--model`: an existing model file, or the name of a shipped alternative (engine.classify.ALTERNATIVES)."""

    name = "model"

    def __init__(self, suffixes: tuple[str, ...] = (".tflite",)) -> None:
        self.suffixes = suffixes

    def convert(self, value, param, ctx):
        from moodlens.engine.classify import ALTERNATIVES, model_file

        path = model_file(value)
        if not path.is_file():
            names = ", ".join(ALTERNATIVES)
            self.fail(f"{value!r} does not exist: give a model file ({' or '.join(self.suffixes)}) or a shipped "
                      f"model's name ({names})", param, ctx)
        return str(path)


MODEL_HELP = "A .tflite expression model instead of the shipped one, or 'photos': the 4-class model fused with " \
    "face-api.js's, better on real photos and worse on FER2013 (its model card)."


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        try:
            return with_extra_check(getattr(importlib.import_module(module), attr), name)
        except ModuleNotFoundError as exc:
            if not _third_party(exc):
                raise
            raise missing_extra(name, exc) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moodlens")
def main() -> None:
    """moodlens: facial-expression recognition (happy, sad, neutral, angry), offline."""
