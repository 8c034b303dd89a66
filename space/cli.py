"""SPEC arguments of the command-line tools (a preset name, a genome JSON file, or inline JSON), and what
every command shares: a parser whose mistakes are one `error:` line, and the exit codes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

from .genome import Genome, GenomeError
from .presets import PRESETS, get_preset

__all__ = ["load_spec", "fail", "run_cli", "plural", "HelpFormatter", "CliParser"]


def load_spec(spec: str) -> Genome:
    """Preset name, path of a genome JSON file, or a JSON object given inline; GenomeError otherwise."""
    if spec.lstrip().startswith("{"):
        return Genome.from_json(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text()
        except OSError as e:
            raise GenomeError(f"cannot read {spec}: {e.strerror}") from None
        try:
            return Genome.from_json(text)
        except GenomeError as e:
            raise GenomeError(f"{spec}: {e}") from None
    if spec in PRESETS:
        return get_preset(spec)
    raise GenomeError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a genome JSON file")


def plural(n: int, noun: str) -> str:
    """'1 epoch', '8 epochs': a count for the commands' messages."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run_cli(main: Callable[[], int | None], errors: tuple[type[BaseException], ...] = (GenomeError,)) -> NoReturn:
    """Run a command's main; a user error becomes one line on stderr and exit code 2, Ctrl-C exit 130."""
    try:
        sys.exit(main() or 0)
    except errors as e:
        fail(str(e))
    except KeyboardInterrupt:
        print("interrupted: run the same command again", file=sys.stderr)
        sys.exit(130)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the description as written and every option's default (unless its help already
    names one, or there is none: None, or False for a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class CliParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes end in one `error: ...` line and exit code 2 (not usage + message)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(message)
