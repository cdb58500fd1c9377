"""DESIGN.md: ``monitoring`` imports only numpy, scipy and the standard library, so every
statistic is tested without a server. The statistics modules keep to that exactly; the
state backends may also use the project's error types, pydantic_core's fast JSON (the
journal and SQLite encodings) and, in ``redis_db.py`` alone, the redis client."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import monitoring

PACKAGE = Path(monitoring.__file__).parent
PURE = {"numpy", "scipy", "monitoring"}
STATE_EXTRA = {
    "models.errors": {
        "journal", "journal_file", "redis_db", "redis_state", "sqlite_db", "sqlite_state",
        "state",
    },
    "pydantic_core": {"records", "sqlite_blocks"},
    "redis": {"redis_db"},
}  # fmt: skip


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def allowed(name: str, module: str) -> bool:
    top = name.split(".")[0]
    if top in PURE or top in sys.stdlib_module_names or name == "__future__":
        return True
    return any(
        (name == extra or name.startswith(extra + ".")) and module in users
        for extra, users in STATE_EXTRA.items()
    )


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_monitoring_imports_stay_within_the_design(path: Path) -> None:
    outside = sorted(name for name in imported(path) if not allowed(name, path.stem))
    assert outside == [], f"monitoring/{path.name} imports {outside}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "drift.py"
    sample.write_text("import numpy\n\ndef f():\n    from starlette import responses\n")
    assert [n for n in imported(sample) if not allowed(n, "drift")] == ["starlette"]
    assert not allowed("redis", "redis_state") and allowed("redis.retry", "redis_db")
