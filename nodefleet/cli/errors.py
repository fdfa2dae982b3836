"""The error the operator commands show: ``Error: <message>``, exit code 1, saying what to do next."""

from __future__ import annotations

import click


class CliError(click.ClickException):
    """An error shown to the user as ``Error: <message>`` with exit code 1."""
