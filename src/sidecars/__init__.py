"""sidecars: background jobs and schedules that run inside your ASGI app.

Declare sidecars on a :class:`Sidecars`, run them in the app's lifespan, and send them work
from request handlers::

    sc = Sidecars()

    @sc.sidecar(handle="send_mail", run_type=RunType.MEMORY, concurrency=3, timeout=30)
    async def send_mail(job: JobContext[Mail]) -> None: ...

    app = FastAPI(lifespan=sc.lifespan)
"""

from ._app import Sidecars as Sidecars
from ._clock import Clock as Clock
from ._clock import FakeClock as FakeClock
from ._clock import SystemClock as SystemClock
from ._records import JobContext as JobContext
from ._records import JobInfo as JobInfo
from ._records import JobRef as JobRef
from ._records import JobState as JobState
from ._records import Outcome as Outcome
from ._records import RunType as RunType
from ._retry import RetryPolicy as RetryPolicy
from ._sidecar import Sidecar as Sidecar
from ._stats import HandleStats as HandleStats
from ._stats import Stats as Stats
from ._trigger import Trigger as Trigger
from ._worker import JobEvent as JobEvent
from .exceptions import DuplicateHandle as DuplicateHandle
from .exceptions import InvalidArgument as InvalidArgument
from .exceptions import InvalidDeclaration as InvalidDeclaration
from .exceptions import InvalidSchedule as InvalidSchedule
from .exceptions import JobNotFound as JobNotFound
from .exceptions import NotRunning as NotRunning
from .exceptions import PayloadError as PayloadError
from .exceptions import QueueFull as QueueFull
from .exceptions import ShuttingDown as ShuttingDown
from .exceptions import SidecarsError as SidecarsError
from .exceptions import StoreUnavailable as StoreUnavailable
from .schedule import At as At
from .schedule import Schedule as Schedule
from .schedule import Weekday as Weekday

__version__ = "0.1.0.dev0"

__all__ = (
    "At",
    "Clock",
    "DuplicateHandle",
    "FakeClock",
    "HandleStats",
    "InvalidArgument",
    "InvalidDeclaration",
    "InvalidSchedule",
    "JobContext",
    "JobEvent",
    "JobInfo",
    "JobNotFound",
    "JobRef",
    "JobState",
    "NotRunning",
    "Outcome",
    "PayloadError",
    "QueueFull",
    "RetryPolicy",
    "RunType",
    "Schedule",
    "ShuttingDown",
    "Sidecar",
    "Sidecars",
    "SidecarsError",
    "Stats",
    "StoreUnavailable",
    "SystemClock",
    "Trigger",
    "Weekday",
    "__version__",
)
