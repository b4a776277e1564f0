"""The documentation site builds cleanly, and its failure-mode table points at real tests."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds: no broken link, no page missing from the nav."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(
                    f"{node.name}::{item.name}"
                    for item in node.body
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                )
    return names


def test_every_failure_mode_row_names_a_real_test() -> None:
    """Each test the Failure modes page cites exists (a file, or file::test)."""
    page = (ROOT / "docs" / "failure-modes.md").read_text()
    cited = re.findall(r"`([\w/]+\.py)(?:::([\w:*]+))?`", page)
    assert len(cited) > 20
    for file, name in cited:
        path = ROOT / "tests" / file
        assert path.exists(), file
        if not name:
            continue
        defined = _defined(path)
        if name.endswith("*"):
            assert any(d.startswith(name[:-1]) for d in defined), f"{file}::{name}"
        else:
            assert name in defined, f"{file}::{name}"
