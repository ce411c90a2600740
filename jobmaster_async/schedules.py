"""``Cron`` schedules, as imported before the definitions became a package: see
``definitions/schedules.py``."""

from __future__ import annotations

from .definitions.schedules import Cron, as_crons

__all__ = ("Cron", "as_crons")
