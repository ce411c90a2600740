"""What the database says on a schema's channel (sql/ triggers and functions, deploy): ``wake``
(jobs became runnable, or a process_limit slot freed), ``cancel:<job id>`` (a running job was
cancelled) and ``schedules`` (a deploy changed the periodic tasks' schedules). Payloads are parsed
into typed notifications here (events: the worker's listener emits them on its hub); nothing
else looks at their text. The worker's listener and the
dashboard's live view both LISTEN (Store.listen)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass

from ..events import Event

__all__ = ("CancelJob", "Notification", "SchedulesChanged", "Wake", "parse_notification")

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Wake(Event):
    """Jobs may be claimable: claim now."""


@dataclass(frozen=True, slots=True)
class CancelJob(Event):
    """A running job was cancelled: stop it if it runs here."""

    job_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SchedulesChanged(Event):
    """A deploy changed the schedules: the scheduler reads them again."""


Notification = Wake | CancelJob | SchedulesChanged

_CANCEL = "cancel:"


def parse_notification(payload: str) -> Notification | None:
    """The notification a payload says, or None for one this version does not know."""
    if payload == "wake":
        return Wake()
    if payload == "schedules":
        return SchedulesChanged()
    if payload.startswith(_CANCEL):
        with contextlib.suppress(ValueError):
            return CancelJob(uuid.UUID(payload[len(_CANCEL) :]))
    logger.debug("unknown notification %r ignored", payload)
    return None
