"""The import graph of src/r1lab: no cycles (between modules, nor between the packages and top-level
modules of r1lab), and every import points down the layers.

The graph is read from the source with `ast`, not by importing anything: every `import` and
`from ... import` (absolute or relative, at module level or inside a function, which run all the
same, only later) and every `importlib.import_module("...")` / `__import__("...")` of a literal name.
Importing `a.b.c` also runs the `__init__` of each package on the way (`a.b`), so it counts as an
import of those packages too, except of the importer's own enclosing packages (already running).
Names looked up from data at run time (a plugin list of module names) are not edges: they bind
late by design.

LAYERS is the table of the README's "Layers" paragraph; keep the two in step. APART: packages of one
layer that do not import one another (train, eval and data share only what lies below them).
"""

from __future__ import annotations

import ast
import re
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "r1lab"

# bottom to top; a module may import modules of its own layer and of the layers below it
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("r1lab", "r1lab.errors", "r1lab.domains", "r1lab.records", "r1lab.config")),
    ("math", ("r1lab.algos",)),
    ("signals", ("r1lab.verify", "r1lab.tasks", "r1lab.reward_registry", "r1lab.rewards", "r1lab.reward_shaping",
                 "r1lab.benchmarks", "r1lab.envs")),
    ("engines", ("r1lab.models", "r1lab.hub", "r1lab.rollout", "r1lab.cluster")),
    ("observe", ("r1lab.runs", "r1lab.report", "r1lab.plots", "r1lab.health", "r1lab.tracking")),
    ("work", ("r1lab.train", "r1lab.eval", "r1lab.data")),
    ("orchestration", ("r1lab.runner", "r1lab.stages", "r1lab.evaluate", "r1lab.demo", "r1lab.pipeline", "r1lab.rstar",
                       "r1lab.recipes", "r1lab.serve")),
    ("top", ("r1lab.cli", "r1lab.__main__")),
)
# stricter than the layer rule: these may import only themselves and the listed modules
ONLY: dict[str, tuple[str, ...]] = {"r1lab.algos": ("r1lab.errors", "r1lab.domains")}
# side by side in one layer: none of these imports another (what two of them share lives below)
APART: tuple[tuple[str, ...], ...] = (("r1lab.train", "r1lab.eval", "r1lab.data"),)


# --- the graph --------------------------------------------------------------------------------


def discover(src: Path, root: str) -> dict[str, Path]:
    """Module name -> file for every .py under src/root (a package is its __init__.py)."""
    modules = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _literal_import(node: ast.Call) -> str | None:
    """The module named by `importlib.import_module("x")` or `__import__("x", ...)`, if literal."""
    f = node.func
    named = (isinstance(f, ast.Name) and f.id in ("__import__", "import_module")) or (
        isinstance(f, ast.Attribute) and f.attr == "import_module")
    if named and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for each import in the module `name`, in source order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def known(dotted: str) -> str | None:  # the longest prefix of `dotted` that is a project module
        parts = dotted.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    def add(target: str | None, line: int) -> None:
        if target is None:
            return
        found.append((target, line))
        # the packages on the way run first, unless they enclose the importer (already running)
        parts = target.split(".")[:-1]
        while parts:
            pkg = ".".join(parts)
            if pkg in modules and not (name == pkg or name.startswith(pkg + ".")):
                found.append((pkg, line))
            parts.pop()

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    add(known(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not (base == ROOT or base.startswith(ROOT + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else known(base), node.lineno)
        elif isinstance(node, ast.Call):
            target = _literal_import(node)
            if target and (target == ROOT or target.startswith(ROOT + ".")):
                add(known(target), node.lineno)
    return sorted(set(found), key=lambda t: (t[1], t[0]))


def import_graph(src: Path, root: str) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """(modules, graph): graph[a][b] is the first line of `a` that imports `b`."""
    modules = discover(src, root)
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for m, path in modules.items():
        for target, line in imports_of(m, path, modules):
            if target != m:
                graph[m].setdefault(target, line)
    return modules, graph


# --- the checks -------------------------------------------------------------------------------


def _components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), each sorted; only those with a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def _shortest_cycle(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """A shortest cycle through the component's first module: [a, b, ..., a]."""
    start, inside = comp[0], set(comp)
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w not in inside:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle found in component {comp}")  # a component of size > 1 has one


def find_cycles(graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> list[str]:
    """One readable line per import cycle: the path, with the file and line of each import."""
    lines = []
    for comp in _components(graph):
        cycle = _shortest_cycle(graph, comp)
        steps = [f"{a} -> {b} ({_where(modules, a)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        tangled = f" (tangled with it: {', '.join(m for m in comp if m not in cycle)})" if len(comp) > len(cycle) - 1 else ""
        lines.append(f"import cycle {' -> '.join(cycle)}: " + "; ".join(steps) + tangled)
    return lines


def unit_of(module: str) -> str:
    """The package or top-level module of r1lab that `module` belongs to: r1lab.verify.pool -> r1lab.verify."""
    return ".".join(module.split(".")[:2])


def find_package_cycles(graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> list[str]:
    """Cycles between the packages and top-level modules of r1lab (verify/ -> tasks/ -> verify/), each
    with one import per step that makes it."""
    edges: dict[str, dict[str, tuple[str, str, int]]] = {unit_of(m): {} for m in graph}
    for a in sorted(graph):
        for b, line in sorted(graph[a].items(), key=lambda t: (t[1], -len(t[0]))):  # the named module first
            if unit_of(a) != unit_of(b):
                edges[unit_of(a)].setdefault(unit_of(b), (a, b, line))
    units = {u: {v: 0 for v in d} for u, d in edges.items()}
    lines = []
    for comp in _components(units):
        cycle = _shortest_cycle(units, comp)
        steps = [f"{edges[u][v][0]} imports {edges[u][v][1]} ({_where(modules, edges[u][v][0])}:{edges[u][v][2]})"
                 for u, v in zip(cycle, cycle[1:])]
        lines.append(f"package cycle {' -> '.join(cycle)}: " + "; ".join(steps))
    return lines


def layer_of(module: str, layers=LAYERS) -> tuple[int, str, str] | None:
    """(rank, layer name, table entry) of the most specific table entry that contains `module`."""
    best = None
    for rank, (layer, prefixes) in enumerate(layers):
        for p in prefixes:
            if module == p or (p != ROOT and module.startswith(p + ".")):
                if best is None or len(p) > len(best[2]):
                    best = (rank, layer, p)
    return best


def find_upward(graph: dict[str, dict[str, int]], modules: dict[str, Path], layers=LAYERS,
                only=ONLY, apart=APART) -> list[str]:
    """One line per import that points up the layers, breaks an ONLY or APART rule, or leaves a
    module unplaced."""
    problems = [f"{m} ({_where(modules, m)}) is in no layer: add it to LAYERS and the README"
                for m in sorted(graph) if layer_of(m, layers) is None]
    for a in sorted(graph):
        la = layer_of(a, layers)
        if la is None:
            continue
        for b, line in sorted(graph[a].items()):
            lb = layer_of(b, layers)
            if lb is None or any(c.startswith(b + ".") and n == line for c, n in graph[a].items()):
                continue  # unplaced (reported above), or the package of a module this line imports
            where = f"{_where(modules, a)}:{line}"
            if lb[0] > la[0]:
                problems.append(f"{a} ({la[1]}) imports {b} ({lb[1]}), a higher layer, at {where}")
            for group in apart:
                mine = next((g for g in group if a == g or a.startswith(g + ".")), None)
                theirs = next((g for g in group if b == g or b.startswith(g + ".")), None)
                if mine and theirs and mine != theirs:
                    problems.append(f"{a} imports {b} at {where}; {', '.join(group)} stay apart")
            for scope, allowed in only.items():
                if (a == scope or a.startswith(scope + ".")) and not (b == scope or b.startswith(scope + ".")):
                    if not any(b == x or b.startswith(x + ".") for x in allowed):
                        problems.append(f"{a} imports {b} at {where}; {scope} may import only {', '.join(allowed)}")
    return problems


def _where(modules: dict[str, Path], m: str) -> str:
    """The module's file, relative to the source root: r1lab/verify/__init__.py."""
    return m.replace(".", "/") + ("/__init__.py" if _is_package(m, modules) else ".py")


# --- the project ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project():
    return import_graph(SRC, ROOT)


def test_no_import_cycles(project):
    modules, graph = project
    cycles = find_cycles(graph, modules)
    assert not cycles, "\n".join(cycles)


def test_no_cycles_between_packages(project):
    modules, graph = project
    cycles = find_package_cycles(graph, modules)
    assert not cycles, "\n".join(cycles)


def test_imports_point_down_the_layers(project):
    modules, graph = project
    problems = find_upward(graph, modules)
    assert not problems, "\n".join(problems)


def test_registries_are_leaves(project):
    """A registry imports nothing of the project but errors, records and domains (the leaf its
    methods declare the domains of their settings with), so anything may import it."""
    modules, graph = project
    for leaf in ("r1lab.algos.registry", "r1lab.verify.registry", "r1lab.reward_registry", "r1lab.domains",
                 "r1lab.envs.base"):
        assert leaf in modules, leaf
        assert set(graph[leaf]) <= {"r1lab.errors", "r1lab.records", "r1lab.domains"}, (leaf, sorted(graph[leaf]))


def test_readme_lists_the_layers():
    """The README's Layers paragraph has one bullet per layer of the table, in order, naming the
    same modules (`errors.py`, `verify/`)."""
    text = (SRC.parent / "README.md").read_text(encoding="utf-8")
    assert "\nLayers. " in text, "README.md has no paragraph starting 'Layers. ' (in its Layout section)"
    paragraph = text[text.index("\nLayers. "):]
    paragraph = paragraph[: paragraph.index("\n\n", paragraph.index("- **"))]
    bullets = re.findall(r"^- \*\*(\w+)\*\*:(.*?)(?=^- \*\*|\Z)", paragraph, re.DOTALL | re.MULTILINE)
    assert [name for name, _ in bullets] == [layer for layer, _ in LAYERS]
    for (layer, prefixes), (_, bullet) in zip(LAYERS, bullets):
        named = set(re.findall(r"`([\w/.]+?)`", bullet))
        for p in prefixes:
            if p == ROOT:
                continue
            file = p.removeprefix(ROOT + ".").replace(".", "/")
            assert f"{file}.py" in named or f"{file}/" in named, f"README's {layer} bullet does not name {p}"


# --- the checker on small synthetic packages: it must find what it is for ----------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / "r1lab" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return tmp_path


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    src = _package(tmp_path, {
        "__init__.py": "",
        "rewards.py": "from r1lab.errors import R1labError\nimport r1lab.shaping  # bottom of file\n",
        "shaping.py": "def f():\n    from r1lab.rewards import is_r1_format\n",
        "errors.py": "",
    })
    modules, graph = import_graph(src, ROOT)
    cycles = find_cycles(graph, modules)
    assert len(cycles) == 1
    assert cycles[0].startswith("import cycle r1lab.rewards -> r1lab.shaping -> r1lab.rewards:")
    assert "r1lab/shaping.py:2" in cycles[0] and "r1lab/rewards.py:2" in cycles[0]


def test_checker_finds_a_cycle_through_a_package_init_and_import_module(tmp_path):
    """tasks.countdown imports verify.registry, which runs verify/__init__, which imports r1lab.tasks
    by importlib: a cycle although no file names the other's module directly."""
    src = _package(tmp_path, {
        "__init__.py": "",
        "verify/__init__.py": "import importlib\nfrom .registry import get\ndef load():\n"
                              "    importlib.import_module('r1lab.tasks')\n",
        "verify/registry.py": "def get(): pass\n",
        "tasks/__init__.py": "from . import countdown\n",
        "tasks/countdown.py": "from ..verify.registry import get\n",
    })
    modules, graph = import_graph(src, ROOT)
    assert graph["r1lab.tasks.countdown"] == {"r1lab.verify.registry": 1, "r1lab.verify": 1}
    assert graph["r1lab.verify"] == {"r1lab.verify.registry": 2, "r1lab.tasks": 4}
    cycles = find_cycles(graph, modules)
    assert len(cycles) == 1 and "r1lab.tasks -> r1lab.tasks.countdown -> r1lab.verify -> r1lab.tasks" in cycles[0]
    # without the importlib line: acyclic (an enclosing package's own __init__ is not an edge)
    (src / "r1lab/verify/__init__.py").write_text("from .registry import get\n", encoding="utf-8")
    modules, graph = import_graph(src, ROOT)
    assert find_cycles(graph, modules) == []


def test_checker_finds_a_package_cycle_without_a_module_cycle(tmp_path):
    """verify.judge reads a helper of tasks.base, tasks.countdown registers with verify: no module is
    on a cycle, but the packages are."""
    src = _package(tmp_path, {
        "__init__.py": "",
        "verify/__init__.py": "from r1lab.verify import judge\n",
        "verify/judge.py": "def prompt(p):\n    from r1lab.tasks.base import prompt_text\n",
        "tasks/__init__.py": "",
        "tasks/base.py": "",
        "tasks/countdown.py": "from r1lab.verify import judge\n",
    })
    modules, graph = import_graph(src, ROOT)
    assert find_cycles(graph, modules) == []
    assert find_package_cycles(graph, modules) == [
        "package cycle r1lab.tasks -> r1lab.verify -> r1lab.tasks: r1lab.tasks.countdown imports r1lab.verify.judge "
        "(r1lab/tasks/countdown.py:1); r1lab.verify.judge imports r1lab.tasks.base (r1lab/verify/judge.py:2)"]


def test_checker_finds_upward_and_unplaced_imports(tmp_path):
    src = _package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "config.py": "",
        "algos/__init__.py": "from r1lab.algos.losses import loss\n",
        "algos/losses.py": "from r1lab.errors import E\ndef loss():\n    from r1lab import config\n",
        "verify/__init__.py": "def f():\n    from r1lab.train.rl import step\n",
        "train/__init__.py": "",
        "train/rl.py": "from r1lab import algos, errors\n",
        "eval/__init__.py": "",
        "eval/scorers.py": "from r1lab.train.rl import step\n",
        "stray.py": "",
    })
    layers = (("base", ("r1lab", "r1lab.errors", "r1lab.config")), ("math", ("r1lab.algos",)),
              ("signals", ("r1lab.verify",)), ("work", ("r1lab.train", "r1lab.eval")))
    modules, graph = import_graph(src, ROOT)
    problems = find_upward(graph, modules, layers, {"r1lab.algos": ("r1lab.errors",)}, (("r1lab.train", "r1lab.eval"),))
    assert problems == [
        "r1lab.stray (r1lab/stray.py) is in no layer: add it to LAYERS and the README",
        "r1lab.algos.losses imports r1lab.config at r1lab/algos/losses.py:3; r1lab.algos may import only r1lab.errors",
        "r1lab.eval.scorers imports r1lab.train.rl at r1lab/eval/scorers.py:1; r1lab.train, r1lab.eval stay apart",
        "r1lab.verify (signals) imports r1lab.train.rl (work), a higher layer, at r1lab/verify/__init__.py:2",
    ]
    assert find_cycles(graph, modules) == []
