"""The ``localize`` command line. Each subcommand lives beside the code it drives and is imported lazily."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from .errors import LocalizeError, LocalizeWarning
from .refine.errors import RefineError
from .version import __version__

# name -> (module, function adding arguments, function running, help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "models": ("localize.cli", "add_models_arguments", "run_models", "list model aliases and supported families"),
    "discover": ("localize.heads.command", "add_arguments", "run", "find a model's localization heads"),
    "ground": ("localize.commands.ground", "add_arguments", "run", "ground a phrase in an image: box, mask, overlay"),
    "demo": (
        "localize.commands.ground",
        "add_demo_arguments",
        "run_demo",
        "render a shapes scene and ground 3 expressions",
    ),
    "bench": (
        "localize.benchmarks.command",
        "add_arguments",
        "run",
        "REC / RES benchmarks, resumable; --compare two runs",
    ),
    "reproduce": (
        "localize.benchmarks.command",
        "add_reproduce_arguments",
        "run_reproduce",
        "the paper's protocol end to end",
    ),
    "explore": (
        "localize.heads.explore_app",
        "add_arguments",
        "run",
        "every head's map for an image and phrase, in the browser (Gradio)",
    ),
    "finetune": (
        "localize.finetune.command",
        "add_arguments",
        "run",
        "Where-to-Look fine-tuning of the localization heads",
    ),
}
DATA_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "check": (
        "localize.data.registry",
        "add_data_check_arguments",
        "run_data_check",
        "check a dataset's layout and files",
    ),
}


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``localize models``."""
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_models(args: argparse.Namespace) -> int:
    """Print the aliases and what each adapter supports."""
    from .adapters import ADAPTERS
    from .models import known_aliases

    aliases = known_aliases()
    families = [adapter.describe() for adapter in ADAPTERS]
    if args.json:
        print(json.dumps({"aliases": aliases, "families": families}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Model aliases")
    table.add_column("alias")
    table.add_column("resolves to")
    for alias, target in sorted(aliases.items()):
        table.add_row(alias, target)
    console.print(table)
    table = Table(title="Adapters (chosen by config.model_type)")
    for column in ("family", "model_types", "default prompt", "query", "prefix reuse", "views", "notes"):
        table.add_column(column)
    for family in families:
        query = "last phrase token" + (f" (-{family['query_offset'] + 1})" if family["query_offset"] else "")
        table.add_row(
            family["family"], ", ".join(family["model_types"]), repr(family["template"]), query,
            "yes" if family["prefix_reuse"] else "no (prefix-LM)", ", ".join(family["views"]), family["notes"],
        )  # fmt: skip
    console.print(table)
    console.print("Any hub id or local directory of a supported model_type works too: --model DIR")
    return 0


def _load(entry: tuple[str, str, str, str]) -> tuple[Callable, Callable]:
    module = importlib.import_module(entry[0])
    return getattr(module, entry[1]), getattr(module, entry[2])


def _register(
    subparsers: argparse._SubParsersAction, commands: dict[str, tuple[str, str, str, str]], wanted: str | None
) -> None:
    """Add each command; only ``wanted``'s module is imported (its arguments and handler), so ``localize --help``
    or ``--version`` import neither torch nor transformers."""
    for name, entry in commands.items():
        command = subparsers.add_parser(name, help=entry[3], description=entry[3])
        if name == wanted:
            add, run = _load(entry)
            add(command)
            command.set_defaults(handler=run)


def _named(argv: Sequence[str], position: int = 0) -> str | None:
    """The ``position``-th word of ``argv`` that is not an option (the command, then its action)."""
    words = [a for a in argv if not a.startswith("-")]
    return words[position] if len(words) > position else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser, with the arguments of the command ``argv`` names (all commands listed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="localize", description=__doc__)
    parser.add_argument("--version", action="version", version=f"localize {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or LOCALIZE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register(sub, COMMANDS, _named(argv))
    data = sub.add_parser("data", help="dataset utilities")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _register(actions, DATA_COMMANDS, _named(argv, 1) if _named(argv) == "data" else None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``localize`` console script: every failure a user can meet is one line on stderr and exit
    code 2 (``--debug`` or ``LOCALIZE_DEBUG=1`` re-raises it with its traceback)."""
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("LOCALIZE_DEBUG", "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("localize: interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `localize ... | head`: the reader left; say nothing more
        try:  # and let the interpreter's final flush of stdout go nowhere rather than fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except Exception as err:
        if debug:
            raise
        print(f"localize: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The toolkit's warnings as one ``localize: warning:`` line; others as Python prints them."""
    if issubclass(category, LocalizeWarning):
        print(f"localize: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _one_line(err: BaseException) -> str:
    """What went wrong, in one line: the toolkit's own errors as they are; anything else with its kind, the file it
    names, and where to see more."""
    if isinstance(err, (LocalizeError, RefineError)):
        return " ".join(str(err).split())
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where} (rerun with --debug for the traceback)"
    text = " ".join(str(err).split())[:500] or "(no message)"
    return f"{type(err).__name__}: {text} (rerun with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
