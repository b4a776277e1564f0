"""The error hierarchy of sidecars.

Every error the library raises on purpose derives from :class:`SidecarsError`, so an
application can map the whole family in one place (for example ``QueueFull`` and
``ShuttingDown`` to HTTP 503, ``PayloadError`` to 422).
"""

from __future__ import annotations

__all__ = (
    "DuplicateHandle",
    "InvalidArgument",
    "InvalidDeclaration",
    "InvalidSchedule",
    "JobNotFound",
    "NotRunning",
    "PayloadError",
    "QueueFull",
    "ShuttingDown",
    "SidecarsError",
    "StoreUnavailable",
)


class SidecarsError(Exception):
    """Base class of every error raised by sidecars."""


class InvalidDeclaration(SidecarsError):
    """A sidecar declaration is inconsistent; the message names the handle and the field."""


class InvalidArgument(SidecarsError, ValueError):
    """An argument of a call (``run_at``, ``delay``, ``key``...) is invalid; the message
    names the handle and the field. Nothing was queued or stored."""


class DuplicateHandle(InvalidDeclaration):
    """Two sidecars were declared with the same handle; the message names both places."""


class InvalidSchedule(SidecarsError, ValueError):
    """A schedule cannot be built; the message names the expression, the field and the value."""


class PayloadError(SidecarsError, ValueError):
    """A payload failed validation or would not survive a JSON round trip unchanged.

    Attributes:
        handle: the sidecar the payload was meant for.
        errors: one ``(field path, message)`` pair per problem found.
    """

    def __init__(self, handle: str, errors: list[tuple[str, str]]) -> None:
        self.handle = handle
        self.errors = errors
        detail = "; ".join(f"{path or '<payload>'}: {msg}" for path, msg in errors)
        super().__init__(f"invalid payload for sidecar {handle!r}: {detail}")


class QueueFull(SidecarsError):
    """A MEMORY sidecar's pending queue is full and its ``on_full`` policy is ``"raise"``."""


class ShuttingDown(SidecarsError):
    """The runner is shutting down and takes no new in-memory work."""


class NotRunning(SidecarsError):
    """Work was sent to a MEMORY sidecar whose runner is not running."""


class StoreUnavailable(SidecarsError):
    """The job store cannot be reached or opened."""


class JobNotFound(SidecarsError, LookupError):
    """No job with the given id exists."""
