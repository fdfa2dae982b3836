"""What the commands print: rows as a table, CSV or JSON (data, on stdout), and notes (on stderr)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, kw_only=True)
class Column:
    """One output column: ``human`` formats a table cell, ``machine`` a CSV cell."""

    key: str
    title: str
    human: Callable[[Any], str] = lambda value: "" if value is None else str(value)
    machine: Callable[[Any], Any] = lambda value: "" if value is None else value
    justify: str = "left"


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[Column], fmt: str, *, title: str | None = None) -> None:
    """Print rows as a rich table, CSV (header first) or a JSON array (the rows as answered)."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(column.key for column in columns)
        for row in rows:
            writer.writerow(column.machine(row.get(column.key)) for column in columns)
        click.echo(buffer.getvalue(), nl=False)
    elif rows:  # an empty table says nothing; the caller explains the empty result
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column.title, justify=column.justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*(column.human(row.get(column.key)) for column in columns))
        console().print(table)


def console() -> Console:
    """A console on the current stdout; wide when it is not a terminal, so pipes get whole lines."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)


def note(message: str) -> None:
    """Something the user should read that is not data (goes to stderr)."""
    click.echo(message, err=True)
