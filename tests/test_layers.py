"""The house rules of the tree (docs/ARCHITECTURE.md, "Layers"), checked on every file.

* Imports point down only: protocols <- runtime <- actors <- agentflow, with no exemption.
* protocols/ imports nothing that does I/O or reads clocks.
* No import cycle inside a folder (a module-level import; a lazy import inside a function is
  how a command loads what only it needs, and cannot form a cycle at import time).
* No module over MAX_LINES lines, except the few listed with their reason.
* Actors talk only by messages: nothing in actors/ takes another actor's object
  (``node.actor(...)``) or a delivery target (``node.targets``); what an actor needs from the
  RaftActor comes through the ControlPlane the composition hands it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"protocols": 0, "runtime": 1, "actors": 2, "agentflow": 3}
IMPURE_MODULES = {"time", "random", "threading", "socket", "zmq", "pykka", "sqlite3", "subprocess",
                  "asyncio", "select", "selectors", "multiprocessing", "os", "datetime", "uuid", "secrets"}
MAX_LINES = 600
# Modules allowed over MAX_LINES, each with why splitting it would hurt more than it helps.
LONG_MODULE_ALLOWANCE: dict[str, str] = {}


def imported_modules(path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from package import module` imports the module too.
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def source_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_imports_point_down_only():
    upward = []
    for package, level in LAYERS.items():
        for path in source_files(package):
            for lineno, module in imported_modules(path):
                top = module.split(".")[0]
                if top in LAYERS and LAYERS[top] > level:
                    upward.append(f"{path.relative_to(REPO)}:{lineno} imports {module}")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_protocols_are_pure():
    impure = []
    for path in source_files("protocols"):
        for lineno, module in imported_modules(path):
            if module.split(".")[0] in IMPURE_MODULES:
                impure.append(f"{path.relative_to(REPO)}:{lineno} imports {module}")
    # `random` may appear only as the type of a passed-in generator (the Raft core's).
    allowed = {line for line in impure if line.endswith("imports random") and "raft" in line}
    assert not set(impure) - allowed, "protocols/ must stay pure:\n" + "\n".join(sorted(set(impure) - allowed))


def reaches_into_other_actors(source: str, name: str) -> list[str]:
    """``node.actor(...)`` calls and ``node.targets`` uses in ``source`` (``node`` or ``x.node``)."""
    tree = ast.parse(source, filename=name)
    calls = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr not in ("actor", "targets"):
            continue
        owner = node.value
        if not ((isinstance(owner, ast.Name) and owner.id == "node")
                or (isinstance(owner, ast.Attribute) and owner.attr == "node")):
            continue
        if node.attr == "targets" or id(node) in calls:
            found.append(f"{name}:{node.lineno} uses node.{node.attr}")
    return found


def test_actors_only_talk_by_messages():
    reaching = [line for path in source_files("actors")
                for line in reaches_into_other_actors(path.read_text(), str(path.relative_to(REPO)))]
    assert not reaching, "actors reaching into other actors:\n" + "\n".join(reaching)


def test_the_actor_rule_finds_what_it_forbids():
    sample = ("def f(self, node):\n    self.node.actor('raft')\n    node.targets['x']\n"
              "    self.node.actors\n    node.lookup(('n', 'raft'))\n    self.node.actor\n")
    assert reaches_into_other_actors(sample, "sample") == ["sample:2 uses node.actor", "sample:3 uses node.targets"]


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a list of nodes (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_find_cycle_finds_one_and_only_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_inside_a_folder():
    cycles = []
    for package in LAYERS:
        folders: dict[Path, dict[str, set[str]]] = {}
        for path in source_files(package):
            graph = folders.setdefault(path.parent, {})
            name = module_name(path)
            graph[name] = set()
            for _, module in imported_modules(path, top_level_only=True):
                graph[name].add(module)
        for folder, graph in folders.items():
            local = {name: {m for m in imports if m in graph and m != name} for name, imports in graph.items()}
            cycle = find_cycle(local)
            if cycle:
                cycles.append(f"{folder.relative_to(REPO)}: {' -> '.join(cycle)}")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_is_too_long():
    too_long = []
    for package in [*LAYERS, "tests", "bench"]:
        for path in source_files(package):
            relative = path.relative_to(REPO).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES and relative not in LONG_MODULE_ALLOWANCE:
                too_long.append(f"{relative}: {lines} lines")
    assert not too_long, f"modules over {MAX_LINES} lines (split them, or allow one with a reason):\n" + \
        "\n".join(too_long)


def test_nothing_cites_a_file_outside_the_repository():
    """The design lives in docs/ARCHITECTURE.md: no code or doc points at a file we do not ship."""
    outside = ("DESIGN.md", "PROBES.md", "../shared", "DESIGN §")
    citing = []
    for path in sorted(REPO.rglob("*")):
        relative = path.relative_to(REPO).as_posix()
        if (path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml") or relative.startswith((".venv", ".git"))
                or relative == "tests/test_layers.py"):
            continue
        text = path.read_text(errors="replace")
        citing.extend(f"{relative} cites {name}" for name in outside if name in text)
    assert not citing, "\n".join(citing)
