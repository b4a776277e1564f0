"""Job ids: random (version 4) UUIDs, made from pooled OS randomness.

``uuid.uuid4()`` asks the OS for 16 bytes per id and runs ``UUID.__init__``'s checks; on the
memory path that was one of the largest per-job costs. This draws 4 KiB of OS randomness
at a time (the same source, so ids stay unguessable) and builds each UUID directly.
"""

from __future__ import annotations

import os
from uuid import UUID, SafeUUID

__all__ = ("new_id",)

_CHUNK = 256  # ids per draw from the OS
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits
_SET = (4 << 76) | (0x8000 << 48)  # version 4, RFC 4122 variant
_new = object.__new__
_setattr = object.__setattr__
_pool: list[int] = []


def _refill() -> None:
    raw = os.urandom(16 * _CHUNK)
    _pool.extend(
        (int.from_bytes(raw[i : i + 16], "big") & _CLEAR) | _SET for i in range(0, len(raw), 16)
    )


if hasattr(os, "register_at_fork"):
    # A forked child must not hand out the ids its parent still holds.
    os.register_at_fork(after_in_child=_pool.clear)


def new_id() -> UUID:
    """A new random UUID (version 4), as :func:`uuid.uuid4` makes."""
    if not _pool:
        _refill()
    value = _pool.pop()
    made: UUID = _new(UUID)
    _setattr(made, "int", value)
    _setattr(made, "is_safe", SafeUUID.unknown)
    return made
