"""docs/plugins.md against the code: every hook documented exactly, the example works."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest

from autoresearch import hookspecs
from autoresearch.constants import read_constants
from autoresearch.errors import UserError
from autoresearch.plugins import build_plugin_manager, make_proposer
from autoresearch.testing import make_request
from autoresearch.validation import source_hash, validate_proposal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parents[1]
DOCS = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
HOOK_HEADING = re.compile(r"^### (\w+)\((.*)\)$", re.MULTILINE)


def hookspec_functions() -> dict[str, object]:
    return {
        name: function
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, "autoresearch_spec")
    }


def example(marker: str) -> str:
    """The fenced code block that follows `<!-- example: marker -->` in the docs."""
    match = re.search(rf"<!-- example: {marker} -->\n```\w+\n(.*?)\n```", DOCS, re.DOTALL)
    assert match, f"docs/plugins.md has no example marked {marker!r}"
    return match.group(1) + "\n"


def test_there_are_hooks():
    assert set(hookspec_functions()) >= {
        "register_proposers", "register_commands", "register_data_sources", "experiment_finished"
    }


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_every_hook_is_documented_with_its_exact_signature_and_docstring(name):
    function = hookspec_functions()[name]
    signature = f"### {name}{inspect.signature(function)}"
    assert re.search(rf"^{re.escape(signature)}$", DOCS, re.MULTILINE), signature
    docstring = inspect.getdoc(function)
    assert docstring and "\n" not in docstring, f"{name}: hookspec docstrings are one line"
    assert f"> {docstring}\n" in DOCS, f"{name}: docstring not quoted in docs/plugins.md"


def test_nothing_undocumented_or_stale():
    documented = {name for name, _ in HOOK_HEADING.findall(DOCS)}
    assert documented == set(hookspec_functions())


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_every_hook_has_its_own_test(name):
    tests = (ROOT / "tests" / "test_plugins.py").read_text(encoding="utf-8")
    assert f"def test_hook_{name}(" in tests


def test_the_documented_proposer_plugin_works(tmp_path, monkeypatch):
    module_code = example("plugin module")
    pyproject = tomllib.loads(example("pyproject"))
    assert len([line for line in module_code.splitlines() if line.strip()]) <= 25  # "~20 lines"
    project = pyproject["project"]
    (module,) = pyproject["tool"]["setuptools"]["py-modules"]
    entry_points = project["entry-points"]["autoresearch"]

    # Install it the way pip would leave it: the module plus dist-info metadata.
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{module}.py").write_text(module_code)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[autoresearch]\n{lines}")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)

    # The filter the docs show selects it by distribution name.
    pm = build_plugin_manager(allowed=project["name"])
    proposer = make_proposer("scale-lr", {"factor": 2.0}, pm)
    parent = (ROOT / "baselines" / "gpt" / "train.py").read_text()
    proposal = proposer.propose(make_request(parent, seed=3))
    old, new = read_constants(parent), read_constants(proposal.source)
    changed = {k for k in old if old[k] != new[k]}
    assert len(changed) == 1 and next(iter(changed)).endswith("LR")
    (name,) = changed
    assert new[name] == pytest.approx(old[name] * 2)
    assert proposal.description == f"{name} {old[name]!r} -> {new[name]!r}"
    assert validate_proposal(parent, proposal.source, {source_hash(parent)}) is None
    with pytest.raises(UserError, match="scale-lr.*bad options.*'factr'"):
        make_proposer("scale-lr", {"factr": 2.0}, pm)
