"""``python -m jobmaster_async``: the ``jobmaster-async`` command."""

from __future__ import annotations

from .cli import main

main()
