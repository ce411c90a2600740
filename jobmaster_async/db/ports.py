"""What the worker's services need of the store, as protocols: the dispatcher and the listener
depend on these, not on the concrete ``Store`` (db.store), so a test or another store can stand
in for it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import asyncpg

from .sql import Catalogue
from .ticks import Ticks

__all__ = ("ListeningStore", "WorkerStore")


class ListeningStore(Protocol):
    """What the LISTEN loop (worker.listener) uses."""

    async def open_connection(self) -> asyncpg.Connection: ...
    async def listen(self, conn: asyncpg.Connection, callback: Callable[[Any, int, str, str], None]) -> None: ...
    async def ping(self, conn: asyncpg.Connection, deadline: float) -> None: ...


class WorkerStore(ListeningStore, Protocol):
    """What the dispatcher (worker.dispatcher) and the services it starts use."""

    @property
    def sql(self) -> Catalogue: ...
    @property
    def ticks(self) -> Ticks: ...

    async def probe(self) -> None: ...
    def discard_idle_connections(self) -> None: ...
    async def seconds_to_next_run(self, task_ids: list[int]) -> float | None: ...
    async def held_jobs(self, worker_id: uuid.UUID) -> list[tuple[uuid.UUID, int]]: ...
    async def set_abandoned(self, job_id: uuid.UUID, abandoned: bool) -> None: ...
    async def remove_worker(self, worker_id: uuid.UUID) -> None: ...
    async def release_jobs(self, worker_id: uuid.UUID, ids: Sequence[uuid.UUID], attempts: Sequence[int]) -> None: ...
