"""Starlette (and FastAPI) integration: a composing lifespan and a getter.

``Starlette(lifespan=sc.lifespan)`` is enough for most apps. To keep a lifespan of your own,
wrap it: ``Starlette(lifespan=sidecars.starlette.lifespan(sc, my_lifespan))``. Your lifespan
runs outside the sidecars, so the resources it opens (a database pool, say) are there for the
whole life of every job, and are closed only after the sidecars have shut down.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import Sidecars

__all__ = ("get_sidecars", "lifespan")

_STATE_KEY = "sidecars"

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def _as_context(user: Callable[[Any], Any]) -> Lifespan:
    """Accept an async context manager factory or a bare async generator function."""
    if inspect.isasyncgenfunction(user):
        return asynccontextmanager(user)
    return user


def lifespan(
    sc: Sidecars,
    user_lifespan: Callable[[Any], Any] | None = None,
    *,
    consume: bool | None = None,
) -> Lifespan:
    """Build an ASGI lifespan that runs ``sc`` and, around it, ``user_lifespan``.

    Args:
        sc: the sidecars to run.
        user_lifespan: your own lifespan (a function returning an async context manager,
            or an async generator function); whatever state it yields is passed on.
        consume: False makes this app enqueue-only for DEFERRED and STANDALONE work (a
            dedicated worker runs it); default: the ``SIDECARS_CONSUME`` environment
            variable, else True. MEMORY jobs always run here.

    Returns:
        A lifespan for ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)``.
    """
    inner = _as_context(user_lifespan) if user_lifespan is not None else None

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        state = getattr(app, "state", None)
        if state is not None:
            setattr(state, _STATE_KEY, sc)
        if inner is None:
            async with sc.run(consume=consume):
                yield None
            return
        async with inner(app) as user_state, sc.run(consume=consume):
            yield user_state

    return run


def get_sidecars(obj: Any) -> Sidecars:
    """The :class:`Sidecars` running in an app, from the app, a request or a websocket.

    Raises:
        LookupError: the app was not given a sidecars lifespan.
    """
    # An app keeps it on app.state; a request or websocket reaches its app through .app.
    for candidate in (obj, getattr(obj, "app", None)):
        state = getattr(candidate, "state", None)
        found = getattr(state, _STATE_KEY, None)
        if found is not None:
            return found  # type: ignore[no-any-return]
    raise LookupError(
        "no Sidecars on this app: create it with lifespan=sc.lifespan "
        "(or sidecars.starlette.lifespan(sc, your_lifespan))"
    )
