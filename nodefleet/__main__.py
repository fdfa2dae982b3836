"""``python -m nodefleet`` is the ``nodefleet`` command."""

from .cli import main

main()
