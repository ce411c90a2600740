"""Internal events that tests and embedding apps can await (jobs claimed, outcomes recorded)."""

from __future__ import annotations

from ..db.waiting import Signal

__all__ = ("Signal",)
