"""Declarations are checked at once, with errors that name the handle and the field."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import BaseModel

from sidecars import (
    DuplicateHandle,
    InvalidDeclaration,
    JobContext,
    RunType,
    Sidecars,
    Trigger,
)


class Mail(BaseModel):
    to: str


class StubTrigger:
    """A minimal Trigger, standing in for a Schedule."""

    def next_after(self, dt: datetime, /) -> datetime | None:
        return dt + timedelta(minutes=1)

    def previous_before(self, dt: datetime, /) -> datetime | None:
        return dt - timedelta(minutes=1)


def test_stub_is_a_trigger() -> None:
    """Any object with next_after and previous_before is a Trigger."""
    assert isinstance(StubTrigger(), Trigger)


def test_payload_type_comes_from_the_annotation() -> None:
    """``JobContext[Mail]`` on the handler sets the payload type."""
    sc = Sidecars()

    @sc.sidecar(handle="mail", run_type=RunType.MEMORY)
    async def mail(job: JobContext[Mail]) -> None: ...

    assert mail.payload_type is Mail
    assert sc.sidecars == {"mail": mail}


def test_payload_argument_wins_over_annotation() -> None:
    """``payload=`` overrides whatever the annotation says."""
    sc = Sidecars()

    @sc.sidecar(handle="mail", run_type=RunType.MEMORY, payload=Mail)
    async def mail(job: JobContext[int]) -> None: ...

    assert mail.payload_type is Mail


def test_unresolvable_annotation_needs_payload_argument() -> None:
    """A string annotation that cannot be resolved asks for payload=, naming the handle."""
    sc = Sidecars()

    async def handler(job: JobContext[NotDefinedAnywhere]) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    handler.__annotations__["job"] = "JobContext[NotDefinedAnywhere]"
    with pytest.raises(InvalidDeclaration, match=r"'mail'.*'payload'.*payload=YourModel"):
        sc.sidecar(handle="mail", run_type=RunType.MEMORY)(handler)
    made = sc.sidecar(handle="mail", run_type=RunType.MEMORY, payload=Mail)(handler)
    assert made.payload_type is Mail


def test_missing_annotation_is_an_error() -> None:
    """Without an annotation or payload=, the payload type is unknown: an error."""
    sc = Sidecars()
    with pytest.raises(InvalidDeclaration, match=r"sidecar 'x': field 'payload'"):

        @sc.sidecar(handle="x", run_type=RunType.DEFERRED)
        async def x(job) -> None: ...  # type: ignore[no-untyped-def]


def test_duplicate_handle_names_both_places() -> None:
    """Declaring a handle twice fails and names where each declaration is."""
    sc = Sidecars()

    @sc.sidecar(handle="mail", run_type=RunType.MEMORY)
    async def first(job: JobContext[Mail]) -> None: ...

    with pytest.raises(DuplicateHandle) as info:

        @sc.sidecar(handle="mail", run_type=RunType.MEMORY)
        async def second(job: JobContext[Mail]) -> None: ...

    message = str(info.value)
    assert "'mail'" in message
    assert "first" in message
    assert "second" in message
    assert "test_declarations.py" in message


def test_same_handle_on_two_instances_is_fine() -> None:
    """Handles are unique per Sidecars instance, not per process (no global registry)."""
    a, b = Sidecars(), Sidecars()
    for sc in (a, b):

        @sc.sidecar(handle="mail", run_type=RunType.MEMORY)
        async def mail(job: JobContext[Mail]) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"run_type": RunType.MEMORY, "schedule": StubTrigger()},
            r"sidecar 'h': field 'schedule': a MEMORY sidecar .* cannot have a schedule",
        ),
        (
            {"run_type": RunType.STANDALONE},
            r"sidecar 'h': field 'schedule': a STANDALONE sidecar needs a schedule",
        ),
        (
            {"run_type": RunType.STANDALONE, "schedule": StubTrigger(), "payload": Mail},
            r"sidecar 'h': field 'payload': a STANDALONE sidecar takes no payload",
        ),
        (
            {"run_type": RunType.DEFERRED, "schedule": "0 3 * * *"},
            r"sidecar 'h': field 'schedule': expected a Schedule or another Trigger",
        ),
        ({"run_type": "sometimes"}, r"sidecar 'h': field 'run_type'"),
        ({"run_type": RunType.MEMORY, "concurrency": 0}, r"sidecar 'h': field 'concurrency'"),
        ({"run_type": RunType.MEMORY, "concurrency": 1.5}, r"sidecar 'h': field 'concurrency'"),
        ({"run_type": RunType.MEMORY, "timeout": -1}, r"sidecar 'h': field 'timeout'"),
        ({"run_type": RunType.MEMORY, "timeout": "10"}, r"sidecar 'h': field 'timeout'"),
        ({"run_type": RunType.MEMORY, "max_pending": 0}, r"sidecar 'h': field 'max_pending'"),
        ({"run_type": RunType.MEMORY, "on_full": "drop"}, r"sidecar 'h': field 'on_full'"),
    ],
)
def test_invalid_combinations(kwargs: dict[str, object], match: str) -> None:
    """Each inconsistent declaration fails at once, naming the handle and the field."""
    sc = Sidecars()

    async def handler(job: JobContext[Mail]) -> None: ...

    with pytest.raises(InvalidDeclaration, match=match):
        sc.sidecar(handle="h", **kwargs)(handler)  # type: ignore[arg-type]
    assert sc.sidecars == {}


def test_standalone_with_schedule_and_no_payload() -> None:
    """A STANDALONE sidecar with a schedule and a JobContext[None] handler is valid."""
    sc = Sidecars()

    @sc.sidecar(handle="tick", run_type=RunType.STANDALONE, schedule=StubTrigger())
    async def tick(job: JobContext[None]) -> None: ...

    assert tick.payload_type is None


@pytest.mark.parametrize("handle", ["", "has space", "x" * 201, "-leading", "ünï"])
def test_bad_handles(handle: str) -> None:
    """A handle must be a short, stable, plain-text key."""
    sc = Sidecars()

    async def handler(job: JobContext[Mail]) -> None: ...

    with pytest.raises(InvalidDeclaration, match="field 'handle'"):
        sc.sidecar(handle=handle, run_type=RunType.MEMORY)(handler)


def test_handler_must_take_one_argument() -> None:
    """A handler that cannot take the JobContext is refused at declaration."""
    sc = Sidecars()

    async def two(a: JobContext[Mail], b: int) -> None: ...

    with pytest.raises(InvalidDeclaration, match=r"sidecar 'h': field 'handler'.*one argument"):
        sc.sidecar(handle="h", run_type=RunType.MEMORY)(two)


def test_sync_handlers_are_recognised() -> None:
    """A plain function is a sync handler, an async one is not."""
    sc = Sidecars()

    @sc.sidecar(handle="s", run_type=RunType.MEMORY)
    def sync(job: JobContext[Mail]) -> None: ...

    @sc.sidecar(handle="a", run_type=RunType.MEMORY)
    async def asynchronous(job: JobContext[Mail]) -> None: ...

    assert not sync.is_async
    assert asynchronous.is_async


def test_unsupported_payload_type() -> None:
    """A payload type pydantic cannot handle is refused at declaration."""
    sc = Sidecars()

    class Opaque:
        pass

    with pytest.raises(InvalidDeclaration, match=r"sidecar 'h': field 'payload'"):

        @sc.sidecar(handle="h", run_type=RunType.MEMORY, payload=Opaque)
        async def h(job: JobContext[Opaque]) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"grace": -1}, "grace"),
        ({"memory_history": -5}, "memory_history"),
        ({"max_threads": 0}, "max_threads"),
    ],
)
def test_bad_instance_settings(kwargs: dict[str, object], field: str) -> None:
    """Sidecars(...) checks its own settings."""
    with pytest.raises(InvalidDeclaration, match=f"field '{field}'"):
        Sidecars(**kwargs)  # type: ignore[arg-type]


def test_decorator_misuse_says_how_to_write_it() -> None:
    """@sc.sidecar without parentheses, and a cron string as schedule, say how to fix them."""
    sc = Sidecars()
    with pytest.raises(InvalidDeclaration, match=r"'f'.*@sc\.sidecar\(handle="):

        @sc.sidecar  # type: ignore[call-overload]
        async def f(job: JobContext[Mail]) -> None: ...

    with pytest.raises(InvalidDeclaration, match=r"Schedule\.cron\('\*/5 \* \* \* \*'\)"):

        @sc.sidecar(handle="g", run_type=RunType.STANDALONE, schedule="*/5 * * * *")  # type: ignore[arg-type]
        async def g(job: JobContext[None]) -> None: ...


def test_payload_error_says_why_the_annotation_failed() -> None:
    """When the payload type cannot be read, the error says what the annotation was."""
    sc = Sidecars()

    async def plain(job: Mail) -> None: ...

    with pytest.raises(InvalidDeclaration, match=r"annotated .*Mail.*not JobContext"):
        sc.sidecar(handle="p", run_type=RunType.MEMORY)(plain)  # type: ignore[arg-type]


def test_queue_options_belong_to_memory_sidecars() -> None:
    """max_pending and on_full on a DEFERRED sidecar are refused, naming the field."""
    sc = Sidecars()
    for option in ({"max_pending": 5}, {"on_full": "raise"}):
        field = next(iter(option))
        with pytest.raises(InvalidDeclaration, match=f"'d': field '{field}'.*MEMORY"):

            @sc.sidecar(handle="d", run_type=RunType.DEFERRED, **option)  # type: ignore[call-overload]
            async def d(job: JobContext[Mail]) -> None: ...
