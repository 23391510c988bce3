"""Print the package's layout figures and check the layout rules (AGENTS.md).

Rules that fail the check (exit 1):

* a module over 800 lines, a function over 80 lines;
* an import cycle between modules at run time (imports under ``TYPE_CHECKING`` are
  type-only and do not count);
* the core (``sluicegate`` top-level modules, ``sluicegate._core``) importing anything
  outside the standard library, or a subpackage (gateway, sim, ...);
* ``_core`` importing from outside itself anything but the shared vocabulary
  (``_types``, ``_errors``): it is self-contained, as trio's ``_core`` is;
* ``_core`` importing I/O, clocks or logging (``asyncio``, ``time``, ``logging``, ...):
  it is sans-I/O, takes ``now`` and reports what went wrong; the shell logs;
* a cycle inside ``_core``, even one of type-only imports, through the scheduler (the
  decision step, which uses everything else in the core): a helper split off from it
  is given what it needs and does not refer back to it (``_statistics`` once took the
  whole ``Scheduler``).

Reported, not failed (the soft targets): modules over 400 lines, functions over 30
lines, type-only import cycles (those inside ``_core`` listed apart: the records
that refer to each other, a ticket to its flow and a flow to its queue of tickets).

Usage: ``python scripts/layout.py [--quiet]`` (``--quiet`` prints only problems).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "sluicegate"
MODULE_SOFT, MODULE_HARD = 400, 800
FUNCTION_SOFT, FUNCTION_HARD = 30, 80
#: What the core may import from outside `_core`: the shared vocabulary.
VOCABULARY = frozenset({f"{PACKAGE}._types", f"{PACKAGE}._errors"})
#: Standard modules `_core` may not import: it does no I/O, reads no clock, never logs.
CORE_FORBIDDEN = frozenset(
    {"asyncio", "logging", "time", "socket", "selectors", "threading", "concurrent"}
)
#: The top of `_core`: no cycle inside the core may pass through it, even for types.
CORE_TOP = frozenset({f"{PACKAGE}._core._scheduler"})


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    functions: list[tuple[str, int]] = field(default_factory=list)
    runtime: set[str] = field(default_factory=set)
    typing: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: Module, node: ast.ImportFrom, known: set[str]) -> list[str]:
    """Absolute names of the modules an ImportFrom reads (a name may be a submodule)."""
    if node.level:
        base = module.name.split(".")
        is_package = module.path.name == "__init__.py"
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = [target]
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in known:
            out.append(sub)
    return out


def _scan_imports(module: Module, tree: ast.Module, known: set[str]) -> None:
    def visit(nodes: list[ast.stmt], type_only: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                visit(node.body, type_only or _is_type_checking(node))
                visit(node.orelse, type_only)
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = _resolve(module, node, known)
            elif isinstance(node, ast.Try):
                visit(node.body, type_only)
                for handler in node.handlers:
                    visit(handler.body, type_only)
                continue
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    if name in known and name != module.name:
                        (module.typing if type_only else module.runtime).add(name)
                elif not type_only:
                    module.external.add(name.split(".")[0])

    visit(tree.body, False)
    # Imports inside functions run at call time: they count as run-time edges.
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom | ast.Import):
                    visit([inner], False)


def _functions(tree: ast.Module) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                # From `def` on: a click command's option decorators are declarations.
                start = child.lineno
                out.append((prefix + child.name, (child.end_lineno or start) - start + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return out


def load() -> dict[str, Module]:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    known = {_module_name(p) for p in paths}
    modules: dict[str, Module] = {}
    for path in paths:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, str(path))
        module = Module(_module_name(path), path, text.count("\n") + 1)
        module.functions = _functions(tree)
        _scan_imports(module, tree, known)
        modules[module.name] = module
    return modules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def _is_core(name: str) -> bool:
    """The standard-library-only core: the package itself, its private top-level
    modules, `_core` and `testing` (not the CLI, not the subpackages on top)."""
    parts = name.split(".")
    if name == PACKAGE or parts[1] in ("_core", "testing"):
        return True
    return len(parts) == 2 and parts[1].startswith("_") and parts[1] != "__main__"


def _core_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """The import cycles inside `_core`, type-only edges included."""
    prefix = f"{PACKAGE}._core."
    core = {n: m for n, m in modules.items() if n.startswith(prefix)}
    return cycles({n: {d for d in m.runtime | m.typing if d in core} for n, m in core.items()})


def check(modules: dict[str, Module], quiet: bool) -> list[str]:
    hard: list[str] = []
    soft: list[str] = []
    for m in modules.values():
        rel = m.path.relative_to(ROOT.parent)
        if m.lines > MODULE_HARD:
            hard.append(f"{rel}: {m.lines} lines (limit {MODULE_HARD})")
        elif m.lines > MODULE_SOFT:
            soft.append(f"{rel}: {m.lines} lines (target {MODULE_SOFT})")
        for func, n in m.functions:
            if n > FUNCTION_HARD:
                hard.append(f"{rel}: {func} is {n} lines (limit {FUNCTION_HARD})")
        if _is_core(m.name):
            stdlib = sys.stdlib_module_names
            third = sorted(e for e in m.external if e not in stdlib and e != "__future__")
            if third:
                hard.append(f"{m.name}: the core imports {', '.join(third)}")
            io = sorted(m.external & CORE_FORBIDDEN)
            if io and m.name.startswith(f"{PACKAGE}._core"):
                hard.append(f"{m.name}: _core is sans-I/O but imports {', '.join(io)}")
            for dep in sorted(m.runtime | m.typing):
                if not _is_core(dep):
                    hard.append(f"{m.name}: the core imports the subpackage module {dep}")
                elif (
                    m.name.startswith(f"{PACKAGE}._core")
                    and not dep.startswith(f"{PACKAGE}._core")
                    and dep not in VOCABULARY
                ):
                    hard.append(f"{m.name}: _core imports {dep} (only _types and _errors)")
    runtime = {n: m.runtime for n, m in modules.items()}
    full = {n: m.runtime | m.typing for n, m in modules.items()}
    runtime_cycles = cycles(runtime)
    hard.extend("import cycle at run time: " + " -> ".join(c) for c in runtime_cycles)
    for c in _core_cycles(modules):
        if CORE_TOP.intersection(c):
            hard.append("a cycle in _core through the scheduler: " + " <-> ".join(c))
        else:
            soft.append("type-only cycle in _core: " + " <-> ".join(c))
    soft.extend(
        "type-only import cycle: " + " <-> ".join(c)
        for c in cycles(full)
        if c not in runtime_cycles and not c[0].startswith(f"{PACKAGE}._core.")
    )
    if not quiet:
        report(modules)
        print(f"\n{len(soft)} soft-target notes:")
        for line in soft:
            print("  " + line)
    return hard


def report(modules: dict[str, Module]) -> None:
    funcs = [
        (n, f"{m.path.relative_to(ROOT.parent)}:{name}")
        for m in modules.values()
        for name, n in m.functions
    ]
    sizes = sorted((m.lines for m in modules.values()), reverse=True)
    print(f"{len(modules)} modules, {sum(sizes)} lines; largest:")
    for m in sorted(modules.values(), key=lambda m: -m.lines)[:10]:
        print(f"  {m.lines:5d}  {m.path.relative_to(ROOT.parent)}")
    over = sum(1 for n, _ in funcs if n > FUNCTION_SOFT)
    print(f"{len(funcs)} functions, {over} over {FUNCTION_SOFT} lines; longest:")
    for n, where in sorted(funcs, reverse=True)[:10]:
        print(f"  {n:5d}  {where}")


def main() -> int:
    quiet = "--quiet" in sys.argv[1:]
    hard = check(load(), quiet)
    if hard:
        print(f"\nlayout: {len(hard)} rule(s) broken:")
        for line in hard:
            print("  " + line)
        return 1
    print("layout: every hard rule holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
