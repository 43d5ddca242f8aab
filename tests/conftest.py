"""Shared fixtures: an isolated data cache and small, real research repos.

Every test session gets its own AUTORESEARCH_CACHE, so tests never touch the
user's cache and prepared data is shared between the tests of one session.
litellm is told to use its bundled price map: no test may reach the network.
No external plugin loads (AUTORESEARCH_PLUGINS is empty), so the plugins
installed on the machine cannot change what a test sees; a test of the plugin
system installs its own and chooses the filter itself.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from autoresearch.plugins import PLUGINS_ENV

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ[PLUGINS_ENV] = ""  # built-ins only, in this process and in the CLI's subprocesses
if "AUTORESEARCH_CACHE" not in os.environ:  # a session cache, removed when the session ends
    _cache = tempfile.mkdtemp(prefix="autoresearch-test-cache-")
    os.environ["AUTORESEARCH_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

CORPUS_DOCS = 800  # small enough to prepare in a second, big enough to learn from


def write_corpus(folder: Path, docs: int = CORPUS_DOCS, seed: int = 0) -> Path:
    """Plain-text documents with learnable structure (repeated words and patterns)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "lambda"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        lines = [
            " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "." for _ in range(20)
        ]
        (folder / f"doc{i:04d}.txt").write_text("\n".join(lines) + "\n")
    return folder


SMALL_CONFIG = """\
[run]
budget_seconds = {budget}
startup_seconds = 60
seed = 1
device = "cpu"

[data]
source = "folder"
path = "{corpus}"
sequence_len = 64

[tokenizer]
kind = "byte"

[eval]
tokens = 4096
batch_size = 8
"""


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def make_research_repo(folder: Path, corpus: Path) -> Path:
    """A real research repo (git, tiny baseline) in `folder`, on `corpus`, prepared."""
    from autoresearch.config import load_config
    from autoresearch.harness.prepare import prepare
    from autoresearch.workspace import init_repo

    repo = init_repo(folder, "tiny")
    (repo / "autoresearch.toml").write_text(SMALL_CONFIG.format(budget=2, corpus=corpus))
    prepare(load_config(repo), log=lambda line: None)
    return repo


@pytest.fixture
def research_repo(tmp_path, corpus, monkeypatch) -> Path:
    """A real research repo (git, tiny baseline) on the small corpus, prepared, as cwd."""
    repo = make_research_repo(tmp_path / "research", corpus)
    monkeypatch.chdir(repo)
    return repo


@pytest.fixture(scope="session")
def honest_outcome(tmp_path_factory, corpus):
    """What the honest bigram of tests/candidates.py gets through the real runner, as the
    attack suite runs it (the same in every repo of the session): trained once, in a repo
    of its own."""
    import candidates
    from attacking import attack

    repo = make_research_repo(tmp_path_factory.mktemp("honest") / "research", corpus)
    out = attack(repo, candidates.HONEST, check=False)
    assert out.status == "keep", out.reason
    return out


@pytest.fixture
def honest_bpb(honest_outcome) -> float:
    """The true score of the attack suite: the honest bigram's val_bpb."""
    return honest_outcome.val_bpb
