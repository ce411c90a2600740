"""``python -m jobmaster_async``: the ``jobmaster-async`` command.

The import is absolute and the call guarded: the process executor's worker processes (anyio) load
this module again by its path, under another name, and must neither fail on a relative import nor
run the command."""

from __future__ import annotations

from jobmaster_async.cli import main

if __name__ == "__main__":
    main()
