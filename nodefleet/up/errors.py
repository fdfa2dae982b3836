"""The errors ``nodefleet up`` reports, and the exit codes the CLI gives them.

:class:`StartupError` carries the exit code (2 for a taken port or data
directory, 1 for anything else); :class:`StartupInterrupted` means a stop was
requested while starting.
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_FORCED = 130


class StartupError(RuntimeError):
    """The system could not come up; the message says what to do next."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StartupInterrupted(Exception):
    """A stop was requested while starting; everything started has been stopped."""
