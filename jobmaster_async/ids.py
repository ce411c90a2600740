"""Job ids as people type them: the full id, or any unique prefix or suffix of its hex digits,
with or without dashes. One rule for every tool that takes ids from people (the CLI and the
dashboard).

Job ids are time-ordered (DESIGN: 48 bits of milliseconds first), so the first digits are the
same for every job of a moment; the last 12 hex digits (the last group of the text form) are
random. Listings show those (``short_id``); any unique part of an id is accepted back."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .errors import InvalidJobId, JobMasterError, JobNotFound

if TYPE_CHECKING:
    from .app import JobMaster

__all__ = ("SHORT_ID_DIGITS", "AmbiguousJobId", "Candidate", "find_jobs", "resolve_job_id", "short_id")

#: How many hex digits of an id listings show: the last ones, which are random.
SHORT_ID_DIGITS = 12

#: How many matching jobs an ambiguous part lists.
MAX_CANDIDATES = 10

_HEX = re.compile(r"[0-9a-f]{1,32}")
# the hex positions before which the text form of a uuid has a dash
_DASHES = (8, 12, 16, 20)

# The jobs whose id starts with the digits (a range of the primary key: the index serves it) or
# ends with them (the text form, without index: a scan, fine for a command a person types).
_FIND = """
SELECT j.job_id, t.type_key, t.task_key, j.status, j.created_at
  FROM {schema}.jobs AS j JOIN {schema}.tasks AS t ON t.task_id = j.task_id
 WHERE j.job_id IN ((SELECT p.job_id FROM {schema}.jobs AS p
                      WHERE p.job_id >= $1::uuid AND p.job_id <= $2::uuid ORDER BY p.job_id LIMIT $4)
                    UNION ALL
                    (SELECT s.job_id FROM {schema}.jobs AS s WHERE s.job_id::text LIKE $3 LIMIT $4))
 ORDER BY j.created_at DESC, j.job_id
 LIMIT $4
"""


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


async def find_jobs(jm: JobMaster, text: str, limit: int = MAX_CANDIDATES + 1) -> list[Candidate]:
    """The jobs (at most ``limit``, newest first) whose id starts or ends with the hex digits of
    ``text``."""
    digits = digits_of(text)
    low = uuid.UUID(digits.ljust(32, "0"))
    high = uuid.UUID(digits.ljust(32, "f"))
    pattern = "%" + _dashed_suffix(digits)
    async with jm.connection() as conn:
        rows = await conn.fetch(jm.sql.render(_FIND), low, high, pattern, limit)
    found: dict[uuid.UUID, Candidate] = {}
    for row in rows:
        found.setdefault(row["job_id"], Candidate(**dict(row)))
    return list(found.values())


async def resolve_job_id(jm: JobMaster, text: str | uuid.UUID) -> uuid.UUID:
    """The id of the one job ``text`` names: a full id as it is (whether a job has it or not:
    the caller says "no job"), else the one job whose id starts or ends with its digits.
    Raises InvalidJobId (not hex digits), JobNotFound (no job matches) or AmbiguousJobId."""
    if isinstance(text, uuid.UUID):
        return text
    digits = digits_of(text)
    if len(digits) == 32:
        return uuid.UUID(digits)
    candidates = await find_jobs(jm, text)
    if not candidates:
        raise JobNotFound(f"no job id starts or ends with {text.strip()!r}")
    if len(candidates) > 1:
        raise AmbiguousJobId(text.strip(), candidates)
    return candidates[0].job_id
