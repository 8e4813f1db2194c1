"""The house rules of docs/architecture.md, checked on the source: which layer may import which,
how large a module may grow, and that only the algorithms module dispatches on algorithm types."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("metaopt", "supervised", "rl", "benchmarks")
DOMAINS = ("supervised", "rl")


def rooms(domain: str) -> tuple[str, ...]:
    """A domain's rooms: its subpackages, one per family (``rl.tabular``, ``supervised.sine``)."""
    return tuple(sorted(f"{domain}.{p.parent.name}" for p in (ROOT / domain).glob("*/__init__.py")))


#: Rooms that other rooms build on, and which: ``omniglot`` is a preset of the ``images`` family.
SHARED_ROOMS = {"supervised.images": ("supervised.omniglot",)}


def other_rooms(name: str, domain: str) -> tuple[str, ...]:
    """The rooms of ``domain`` that module ``name`` may not import."""
    return tuple(
        room
        for room in rooms(domain)
        if not any(
            name == user or name.startswith(user + ".") for user in SHARED_ROOMS.get(room, ())
        )
    )


#: What each layer may not import (a layer is a package prefix; the most specific one applies).
#: Nothing imports ``benchmarks``: the measurement code sits on top, beside the command line.
FORBIDDEN = {
    "metaopt": ("metaopt.training", "metaopt.tools", "metaopt.cli", *DOMAINS, "benchmarks"),
    "metaopt.training": ("metaopt.tools", "metaopt.cli", *DOMAINS, "benchmarks"),
    "metaopt.tools": ("metaopt.cli", *DOMAINS, "benchmarks"),
    # A domain builds on the core and training, never on a tool (the bench's cases that measure
    # it live in `benchmarks`); its shared pieces import none of its rooms, a room no other room.
    **{
        name: (
            "metaopt.tools",
            "metaopt.cli",
            *(other for other in DOMAINS if other != domain),
            "benchmarks",
            *other_rooms(name, domain),
        )
        for domain in DOMAINS
        for name in (domain, *rooms(domain))
    },
    # Measurements import the library, its tools and the domains, never the command line.
    "benchmarks": ("metaopt.cli",),
}
#: The package's front door names `TaskFamily`, `TrainConfig` and `ConfigError` lazily (a
#: module `__getattr__`): importing the core does not import training (tested below).
LAZY = {"metaopt": ("metaopt.training",)}
#: The command line sits on top: it may import every layer of the package (never a domain, nor
#: the measurement code).
TOP = {
    "metaopt.cli": (*DOMAINS, "benchmarks"),
    "metaopt.__main__": (*DOMAINS, "benchmarks"),
}

MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                package = module_name(path if path.name == "__init__.py" else path.parent)
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def layer_rules(module: str) -> tuple[str, ...]:
    if module in TOP:
        return TOP[module]
    layer = max(
        (name for name in FORBIDDEN if module == name or module.startswith(name + ".")), key=len
    )
    return FORBIDDEN[layer]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path: Path) -> None:
    module = module_name(path)
    bad = sorted(
        name
        for name in imported(path)
        for banned in layer_rules(module)
        if within(name, banned)
        and not within(module, banned)
        and not any(within(name, lazy) for lazy in LAZY.get(module, ()))
    )
    assert not bad, f"{module} imports {bad}, against docs/architecture.md"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from metaopt.training import train\nimport rl.family\n")
    assert {"metaopt.training", "rl.family"} <= imported(source)


def test_each_family_has_its_room_and_rooms_keep_to_themselves() -> None:
    assert rooms("rl") == ("rl.cheetah", "rl.nav2d", "rl.tabular")
    assert rooms("supervised") == (
        "supervised.classify",
        "supervised.images",
        "supervised.omniglot",
        "supervised.sine",
    )
    assert "supervised.images" not in layer_rules("supervised.omniglot.family")  # its preset
    assert "supervised.omniglot" in layer_rules("supervised.images.family")
    assert "supervised.images" in layer_rules("supervised.sine.family")
    assert "rl.tabular" in layer_rules("rl.goal_family")  # shared pieces import no room
    assert "rl.nav2d" in layer_rules("rl.cheetah.family")  # a room imports no other room
    assert "benchmarks" in layer_rules("supervised.sine.family")


def test_the_core_imports_without_training_tools_or_domains() -> None:
    code = (
        "import sys, metaopt, metaopt.testing; "
        "print(sorted(m for m in sys.modules if m.startswith(('metaopt.training', "
        "'metaopt.tools', 'supervised', 'rl.', 'benchmarks')) or m == 'rl'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


ALGORITHM_TYPES = re.compile(
    r"isinstance\([^)]*\b(MAML|MetaSGD|Reptile|MetaLearner)\b|\.inner_lrs\b|inner_optimizer_name"
)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_algorithms_module_looks_inside_algorithms(path: Path) -> None:
    if path.parent == ROOT / "metaopt" / "algorithms":
        return
    hits = [
        f"{number}: {line.strip()}"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ALGORITHM_TYPES.search(line)
    ]
    assert not hits, f"{path.relative_to(ROOT)} dispatches on algorithm internals: {hits}"


#: The engines: they run any rule (`metaopt.rules`) and name none.
EXECUTORS = ("engine.py", "batched.py", "looped.py", "functional.py", "compiled.py", "unroll.py")
#: Algorithm names, and attributes only one algorithm has, that an engine must not mention in its
#: code (docstrings and comments may use them as examples).
ALGORITHM_WORDS = re.compile(
    r"(?i)^(maml|fomaml|metasgd|meta_sgd|reptile|imaml|anil|lslr|mamlrule|metasgdrule|reptilerule"
    r"|imamlrule)$|^(first_order|positive_rates|inner_lrs|lowest_rate|reg|cg_steps|cg_tol|solver"
    r"|kind|learned_rates)$"
)


def code_words(path: Path) -> list[tuple[int, str]]:
    """Every identifier, attribute, keyword-argument name and string literal of ``path``'s code,
    with its line; docstrings left out."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.keyword) and node.arg:
            words.append((node.lineno, node.arg))
        elif isinstance(node, ast.arg):
            words.append((node.lineno, node.arg))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                words += [(node.lineno, w) for w in re.findall(r"[A-Za-z_]+", node.value)]
    return words


@pytest.mark.parametrize("name", EXECUTORS)
def test_the_engines_never_name_an_algorithm(name: str) -> None:
    path = ROOT / "metaopt" / name
    hits = sorted(
        {f"{line}: {word}" for line, word in code_words(path) if ALGORITHM_WORDS.match(word)}
    )
    assert not hits, f"metaopt/{name} names algorithms or their own attributes: {hits}"


def test_the_engine_check_sees_an_algorithm_name(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        '"""MAML in a docstring is fine."""\nif algo.first_order:\n    kind = "reptile"\n'
    )
    found = {word for _, word in code_words(source) if ALGORITHM_WORDS.match(word)}
    assert found == {"first_order", "kind", "reptile"}


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of this tree it imports (``from package import module`` counts as the
    module only, not the package that holds it)."""
    modules = {module_name(p): p for p in sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = {n for n in imported(path) if n in modules and n != name}
        graph[name] = {n for n in found if not any(m.startswith(n + ".") for m in found)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of two or more
    modules (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_the_circle_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_module_is_in_the_architecture_page() -> None:
    """docs/architecture.md names every module of the library, the domains and benchmarks/ (its
    file name in backticks, in its package's table or paragraph): a new module gets its line."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = {name.rsplit("/", 1)[-1] for name in re.findall(r"`([\w/.]+\.py)`", page)}
    missing = [
        str(path.relative_to(ROOT))
        for path in sources()
        if path.name != "__init__.py" and path.name not in named
    ]
    assert not missing, f"docs/architecture.md does not name {missing}"
