"""Every third-party module the code imports is a declared dependency.

An import that only works because a package happens to be on the machine
passes every local test and fails on a user's fresh install; this walks the
imports of the shipped code and maps each one to the distribution that
provides it.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("autoresearch", "plugins", "baselines")  # what `pip install` puts on a user's machine
FIRST_PARTY = {"autoresearch"} | {p.stem for p in (ROOT / "tests").rglob("*.py")}  # test helpers
# Imported only inside the module of a feature that needs it (lazily): module -> (the extra
# that declares it, the one shipped file that may import it).
OPTIONAL = {"ray": ("ray", "autoresearch/ray_runner.py")}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0))


def _declared(extras: tuple[str, ...] = ()) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_requirement_name(r) for r in project["dependencies"]}
    for extra in extras:
        names |= {_requirement_name(r) for r in project["optional-dependencies"][extra]}
    return names


def third_party_imports(folders: tuple[str, ...]) -> dict[str, str]:
    """Top-level module -> the first file importing it, for every absolute import."""
    return {module: files[0] for module, files in importing_files(folders).items()}


def importing_files(folders: tuple[str, ...]) -> dict[str, list[str]]:
    """Top-level module -> every file importing it, for every absolute import."""
    found: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    where = str(path.relative_to(ROOT))
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        files = found.setdefault(top, [])
                        if where not in files:
                            files.append(where)
    return found


def undeclared(imports: dict[str, str], declared: set[str]) -> list[str]:
    """'module (file): provided by X' for each import no declared distribution provides."""
    providers = metadata.packages_distributions()
    problems = []
    for module, where in sorted(imports.items()):
        # A module that is not installed here (tomli on Python >= 3.11) must be declared
        # under its own name.
        dists = providers.get(module, [module])
        if not any(_normalise(d) in declared for d in dists):
            problems.append(f"{module} ({where}): provided by {', '.join(dists)}")
    return problems


def test_shipped_code_imports_only_declared_dependencies():
    imports = third_party_imports(SHIPPED)
    assert {"torch", "git", "click"} <= set(imports)  # the walk sees real imports
    required = {m: f for m, f in imports.items() if m not in OPTIONAL}
    assert undeclared(required, _declared()) == []


@pytest.mark.parametrize("module", sorted(OPTIONAL))
def test_an_optional_dependency_is_declared_in_its_extra_and_imported_in_one_place(module):
    extra, allowed = OPTIONAL[module]
    assert importing_files(SHIPPED).get(module) == [allowed]
    assert _requirement_name(module) in _declared((extra,)) - _declared()


def test_tests_import_only_declared_dependencies():
    assert undeclared(third_party_imports(("tests",)), _declared(("test",))) == []


def test_the_check_finds_an_undeclared_import():
    assert undeclared({"safetensors": "x.py"}, {"torch"}) == [
        "safetensors (x.py): provided by safetensors"
    ]
    assert undeclared({"git": "x.py"}, {"gitpython"}) == []  # mapped through its distribution


@pytest.mark.parametrize("requirement", ["torch>=2.5", "tomli>=2.0; python_version < '3.11'"])
def test_requirement_names(requirement):
    assert _requirement_name(requirement) in {"torch", "tomli"}
