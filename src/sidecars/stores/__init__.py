"""Job stores: the :class:`Store` protocol and its implementations.

``MemoryStore`` (tests) and ``SQLiteStore`` (the embedded default) live here; the PostgreSQL
store is in ``sidecars.stores.postgres`` so that ``asyncpg`` is imported only when used.
"""

from ._base import ClaimedJob as ClaimedJob
from ._base import Finish as Finish
from ._base import FireClaim as FireClaim
from ._base import FireLease as FireLease
from ._base import FireRequest as FireRequest
from ._base import FireStatus as FireStatus
from ._base import Lease as Lease
from ._base import NewJob as NewJob
from ._base import Notifying as Notifying
from ._base import Store as Store
from .memory import MemoryStore as MemoryStore
from .sqlite import SQLiteStore as SQLiteStore

__all__ = (
    "ClaimedJob",
    "Finish",
    "FireClaim",
    "FireLease",
    "FireRequest",
    "FireStatus",
    "Lease",
    "MemoryStore",
    "NewJob",
    "Notifying",
    "SQLiteStore",
    "Store",
)
