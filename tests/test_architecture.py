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
PACKAGES = ("metaopt", "supervised", "rl")

#: What each layer may not import (a layer is a package prefix; the most specific one applies).
FORBIDDEN = {
    "metaopt": ("metaopt.training", "metaopt.tools", "metaopt.cli", "supervised", "rl"),
    "metaopt.training": ("metaopt.tools", "metaopt.cli", "supervised", "rl"),
    "metaopt.tools": ("metaopt.cli", "supervised", "rl"),
    # Domains may plug into a tool (their `metaopt.benchmarks` cases build the bench's `Case`).
    "supervised": ("metaopt.cli", "rl"),
    "rl": ("metaopt.cli", "supervised"),
}
#: The package's front door names `TaskFamily`, `TrainConfig` and `ConfigError` lazily (a
#: module `__getattr__`): importing the core does not import training (tested below).
LAZY = {"metaopt": ("metaopt.training",)}
#: The command line sits on top: it may import every layer of the package (never a domain).
TOP = {"metaopt.cli": ("supervised", "rl"), "metaopt.__main__": ("supervised", "rl")}

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


def test_the_core_imports_without_training_tools_or_domains() -> None:
    code = (
        "import sys, metaopt, metaopt.testing; "
        "print(sorted(m for m in sys.modules if m.startswith(('metaopt.training', "
        "'metaopt.tools', 'supervised', 'rl.')) or m == 'rl'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "metaopt").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
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
