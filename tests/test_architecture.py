"""The package's architecture (issue 23): imports go one way, from a higher room to a lower one.

Every ``beyondsgd`` module's imports are read with ``ast`` (top-level and lazy ones inside
functions alike; ``if TYPE_CHECKING:`` blocks too) and each module is placed in a room by
:data:`LAYERS`, lowest first. A module may import its own room or a lower one, never a higher
one; no chain of imports between modules may lead back to where it started; and no import may
fail when it runs (a module that does not exist, a name its module does not bind: typically a
lazy import moved with its module into another package). Run as a script
(``python tests/test_architecture.py``) it prints every offending import and cycle. The
benchmark's modules also stay within :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Rooms, lowest first; a module belongs to the room with the longest prefix of its name. Rooms of
# one rank are independent: none of them imports another.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("beyondsgd.data", "beyondsgd.models", "beyondsgd.distributed"),
    ("beyondsgd.methods",),
    ("beyondsgd.factory",),
    ("beyondsgd.bench.problems",),
    ("beyondsgd.bench.store",),
    ("beyondsgd.bench.run",),
    ("beyondsgd.bench.protocol",),
    ("beyondsgd.bench.analysis",),
    ("beyondsgd.bench.reproduce",),  # each paper's experiment: run/store/analysis
    ("beyondsgd.bench.report",),     # reads the store, analysis and reproduce's tables
    ("beyondsgd.bench.comparison",),  # compare(): protocol + report on one problem, from Python
    ("beyondsgd.integrations",),     # methods and bench, for other frameworks
    ("beyondsgd.cli",),
)
# Package ``__init__`` modules that only gather their children, matched by exact name only, each a
# room of its own between two ranks: ``beyondsgd`` re-exports the public API (data..factory, and
# ``Problem`` and ``bench`` for your own problems), just below the CLI (the only module that
# imports it, for ``__version__``); ``beyondsgd.bench`` holds ``compare``, which imports the
# comparison on first use, so it sits above it.
ROOTS = {"beyondsgd": 11.5, "beyondsgd.bench": 10.5}


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the ``beyondsgd`` package."""
    out = {}
    for path in sorted((src / "beyondsgd").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def room(module: str) -> tuple[str, float]:
    """(room name, rank) of ``module``; raises for a module no room holds."""
    if module in ROOTS:
        return module, ROOTS[module]
    best = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                    best is None or len(name) > len(best[0])):
                best = (name, rank)
    if best is None:
        raise LookupError(f"{module} is in no room: add it to tests/test_architecture.py LAYERS")
    return best


def _is_package(module: str, files: dict[str, Path]) -> bool:
    return module in files and files[module].name == "__init__.py"


def _from_target(node: ast.ImportFrom, module: str, files: dict[str, Path]) -> str:
    """The absolute name of the module ``from ... import`` reads, in ``module``."""
    if not node.level:
        return node.module or ""
    package = (module if _is_package(module, files) else module.rpartition(".")[0]).split(".")
    return ".".join(package[:len(package) - (node.level - 1)]
                    + ([node.module] if node.module else []))


def imports_of(module: str, files: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported beyondsgd module, line) for every import statement in ``module``. ``from X
    import name`` is an import of ``X.name`` where that is a module, else of ``X``."""
    out = []
    for node in ast.walk(ast.parse(files[module].read_text(), str(files[module]))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(node, module, files)
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in files else target, node.lineno))
    return [(m, line) for m, line in out if m == "beyondsgd" or m.startswith("beyondsgd.")]


def _bound(body: list[ast.stmt], names: set[str]) -> bool:
    """Add the names ``body`` binds at its top level (also inside if/try/with blocks) to
    ``names``; False when that cannot be known (a star import, a module ``__getattr__``)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if node.name == "__getattr__":
                return False
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    return False
                names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        else:
            for field in ("body", "orelse", "finalbody"):
                if not _bound(getattr(node, field, []) or [], names):
                    return False
            for h in getattr(node, "handlers", []) or []:
                if not _bound(h.body, names):
                    return False
    return True


def broken_imports(files: dict[str, Path]) -> list[str]:
    """Imports that fail when they run (often a lazy one, moved with its module into another
    package): of a ``beyondsgd`` module that does not exist, or ``from X import name`` where
    ``X.name`` is no module and ``X`` does not bind ``name``."""
    bound: dict[str, set[str] | None] = {}
    out = []
    for m, path in sorted(files.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [f"{m}:{node.lineno} imports {a.name}, which does not exist"
                        for a in node.names if a.name.split(".")[0] == "beyondsgd"
                        and a.name not in files]
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _from_target(node, m, files)
            if target.split(".")[0] != "beyondsgd":
                continue
            if target not in files:
                out.append(f"{m}:{node.lineno} imports from {target}, which does not exist")
                continue
            if target not in bound:
                names: set[str] = set()
                tree = ast.parse(files[target].read_text())
                bound[target] = names if _bound(tree.body, names) else None
            for a in node.names:
                known = bound[target]
                if f"{target}.{a.name}" not in files and known is not None and a.name not in known:
                    out.append(f"{m}:{node.lineno} imports {a.name!r} from {target}, which "
                               "neither defines it nor has such a module")
    return out


def graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, within the package."""
    g: dict[str, dict[str, int]] = {}
    for m in files:
        g[m] = {}
        for target, line in imports_of(m, files):
            while target not in files and "." in target:  # ``import beyondsgd.x.name``
                target = target.rpartition(".")[0]
            if target != m:
                g[m].setdefault(target, line)
    return g


def upward_imports(g: dict[str, dict[str, int]]) -> list[str]:
    """Imports from a module into a higher room, or into another room of the same rank."""
    out = []
    for m, targets in sorted(g.items()):
        (r_from, k_from) = room(m)
        for t, line in sorted(targets.items()):
            (r_to, k_to) = room(t)
            if k_to > k_from or (k_to == k_from and r_to != r_from):
                out.append(f"{m}:{line} imports {t} ({r_from} -> {r_to}, a higher room)")
    return out


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def problems(src: Path = SRC) -> list[str]:
    files = module_files(src)
    g = graph(files)
    unplaced = []
    for m in files:
        try:
            room(m)
        except LookupError as exc:
            unplaced.append(str(exc))
    if unplaced:
        return unplaced
    return broken_imports(files) + upward_imports(g) + [
        "import cycle: " + " <-> ".join(c) + " (" + "; ".join(
            f"{a} -> {b}:{g[a][b]}" for a in c for b in c if b in g[a]) + ")"
        for c in cycles(g)]


# ---- tests --------------------------------------------------------------------------------
def test_imports_go_one_way_and_never_in_a_circle():
    found = problems()
    assert not found, "\n".join(found)


MAX_LINES = 400  # issue 23: every module of the benchmark readable in one sitting


def test_bench_modules_stay_within_about_400_lines():
    long = {m: n for m, path in module_files().items() if m.startswith("beyondsgd.bench.")
            and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these along a seam (over {MAX_LINES} lines): {long}"


def test_every_room_of_the_layers_exists():
    files = module_files()
    for names in LAYERS:
        for name in names:
            assert name in files, f"{name} in LAYERS is no module of the package"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_the_check_sees_upward_and_lazy_imports_and_cycles(tmp_path):
    src = _write(tmp_path, {
        "beyondsgd/__init__.py": "",
        "beyondsgd/data/__init__.py": "x = 1\n",
        "beyondsgd/models.py": "",
        "beyondsgd/distributed.py": "",
        "beyondsgd/factory.py": "",
        "beyondsgd/methods/__init__.py": "from . import base\n",
        "beyondsgd/methods/base.py": "from ..data import x\n",
        "beyondsgd/bench/__init__.py": "",
        "beyondsgd/bench/store/__init__.py": "from .db import Store\n",
        "beyondsgd/bench/store/db.py": ("def f():\n"
                                        "    from ..report import figures\n"),  # lazy, upward
        "beyondsgd/bench/report/__init__.py": "",
        "beyondsgd/bench/report/figures.py": "from .build import x\n",
        "beyondsgd/bench/report/build.py": ("from . import figures\nfrom ..store import Store\n"
                                            "x = 1\n"),
    })
    found = problems(src)
    assert any("beyondsgd.bench.store.db:2 imports beyondsgd.bench.report.figures" in f
               for f in found), found
    assert any(f.startswith("import cycle:") and "beyondsgd.bench.report.build" in f
               and "beyondsgd.bench.report.figures" in f for f in found), found
    assert not any("methods" in f for f in found), found  # downward imports are fine


def test_the_check_sees_imports_that_would_fail(tmp_path):
    src = _write(tmp_path, {
        "beyondsgd/__init__.py": "",
        "beyondsgd/distributed.py": "",
        "beyondsgd/cli/__init__.py": "from .train import cmd\n",
        "beyondsgd/cli/train.py": ("def cmd():\n"
                                   "    from . import distributed\n"       # beyondsgd.distributed
                                   "    from .bench.store import Store\n"  # beyondsgd.bench...
                                   "    import beyondsgd.nothing\n"),
    })
    found = problems(src)
    assert "beyondsgd.cli.train:2 imports 'distributed' from beyondsgd.cli, which neither " \
           "defines it nor has such a module" in found, found
    assert "beyondsgd.cli.train:3 imports from beyondsgd.cli.bench.store, which does not " \
           "exist" in found, found
    assert "beyondsgd.cli.train:4 imports beyondsgd.nothing, which does not exist" in found


def test_a_module_in_no_room_is_named(tmp_path):
    src = _write(tmp_path, {"beyondsgd/__init__.py": "", "beyondsgd/newroom.py": ""})
    assert any("beyondsgd.newroom is in no room" in f for f in problems(src))


if __name__ == "__main__":
    found = problems()
    print("\n".join(found) or "no upward import, no cycle")
    sys.exit(1 if found else 0)
