"""The pytest plugin and sidecars.testing, used from a throwaway user project (pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

APP = """
from datetime import timedelta
from pydantic import BaseModel
from sidecars import At, JobContext, RunType, Schedule, Sidecars

sc = Sidecars()  # module level, as in a real app

class Report(BaseModel):
    title: str

released = []

@sc.sidecar(
    handle="monthly",
    run_type=RunType.DEFERRED,
    schedule=Schedule(on_day_of_month=1, timezone="America/Denver", at=[At(3, 0)]),
)
async def monthly(job: JobContext[Report]) -> None:
    released.append((job.payload.title, job.scheduled_at))

class Mail(BaseModel):
    to: str

@sc.sidecar(handle="mail", run_type=RunType.MEMORY)
async def mail(job: JobContext[Mail]) -> None:
    if job.payload.to.endswith("@invalid"):
        raise ValueError(f"cannot deliver to {job.payload.to}")
"""

CONFTEST = """
import pytest

@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user project with a module-level Sidecars and a conftest choosing asyncio."""
    pytester.makepyfile(userapp=APP)
    pytester.makeconftest(CONFTEST)
    pytester.syspathinsert()
    return pytester


def test_monthly_schedule_over_a_year_releases_twelve_times(project: pytest.Pytester) -> None:
    """A monthly deferred schedule advanced over a year releases its jobs exactly 12 times,
    each at its fire, with no real sleeping."""
    project.makepyfile(
        test_year="""
import time
from datetime import datetime, timedelta, timezone
import pytest
import userapp

pytestmark = pytest.mark.anyio

async def test_year(sidecars_harness):
    started = time.monotonic()
    async with sidecars_harness.run(userapp.sc):
        month_start = sidecars_harness.clock.now()
        for i in range(12):
            await userapp.monthly.enqueue(userapp.Report(title=f"r{i}"))
            await sidecars_harness.advance(timedelta(days=31))
    fires = sorted({at for _, at in userapp.released})
    assert len(userapp.released) == 12
    assert len(fires) == 12
    assert all(at.astimezone(userapp.monthly.schedule.timezone).hour == 3 for at in fires)
    assert time.monotonic() - started < 20
    sidecars_harness.assert_enqueued("monthly", count=12)
"""
    )
    result = project.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_eager_mode_raises_the_handler_error(project: pytest.Pytester) -> None:
    """In eager mode, enqueue runs the handler inline and its error surfaces in the test."""
    project.makepyfile(
        test_eager="""
import pytest
import userapp

pytestmark = pytest.mark.anyio

async def test_eager(sidecars_harness):
    async with sidecars_harness.run(userapp.sc, eager=True):
        await userapp.mail.enqueue(userapp.Mail(to="ada@example.com"))
        with pytest.raises(ValueError, match="cannot deliver to bob@invalid"):
            await userapp.mail.enqueue(userapp.Mail(to="bob@invalid"))
    sidecars_harness.assert_enqueued("mail", payload={"to": "ada@example.com"})
"""
    )
    result = project.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_assertion_failures_read_well(project: pytest.Pytester) -> None:
    """A failed assert_enqueued says what was expected and lists what was sent."""
    project.makepyfile(
        test_fail="""
import pytest
import userapp

pytestmark = pytest.mark.anyio

async def test_wrong_payload(sidecars_harness):
    async with sidecars_harness.run(userapp.sc):
        await userapp.mail.enqueue(userapp.Mail(to="ada@example.com"))
        await sidecars_harness.run_until_idle()
        sidecars_harness.assert_enqueued("mail", payload={"to": "grace@example.com"})

async def test_unknown_handle(sidecars_harness):
    async with sidecars_harness.run(userapp.sc):
        sidecars_harness.assert_enqueued("mial")
"""
    )
    result = project.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*expected a job with payload {'to': 'grace@example.com'} of sidecar 'mail';"
            " found 0 matching.",
            "*Jobs of 'mail' sent (1):",
            "*Mail(to='ada@example.com')*",
            "*no sidecar is declared with handle 'mial' (known: mail, monthly)",
        ]
    )


def test_fixtures_are_not_autouse_and_leave_anyio_backend_alone(
    pytester: pytest.Pytester,
) -> None:
    """The plugin adds sidecars_ fixtures only on request and defines no anyio_backend."""
    pytester.makepyfile(
        test_plain="""
def test_plain(request):
    assert "sidecars_harness" not in request.fixturenames

def test_backend_is_anyio_default(anyio_backend):
    assert anyio_backend == "asyncio"
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-q", "--fixtures")
    result.stdout.fnmatch_lines(["*sidecars_harness*", "*sidecars_clock*"])
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)
