"""One declared sidecar: its settings, its checks at declaration, and ``enqueue``."""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args, get_origin

from ._payloads import PayloadCodec
from ._records import JobContext, JobRef, RunType
from ._retry import RetryPolicy
from ._trigger import Trigger
from .exceptions import InvalidArgument, InvalidDeclaration

if TYPE_CHECKING:
    from ._app import Sidecars

__all__ = ("Handler", "Sidecar")

P = TypeVar("P")

Handler = Callable[[JobContext[P]], object]
"""A handler: an async or sync function taking a :class:`JobContext`."""

OnFull = Literal["wait", "raise"]
Misfire = Literal["skip", "latest", "all"]
Overlap = Literal["skip", "allow"]

_HANDLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}")
_UNSET: Any = object()

# Attempts allowed before a job fails for good. Issue 7 makes this a configurable policy;
# DESIGN fixes the defaults: a deferred job is retried, a memory job or a fire is not.
_DEFAULT_MAX_ATTEMPTS = {RunType.MEMORY: 1, RunType.DEFERRED: 5, RunType.STANDALONE: 1}


def _where(func: Callable[..., object]) -> str:
    """Name the place a handler was declared, for error messages."""
    name = f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', func)!s}"
    code = getattr(func, "__code__", None)
    if code is not None:
        return f"{name} ({code.co_filename}:{code.co_firstlineno})"
    return name


def _payload_from_annotation(handle: str, func: Callable[..., object]) -> Any:
    """The ``P`` of a handler's ``JobContext[P]`` parameter, or ``_UNSET`` if not knowable."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return _UNSET
    if not params:
        return _UNSET
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        # Unresolvable under `from __future__ import annotations` (a local class, say):
        # the user can pass payload= instead, and the error says so.
        return _Unresolved(f"its annotations cannot be resolved ({type(exc).__name__}: {exc})")
    annotation = hints.get(params[0].name, _UNSET)
    if annotation is _UNSET:
        return _UNSET
    if get_origin(annotation) is JobContext:
        (arg,) = get_args(annotation)
        return None if arg is type(None) else arg
    if annotation is JobContext:
        return _Unresolved("its parameter is annotated JobContext without [YourModel]")
    return _Unresolved(f"its parameter is annotated {annotation!r}, not JobContext[...]")


class _Unresolved:
    """Why a payload type could not be read from a handler's annotation."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _check_callable(handle: str, func: Callable[..., object]) -> None:
    if not callable(func):
        raise InvalidDeclaration(f"sidecar {handle!r}: field 'handler': {func!r} is not callable")
    try:
        inspect.signature(func).bind(object())
    except TypeError as exc:
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'handler': {_where(func)} must take exactly one "
            f"argument, the JobContext ({exc})"
        ) from None
    except ValueError:  # builtins without a signature: trust the user
        pass


def _seconds(handle: str, name: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or not seconds > 0
    ):
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field {name!r}: expected a positive number of seconds or a "
            f"timedelta, got {value!r}"
        )
    return float(seconds)


def _positive_int(handle: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field {name!r}: expected an integer >= 1, got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class _Settings:
    concurrency: int
    timeout: float | None
    max_pending: int
    on_full: OnFull
    max_attempts: int


@dataclass(frozen=True, slots=True)
class FireSettings:
    """How a STANDALONE sidecar's fires are run."""

    per_replica: bool
    overlap: Overlap
    misfire: Misfire
    misfire_grace: float
    misfire_tolerance: float
    misfire_cap: int


class Sidecar(Generic[P]):
    """A declared unit of work, made by :meth:`Sidecars.sidecar`.

    Send it work with :meth:`enqueue` (MEMORY and DEFERRED sidecars). The decorated function
    stays reachable as :attr:`handler`, so it can be unit-tested directly.
    """

    __slots__ = (
        "_app",
        "codec",
        "fires",
        "handle",
        "handler",
        "is_async",
        "retry",
        "run_type",
        "schedule",
        "settings",
        "where",
    )

    def __init__(
        self,
        app: Sidecars,
        *,
        handle: str,
        run_type: RunType,
        handler: Handler[P],
        payload: Any = _UNSET,
        concurrency: int = 1,
        timeout: float | timedelta | None = None,
        max_pending: int = _UNSET,
        on_full: OnFull = _UNSET,
        schedule: Trigger | None = None,
        per_replica: bool = _UNSET,
        overlap: Overlap = _UNSET,
        misfire: Misfire = _UNSET,
        misfire_grace: float | timedelta = _UNSET,
        misfire_tolerance: float | timedelta = _UNSET,
        misfire_cap: int = _UNSET,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not isinstance(handle, str) or not _HANDLE_RE.fullmatch(handle):
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'handle': expected 1-200 characters of letters, "
                "digits and _ . : - (starting with a letter or digit)"
            )
        try:
            run_type = RunType(run_type)
        except ValueError:
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'run_type': expected one of "
                f"{', '.join(repr(r.value) for r in RunType)}, got {run_type!r}"
            ) from None
        _check_callable(handle, handler)
        self._app = app
        self.handle = handle
        self.run_type = run_type
        self.handler = handler
        self.where = _where(handler)
        # A callable object is async when its class's __call__ is.
        self.is_async = inspect.iscoroutinefunction(handler) or (
            not inspect.isroutine(handler) and inspect.iscoroutinefunction(type(handler).__call__)
        )

        if schedule is not None and not isinstance(schedule, Trigger):
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'schedule': expected a Schedule or another Trigger "
                f"(with next_after and previous_before), got {schedule!r}"
                + (
                    f"; for a cron string write schedule=Schedule.cron({schedule!r})"
                    if isinstance(schedule, str)
                    else ""
                )
            )
        if run_type is RunType.MEMORY and schedule is not None:
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'schedule': a MEMORY sidecar runs when it is sent "
                "work and cannot have a schedule; use DEFERRED (jobs due at the next fire) or "
                "STANDALONE (runs on its own)"
            )
        if run_type is RunType.STANDALONE and schedule is None:
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'schedule': a STANDALONE sidecar needs a schedule"
            )
        if schedule is not None:
            _probe(handle, schedule)
        self.schedule = schedule

        declared = payload
        why = ""
        if declared is _UNSET:
            declared = _payload_from_annotation(handle, handler)
            if isinstance(declared, _Unresolved):
                why = f" ({declared.reason})"
                declared = _UNSET
        if run_type is RunType.STANDALONE:
            if declared not in (_UNSET, None, type(None)):
                raise InvalidDeclaration(
                    f"sidecar {handle!r}: field 'payload': a STANDALONE sidecar takes no "
                    f"payload (got {declared!r}); annotate its handler as JobContext[None]"
                )
            declared = None
        elif declared is _UNSET:
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'payload': cannot tell the payload type{why}; "
                "annotate the handler's parameter as JobContext[YourModel] or pass "
                "payload=YourModel"
            )
        if declared is type(None):
            declared = None
        self.codec = PayloadCodec(handle, declared)

        if run_type is not RunType.MEMORY:
            for name, value in (("max_pending", max_pending), ("on_full", on_full)):
                if value is not _UNSET:
                    raise InvalidDeclaration(
                        f"sidecar {handle!r}: field {name!r}: only a MEMORY sidecar has an "
                        "in-process queue (DEFERRED jobs wait in the store)"
                    )
        max_pending = 10_000 if max_pending is _UNSET else max_pending
        on_full = "wait" if on_full is _UNSET else on_full
        if on_full not in ("wait", "raise"):
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'on_full': expected 'wait' or 'raise', got {on_full!r}"
            )
        self.fires = _fire_settings(
            handle,
            run_type,
            per_replica=per_replica,
            overlap=overlap,
            misfire=misfire,
            misfire_grace=misfire_grace,
            misfire_tolerance=misfire_tolerance,
            misfire_cap=misfire_cap,
        )
        if retry is None:
            retry = RetryPolicy(max_attempts=_DEFAULT_MAX_ATTEMPTS[run_type])
        elif not isinstance(retry, RetryPolicy):
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'retry': expected a RetryPolicy, got {retry!r}"
            )
        elif run_type is RunType.STANDALONE and retry.max_attempts > 1:
            raise InvalidDeclaration(
                f"sidecar {handle!r}: field 'retry': STANDALONE fires are not retried (a "
                "failed fire waits for the next one)"
            )
        self.retry = retry
        self.settings = _Settings(
            concurrency=_positive_int(handle, "concurrency", concurrency),
            timeout=_seconds(handle, "timeout", timeout),
            max_pending=_positive_int(handle, "max_pending", max_pending),
            on_full=on_full,
            max_attempts=retry.max_attempts,
        )

    @property
    def payload_type(self) -> Any:
        """The declared payload type (None for no payload)."""
        return self.codec.payload_type

    async def enqueue(
        self,
        payload: P = None,  # type: ignore[assignment]
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        key: str | None = None,
        connection: Any = None,
    ) -> JobRef:
        """Send one job.

        MEMORY: validated, then queued in process and run at once by a free worker.
        DEFERRED: validated, then committed to the store; returns once it is durable.

        Args:
            payload: the payload (a model instance, or anything that validates as one).
            run_at: DEFERRED only: when the job becomes due (aware datetime).
            delay: DEFERRED only: how long from now until it becomes due.
            key: a uniqueness key: while a job of this sidecar with the same key is still
                queued (not yet started), that job's reference is returned instead
                (``created=False``) and nothing new is queued.
            connection: DEFERRED only, on a store that supports it (PostgreSQL): enqueue
                inside the caller's own transaction on this connection; the job then
                exists if and only if that transaction commits.

        Raises:
            PayloadError: the payload is invalid or would not survive JSON.
            NotRunning: a MEMORY sidecar's runner is not running.
            ShuttingDown: the runner is shutting down.
            QueueFull: the MEMORY queue is full and ``on_full="raise"``.
        """
        if key is not None:
            _check_key(self.handle, key)
        if self.run_type is RunType.MEMORY:
            if run_at is not None or delay is not None or connection is not None:
                _memory_only_now(self.handle, run_at=run_at, delay=delay, connection=connection)
            return await self._app._enqueue_memory(self, payload, key)
        if self.run_type is RunType.STANDALONE:
            raise InvalidArgument(
                f"sidecar {self.handle!r}: a STANDALONE sidecar runs on its schedule and "
                "cannot be sent jobs"
            )
        (ref,) = await self._app._enqueue_deferred(
            self, [payload], run_at=run_at, delay=delay, keys=[key], connection=connection
        )
        return ref

    async def enqueue_many(
        self,
        payloads: Iterable[P],
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        keys: Sequence[str | None] | None = None,
        connection: Any = None,
    ) -> list[JobRef]:
        """Send many jobs at once: validated first, then stored in one transaction.

        If any payload is invalid, nothing is queued or stored. ``keys``, if given, holds one
        uniqueness key (or None) per payload; a keyed job whose key is already queued is
        not added, and its reference says ``created=False``.
        """
        items: Sequence[P] = list(payloads)
        if keys is not None:
            keys = list(keys)
            if len(keys) != len(items):
                raise InvalidArgument(
                    f"sidecar {self.handle!r}: field 'keys': {len(keys)} keys for "
                    f"{len(items)} payloads"
                )
            for k in keys:
                _check_key(self.handle, k)
        if self.run_type is RunType.MEMORY:
            _memory_only_now(self.handle, run_at=run_at, delay=delay, connection=connection)
            return await self._app._enqueue_memory_many(self, items, keys)
        if self.run_type is RunType.STANDALONE:
            raise InvalidArgument(
                f"sidecar {self.handle!r}: a STANDALONE sidecar cannot be sent jobs"
            )
        return await self._app._enqueue_deferred(
            self, items, run_at=run_at, delay=delay, keys=keys, connection=connection
        )

    def __repr__(self) -> str:
        return f"<Sidecar {self.handle!r} {self.run_type.value}>"


def _check_key(handle: str, key: object) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 500):
        raise InvalidArgument(
            f"sidecar {handle!r}: field 'key': expected a string of 1-500 characters or "
            f"None, got {key!r}"
        )


def _memory_only_now(handle: str, **given: object) -> None:
    for name, value in given.items():
        if value is not None:
            raise InvalidArgument(
                f"sidecar {handle!r}: field {name!r}: a MEMORY job runs at once, in this "
                "process; declare the sidecar with run_type=RunType.DEFERRED to run it later "
                "or inside your transaction"
            )


def _aware(handle: str, when: datetime) -> float:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'run_at': expected an aware datetime, got naive {when!r}"
        )
    return when.astimezone(timezone.utc).timestamp()


def _fire_settings(handle: str, run_type: RunType, **given: Any) -> FireSettings:
    """Check the fire options: they belong to STANDALONE sidecars only."""
    if run_type is not RunType.STANDALONE:
        for name, value in given.items():
            if value is not _UNSET:
                raise InvalidDeclaration(
                    f"sidecar {handle!r}: field {name!r}: only a STANDALONE sidecar has "
                    "fires (a scheduled DEFERRED job never misfires: it runs when due)"
                )
    per_replica = given["per_replica"]
    per_replica = False if per_replica is _UNSET else per_replica
    if not isinstance(per_replica, bool):
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'per_replica': expected True or False, got {per_replica!r}"
        )
    overlap: Overlap = "skip" if given["overlap"] is _UNSET else given["overlap"]
    if overlap not in ("skip", "allow"):
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'overlap': expected 'skip' or 'allow', got {overlap!r}"
        )
    misfire: Misfire = "latest" if given["misfire"] is _UNSET else given["misfire"]
    if misfire not in ("skip", "latest", "all"):
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'misfire': expected 'skip', 'latest' or 'all', "
            f"got {misfire!r}"
        )
    grace = _seconds(
        handle,
        "misfire_grace",
        3600.0 if given["misfire_grace"] is _UNSET else given["misfire_grace"],
    )
    tolerance = _seconds(
        handle,
        "misfire_tolerance",
        1.0 if given["misfire_tolerance"] is _UNSET else given["misfire_tolerance"],
    )
    cap = _positive_int(
        handle, "misfire_cap", 100 if given["misfire_cap"] is _UNSET else given["misfire_cap"]
    )
    assert grace is not None
    assert tolerance is not None
    if tolerance > grace:
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'misfire_tolerance': {tolerance:g}s is more than "
            f"misfire_grace ({grace:g}s)"
        )
    return FireSettings(
        per_replica=per_replica,
        overlap=overlap,
        misfire=misfire,
        misfire_grace=grace,
        misfire_tolerance=tolerance,
        misfire_cap=cap,
    )


def _probe(handle: str, trigger: Trigger) -> None:
    """Ask a trigger once, now, so a faulty custom one fails at declaration."""
    now = datetime.now(timezone.utc)
    try:
        found = trigger.next_after(now)
    except Exception as exc:
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'schedule': next_after() raised {type(exc).__name__}: {exc}"
        ) from exc
    if found is None:
        return
    if not isinstance(found, datetime) or found.utcoffset() is None:
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'schedule': next_after() must return an aware "
            f"datetime or None, got {found!r}"
        )
    if found <= now:
        raise InvalidDeclaration(
            f"sidecar {handle!r}: field 'schedule': next_after({now.isoformat()}) returned "
            f"{found.isoformat()}, which is not later"
        )
