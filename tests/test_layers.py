"""Imports point down only (DESIGN.md §1): protocols <- runtime <- actors.

protocols/ imports nothing of ours but protocols, and nothing that does I/O or reads clocks.
runtime/ may import protocols; actors/ may import runtime and protocols. The one exception is
the composition root, runtime/cli.py (and the local launcher), which starts actors.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"protocols": 0, "runtime": 1, "actors": 2}
COMPOSITION_ROOTS = {"runtime/cli.py", "runtime/cluster.py"}
IMPURE_MODULES = {"time", "random", "threading", "socket", "zmq", "pykka", "sqlite3", "subprocess",
                  "asyncio", "select", "selectors", "multiprocessing", "os", "datetime", "uuid", "secrets"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_imports_point_down_only():
    upward = []
    for package, level in LAYERS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative in COMPOSITION_ROOTS:
                continue
            for lineno, module in imported_modules(path):
                top = module.split(".")[0]
                if top in LAYERS and LAYERS[top] > level:
                    upward.append(f"{relative}:{lineno} imports {module}")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_protocols_are_pure():
    impure = []
    for path in sorted((REPO / "protocols").rglob("*.py")):
        for lineno, module in imported_modules(path):
            if module.split(".")[0] in IMPURE_MODULES:
                # `random` may appear only as a type of a passed-in generator.
                impure.append(f"{path.relative_to(REPO)}:{lineno} imports {module}")
    allowed = {line for line in impure if line.endswith("imports random") and "raft" in line}
    assert not set(impure) - allowed, "protocols/ must stay pure:\n" + "\n".join(sorted(set(impure) - allowed))
