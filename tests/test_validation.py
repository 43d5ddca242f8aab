"""Static validation of proposals, and the dedup hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.validation import MAX_SOURCE_BYTES, source_hash, validate_proposal

PARENT = '''\
"""A small train.py."""
import torch

from autoresearch import harness

LR = 0.04  # learning rate
DEPTH = 8
SEED = 42


def train():
    """Train and hand over."""
    ctx = harness.context()
    torch.manual_seed(ctx.seed)
    model = torch.nn.Linear(DEPTH, DEPTH)
    harness.handover(model)


train()
'''


def changed(old: str, new: str, source: str = PARENT) -> str:
    assert old in source, old
    return source.replace(old, new, 1)


def check(new: str, seen: set[str] | None = None, **kwargs) -> str | None:
    return validate_proposal(PARENT, new, seen or set(), **kwargs)


def test_a_real_change_is_accepted():
    assert check(changed("LR = 0.04", "LR = 0.05")) is None
    handover = "    harness.handover(model)"
    assert check(changed(handover, "    model.half()\n" + handover)) is None


def test_a_seed_change_together_with_a_real_change_is_accepted():
    assert check(changed("SEED = 42\n", "SEED = 7\n", changed("DEPTH = 8", "DEPTH = 9"))) is None


INVALID = [
    ("", "empty"),
    ("  \n\n", "empty"),
    ("x = 1\n" * (MAX_SOURCE_BYTES // 6 + 1), "over the 200 KB limit"),
    (changed("LR = 0.04", "LR = = 0.04"), "does not compile: line 6"),
    (changed("train()\n", "return 1\n"), "line 19: 'return' outside function"),
    (changed("LR = 0.04", "LR = 0.04\0"), "does not compile"),
    (PARENT, "identical to the parent"),
    (changed("LR = 0.04  # learning rate", "LR=0.04"), "only comments, docstrings or"),
    (changed('"""Train and hand over."""', '"""Another docstring."""'), "only comments"),
    (changed("SEED = 42", "SEED = 43"), "only the random seed changed"),
    (changed("torch.manual_seed(ctx.seed)", "torch.manual_seed(ctx.seed + 1)"), "random seed"),
    (changed("from autoresearch import harness", "import harness"), "no longer imports the"),
    (changed("    harness.handover(model)\n", ""), "no longer calls harness.handover"),
    (changed("import torch\n", "import torch\nimport autoresearch.ledger\n"),
     "imports autoresearch.ledger; only autoresearch.harness"),
    (changed("import torch\n", "import torch\nfrom autoresearch import ledger\n"),
     "imports autoresearch.ledger"),
    (changed("import torch\n", "import torch\nfrom autoresearch.harness import evaluate\n"),
     "imports autoresearch.harness.evaluate; the evaluation, its data and its guards"),
    (changed("import torch\n", "import torch\nfrom autoresearch.harness.prepare import Manifest\n"),
     "imports autoresearch.harness.prepare.Manifest; the evaluation, its data"),
    (changed("    ctx = harness.context()", "    ctx = harness.cache.cache_root()"),
     "uses autoresearch.harness.cache.cache_root"),
    (changed("    ctx = harness.context()", "    v = 'val.npy'"), "names val.npy"),
    (changed("import torch\n", "import torch\nimport autoresearch.harness.evaluate as ev\n"),
     "autoresearch.harness.evaluate"),
    (changed("    ctx = harness.context()", "    ctx = harness.evaluate.run()"),
     "uses autoresearch.harness.evaluate"),
    (changed("    ctx = harness.context()", "    harness.events._State.tokens = 0"),
     "private harness names"),
    (changed("import torch\n", "import torch\nimport importlib\n"
             "importlib.import_module('autoresearch.ledger')\n"),
     "names autoresearch.ledger"),
]


@pytest.mark.parametrize(("new", "reason"), INVALID, ids=[reason for _, reason in INVALID])
def test_each_kind_of_invalid_proposal_is_rejected_with_its_reason(new, reason):
    result = check(new)
    assert result is not None and reason in result
    assert "\n" not in result


def test_a_duplicate_of_an_evaluated_source_is_rejected():
    earlier = changed("LR = 0.04", "LR = 0.05")
    seen = {source_hash(PARENT), source_hash(earlier)}
    reformatted = changed("LR = 0.05", "LR = 0.050  # tried again", earlier)
    assert check(reformatted, seen) == "duplicate of an already-evaluated train.py"
    assert check(changed("LR = 0.04", "LR = 0.06"), seen) is None


def test_the_protected_check_is_consulted():
    def protected(source: str) -> str | None:
        return "program.md was modified" if "DEPTH = 9" in source else None

    assert check(changed("DEPTH = 8", "DEPTH = 9"), protected_check=protected).startswith(
        "program.md was modified"
    )
    assert check(changed("DEPTH = 8", "DEPTH = 10"), protected_check=protected) is None


@pytest.mark.parametrize(
    ("imports", "call"),
    [
        ("from autoresearch import harness as h", "h.handover(model)"),
        ("import autoresearch.harness as h", "h.handover(model)"),
        ("import autoresearch.harness", "autoresearch.harness.handover(model)"),
        ("from autoresearch.harness import handover", "handover(model)"),
        ("from autoresearch.harness import handover as give", "give(model)"),
        ("from autoresearch.harness import *", "handover(model)"),
    ],
)
def test_every_spelling_of_the_harness_contract_is_accepted(imports, call):
    new = f"import torch\n{imports}\nmodel = torch.nn.Linear(2, 2)\n{call}\n"
    assert validate_proposal(PARENT, new, set()) is None


def test_docstrings_may_mention_internals():
    docstring = '"""Unlike autoresearch.ledger, we train."""\n    pass'
    new = changed('"""Train and hand over."""', docstring)
    assert check(new) is None


def test_hash_ignores_comments_docstrings_and_formatting_but_not_code():
    variant = '''\
import torch
from autoresearch import harness
LR=0.04
DEPTH = (8)
SEED = 42
def train():
    ctx = harness.context() # a new comment
    torch.manual_seed( ctx.seed )
    model = torch.nn.Linear(DEPTH,
                            DEPTH)
    harness.handover(model)
train()
'''
    assert source_hash(variant) == source_hash(PARENT)
    assert source_hash(variant.replace("LR=0.04", "LR=0.041")) != source_hash(PARENT)
    assert source_hash("x = (") != source_hash("x = ((")  # unparsable sources still hash
    assert len(source_hash(PARENT)) == 64


def test_the_real_baselines_pass_with_a_change():
    root = Path(__file__).parents[1] / "baselines"
    for path in sorted(root.glob("*/train.py")):
        source = path.read_text()
        new = source.replace("DEPTH = ", "DEPTH = 1 + ", 1)
        assert new != source, path
        assert validate_proposal(source, new, {source_hash(source)}) is None, path
