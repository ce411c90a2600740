"""Which of the library's statements a claim ran: a spy on the claim connection's catalogue (the
claimer keeps no counters for tests)."""

from __future__ import annotations

from typing import Any

import pytest

from jobmaster_async import JobMaster


class _Recording:
    """A Catalogue that notes the name of each statement looked up in it."""

    def __init__(self, catalogue: Any, names: list[str]) -> None:
        self._catalogue = catalogue
        self._names = names

    def __getitem__(self, name: str) -> str:
        self._names.append(name)
        return str(self._catalogue[name])

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._catalogue, attribute)


def claim_statements(jm: JobMaster, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the statements ``jm``'s claims run from now on, in order (clear it at will):
    ``claim_jobs_fast`` (the plain statement), ``claim_jobs`` (the function, for limits),
    ``promote_due_jobs``."""
    names: list[str] = []
    claimer = jm._store.claimer
    monkeypatch.setattr(claimer, "sql", _Recording(claimer.sql, names))
    return names


def plain_claims(names: list[str]) -> int:
    """How many claims the plain statement made: each run of it that did not hand the claim on to
    claim_jobs() (which runs next when it does)."""
    return sum(
        1
        for position, name in enumerate(names)
        if name == "claim_jobs_fast" and names[position + 1 : position + 2] != ["claim_jobs"]
    )
