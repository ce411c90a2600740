"""OpenTelemetry traces (the ``otel`` extra; DESIGN 9.1 "Traces"): every use of opentelemetry in
the package is here.

- Inserting: the W3C trace context of the caller's current span (its ``traceparent`` and
  ``tracestate`` headers) is stored with the job, checked in SQL (``jobs.trace_context``).
- Running: each attempt is a span ``jobmaster.run <type_key>.<task_key>`` of kind CONSUMER, a
  child of the stored context (else of whatever is current where the job runs), current while the
  task runs (in its thread too, not in a process), ended with the attempt's outcome.

This module never imports opentelemetry itself: it uses the copy the application imported. A
process that has not imported ``opentelemetry.trace`` has no span whose context could be stored
and no tracer provider to report to, so there (without the extra, or with it unused) each call
here costs a dictionary look-up. Tracing never fails a job: an error of its own is logged, once.
"""

from __future__ import annotations

import logging
import sys
import uuid
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ("NO_CONTEXT", "Run", "current_context", "start_run")

logger = logging.getLogger(__name__)

#: (traceparent, tracestate) when there is no span to store
NO_CONTEXT: tuple[None, None] = (None, None)
#: how long a span's status description may be (a failure's message can be long)
MAX_DESCRIPTION = 1000

_TRACE_MODULE = "opentelemetry.trace"
_failed = False  # an error of our own was logged


class _API:
    """What a run's span needs of opentelemetry, looked up once (on the first run traced)."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context: ModuleType = context
        self.trace: ModuleType = trace
        self.propagator: TraceContextTextMapPropagator = TraceContextTextMapPropagator()
        # before a provider is set, a proxy that delegates to it once it is
        self.tracer: Tracer = trace.get_tracer("jobmaster_async")
        self.consumer = trace.SpanKind.CONSUMER
        self.status = trace.Status
        self.error = trace.StatusCode.ERROR


_api: _API | None = None


def current_context() -> tuple[str | None, str | None]:
    """The W3C ``traceparent`` and ``tracestate`` (None when empty) of the current span, for the
    job about to be inserted; NO_CONTEXT when there is none."""
    trace = sys.modules.get(_TRACE_MODULE)
    if trace is None:
        return NO_CONTEXT
    try:
        span_context = trace.get_current_span().get_span_context()
        if not span_context.is_valid:
            return NO_CONTEXT
        # what TraceContextTextMapPropagator.inject writes, without a carrier dict
        traceparent = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
        return traceparent, span_context.trace_state.to_header() or None
    except Exception:
        _log_failure("reading the current span's context")
        return NO_CONTEXT


class Run:
    """The span of one attempt of a job, current (in the context of the task that started it)
    until ``end``."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self._span = span
        self._token = token

    def end(
        self,
        outcome: str,
        error_type: str | None = None,
        message: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """Ends the span with the attempt's ``outcome`` (completed, failed, retried, cancelled,
        released); a failed attempt's span gets the ERROR status and the exception, as
        ``Span.record_exception`` records it."""
        assert _api is not None  # a Run exists: _start_run set it
        try:
            span = self._span
            span.set_attribute("jobmaster.outcome", outcome)
            if error_type is not None:
                span.add_event(
                    "exception",
                    {
                        "exception.type": error_type,
                        "exception.message": message or "",
                        "exception.stacktrace": traceback or "",
                        "exception.escaped": "False",
                    },
                )
                description = f"{error_type}: {message}" if message else error_type
                span.set_status(_api.status(_api.error, description[:MAX_DESCRIPTION]))
            span.end()
        except Exception:
            _log_failure("ending a job's span")
        finally:
            _api.context.detach(self._token)


def start_run(task: str, job_id: uuid.UUID, attempt: int, trace_context: Any) -> Run | None:
    """The span of attempt ``attempt`` of a job of ``task``, started and made current; None when
    the application has not imported opentelemetry (no tracing). ``trace_context``: the job's
    stored context (a dict of the W3C headers) or None."""
    if sys.modules.get(_TRACE_MODULE) is None:
        return None
    try:
        return _start_run(task, job_id, attempt, trace_context)
    except Exception:
        _log_failure("starting a job's span")
        return None


def _start_run(task: str, job_id: uuid.UUID, attempt: int, trace_context: Any) -> Run:
    global _api
    api = _api = _api or _API()
    # the stored context, else the current one (extract starts from an empty context)
    parent = api.propagator.extract(trace_context) if isinstance(trace_context, dict) else None
    span = api.tracer.start_span(
        f"jobmaster.run {task}",
        context=parent,
        kind=api.consumer,
        attributes={
            "messaging.system": "jobmaster",
            "messaging.operation.type": "process",
            "jobmaster.task": task,
            "jobmaster.job_id": str(job_id),
            "jobmaster.attempt": attempt,
        },
    )
    return Run(span, api.context.attach(api.trace.set_span_in_context(span)))


def _log_failure(what: str) -> None:
    global _failed
    if not _failed:
        _failed = True
        logger.warning("tracing: %s failed (jobs run on untraced where it fails; said once)", what, exc_info=True)
