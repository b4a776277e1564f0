"""Every Python code block in the docs (and the README) runs, page by page.

The blocks of one page run in order in one namespace, so a later block may use what an
earlier one defined. Top-level ``await`` is allowed: asynchronous blocks run on one event
loop per page (in a blocking portal), synchronous ones in the test's own thread, so a block
may also call ``anyio.run(main)`` as a script would. The working directory is a temporary
folder.

A block opts out with a visible marker line right before its fence::

    <!-- doc-test: skip (needs a reason) -->

A page whose blocks read ``os.environ["DATABASE_URL"]`` gets a fresh database on the test
session's throwaway PostgreSQL server.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import re
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from sidecars import Sidecars
from sidecars.stores import Store

ROOT = Path(__file__).resolve().parents[1]
ALL_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

BLOCK_TIMEOUT = 20.0  # seconds; a block that runs longer is a broken (or endless) example
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
_SKIP = re.compile(r"^<!--\s*doc-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->$")
_MARKER = re.compile(r"^<!--\s*doc-test:")
_MODULE = re.compile(r"^# (?P<path>[\w/]+\.py)\n")


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page."""

    number: int  # 1-based, counting the page's Python blocks
    line: int  # 1-based line of the opening fence
    source: str
    skip: str | None  # the reason, when the block opts out


def blocks(page: Path) -> list[Block]:
    """The page's Python blocks, in order, with their skip markers."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if language in ("python", "py"):
            previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
            skip = None
            if _MARKER.match(previous):
                marker = _SKIP.match(previous)
                assert marker is not None, f"{page.name}:{i + 1}: malformed marker {previous!r}"
                skip = marker["reason"].strip()
                assert len(skip.split()) >= 2, (
                    f"{page.name}:{i + 1}: a skip needs a meaningful reason, got {skip!r}"
                )
            found.append(Block(len(found) + 1, i + 1, "\n".join(body) + "\n", skip))
        i = j + 1
    return found


def _page_id(page: Path) -> str:
    return page.name if page.parent == ROOT else f"docs/{page.name}"


async def _await(awaitable: Any) -> Any:
    with anyio.fail_after(BLOCK_TIMEOUT):
        return await awaitable


def _run_block(page: Path, block: Block, namespace: dict[str, Any], portal: BlockingPortal) -> None:
    # A block that opens with a file name comment ("# myapp/jobs.py") is that module: it is
    # also written to the working folder, so later blocks can import it.
    named = _MODULE.match(block.source)
    if named is not None:
        module = Path(named["path"])
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(block.source, encoding="utf-8")
    filename = f"<{_page_id(page)} block {block.number}>"
    # Line numbers in tracebacks point into the page itself.
    source = "\n" * (block.line) + block.source
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        portal.call(_await, eval(code, namespace))
    else:
        exec(code, namespace)


@contextmanager
def _database(request: pytest.FixtureRequest, page: Path) -> Iterator[str | None]:
    """A fresh PostgreSQL database for a page that reads DATABASE_URL, else None."""
    if "DATABASE_URL" not in page.read_text(encoding="utf-8"):
        yield None
        return
    import asyncpg

    server: str = request.getfixturevalue("pg_server")
    name = f"doc_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(admin, f'CREATE DATABASE "{name}"')
    base, _, query = server.partition("?")
    scheme_host = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    dsn = f"{scheme_host}/{name}" + (f"?{query}" if query else "")
    try:
        yield dsn
    finally:
        anyio.run(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Pages without a runnable Python block have nothing to test (and are not reported skipped).
PAGES = [page for page in ALL_PAGES if any(b.skip is None for b in blocks(page))]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_page_blocks_run(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Each Python block of the page runs without error, in order, in one namespace."""
    found = blocks(page)
    runnable = [b for b in found if b.skip is None]
    if not runnable:
        raise AssertionError(f"{_page_id(page)} has no runnable Python block")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIDECARS_CONSUME", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with _database(request, page) as dsn:
        if dsn is not None:
            monkeypatch.setenv("DATABASE_URL", dsn)
        namespace: dict[str, Any] = {"__name__": "__docs__"}
        with start_blocking_portal(backend="asyncio") as portal:
            try:
                failure = _run_page(page, runnable, namespace, portal)
            finally:
                try:
                    _close_leftovers(namespace, portal)
                finally:
                    _forget_modules(tmp_path)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def _run_page(
    page: Path, runnable: list[Block], namespace: dict[str, Any], portal: BlockingPortal
) -> str | None:
    """Run the blocks in order; return a report of the first that fails, or None."""
    for block in runnable:
        try:
            _run_block(page, block, namespace, portal)
        except Exception:  # noqa: PERF203 - the first failure ends the page
            return (
                f"{_page_id(page)}, Python block {block.number} (line {block.line}) "
                f"failed:\n{traceback.format_exc()}"
            )
    return None


def _close_leftovers(namespace: dict[str, Any], portal: BlockingPortal) -> None:
    """Close what a page left open (stores, pools), as a script's exit would."""
    for value in list(namespace.values()):
        if isinstance(value, type):
            continue
        if isinstance(value, Sidecars):
            portal.call(value.aclose)
        elif isinstance(value, Store) or _is_asyncpg_pool(value):
            portal.call(value.close)


def _forget_modules(folder: Path) -> None:
    """Unimport the modules a page wrote, so the next page's "myapp" is its own."""
    for name, module in list(sys.modules.items()):
        places = [getattr(module, "__file__", None), *getattr(module, "__path__", [])]
        if any(place and Path(place).is_relative_to(folder) for place in places):
            del sys.modules[name]


def _is_asyncpg_pool(value: object) -> bool:
    return type(value).__module__.startswith("asyncpg") and type(value).__name__ == "Pool"


def test_skips_are_rare_and_explained() -> None:
    """Opting out is the exception: every skip names a reason, and most blocks run."""
    every = [(page, b) for page in ALL_PAGES for b in blocks(page)]
    skipped = [(page, b) for page, b in every if b.skip is not None]
    assert len(every) > 40
    assert len(skipped) * 10 <= len(every), [(p.name, b.number, b.skip) for p, b in skipped]
