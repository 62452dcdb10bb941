"""Printing for people: plain text off a terminal, rich colours on one; tables,
times, confirmation, and the session every command works on."""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlinfra.engine import Session


def echo(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def echo_err(text: str) -> None:
    sys.stderr.write(text + "\n")


def directory(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "directory", None) or ".")


def stack_name(args: argparse.Namespace) -> str | None:
    return getattr(args, "stack", None)


def emit(text: str, style: str = "") -> None:
    """One line to stdout: coloured by rich on a terminal, plain text otherwise (rich
    costs more to import than a small plan takes to make)."""
    if not sys.stdout.isatty():
        echo(text)
        return
    from rich.text import Text

    _rich_console().print(Text(text, style=style))


@cache
def _rich_console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def print_lines(lines: list[tuple[str, str]]) -> None:
    for text, style in lines:
        emit(text, style)


def session_for(args: argparse.Namespace, command: str, *, write: bool) -> Session:
    """The project and its state, opened for writing or only for reading."""
    from mlinfra.engine import open_session

    return open_session(directory(args), stack_name(args), command, write=write,
                        log=lambda line: emit(line, "dim"),
                        new_state=bool(getattr(args, "new_state", False)))


def confirm(question: str) -> bool:
    echo(f"\n{question}\n  Only 'yes' will be accepted to approve.\n")
    sys.stdout.write("  Enter a value: ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip()
    echo()
    return answer == "yes"


def when(ts: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def seconds(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else "-"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
