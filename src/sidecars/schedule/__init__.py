"""CRON++ schedules: cron expressions, a declarative calendar form and cadences.

Pure and I/O free: a :class:`Schedule` answers "when next?" (``next_after``), "when last?"
(``previous_before``), iterates its fires and describes itself in English. The DST rules
and the syntax are described in ``docs/schedules.md``.
"""

from __future__ import annotations

from ._schedule import At as At
from ._schedule import Schedule as Schedule
from ._schedule import Weekday as Weekday

__all__ = ("At", "Schedule", "Weekday")
