"""The one-way import order of docs/architecture.md, enforced.

Each package may import only the packages before it in ``ORDER`` (and itself);
``monitoring`` may import nothing of the project's and, outside it, only numpy
and the standard library, so every statistic is tested without a server.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ORDER = ("errors", "monitoring", "models", "state", "training", "service", "argus")
MONITORING_MAY_USE = {"numpy", "monitoring"}


def documented_order(text: str) -> tuple[str, ...]:
    """The package order as docs/architecture.md writes it: the line ``Order: a < b < ...``."""
    match = re.search(r"^Order: `?([a-z_ <`]+?)`?$", text, re.MULTILINE)
    if not match:
        raise AssertionError("docs/architecture.md has no 'Order: a < b < ...' line")
    return tuple(part.strip(" `") for part in match.group(1).split("<"))


def imported(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def sources(package: str) -> list[Path]:
    if package == "errors":
        return [ROOT / "errors.py"]
    return sorted((ROOT / package).rglob("*.py"))


def upward_imports(package: str, path: Path, order: tuple[str, ...]) -> list[str]:
    """The project modules ``path`` (in ``package``) imports from a package above it."""
    rank = order.index(package)
    above = set(order[rank + 1 :])
    return sorted(name for name in imported(path) if name.split(".")[0] in above)


def outside_monitoring_boundary(path: Path) -> list[str]:
    return sorted(
        name
        for name in imported(path)
        if name.split(".")[0] not in MONITORING_MAY_USE
        and name.split(".")[0] not in sys.stdlib_module_names
        and name != "__future__"
    )


def test_the_test_uses_the_documented_order() -> None:
    assert documented_order(ARCHITECTURE.read_text()) == ORDER


@pytest.mark.parametrize("package", ORDER)
def test_no_package_imports_one_above_it(package: str) -> None:
    found = {
        str(path.relative_to(ROOT)): bad
        for path in sources(package)
        if (bad := upward_imports(package, path, ORDER))
    }
    assert found == {}, f"imports against the order {' < '.join(ORDER)}: {found}"


def test_monitoring_imports_only_numpy_and_the_standard_library() -> None:
    found = {
        str(path.relative_to(ROOT)): bad
        for path in sources("monitoring")
        if (bad := outside_monitoring_boundary(path))
    }
    assert found == {}


def test_the_checks_see_forbidden_imports(tmp_path: Path) -> None:
    stats = tmp_path / "drift.py"
    stats.write_text("import numpy\n\ndef f():\n    from starlette import responses\n")
    assert outside_monitoring_boundary(stats) == ["starlette"]
    store = tmp_path / "store.py"
    store.write_text("from models import store\nfrom service.metrics import M\nimport redis\n")
    assert upward_imports("state", store, ORDER) == ["service.metrics"]
    assert upward_imports("models", store, ORDER) == ["service.metrics"]
    assert documented_order("x\nOrder: `a < b < c`\n") == ("a", "b", "c")
