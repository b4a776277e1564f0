"""Job ids: version 7 UUIDs, time-ordered, unique, and plain ``uuid.UUID`` objects."""

from __future__ import annotations

import pickle
import time
import uuid

from sidecars._ids import new_id


def test_ids_are_version_7_uuids_that_behave_like_any_uuid() -> None:
    """An id is a standard UUID (version 7, RFC variant) that parses, hashes, compares and
    pickles like one built by the uuid module."""
    made = new_id()
    assert isinstance(made, uuid.UUID)
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    again = uuid.UUID(str(made))
    assert again == made
    assert hash(again) == hash(made)
    assert pickle.loads(pickle.dumps(made)) == made
    assert uuid.UUID(bytes=made.bytes) == made


def test_ids_start_with_their_creation_time_and_never_repeat() -> None:
    """The first 48 bits are the creation time in milliseconds, so later ids sort after
    earlier ones across milliseconds; 100,000 ids are all distinct."""
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(100_000)]
    after = time.time_ns() // 1_000_000
    stamps = [made.int >> 80 for made in ids]
    assert before <= stamps[0] <= stamps[-1] <= after
    assert stamps == sorted(stamps)
    assert len(set(ids)) == len(ids)
    # 74 random bits per id: not two ids of one millisecond share them.
    assert len({made.int & ((1 << 76) - 1) for made in ids}) == len(ids)
