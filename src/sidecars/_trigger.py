"""The protocol the runner needs from a schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ("Trigger",)


@runtime_checkable
class Trigger(Protocol):
    """Anything that can say when it fires next.

    :class:`sidecars.Schedule` implements it; users may supply their own. Both methods take
    an aware datetime and return an aware datetime, or ``None`` when there is no such fire.
    """

    def next_after(self, dt: datetime, /) -> datetime | None:
        """The first fire strictly after ``dt``, or ``None`` if it never fires again."""
        ...

    def previous_before(self, dt: datetime, /) -> datetime | None:
        """The last fire strictly before ``dt``, or ``None`` if it never fired before."""
        ...
