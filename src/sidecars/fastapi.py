"""FastAPI sugar: a dependency that hands the running :class:`Sidecars` to an endpoint.

```python
from sidecars.fastapi import SidecarsDep

@app.get("/jobs/{job_id}")
async def job(job_id: str, sc: SidecarsDep): ...
```
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ._app import Sidecars
from .starlette import get_sidecars

__all__ = ("SidecarsDep", "sidecars_from_request")


def sidecars_from_request(request: Request) -> Sidecars:
    """The app's :class:`Sidecars` (raises ``LookupError`` when the app has none)."""
    return get_sidecars(request)


SidecarsDep = Annotated[Sidecars, Depends(sidecars_from_request)]
"""An endpoint parameter annotated with this receives the app's :class:`Sidecars`."""
