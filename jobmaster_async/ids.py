"""Job ids as people type them: the full id, or any unique prefix or suffix of its hex digits,
with or without dashes. One rule for every tool that takes ids from people (the CLI, the
dashboard).

Job ids are time-ordered (DESIGN: 48 bits of milliseconds first), so the first digits are the
same for every job of a moment; the last 12 hex digits (the last group of the text form) are
random. Listings show those (``short_id``); any unique part of an id is accepted back."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .errors import InvalidJobId, JobMasterError, JobNotFound

__all__ = ("SHORT_ID_DIGITS", "AmbiguousJobId", "Candidate", "id_range", "resolve_job_id", "short_id")

#: How many hex digits of an id listings show: the last ones, which are random.
SHORT_ID_DIGITS = 12

#: How many matching jobs an ambiguous part lists.
MAX_CANDIDATES = 10

_HEX = re.compile(r"[0-9a-f]{1,32}")
# the hex positions before which the text form of a uuid has a dash
_DASHES = (8, 12, 16, 20)


def short_id(job_id: uuid.UUID) -> str:
    """What listings show of an id: its last 12 hex digits (random, unlike the first ones)."""
    return job_id.hex[-SHORT_ID_DIGITS:]


@dataclass(frozen=True)
class Candidate:
    """A job that a part of an id matches."""

    job_id: uuid.UUID
    type_key: str
    task_key: str
    status: str
    created_at: datetime | None

    def describe(self) -> str:
        return f"{self.job_id}  {self.type_key}.{self.task_key}  {self.status}"


class AmbiguousJobId(JobMasterError, LookupError):
    """That part of a job id matches several jobs."""

    def __init__(self, text: str, candidates: list[Candidate]) -> None:
        self.text = text
        self.candidates = candidates
        shown = candidates[:MAX_CANDIDATES]
        more = " (and more)" if len(candidates) > MAX_CANDIDATES else ""
        lines = "\n".join(f"  {c.describe()}" for c in shown)
        matches = f"it matches {len(shown)} jobs{more}"
        super().__init__(f"job id {text!r} is ambiguous: {matches}; give more digits:\n{lines}")


def digits_of(text: str) -> str:
    """The hex digits someone typed for an id (dashes, spaces, braces, ``urn:uuid:`` and an
    ellipsis left out), lower case; InvalidJobId when that is not 1 to 32 hex digits."""
    cleaned = text.strip().lower().removeprefix("urn:uuid:").strip("{}…. ").replace("-", "")
    if not _HEX.fullmatch(cleaned):
        raise InvalidJobId(
            f"not a job id: {text!r} (give a job id, or a part of it that only one job has: "
            "its first or last hex digits, such as the 12 that `jobs` shows)"
        )
    return cleaned


def _dashed_suffix(digits: str) -> str:
    """The text form of the last ``len(digits)`` hex digits of a uuid, dashes included."""
    start = 32 - len(digits)
    out = []
    for offset, digit in enumerate(digits):
        if offset and start + offset in _DASHES:
            out.append("-")
        out.append(digit)
    return "".join(out)


def id_range(text: str) -> tuple[uuid.UUID, uuid.UUID, str]:
    """What ids ``text`` names: those from the first to the last of the range its hex digits
    start, and those whose text form is LIKE the pattern (ending with the digits)."""
    digits = digits_of(text)
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f")), "%" + _dashed_suffix(digits)


class JobFinder(Protocol):
    """What finds the jobs a part of an id names (``JobMaster.find_jobs``)."""

    async def find_jobs(self, text: str, limit: int = ...) -> list[Candidate]: ...


async def resolve_job_id(jm: JobFinder, text: str | uuid.UUID) -> uuid.UUID:
    """The id of the one job ``text`` names: a full id as it is (whether a job has it or not:
    the caller says "no job"), else the one job whose id starts or ends with its digits.
    Raises InvalidJobId (not hex digits), JobNotFound (no job matches) or AmbiguousJobId."""
    if isinstance(text, uuid.UUID):
        return text
    digits = digits_of(text)
    if len(digits) == 32:
        return uuid.UUID(digits)
    candidates = await jm.find_jobs(text)
    if not candidates:
        raise JobNotFound(f"no job id starts or ends with {text.strip()!r}")
    if len(candidates) > 1:
        raise AmbiguousJobId(text.strip(), candidates)
    return candidates[0].job_id
