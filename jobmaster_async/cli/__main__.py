"""``python -m jobmaster_async.cli``: the same command as ``python -m jobmaster_async``."""

from __future__ import annotations

from . import main

main()
