"""The errors ``nodefleet up`` reports, and the exit codes the CLI gives them.

:class:`~nodefleet.errors.StartupError` (the tree's branch, re-exported here)
carries the exit code (2 for a taken port or data directory, 1 for anything
else); :class:`StartupInterrupted` means a stop was requested while starting.
"""

from __future__ import annotations

from ..errors import EXIT_FAILED, StartupError

EXIT_USAGE = 2
EXIT_FORCED = 130

__all__ = ["EXIT_FAILED", "EXIT_FORCED", "EXIT_USAGE", "StartupError", "StartupInterrupted"]


class StartupInterrupted(StartupError):
    """A stop was requested while starting; everything started has been stopped."""

    exit_code = 0
