"""The settings of a JobMaster and its worker, parsed and validated once.

``JobMaster(...)`` takes them as keyword arguments (the CLI's options map onto the same names);
the worker's services read them from here. ``JobMasterSettings.of(...)`` fills in the defaults
that depend on other settings (given as None). (The CLI's own ``cli.context.Settings`` is what
its command line names: the DSN, the schema, the verbosity.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError

__all__ = ("DEFAULT_MAX_RESULT_BYTES", "DEFAULT_SYSTEM_PROCESS_UNITS", "JobMasterSettings")

#: The default of the ``max_result_bytes`` setting: the JSON text of a result, at most (worker.bounds).
DEFAULT_MAX_RESULT_BYTES = 4 * 1024 * 1024

DEFAULT_SYSTEM_PROCESS_UNITS = 10_000


def _default_units() -> int:
    return int(os.environ.get("JOBMASTER_SYSTEM_PROCESS_UNITS", DEFAULT_SYSTEM_PROCESS_UNITS))


@dataclass(frozen=True)
class JobMasterSettings:
    """A JobMaster's settings (its keyword arguments), validated once."""

    #: the process's budget of process units (JOBMASTER_SYSTEM_PROCESS_UNITS, else 10,000)
    system_process_units: int = field(default_factory=_default_units)
    #: connections of the pool at most
    pool_size: int = 10
    #: seconds before the first retry of a failed job, doubling with each attempt (an hour at most)
    retry_backoff: float = 1.0
    #: seconds between the heartbeats of a worker holding jobs
    heartbeat_interval: float = 5.0
    #: seconds without a heartbeat after which a worker is lost and its jobs are rescued
    heartbeat_lapse: float = 30.0
    #: seconds between the safety polls of an idle worker (NOTIFY wakes it otherwise)
    poll_interval: float = 5.0
    #: the deadline of each round trip a worker makes (deploy's excepted) and of opening a
    #: connection, and about how soon TCP keepalives find a vanished server; by default half the
    #: heartbeat lapse, so that a worker cut off notices before others rescue its jobs
    connection_timeout: float = 15.0
    #: how often a worker (run_forever, or pop_job/run) looks for jobs of lost workers and puts
    #: them back: a lost job waits at most heartbeat_lapse plus this; by default half the lapse
    rescue_interval: float = 15.0
    #: seconds a worker waits at start-up for a read-write server (refused or unanswered
    #: connections, a standby not promoted yet: a failover) before it gives up
    wait_for_database: float = 60.0
    #: seconds between the background prunings of run_forever (jittered; one worker of a schema
    #: prunes at a time); 0 switches it off
    prune_interval: float = 60.0
    #: a result whose JSON is longer (bytes) fails its job for good, saying so (worker.bounds)
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    @classmethod
    def of(cls, **options: Any) -> JobMasterSettings:
        """Settings from keyword options, where None means the default."""
        given = {name: value for name, value in options.items() if value is not None}
        lapse = given.get("heartbeat_lapse", cls.heartbeat_lapse)
        given.setdefault("connection_timeout", lapse / 2)
        given.setdefault("rescue_interval", lapse / 2)
        return cls(**given)

    def __post_init__(self) -> None:
        if self.system_process_units < 0:
            raise ConfigurationError(f"system_process_units must be >= 0, got {self.system_process_units}")
        if self.pool_size < 1:
            raise ConfigurationError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.retry_backoff < 0:
            raise ConfigurationError(f"retry_backoff must be >= 0, got {self.retry_backoff}")
        for name in ("heartbeat_interval", "heartbeat_lapse", "poll_interval", "connection_timeout", "rescue_interval"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.wait_for_database >= 0:
            raise ConfigurationError(f"wait_for_database must be >= 0, got {self.wait_for_database}")
        if not self.prune_interval >= 0:
            raise ConfigurationError(
                f"prune_interval must be >= 0 (0: no background pruning), got {self.prune_interval}"
            )
        if isinstance(self.max_result_bytes, bool) or not isinstance(self.max_result_bytes, int):
            raise ConfigurationError(f"max_result_bytes must be an int, got {self.max_result_bytes!r}")
        if self.max_result_bytes < 4:  # "null" fits
            raise ConfigurationError(f"max_result_bytes must be >= 4, got {self.max_result_bytes}")
        if self.heartbeat_interval >= self.heartbeat_lapse:
            raise ConfigurationError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be shorter than heartbeat_lapse "
                f"({self.heartbeat_lapse}), or every worker would be taken for lost"
            )
