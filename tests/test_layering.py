"""Imports flow one way: schemas <- matching <- streams <- exchange (STYLE habit 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "schemas": set(),
    "matching": {"schemas"},
    "streams": {"schemas", "matching"},
    "exchange": {"schemas", "matching", "streams"},
}


def _our_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in ALLOWED)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _our_imports(path) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


# Modules whose use would make the engine's output depend on more than its input log.
NONDETERMINISTIC = {"time", "datetime", "random", "os", "secrets", "uuid", "numpy.random"}


def _used_modules(tree: ast.AST) -> set[str]:
    """Every dotted module name a file imports or reaches (`import numpy as np; np.random`)."""
    aliases: dict[str, str] = {}
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                used.add(alias.name)
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            used.add(node.module)
            for alias in node.names:
                used.add(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                parts = [aliases[value.id], *reversed(chain)]
                used.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return used


def _nondeterministic(used: set[str]) -> set[str]:
    return {name for name in used for banned in NONDETERMINISTIC
            if name == banned or name.startswith(banned + ".")}  # fmt: skip


def test_engine_reads_no_clock_randomness_or_environment():
    for path in sorted((ROOT / "matching").rglob("*.py")):
        found = _nondeterministic(_used_modules(ast.parse(path.read_text())))
        assert not found, f"{path.relative_to(ROOT)} uses {sorted(found)}"


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "from datetime import datetime",
        "import numpy as np\nx = np.random.default_rng(1)",
        "import numpy\nnumpy.random.seed(1)",
        "from numpy import random",
        "from numpy.random import default_rng",
        "import numpy.random",
        "import os.path",
    ],
)
def test_the_determinism_check_sees_each_way_of_reaching_a_banned_module(source):
    assert _nondeterministic(_used_modules(ast.parse(source)))


def test_the_determinism_check_allows_plain_numpy():
    source = "import numpy as np\nx = np.zeros(3, dtype=np.int64)\nfrom numpy import int64"
    assert not _nondeterministic(_used_modules(ast.parse(source)))
